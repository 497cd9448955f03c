"""The inference routes' fast path: the first thing the app runs, before FastAPI's middleware stack.

``POST /v1/models/{ref}/predict``, ``/v2/models/{name}/infer`` and
``/v2/models/{name}/versions/{version}/infer`` are answered here, with every check the full stack
makes for them and the same code behind the routes (:func:`cloud_hub.api.predict.predict_bytes`,
:func:`cloud_hub.api.oip.infer_bytes`):

* request id (the client's ``X-Request-ID`` if sane, else a new one) in the response header, the
  request state and the logging context; the body limit (400 on a bad ``Content-Length``, 413 above
  the limit, a chunked body counted as it arrives); one access-log line and the HTTP metrics;
* API-key auth (``client`` role or above), the same errors as the routes (JSON body naming the
  field and the reason; an unexpected error is an opaque 500 and a logged traceback).

A request that any other layer would look at goes through the full stack instead, unchanged: a
``Cookie`` (dashboard session: the CSRF check), an ``Origin`` (cross-site check), a
``Content-Encoding`` (the guard inflates gzip OIP bodies or refuses), a NUL in the path or query
(the guard's 422), and everything while FastAPI's own OpenTelemetry instrumentation is configured
(so traces still see every request). What it skips is generic machinery — Starlette's error
middleware, the guard's and CSRF layer's header scans, the ``Request`` object and its header
parsing — which cost more CPU than the model on a one-row request (issue 17).
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import parse_qsl

import orjson

from cloud_hub.api.deps import ROLE_RANK, ForbiddenError, role_for
from cloud_hub.api.middleware import length_refusal
from cloud_hub.api.oip import HEADER_LEN, _ref, infer_bytes
from cloud_hub.api.predict import predict_bytes
from cloud_hub.inference import new_request_id
from cloud_hub.logs import request_id_var
from edge_runtime.errors import EdgeError, PayloadTooLarge, error_body

FAST_ROUTES = re.compile(r"^/(?:v1/models/([^/]+)/predict|v2/models/([^/]+)(?:/versions/([^/]+))?/infer)$")
_RID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# headers that another layer acts on: such a request takes the full stack
_FULL_STACK_HEADERS = frozenset((b"cookie", b"origin", b"content-encoding"))
_OTEL_RECHECK_S = 1.0
_HEADER_LEN = HEADER_LEN.encode()
log = logging.getLogger("cloud_hub")


class FastPath:
    def __init__(self, app, hub) -> None:
        self.app = app
        self.hub = hub
        s = hub.settings
        self.settings = s
        self.max_body = int(s.max_body_bytes)
        self.log_enabled = bool(s.access_log)
        self.access_log = hub.access_log
        self.metrics = hub.metrics
        self._otel_on = False
        self._otel_next = 0.0

    def match(self, scope) -> tuple[re.Match, dict[bytes, bytes]] | None:
        """The route match and the request's headers (first value of each name), or None when the
        request must take the full stack."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        m = FAST_ROUTES.match(scope["path"])
        if m is None:
            return None
        qs = scope.get("query_string", b"")
        if "\x00" in scope["path"] or b"%00" in scope.get("raw_path", b"") or b"%00" in qs or b"\x00" in qs:
            return None
        headers: dict[bytes, bytes] = {}
        for k, v in scope["headers"]:
            if k in _FULL_STACK_HEADERS:
                return None
            if k not in headers:
                headers[k] = v
        now = time.monotonic()
        if now >= self._otel_next:  # providers may be configured at run time: look again each second
            tel = getattr(self.app, "_native_telemetry", None)  # FastAPI's own OpenTelemetry (newer releases)
            self._otel_on = tel is not None and bool(tel.enabled())
            self._otel_next = now + _OTEL_RECHECK_S
        if self._otel_on:
            return None
        return m, headers

    async def __call__(self, scope, receive, send, m: re.Match, headers: dict[bytes, bytes]) -> None:
        t0 = time.perf_counter()
        rid = headers.get(b"x-request-id")
        rid = rid.decode("latin-1") if rid is not None else None
        if rid is None or not _RID_OK.match(rid):
            rid = new_request_id()
        scope["app"] = self.app
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        status = 500
        try:
            status = await self._serve(scope, receive, send, m, headers, rid)
        finally:
            dt = time.perf_counter() - t0
            self.metrics.observe_http("POST", status, dt)
            if self.log_enabled:
                self.access_log.log({"request_id": rid, "method": "POST", "path": scope["path"],
                                     "status": status, "duration_ms": round(dt * 1000, 3)})
            request_id_var.reset(token)

    async def _serve(self, scope, receive, send, m: re.Match, headers: dict[bytes, bytes], rid: str) -> int:
        rid_header = (b"x-request-id", rid.encode())
        length = headers.get(b"content-length")
        if length is not None:
            refusal = length_refusal(length, self.max_body)
            if refusal is not None:  # the body is not read: the connection is not reused
                return await _reply(send, *refusal, rid_header, close=True)
        try:
            role = role_for(self.settings, _str(headers.get(b"x-api-key")),
                            _str(headers.get(b"authorization")), lambda: None)
            if ROLE_RANK[role] < ROLE_RANK["client"]:
                raise ForbiddenError(f"this action needs the client role; your key has the {role} role")
            raw = await self._body(receive)
            if raw is None:  # the client went away
                return 499
            if m.group(1) is not None:
                entity_key = None
                qs = scope.get("query_string", b"")
                if qs:
                    entity_key = dict(parse_qsl(qs.decode("latin-1"), keep_blank_values=True)).get("entity_key")
                scope["path_params"] = {"ref": m.group(1)}
                body = await predict_bytes(self.hub, m.group(1), raw, entity_key=entity_key, request_id=rid)
                media_type, extra = b"application/json", None
            else:
                name, version = m.group(2), m.group(3)
                scope["path_params"] = {"name": name} if version is None else {"name": name, "version": version}
                started = time.perf_counter()
                body, media, extra = await infer_bytes(
                    self.hub, _ref(name, version), raw, header_len=_str(headers.get(_HEADER_LEN)),
                    request_id=rid, started=started)
                media_type = media.encode()
        except EdgeError as exc:
            return await _reply(send, exc.status_code, exc.to_dict(), rid_header)
        except Exception:  # same contract as the app's handler: no stack trace to clients
            log.exception("unhandled error")
            return await _reply(send, 500, error_body("internal error", "internal_error"), rid_header)
        out = [(b"content-length", str(len(body)).encode()), (b"content-type", media_type)]
        if extra:
            out += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
        out.append(rid_header)
        await send({"type": "http.response.start", "status": 200, "headers": out})
        await send({"type": "http.response.body", "body": body})
        return 200

    async def _body(self, receive) -> bytes | None:
        """The whole body, counted against the limit as it arrives (a chunked body has no length)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_body:
                    raise PayloadTooLarge(f"request body exceeds the limit of {self.max_body} bytes", field="body")
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _str(v: bytes | None) -> str | None:
    return None if v is None else v.decode("latin-1")


async def _reply(send, status: int, body: dict, rid_header: tuple[bytes, bytes], close: bool = False) -> int:
    data = orjson.dumps(body)
    headers = [(b"content-length", str(len(data)).encode()), (b"content-type", b"application/json"), rid_header]
    if close:  # the body was not read: do not reuse the connection
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
    return status
