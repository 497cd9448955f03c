"""Dashboard routes: the page shell, login/logout, static assets, chart data."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from cloud_hub.api.deps import AuthError, HubDep, Viewer, caller_role
from cloud_hub.ui import data
from cloud_hub.ui.csrf import csrf_token
from edge_runtime.errors import NotFoundError

STATIC = Path(__file__).parent / "static"
ASSETS = {"app.js": "text/javascript", "charts.js": "text/javascript", "app.css": "text/css"}
KEY_COOKIE, CSRF_COOKIE = "edgefleet_key", "edgefleet_csrf"

router = APIRouter(tags=["dashboard"])


@router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
@router.get("/ui/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    html = (STATIC / "index.html").read_text()
    return HTMLResponse(html, headers={"Cache-Control": "no-store",
                                       "Content-Security-Policy": "default-src 'self'; "
                                       "style-src 'self'; img-src 'self' data:; frame-ancestors 'none'"})


@router.get("/ui/static/{name}", include_in_schema=False)
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFoundError(f"no dashboard asset {name}", field="name")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})


class Login(BaseModel):
    api_key: str = Field(min_length=1, max_length=512, description="An API key of any role.")


@router.post("/ui/login", summary="Dashboard login: exchange an API key for a session cookie")
async def login(body: Login, request: Request, hub: HubDep) -> JSONResponse:
    # Reuse the API's key check so the dashboard has exactly the API's roles.
    scope = dict(request.scope)
    scope["headers"] = [(b"x-api-key", body.api_key.encode())]
    role = await caller_role(Request(scope), hub)
    if not _keys_configured(hub):
        role = "admin"
    resp = JSONResponse({"role": role})
    secure = request.url.scheme == "https"
    resp.set_cookie(KEY_COOKIE, body.api_key, httponly=True, samesite="strict", secure=secure, path="/")
    resp.set_cookie(CSRF_COOKIE, csrf_token(hub, body.api_key), httponly=False, samesite="strict",
                    secure=secure, path="/")
    return resp


@router.post("/ui/logout", summary="Dashboard logout")
async def logout() -> JSONResponse:
    resp = JSONResponse({"ok": True})
    resp.delete_cookie(KEY_COOKIE, path="/")
    resp.delete_cookie(CSRF_COOKIE, path="/")
    return resp


@router.get("/ui/data/whoami", summary="The caller's role (401 when not logged in)")
async def whoami(request: Request, hub: HubDep) -> JSONResponse:
    try:
        role = await caller_role(request, hub)
    except AuthError as exc:
        return JSONResponse(exc.to_dict() | {"auth_required": True}, status_code=401)
    resp = JSONResponse({"role": role, "auth_required": _keys_configured(hub)})
    token = csrf_token(hub, request.cookies.get(KEY_COOKIE))
    if request.cookies.get(CSRF_COOKIE) != token:  # open hubs too: give the page its session's token
        resp.set_cookie(CSRF_COOKIE, token, httponly=False, samesite="strict", path="/")
    return resp


@router.get("/ui/data/overview", summary="Dashboard overview: device counts, cohorts, rollouts")
async def overview(hub: HubDep, _: Viewer) -> dict[str, Any]:
    return await asyncio.to_thread(data.overview, hub)


@router.get("/ui/data/timeseries", summary="Fleet p99 latency and error rate per version over time "
            "(merged sketches)")
async def timeseries(hub: HubDep, _: Viewer, model: str,
                     since: float | None = None,
                     buckets: Annotated[int, Query(ge=2, le=500)] = 40,
                     slot: str = "active") -> dict[str, Any]:
    return await asyncio.to_thread(data.timeseries, hub, model, since=since, buckets=buckets, slot=slot)


@router.get("/ui/data/distributions", summary="Score distributions per version and shadow divergence")
async def distributions(hub: HubDep, _: Viewer, model: str, since: float | None = None) -> dict[str, Any]:
    return await asyncio.to_thread(data.distributions, hub, model, since=since)


@router.get("/ui/data/devices/{device_id}", summary="A device's recent telemetry windows")
async def device_series(device_id: str, hub: HubDep, _: Viewer,
                        limit: Annotated[int, Query(ge=1, le=2000)] = 120) -> dict[str, Any]:
    hub.fleet.device(device_id)
    return await asyncio.to_thread(data.device_series, hub, device_id, limit=limit)


@router.get("/ui/data/cohort", summary="Live preview of a cohort selector: how many and which devices match "
            "(the rollout controller's selector rules)")
async def cohort_preview(hub: HubDep, _: Viewer,
                         selector: Annotated[str, Query(max_length=2048)] = "*",
                         first: Annotated[int, Query(ge=0, le=200)] = 20) -> dict[str, Any]:
    return await asyncio.to_thread(data.cohort_preview, hub, selector, first=first)


class PlanCheck(BaseModel):
    plan: dict[str, Any] | None = Field(None, description="A plan document, as in a plan file.")


@router.post("/ui/data/plan", summary="Validate a rollout plan document exactly as the CLI validates a plan "
             "file; returns the plan with every default filled in")
async def plan_check(body: PlanCheck, _: Viewer) -> dict[str, Any]:
    from cloud_hub.rollouts.plan import build_plan

    return {"plan": build_plan(body.plan, source="plan").to_dict()}


@router.get("/ui/data/rollouts/{rollout_id}/report", response_class=HTMLResponse,
            summary="A rollout's self-contained HTML report (the demo's report) as a download")
async def rollout_report(rollout_id: str, hub: HubDep, _: Viewer) -> HTMLResponse:
    html = await asyncio.to_thread(data.rollout_report, hub, rollout_id)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in rollout_id)[:64]
    return HTMLResponse(html, headers={"Content-Disposition": f'attachment; filename="rollout-{safe}.html"',
                                       "Cache-Control": "no-store"})


def _keys_configured(hub: Any) -> bool:
    s = hub.settings
    return bool(s.admin_keys or s.client_keys or s.viewer_keys)
