"""Scheduled batch job routes: create, list, show (next firing, last jobs), pause, resume,
run now, delete. The hub's scheduler thread starts with the app (every replica runs one;
each firing still creates one job, see ``cloud_hub/batch/schedule.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from cloud_hub.api.deps import Admin, HubDep, Viewer
from cloud_hub.batch.schedule import ScheduleService


@asynccontextmanager
async def _start_scheduler(app) -> AsyncIterator[None]:
    hub = getattr(app.state, "hub", None)
    if hub is not None:
        await asyncio.to_thread(ScheduleService.of(hub).start)
    yield


router = APIRouter(tags=["batch schedules"], lifespan=_start_scheduler)

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key"},
    403: {"description": "The key's role does not allow this"},
    404: {"description": "Unknown schedule, model, alias or version"},
    409: {"description": "A schedule with this name exists"},
    422: {"description": "Invalid request field"},
}


class ScheduleRequest(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="Unique name, e.g. nightly-churn.")
    cron: str = Field(
        min_length=1, max_length=200, description='5-field cron, e.g. "0 6 * * *", or @daily.'
    )
    timezone: str = Field("UTC", max_length=64, description="IANA zone of the cron times.")
    model: str = Field(
        min_length=1,
        max_length=401,
        description="REF: name, name@alias or name:version; an alias is resolved at each firing.",
    )
    input: str = Field(
        min_length=1, max_length=4096, description="Input file on the hub; may hold {date}."
    )
    output: str = Field(
        min_length=1,
        max_length=4096,
        description="Output file on the hub with {date} or {datetime} (one file per firing).",
    )
    id_columns: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=100, description="Columns copied to the output."
    )
    catch_up: Literal["run_once", "skip"] = Field(
        "run_once", description="Firings missed while no hub ran: run the latest once, or skip."
    )
    batch_size: int = Field(65536, ge=1, le=10_000_000)
    engine: Literal["local", "ray"] = "local"
    workers: int | None = Field(None, ge=1, le=1024)
    processes: bool = False
    input_format: Literal["parquet", "csv", "jsonl"] | None = None
    output_format: Literal["parquet", "csv", "jsonl"] | None = None


@router.post("/v1/schedules", status_code=201, responses=ERRORS, summary="Create a schedule")
def create_schedule(body: ScheduleRequest, hub: HubDep, role: Admin) -> dict[str, Any]:
    return ScheduleService.of(hub).create(**body.model_dump(), created_by=role)


@router.get("/v1/schedules", responses=ERRORS, summary="Schedules with next firing, last jobs")
def list_schedules(hub: HubDep, _: Viewer) -> dict[str, Any]:
    return {"schedules": ScheduleService.of(hub).list()}


@router.get(
    "/v1/schedules/{schedule_id}", responses=ERRORS, summary="A schedule and its recent firings"
)
def get_schedule(
    schedule_id: str, hub: HubDep, _: Viewer, firings: int = Query(20, ge=1, le=1000)
) -> dict[str, Any]:
    return ScheduleService.of(hub).get(schedule_id, firings)


@router.post("/v1/schedules/{schedule_id}/pause", responses=ERRORS, summary="Pause firings")
def pause_schedule(schedule_id: str, hub: HubDep, _: Admin) -> dict[str, Any]:
    return ScheduleService.of(hub).pause(schedule_id)


@router.post(
    "/v1/schedules/{schedule_id}/resume",
    responses=ERRORS,
    summary="Resume from the next firing (paused periods are not caught up)",
)
def resume_schedule(schedule_id: str, hub: HubDep, _: Admin) -> dict[str, Any]:
    return ScheduleService.of(hub).resume(schedule_id)


@router.post(
    "/v1/schedules/{schedule_id}/run",
    status_code=202,
    responses=ERRORS,
    summary="Fire once now (creates a job; the cron firings are unchanged)",
)
def run_schedule_now(schedule_id: str, hub: HubDep, role: Admin) -> dict[str, Any]:
    return ScheduleService.of(hub).run_now(schedule_id, created_by=role)


@router.delete(
    "/v1/schedules/{schedule_id}",
    status_code=204,
    responses=ERRORS,
    summary="Delete a schedule (its jobs stay)",
)
def delete_schedule(schedule_id: str, hub: HubDep, _: Admin) -> None:
    ScheduleService.of(hub).delete(schedule_id)
