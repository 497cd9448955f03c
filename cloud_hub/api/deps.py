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


# ((viewer, client, admin) key tuples, [(key bytes, role)]): one reference, read and replaced
# whole, so a thread never pairs one hub's key lists with another's table
_keys_cache: tuple | None = None


def _keys(s) -> list[tuple[bytes, str]]:
    """The configured keys with their roles, a later role winning for a key given twice; rebuilt
    only when the settings' key lists change (compared by value, so never stale)."""
    global _keys_cache
    spec = (tuple(s.viewer_keys), tuple(s.client_keys), tuple(s.admin_keys))
    cached = _keys_cache
    if cached is None or cached[0] != spec:
        keys = {**{k: "viewer" for k in spec[0]}, **{k: "client" for k in spec[1]},
                **{k: "admin" for k in spec[2]}}
        cached = _keys_cache = (spec, [(k.encode(), role) for k, role in keys.items()])
    return cached[1]


def role_for(s, api_key: str | None, authorization: str | None, cookie_key) -> str:
    """The caller's role from its ``X-API-Key`` / ``Authorization`` header values (``cookie_key``:
    a callable giving the dashboard session cookie's key, asked only when neither header is sent)."""
    keys = _keys(s)
    if not keys:
        return "admin"
    token = api_key
    if not token and authorization is not None:
        if not authorization.lower().startswith("bearer "):
            raise AuthError("unsupported Authorization scheme: send 'Authorization: Bearer KEY'")
        token = authorization[7:].strip()
    if token is None and authorization is None:
        # the dashboard's session cookie, only when no key header is sent: the CSRF
        # middleware checks the session's token exactly for these requests
        token = cookie_key()
    if not token:
        raise AuthError("missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
    given = token.encode()
    for key, role in keys:
        if secrets.compare_digest(key, given):
            return role
    raise AuthError("invalid API key")


async def caller_role(request: Request, hub: HubDep) -> str:
    h = request.headers
    return role_for(hub.settings, h.get("x-api-key"), h.get("authorization"),
                    lambda: request.cookies.get("edgefleet_key"))


def require(role: str):
    async def check(r: Annotated[str, Depends(caller_role)]) -> str:
        if ROLE_RANK[r] < ROLE_RANK[role]:
            raise ForbiddenError(f"this action needs the {role} role; your key has the {r} role")
        return r

    return check


Viewer = Annotated[str, Depends(require("viewer"))]
Client = Annotated[str, Depends(require("client"))]
Admin = Annotated[str, Depends(require("admin"))]
