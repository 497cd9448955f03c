"""Hostile-input guard: checks every request makes before any route sees it.

* A NUL character in the path or in a query value is refused (422 naming the
  parameter): PostgreSQL cannot store or even compare text holding NUL, and no
  name, id or filter of the hub may contain one.
* A JSON body of a non-inference route holding a NUL character (raw or as the
  ``\\u0000`` escape) is refused the same way (field ``body``). Inference bodies
  (``/predict``, ``/v2/.../infer``) are not buffered here: their decoder checks
  their own fields.
* ``Content-Encoding: gzip`` or ``deflate`` on an Open Inference Protocol request
  (``tritonclient``'s ``request_compression_algorithm``) is inflated here,
  bounded like any body: the compressed body and the inflated one may each be at
  most ``HUB_MAX_BODY_BYTES`` (413 above; inflation stops at the bound).
  Other encodings are refused with 415.

Runs outermost, before the request-id/body-limit middleware, as a plain ASGI class.
"""

from __future__ import annotations

import json
import re
import zlib
from urllib.parse import parse_qsl, unquote

from edge_runtime.errors import error_body

_INFER = re.compile(r"^/(?:v1/models/[^/]+/predict|v2/models/[^/]+(?:/versions/[^/]+)?/infer)$")
_OIP_INFER = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?/infer$")
_WBITS = {"gzip": 31, "deflate": 15}  # deflate = zlib stream (RFC 9110), as tritonclient sends it
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


class GuardMiddleware:
    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body = int(max_body_bytes)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        problem = _nul_in_target(scope)
        if problem is not None:
            await _reply(send, 422, error_body(f"{problem}: a NUL character is not allowed",
                                               "invalid_input", problem))
            return
        encoding = _header(scope, b"content-encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            enc = encoding.strip().lower()
            if not (_OIP_INFER.match(path) and enc in _WBITS):
                await _reply(send, 415, error_body(f"Content-Encoding {encoding[:40]!r} is not "
                                                   "supported here (gzip or deflate is accepted on "
                                                   "/v2 infer requests)", "unsupported_encoding",
                                                   "Content-Encoding"))
                return
            await self._inflate(scope, receive, send, _WBITS[enc])
            return
        if (scope["method"] in ("POST", "PUT", "PATCH") and not _INFER.match(path) and path != "/v1/models"
                and _is_json(scope)):
            await self._check_json(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _read(self, receive, send) -> bytes | None:
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_body:
                await _reply(send, 413, error_body(f"request body exceeds the limit of "
                                                   f"{self.max_body} bytes", "payload_too_large",
                                                   "body"))
                return None
            chunks.append(body)
            if not msg.get("more_body", False):
                return b"".join(chunks)

    async def _check_json(self, scope, receive, send) -> None:
        raw = await self._read(receive, send)
        if raw is None:
            return
        if b"\x00" in raw or _NUL_ESCAPE.search(raw):
            await _reply(send, 422, error_body(_nul_field_message(raw), "invalid_input",
                                               _nul_field(raw)))
            return
        await self.app(scope, _replay(raw, receive), send)

    async def _inflate(self, scope, receive, send, wbits: int) -> None:
        raw = await self._read(receive, send)
        if raw is None:
            return
        d = zlib.decompressobj(wbits=wbits)
        try:
            body = d.decompress(raw, self.max_body + 1)
            if len(body) > self.max_body or (d.unconsumed_tail and not d.eof):
                await _reply(send, 413, error_body(f"compressed body inflates past the limit of "
                                                   f"{self.max_body} bytes", "payload_too_large",
                                                   "body"))
                return
            if not d.eof:
                raise zlib.error("truncated gzip stream")
        except zlib.error as exc:
            await _reply(send, 400, error_body(f"body does not inflate: {exc}", "invalid_request",
                                               "Content-Encoding"))
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app(dict(scope, headers=headers), _replay(body, receive), send)


def _nul_in_target(scope) -> str | None:
    if "\x00" in scope["path"] or "%00" in scope.get("raw_path", b"").decode("latin-1"):
        return "path"
    qs = scope.get("query_string", b"")
    if b"%00" in qs or b"\x00" in qs:
        for k, v in parse_qsl(qs.decode("latin-1"), keep_blank_values=True):
            if "\x00" in k or "\x00" in v:
                return unquote(k).replace("\x00", "") or "query"
        return "query"
    return None


def _nul_field(raw: bytes) -> str:
    """The first top-level key whose value holds a NUL (``body`` when unsure)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return "body"
    return _find_nul(doc, "") or "body"


def _find_nul(v, at: str) -> str | None:
    """Path of the first string holding NUL, in the API's field style (``rows[3].age``)."""
    if isinstance(v, str):
        return at if "\x00" in v else None
    if isinstance(v, dict):
        for k, x in v.items():
            here = f"{at}.{k}" if at else str(k)
            if "\x00" in str(k):
                return here.replace("\x00", "")
            hit = _find_nul(x, here)
            if hit:
                return hit
    if isinstance(v, list):
        for i, x in enumerate(v):
            hit = _find_nul(x, f"{at}[{i}]")
            if hit:
                return hit
    return None


def _nul_field_message(raw: bytes) -> str:
    return f"{_nul_field(raw)}: a NUL character is not allowed"


def _is_json(scope) -> bool:
    ctype = (_header(scope, b"content-type") or "").lower()
    return "json" in ctype or ctype == ""


def _header(scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


def _replay(body: bytes, receive):
    """The buffered body once, then the real channel (a disconnect is still seen)."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _reply(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})
