"""``POST /v1/models/{ref}/predict``: JSON rows with named features → predictions.

A thin adapter over :class:`cloud_hub.inference.PredictService`: decode → the
bundle's contract → engine → post-processing → encode, the same data plane as
OIP. The body is parsed with orjson straight from the request bytes (no pydantic
model on the hot path: the bundle's contract, :mod:`edge_runtime.contract`, is
the schema and names the field and the reason in a 422).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloud_hub.api.deps import ROLE_RANK, ForbiddenError, caller_role
from edge_runtime.errors import ValidationError

router = APIRouter(tags=["inference"])

EXAMPLE_BODY = {"rows": [{"feature_a": 1.0, "feature_b": 2.5, "customer_id": "C-42"}],
                "entity_key": "customer_id"}
EXAMPLE_RESPONSE = {
    "request_id": "8f6c2e8e0c0b4a8e9b8f0f3a3c1d2e4f", "timestamp": "2026-11-28T08:00:00.000+00:00",
    "model": {"name": "churn", "version": "1.2.0", "sha256": "…"}, "group": None,
    "predictions": [{"probability": 0.83, "label": "churn", "risk_level": "high", "customer_id": "C-42"}],
}


async def authorize(request: Request, hub, role: str) -> str:
    """The same check as the ``Client``/``Admin`` dependencies, callable inline."""
    r = await caller_role(request, hub)
    if ROLE_RANK[r] < ROLE_RANK[role]:
        raise ForbiddenError(f"this action needs the {role} role; your key has the {r} role")
    return r


async def predict_bytes(hub, ref: str, raw: bytes, *, entity_key: str | None, request_id: str) -> bytes:
    """The route's work after auth, on the raw body: decode → data plane → JSON bytes. Shared by
    the route below and the app's fast path (:mod:`cloud_hub.api.fastpath`)."""
    body = load_json(raw)
    result = await hub.inference.predict_body(ref, body, key_field=entity_key, request_id=request_id)
    return orjson.dumps(result.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY)


class ORJSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def load_json(raw: bytes) -> Any:
    if not raw:
        raise ValidationError("empty body: send a JSON object", field="body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"body is not valid JSON: {exc}", field="body") from exc


@router.post(
    "/v1/models/{ref}/predict", response_class=ORJSONResponse,
    summary="Score rows with a model (name, name@alias or name:version)",
    responses={200: {"content": {"application/json": {"example": EXAMPLE_RESPONSE}}},
               401: {"description": "Missing or invalid API key (Authorization: Bearer KEY or X-API-Key)"},
               403: {"description": "The key's role does not allow inference"},
               404: {"description": "Unknown model, version or alias"},
               413: {"description": "Body larger than the configured limit"},
               422: {"description": "Invalid row: the body names the field and the reason"}},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"oneOf": [
            {"type": "object", "required": ["rows"], "properties": {
                "rows": {"type": "array", "items": {"type": "object"},
                         "description": "Rows of named features (the bundle's input contract)."},
                "entity_key": {"type": "string", "description": "Field of each row holding the "
                               "entity id (e.g. customer_id): not a feature, echoed back, used by "
                               "champion/challenger routing."}}},
            {"type": "object", "description": "One row of named features."}]},
        "example": EXAMPLE_BODY}}}},
)
async def predict(ref: str, request: Request) -> ORJSONResponse:
    """Rows → probability, label and risk level per row, with the model version that
    answered, the request id and a timestamp. A plain row object is one row.
    Without ``rows``, the entity key field can be named with ``?entity_key=``."""
    hub = request.app.state.hub
    await authorize(request, hub, "client")  # inline, not Depends: fewer steps on the hot path
    data = await predict_bytes(hub, ref, await request.body(),
                               entity_key=request.query_params.get("entity_key"),
                               request_id=request.scope["state"]["request_id"])
    return Response(data, media_type="application/json")
