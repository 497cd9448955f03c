"""Champion/challenger routes: split config, per-group counters, feedback, evaluation, promotion.

Config changes need the admin role; feedback the client role (the backend that
called ``/predict`` reports outcomes); reading needs viewer.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, field_validator

from cloud_hub.api import schemas as S
from cloud_hub.api.deps import Admin, Client, HubDep, Viewer

router = APIRouter(tags=["champion/challenger"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key"}, 403: {"description": "Role too weak"},
    404: {"description": "Unknown model or no split"}, 409: {"description": "State does not allow it"},
    422: {"description": "Invalid input: body names the field and the reason"}}


class SplitIn(BaseModel):
    challenger_fraction: float = Field(..., ge=0.0, le=1.0, description="Share of entities answered by "
                                       "name@challenger (0.1 = 10 %).", examples=[0.1])
    entity_key: str | None = Field(None, min_length=1, max_length=200,
                                   description="Row field holding the entity id (default customer_id).")
    reset: bool = Field(False, description="New split id: reshuffles every entity between the groups.")
    enabled: bool = Field(True, description="False: everything goes to the champion.")
    evaluation: dict[str, Any] | None = Field(None, description="Default evaluation config "
                                              "(decide_on, business_metric, cost_*, alpha, min_samples).")


class FeedbackItem(BaseModel):
    request_id: str | None = Field(None, max_length=128, description="request_id of the /predict answer.")
    row: int | None = Field(None, ge=0, le=2**31 - 1, description="Row of that request (default 0).")
    entity_key: str | int | None = Field(
        None, description="Or the entity (at most 200 characters): joins its latest prediction.")
    outcome: bool | int | str = Field(
        ..., description="True outcome: 0/1, true/false or a class label (at most 100 characters).")

    @field_validator("entity_key")
    @classmethod
    def _key_fits(cls, v: str | int | None) -> str | int | None:
        if v is not None and len(str(v)) > 200:
            raise ValueError("at most 200 characters (the prediction log's entity key)")
        return v

    @field_validator("outcome")
    @classmethod
    def _outcome_fits(cls, v: bool | int | str) -> bool | int | str:
        if not isinstance(v, bool) and not 0 < len(str(v)) <= 100:
            raise ValueError("1 to 100 characters")
        return v


class FeedbackIn(BaseModel):
    feedback: list[FeedbackItem] = Field(..., max_length=100_000)


class PromoteIn(BaseModel):
    force: bool = Field(False, description="Promote without requiring a PROMOTE verdict.")
    evaluation: dict[str, Any] | None = Field(None, description="Evaluation overrides for the check.")


@router.get("/v1/splits", responses={**ERRORS, 200: {"model": S.SplitListOut}}, summary="All champion/challenger splits")
def list_splits(hub: HubDep, _: Viewer) -> dict[str, Any]:
    return {"splits": [c.to_dict() for c in hub.routing.list_splits()]}


@router.get("/v1/models/{name}/split", responses={**ERRORS, 200: {"model": S.SplitOut}}, summary="A model's split config")
def get_split(name: str, hub: HubDep, _: Viewer) -> dict[str, Any]:
    return hub.routing.get_split(name).to_dict()


@router.put("/v1/models/{name}/split", responses={**ERRORS, 200: {"model": S.SplitOut}},
            summary="Create or change a split (fraction changes keep the split id: sticky, nested)")
def put_split(name: str, body: SplitIn, hub: HubDep, _: Admin) -> dict[str, Any]:
    hub.registry.versions(name)  # 404 for an unknown model
    return hub.routing.set_split(name, body.challenger_fraction, entity_key=body.entity_key, reset=body.reset,
                                 enabled=body.enabled, evaluation=body.evaluation).to_dict()


@router.delete("/v1/models/{name}/split", status_code=204, responses=ERRORS, summary="Remove a split")
def delete_split(name: str, hub: HubDep, _: Admin) -> None:
    hub.routing.delete_split(name)


@router.get("/v1/models/{name}/split/stats", responses=ERRORS,
            summary="Stored per-group counters (rows, errors, latency, score, positive rate per version)")
def split_stats(name: str, hub: HubDep, _: Viewer, all_splits: bool = False) -> dict[str, Any]:
    return hub.routing.group_stats(name, all_splits=all_splits)


@router.post("/v1/models/{name}/feedback", responses={**ERRORS, 200: {"model": S.FeedbackOut}},
             summary="Record true outcomes later, by request id (+ row) or entity key")
def feedback(name: str, body: FeedbackIn, hub: HubDep, _: Client) -> dict[str, Any]:
    return hub.routing.add_feedback(name, [i.model_dump() for i in body.feedback])


@router.post("/v1/models/{name}/evaluate", responses=ERRORS,
             summary="Compare champion and challenger: PROMOTE / KEEP_CHAMPION / NOT_ENOUGH_DATA")
def evaluate(name: str, hub: HubDep, _: Viewer, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return hub.routing.evaluate(name, body or None)


@router.get("/v1/models/{name}/evaluation", responses=ERRORS,
            summary="Evaluation with the split's stored config")
def evaluation(name: str, hub: HubDep, _: Viewer) -> dict[str, Any]:
    return hub.routing.evaluate(name)


@router.post("/v1/models/{name}/promote", responses=ERRORS,
             summary="champion ← challenger's version in one transaction (needs a PROMOTE verdict)")
def promote(name: str, hub: HubDep, _: Admin, body: PromoteIn | None = None) -> dict[str, Any]:
    body = body or PromoteIn()
    return hub.routing.promote(name, require_verdict=not body.force, overrides=body.evaluation)


@router.delete("/v1/models/{name}/split/log", responses=ERRORS,
               summary="Delete the prediction log and feedback older than a time (retention)")
def prune_log(name: str, hub: HubDep, _: Admin,
              before: Annotated[dt.datetime, Query(description="Delete rows older than this (ISO 8601).")],
              ) -> dict[str, Any]:
    return {"name": name, "deleted": hub.routing.prune(name, before)}
