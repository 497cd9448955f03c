"""Rollouts API: admins start and steer rollouts, viewers read them.

    GET  /v1/rollouts                 list (filters: status, model)
    POST /v1/rollouts                 start {model: "NAME:VERSION", cohort: "region=eu", plan: {...}}
    GET  /v1/rollouts/{id}            live status: stage, devices per state, gate values, next decision
    GET  /v1/rollouts/{id}/events     every decision with the numbers behind it
    POST /v1/rollouts/{id}/pause|resume|abort|advance   {reason}
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.api.deps import Admin, HubDep, Viewer
from cloud_hub.rollouts.service import rollout_service

router = APIRouter(prefix="/v1/rollouts", tags=["rollouts"])


class StartRollout(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=3, max_length=401, description="Candidate as NAME:VERSION (must be in the registry).")
    cohort: str = Field("*", max_length=2048, description="Device selector, e.g. 'region=eu,profile=rpi4' ('*' = all).")
    plan: dict[str, Any] | None = Field(None, description="Plan document (same keys as a plan file); "
                                        "default: canary 1,5,25,50,100 % with the guide's thresholds.")
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]{1,64}$", description="Optional rollout id.")


class Action(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=500)


@router.get("", summary="List rollouts (newest first)")
def list_rollouts(hub: HubDep, _: Viewer, status: str | None = Query(None), model: str | None = Query(None)
                  ) -> dict[str, Any]:
    return {"rollouts": rollout_service(hub).list(status=status, model=model)}


@router.post("", status_code=201, summary="Start a rollout of a model version to a device cohort")
def start_rollout(body: StartRollout, hub: HubDep, _: Admin) -> dict[str, Any]:
    return rollout_service(hub).start(body.model, body.cohort, body.plan, rollout_id=body.id)


@router.get("/{rollout_id}", summary="Live status: stage, devices per state, gates, next decision")
def get_rollout(rollout_id: str, hub: HubDep, _: Viewer) -> dict[str, Any]:
    return rollout_service(hub).status(rollout_id)


@router.get("/{rollout_id}/events", summary="The rollout's decision log")
def rollout_events(rollout_id: str, hub: HubDep, _: Viewer, limit: int = Query(1000, ge=1, le=100_000)
                   ) -> dict[str, Any]:
    return {"events": rollout_service(hub).events(rollout_id, limit=limit)}


@router.post("/{rollout_id}/pause", summary="Pause a running rollout (devices keep what they run)")
def pause(rollout_id: str, hub: HubDep, _: Admin, body: Action | None = None) -> dict[str, Any]:
    return rollout_service(hub).pause(rollout_id, body.reason if body else None)


@router.post("/{rollout_id}/resume", summary="Resume a paused rollout (the stage clock restarts)")
def resume(rollout_id: str, hub: HubDep, _: Admin) -> dict[str, Any]:
    return rollout_service(hub).resume(rollout_id)


@router.post("/{rollout_id}/abort", summary="Abort: every device of the rollout goes back to the champion")
def abort(rollout_id: str, hub: HubDep, _: Admin, body: Action | None = None) -> dict[str, Any]:
    return rollout_service(hub).abort(rollout_id, body.reason if body else None)


@router.post("/{rollout_id}/advance", summary="Operator override: next stage now, without the gates")
def advance(rollout_id: str, hub: HubDep, _: Admin, body: Action | None = None) -> dict[str, Any]:
    return rollout_service(hub).advance(rollout_id, body.reason if body else None)
