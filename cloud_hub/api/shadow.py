"""Shadow deployment routes: attach/detach shadow versions, queue status, comparison report."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from cloud_hub.api.deps import Admin, HubDep, Viewer

router = APIRouter(tags=["shadow"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key"}, 403: {"description": "Role too weak"},
    404: {"description": "Unknown model, version or shadow"},
    422: {"description": "Invalid input: body names the field and the reason"}}


class ShadowIn(BaseModel):
    version: str = Field(..., min_length=1, max_length=200, description="Version (or name@alias) to mirror to.")
    sample_rate: float = Field(1.0, gt=0.0, le=1.0, description="Share of requests mirrored (stable by request id).")
    segments: list[str] = Field(default_factory=list, max_length=20, description="Segment fields for the "
                                "report: 'feature', 'feature:e1,e2,…' (numeric bins) or 'tag:group'.")


@router.get("/v1/models/{name}/shadows", responses=ERRORS, summary="Shadow versions attached to a model")
def list_shadows(name: str, hub: HubDep, _: Viewer) -> dict[str, Any]:
    hub.registry.versions(name)  # 404 for an unknown model
    return {"name": name, "shadows": [t.to_dict() for t in hub.shadow.targets(name)]}


@router.post("/v1/models/{name}/shadows", status_code=201, responses=ERRORS,
             summary="Attach a shadow version: live requests are mirrored to it off the critical path")
def attach_shadow(name: str, body: ShadowIn, hub: HubDep, _: Admin) -> dict[str, Any]:
    return hub.shadow.attach(name, body.version, sample_rate=body.sample_rate, segments=body.segments).to_dict()


@router.delete("/v1/models/{name}/shadows/{version}", status_code=204, responses=ERRORS,
               summary="Detach a shadow version (its comparison records stay)")
def detach_shadow(name: str, version: str, hub: HubDep, _: Admin) -> None:
    hub.shadow.detach(name, version)


@router.get("/v1/shadow/status", responses=ERRORS, summary="Mirror queue depth, capacity, drops, errors")
def shadow_status(hub: HubDep, _: Viewer) -> dict[str, Any]:
    return hub.shadow.status()


@router.get("/v1/models/{name}/shadow/report", responses=ERRORS,
            summary="Shadow vs primary: identical buckets, decision changes, KS test, segments, latency, verdict")
def shadow_report(name: str, hub: HubDep, _: Viewer,
                  shadow: Annotated[str | None, Query(description="Only this shadow version.")] = None,
                  since: Annotated[dt.datetime | None,
                                   Query(description="Only records from this time (ISO 8601).")] = None,
                  max_decision_change: float = Query(0.05, ge=0, le=1),
                  sla_ms: float | None = Query(50.0, gt=0, description="Shadow p99 must be at most this."),
                  min_samples: int = Query(100, ge=1),
                  min_identical_bucket: float | None = Query(None, ge=0, le=1),
                  max_mean_divergence: float | None = Query(None, ge=0),
                  min_ks_pvalue: float | None = Query(None, ge=0, le=1),
                  max_error_rate: float = Query(0.01, ge=0, le=1),
                  wait_s: float = Query(0.0, ge=0, le=60, description="First wait up to this long for queued "
                                        "mirrors to be compared and stored.")) -> dict[str, Any]:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    crit = {"max_decision_change": max_decision_change, "sla_ms": sla_ms, "min_samples": min_samples,
                "min_identical_bucket": min_identical_bucket, "max_mean_divergence": max_mean_divergence,
                "min_ks_pvalue": min_ks_pvalue, "max_error_rate": max_error_rate}
    if wait_s > 0:
        hub.shadow.drain(timeout=wait_s)
    return hub.shadow.report(name, shadow_version=shadow, since=since, criteria=crit)


@router.delete("/v1/models/{name}/shadow/records", responses=ERRORS,
               summary="Delete comparison records older than a time (retention)")
def prune_records(name: str, hub: HubDep, _: Admin,
                  before: Annotated[dt.datetime, Query(description="Delete records older than this (ISO 8601).")],
                  ) -> dict[str, Any]:
    return {"name": name, "deleted": hub.shadow.prune(name, before)}


@router.get("/v1/models/{name}/shadow/records", responses=ERRORS,
            summary="Raw comparison records, oldest first (page with after_id)")
def list_records(name: str, hub: HubDep, _: Viewer,
                 shadow: Annotated[str | None, Query(description="Only this shadow version.")] = None,
                 since: Annotated[dt.datetime | None, Query(description="Only records from this time.")] = None,
                 after_id: Annotated[int | None, Query(ge=0, le=2**31 - 1, description="Records after this id.")] = None,
                 limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> dict[str, Any]:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    hub.registry.versions(name)  # 404 for an unknown model
    recs = hub.shadow.records(name, shadow, since, limit=limit, after_id=after_id)
    for r in recs:
        r["created_at"] = r["created_at"].isoformat() if r.get("created_at") else None
    return {"name": name, "records": recs, "next_after_id": recs[-1]["id"] if len(recs) == limit else None}
