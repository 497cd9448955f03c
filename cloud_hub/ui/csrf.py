"""CSRF protection for cookie sessions (the dashboard).

API clients authenticate with a header (``Authorization``/``X-API-Key``), which a
browser never adds cross-site, so they are unaffected. A state-changing request
that relies on the dashboard's session cookie must carry ``X-CSRF-Token`` equal
to the ``edgefleet_csrf`` cookie (double submit; both cookies are
SameSite=Strict). Any state-changing request whose ``Origin`` is another site
is refused, which also covers open hubs with no API keys configured.
"""

from __future__ import annotations

import json
import secrets
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


class CSRFMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in UNSAFE or scope["path"] == "/ui/login":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        problem = _problem(headers)
        if problem is None:
            return await self.app(scope, receive, send)
        body = json.dumps({"error": problem, "code": "csrf"}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _problem(headers: dict[str, str]) -> str | None:
    origin = headers.get("origin")
    if origin and origin != "null":
        host = headers.get("host", "")
        if urlsplit(origin).netloc != host:
            return f"cross-site request from {origin} refused"
    if "authorization" in headers or "x-api-key" in headers:
        return None
    raw = headers.get("cookie")
    if not raw:
        return None
    jar = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:
        return "malformed cookie header"
    if "edgefleet_key" not in jar and "edgefleet_csrf" not in jar:
        return None
    want = jar["edgefleet_csrf"].value if "edgefleet_csrf" in jar else ""
    got = headers.get("x-csrf-token", "")
    if not want or not got or not secrets.compare_digest(want.encode(), got.encode()):
        return "missing or wrong X-CSRF-Token for a cookie session"
    return None
