"""Liveness/readiness of the hub (also the Open Inference Protocol health routes)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from cloud_hub.api.deps import HubDep
from cloud_hub.api.schemas import HealthOut, LiveOut, ReadyOut

router = APIRouter(tags=["health"])


def _db_ok(hub) -> bool:
    try:
        with hub.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except SQLAlchemyError:
        return False


@router.get("/healthz", summary="Liveness and database check of the hub",
            responses={200: {"model": HealthOut}, 503: {"model": HealthOut, "description": "Database unreachable"}})
def healthz(hub: HubDep) -> JSONResponse:
    ok = _db_ok(hub)
    body: dict[str, Any] = {"status": "ok" if ok else "degraded", "database": ok,
                            "models_loaded": len(hub.models.loaded())}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/v2/health/live", summary="OIP: the server is live", response_model=LiveOut)
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", summary="OIP: the server is ready (database reachable)",
            responses={200: {"model": ReadyOut}, 503: {"model": ReadyOut, "description": "Not ready"}})
def ready(hub: HubDep) -> JSONResponse:
    ok = _db_ok(hub)
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)
