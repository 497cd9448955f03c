"""CSRF protection for cookie sessions (the dashboard).

API clients authenticate with a header (``Authorization``/``X-API-Key``), which a
browser never adds cross-site; the session cookie counts for authentication only
on a request with neither header (``cloud_hub/api/deps.py``), so a stray or
garbage header cannot switch this check off and then fall back to the cookie.

A state-changing request without a key header that carries a session cookie must
send ``X-CSRF-Token`` equal to :func:`csrf_token` of its session: an HMAC of the
``edgefleet_key`` cookie with a secret derived from the hub's signing key (the
same on every replica). The ``edgefleet_csrf`` cookie only carries that token to
the page; its value is never trusted, so an attacker who can set cookies (a
sibling subdomain) cannot pick a token. Any state-changing request whose
``Origin`` is another site is refused, which also covers open hubs with no API
keys configured.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization

from edge_runtime.errors import error_body

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
KEY_COOKIE, CSRF_COOKIE = "edgefleet_key", "edgefleet_csrf"


def csrf_secret(hub) -> bytes:
    secret = getattr(hub, "_csrf_secret", None)
    if secret is None:
        raw = hub.registry.hub_key.private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        secret = hashlib.sha256(b"edgefleet-csrf\0" + raw).digest()
        hub._csrf_secret = secret
    return secret


def csrf_token(hub, session: str | None) -> str:
    """The CSRF token of a session (its ``edgefleet_key`` cookie; "" on an open hub)."""
    return hmac.new(csrf_secret(hub), (session or "").encode(), hashlib.sha256).hexdigest()


class CSRFMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in UNSAFE or scope["path"] == "/ui/login":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        problem = _problem(headers, scope)
        if problem is None:
            return await self.app(scope, receive, send)
        body = json.dumps(error_body(problem, "csrf")).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _problem(headers: dict[str, str], scope) -> str | None:
    origin = headers.get("origin")
    if origin and origin != "null":
        host = headers.get("host", "")
        if urlsplit(origin).netloc != host:
            return f"cross-site request from {origin[:200]} refused"
    if "authorization" in headers or "x-api-key" in headers:
        return None  # the cookie is not used for this request (see deps.caller_role)
    raw = headers.get("cookie")
    if not raw:
        return None
    jar = SimpleCookie()
    try:
        jar.load(raw)
    except CookieError:
        return "malformed cookie header"
    if KEY_COOKIE not in jar and CSRF_COOKIE not in jar:
        return None
    session = jar[KEY_COOKIE].value if KEY_COOKIE in jar else ""
    want = csrf_token(scope["app"].state.hub, session)
    got = headers.get("x-csrf-token", "")
    if not got or not hmac.compare_digest(want.encode(), got.encode("latin-1")):
        return "missing or wrong X-CSRF-Token for a cookie session"
    return None
