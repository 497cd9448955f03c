"""App-wide ASGI middleware: request ids, body size limits, access log, HTTP metrics.

A plain ASGI class, not Starlette's ``BaseHTTPMiddleware`` (which adds a task
and a memory stream per request — measurable on the predict hot path).

* request id: the client's ``X-Request-ID`` (if sane) or a new one; returned in
  the ``X-Request-ID`` response header, put in ``scope["state"]["request_id"]``
  and in the logging context so every log line of the request carries it;
* body limit: ``Content-Length`` above the limit → 413 at once; a chunked body
  is counted as it is read and stops with 413 when it passes the limit.
  Bundle uploads (``POST /v1/models``) have their own, larger limit;
* one structured access-log line per request (``HUB_ACCESS_LOG``);
* ``hub_http_requests`` / ``hub_http_request_duration_seconds`` metrics.

The inference routes usually do not come here: the app answers them first on its fast path
(:mod:`cloud_hub.api.fastpath`), which does the same four things.
"""

from __future__ import annotations

import re
import time

import orjson

from cloud_hub.inference import new_request_id
from cloud_hub.logs import AccessLog, request_id_var
from edge_runtime.errors import PayloadTooLarge, error_body

_RID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class HubMiddleware:
    def __init__(self, app, hub) -> None:
        self.app = app
        self.hub = hub
        s = hub.settings
        self.max_body = int(s.max_body_bytes)
        self.max_upload = int(s.max_upload_bytes)
        self.log_enabled = bool(s.access_log)
        self.access_log = hub.access_log
        self.metrics = hub.metrics

    def _limit(self, scope) -> int:
        if scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/models":
            return self.max_upload
        return self.max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        rid = None
        length = None
        for k, v in scope["headers"]:
            if k == b"x-request-id":
                rid = v.decode("latin-1")
            elif k == b"content-length":
                length = v
        if rid is None or not _RID_OK.match(rid):
            rid = new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        token = request_id_var.set(rid)
        rid_header = (b"x-request-id", rid.encode())
        status_box = [500]

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
                message["headers"] = list(message.get("headers", ())) + [rid_header]
            await send(message)

        limit = self._limit(scope)
        try:
            if length is not None:
                refusal = length_refusal(length, limit)
                if refusal is not None:
                    await _reply(send_wrapper, *refusal)
                    return
                await self.app(scope, receive, send_wrapper)
            else:
                seen = [0]

                async def counting_receive():
                    message = await receive()
                    if message["type"] == "http.request":
                        seen[0] += len(message.get("body", b""))
                        if seen[0] > limit:
                            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes",
                                                  field="body")
                    return message

                await self.app(scope, counting_receive, send_wrapper)
        finally:
            dt = time.perf_counter() - t0
            self.metrics.observe_http(scope["method"], status_box[0], dt)
            if self.log_enabled:
                self.access_log.log({"request_id": rid, "method": scope["method"], "path": scope["path"],
                                     "status": status_box[0], "duration_ms": round(dt * 1000, 3)})
            request_id_var.reset(token)


def length_refusal(length: bytes, limit: int) -> tuple[int, dict] | None:
    """A ``Content-Length`` value → (400, error) when it is not a length, (413, error) above
    ``limit``, None when the body may be read. Shared with the inference fast path."""
    try:
        n = int(length)
    except ValueError:
        n = -1
    if n < 0:
        return 400, error_body("invalid Content-Length header", "invalid_request", "Content-Length")
    if n > limit:
        return 413, error_body(f"request body of {n} bytes exceeds the limit of {limit} bytes",
                               "payload_too_large", "body")
    return None


async def _reply(send, status: int, body: dict, close: bool = True) -> None:
    data = orjson.dumps(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if close:  # the body was not read: do not reuse the connection
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def install_middleware(app, hub) -> None:
    if getattr(hub, "access_log", None) is None:
        hub.access_log = AccessLog(use_logger=hub.settings.log_format != "json")
        hub.on_close(hub.access_log.flush)
    app.add_middleware(HubMiddleware, hub=hub)

