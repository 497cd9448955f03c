"""FastAPI app factory: tiny on purpose; routes live in ``cloud_hub/api/``."""

from __future__ import annotations

import importlib

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud_hub.hub import Hub
from edge_runtime.errors import EdgeError, code_for_status, error_body, field_path

# Router modules, each exposing ``router`` (an APIRouter). Add yours here.
ROUTERS: list[str] = [
    "cloud_hub.api.jobs",
    "cloud_hub.api.schedules",
    "cloud_hub.api.streams",
    "cloud_hub.api.fleet",
    "cloud_hub.api.routing",
    "cloud_hub.api.shadow",
    "cloud_hub.api.health",
    "cloud_hub.api.models",
    "cloud_hub.api.predict",
    "cloud_hub.api.oip",
    "cloud_hub.api.metrics",
    "cloud_hub.api.rollouts",
    "cloud_hub.ui.routes",
]


class HubApp(FastAPI):
    """The hub's FastAPI app; inference calls take :mod:`cloud_hub.api.fastpath` first."""

    fast_path = None

    async def __call__(self, scope, receive, send) -> None:
        fast = self.fast_path
        if fast is not None:
            hit = fast.match(scope)
            if hit is not None:
                await fast(scope, receive, send, *hit)
                return
        await super().__call__(scope, receive, send)


def create_app(hub: Hub) -> FastAPI:
    app = HubApp(title="edgefleet hub", version="0.1.0",
                 description="Model registry, online/batch/stream inference, champion/challenger, "
                             "shadow deployments and canary rollouts to device fleets.")
    app.state.hub = hub
    for name in ROUTERS:
        app.include_router(importlib.import_module(name).router)
    install_error_handlers(app)
    from cloud_hub.api.middleware import install_middleware

    install_middleware(app, hub)  # request ids, body limits, access log, HTTP metrics
    from cloud_hub.ui.csrf import CSRFMiddleware

    app.add_middleware(CSRFMiddleware)  # cookie sessions of the dashboard
    from cloud_hub.api.guard import GuardMiddleware

    app.add_middleware(GuardMiddleware, max_body_bytes=hub.settings.max_body_bytes)  # NUL, gzip OIP
    from cloud_hub.api.openapi import install as install_openapi

    install_openapi(app)  # the error body and the shared status codes on every operation
    from cloud_hub.api.fastpath import FastPath

    app.fast_path = FastPath(app, hub)  # the inference routes, outermost (same checks, less machinery)
    return app


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(EdgeError)
    async def _edge(_: Request, exc: EdgeError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {"loc": [], "msg": "invalid request"}
        field = field_path(*(p for p in first.get("loc", []) if p != "body")) or "body"
        return JSONResponse(error_body(f"{field}: {first.get('msg')}", "invalid_input", field),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), code_for_status(exc.status_code)),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:  # no stack traces to clients
        import logging

        logging.getLogger("cloud_hub").exception("unhandled error")
        return JSONResponse(error_body("internal error", "internal_error"), status_code=500)
