"""Batch job routes: submit, list, status with progress, cancel, resume.

Paths in a job are paths on the hub's machine (or a disk it shares with its
replicas); submitting needs the admin role, reading jobs the viewer role.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from cloud_hub.api.deps import Admin, HubDep, Viewer
from cloud_hub.batch.job import BatchSpec
from cloud_hub.batch.service import JobService

router = APIRouter(tags=["batch jobs"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key"},
    403: {"description": "The key's role does not allow this"},
    404: {"description": "Unknown job, model, alias or version"},
    409: {"description": "Output exists / job already finished"},
    422: {"description": "Invalid request field"},
}


class JobRequest(BaseModel):
    model: str = Field(description="REF: name, name@alias or name:version.", min_length=1, max_length=401)
    input: str = Field(description="Input file on the hub: .parquet, .csv or .jsonl.", min_length=1,
                       max_length=4096)
    output: str = Field(
        description="Output file on the hub: .parquet, .csv or .jsonl.", min_length=1, max_length=4096
    )
    id_columns: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=100, description="Columns copied to the output.")
    batch_size: int = Field(65536, ge=1, le=10_000_000, description="Rows per batch.")
    engine: Literal["local", "ray"] = Field("local", description="Scoring engine.")
    workers: int | None = Field(None, ge=1, le=1024, description="Scoring threads / Ray actors.")
    processes: bool = Field(False, description="Local engine: score in worker processes.")
    rejects: str | None = Field(
        None, max_length=4096, description="Rejected rows file (default OUTPUT-stem.rejects.jsonl)."
    )
    input_format: Literal["parquet", "csv", "jsonl"] | None = None
    output_format: Literal["parquet", "csv", "jsonl"] | None = None
    scoring_date: str | None = Field(None, max_length=64, description="ISO date/time written in scored_at.")
    overwrite: bool = Field(False, description="Replace an existing output file.")


@router.post(
    "/v1/jobs",
    status_code=202,
    responses=ERRORS,
    summary="Submit a batch scoring job (runs in the background)",
)
def submit_job(body: JobRequest, hub: HubDep, role: Admin) -> dict[str, Any]:
    spec = BatchSpec(**body.model_dump())
    return JobService.of(hub).submit(spec, created_by=role)


@router.get("/v1/jobs", responses=ERRORS, summary="List jobs, newest first")
def list_jobs(
    hub: HubDep, _: Viewer, status: str | None = Query(None, max_length=32), limit: int = Query(100, ge=1, le=1000)
) -> dict[str, Any]:
    return {"jobs": JobService.of(hub).list(status, limit)}


@router.get(
    "/v1/jobs/{job_id}",
    responses=ERRORS,
    summary="Job status, progress (0..1 when the row count is known) and result location",
)
def get_job(job_id: str, hub: HubDep, _: Viewer) -> dict[str, Any]:
    return JobService.of(hub).get(job_id)


@router.post(
    "/v1/jobs/{job_id}/cancel",
    responses=ERRORS,
    summary="Cancel a queued or running job (its partial output is removed)",
)
def cancel_job(job_id: str, hub: HubDep, _: Admin) -> dict[str, Any]:
    return JobService.of(hub).cancel(job_id)


@router.post(
    "/v1/jobs/{job_id}/resume",
    responses=ERRORS,
    summary="Resume an interrupted or failed job from its last checkpoint",
)
def resume_job(job_id: str, hub: HubDep, _: Admin) -> dict[str, Any]:
    return JobService.of(hub).resume(job_id)
