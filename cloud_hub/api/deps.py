"""Shared FastAPI dependencies: the Hub and role-based API-key auth.

Roles, weakest first: ``viewer`` (read-only), ``client`` (inference + read),
``admin`` (fleet manager: registry writes, rollouts). Keys come as
``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; the dashboard's session
cookie counts only on a request with neither header (see ``cloud_hub/ui/csrf.py``). When no key of any role is
configured (zero-config dev hub), every caller is admin.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from cloud_hub.hub import Hub
from edge_runtime.errors import EdgeError

ROLE_RANK = {"viewer": 0, "client": 1, "admin": 2}


class AuthError(EdgeError):
    status_code = 401
    code = "unauthorized"


class ForbiddenError(EdgeError):
    status_code = 403
    code = "forbidden"


# The dependencies are ``async def`` on purpose: FastAPI runs a sync dependency in
# the threadpool, a thread hop per dependency per request (it dominated the
# predict hot path); these never block.
async def get_hub(request: Request) -> Hub:
    return request.app.state.hub


HubDep = Annotated[Hub, Depends(get_hub)]


async def caller_role(request: Request, hub: HubDep) -> str:
    s = hub.settings
    keys = {**{k: "viewer" for k in s.viewer_keys}, **{k: "client" for k in s.client_keys},
            **{k: "admin" for k in s.admin_keys}}
    if not keys:
        return "admin"
    token = request.headers.get("x-api-key")
    auth = request.headers.get("authorization")
    if not token and auth is not None:
        if not auth.lower().startswith("bearer "):
            raise AuthError("unsupported Authorization scheme: send 'Authorization: Bearer KEY'")
        token = auth[7:].strip()
    if token is None and auth is None:
        # the dashboard's session cookie, only when no key header is sent: the CSRF
        # middleware checks the session's token exactly for these requests
        token = request.cookies.get("edgefleet_key")
    if not token:
        raise AuthError("missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
    for key, role in keys.items():
        if secrets.compare_digest(key.encode(), token.encode()):
            return role
    raise AuthError("invalid API key")


def require(role: str):
    async def check(r: Annotated[str, Depends(caller_role)]) -> str:
        if ROLE_RANK[r] < ROLE_RANK[role]:
            raise ForbiddenError(f"this action needs the {role} role; your key has the {r} role")
        return r

    return check


Viewer = Annotated[str, Depends(require("viewer"))]
Client = Annotated[str, Depends(require("client"))]
Admin = Annotated[str, Depends(require("admin"))]
