"""``GET /metrics``: Prometheus text exposition of ``hub.metrics.registry``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from cloud_hub.api.deps import HubDep, Viewer

router = APIRouter(tags=["observability"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (text format)",
            responses={200: {"content": {"text/plain": {}}}})
def metrics(hub: HubDep, _: Viewer) -> Response:
    hub.metrics.models_loaded.set(len(hub.models.loaded()))
    data, ctype = hub.metrics.render()
    return Response(data, media_type=ctype)
