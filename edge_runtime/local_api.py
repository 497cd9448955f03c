"""Local HTTP endpoint for on-device apps (stdlib only: no FastAPI on a device).

    POST /predict   {"rows": [{feature: value, ...}, ...]} | one row object | a list of rows
                    | {"tensors": {name: nested list}}  (raw-tensor models)
                    → {"model": {"name", "version", "sha256"}, "predictions": [...]}
    GET  /health    200 {"status": "ok", "model": …} or 503 {"status": "no_model"}
    GET  /models    the active, shadow and previous slots

Served on 127.0.0.1 (TCP, HTTP/1.1 keep-alive) and optionally on a Unix
socket. Every error is a JSON body ``{"error", "code", "field"}`` with a 4xx
status: malformed JSON 400, body over the limit 413, missing length 411,
non-JSON content type 415, bad rows 422 (the codec names the field),
no active model 503. A handler never lets an exception kill the server.

Each response is written with one ``sendall`` and ``TCP_NODELAY`` set, so
keep-alive requests do not stall on Nagle + delayed ACK.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import socketserver
import stat
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.errors import EdgeError, PayloadTooLarge, ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from edge_runtime.daemon import Daemon

log = logging.getLogger("edge_runtime.local_api")

_MAX_LINE = 65536
_MAX_HEADERS = 100

_REASONS = {200: "OK", 400: "Bad Request", 431: "Request Header Fields Too Large", 404: "Not Found", 405: "Method Not Allowed",
            411: "Length Required", 413: "Content Too Large", 415: "Unsupported Media Type",
            422: "Unprocessable Content", 500: "Internal Server Error", 503: "Service Unavailable"}


def _parse_constant(name: str) -> float:
    if name == "NaN":
        return math.nan  # the codec refuses it where the feature's NaN policy says so
    raise ValidationError(f"{name} is not a valid feature value (only finite numbers or NaN)",
                          field="body")


_decoder = json.JSONDecoder(parse_constant=_parse_constant)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "edge-runtime"
    timeout = 120  # idle keep-alive connections are closed after this
    api: LocalApi

    def setup(self) -> None:
        super().setup()
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def parse_request(self) -> bool:
        """A lean HTTP/1.x request parser (the stdlib one builds an email.Message per request).

        Header names are lower-cased into a dict; HTTP/1.1 keeps the connection open
        unless the client says ``Connection: close`` (HTTP/1.0 only with keep-alive).
        """
        self.command = None
        self.request_version = self.default_request_version
        self.close_connection = True
        line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        self.requestline = line
        words = line.split()
        if len(words) != 3 or not words[2].startswith("HTTP/1."):
            self._error(400, "bad_request", f"bad request line {line[:80]!r}", None)
            return False
        self.command, self.path, self.request_version = words
        headers: dict[str, str] = {}
        while True:
            raw = self.rfile.readline(_MAX_LINE + 1)
            if len(raw) > _MAX_LINE or len(headers) >= _MAX_HEADERS:
                self._error(431, "headers_too_large", "request headers are too large", "headers")
                return False
            if raw in (b"\r\n", b"\n", b""):
                break
            name, sep, value = raw.decode("iso-8859-1").partition(":")
            if not sep:
                self._error(400, "bad_request", f"malformed header line {raw[:80]!r}", "headers")
                return False
            headers[name.strip().lower()] = value.strip()
        self.headers = headers  # type: ignore[assignment]
        conn = headers.get("connection", "").lower()
        if self.request_version == "HTTP/1.0":
            self.close_connection = conn != "keep-alive"
        else:
            self.close_connection = conn == "close"
        if headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("local api: " + format, *args)

    # ---- routing ---------------------------------------------------------------------
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        daemon = self.api.daemon
        if path == "/health":
            body = daemon.health()
            self._json(200 if body["status"] == "ok" else 503, body)
        elif path == "/models":
            self._json(200, {"models": daemon.models()})
        elif path == "/predict":
            self._error(405, "method_not_allowed", "use POST /predict", "method")
        else:
            self._error(404, "not_found", f"no route {path} (routes: /predict, /health, /models)",
                        "path")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/predict":
            if path in ("/health", "/models"):
                self._error(405, "method_not_allowed", f"use GET {path}", "method")
            else:
                self._error(404, "not_found", f"no route {path}", "path")
            return
        try:
            payload = self._read_json()
            self._json(200, self._predict(payload))
        except EdgeError as exc:
            close = exc.status_code in (411, 413) or exc.code == "invalid_header"
            self._json(exc.status_code, exc.to_dict(), close=close)
        except Exception as exc:  # never kill the server on a bug: answer 500 and log it
            log.exception("local api: /predict failed")
            self._error(500, "internal_error", f"internal error: {type(exc).__name__}", None)

    def do_PUT(self) -> None:
        self._error(405, "method_not_allowed", f"{self.command} is not supported", "method")

    do_DELETE = do_PATCH = do_PUT

    # ---- /predict ----------------------------------------------------------------------
    def _read_json(self) -> Any:
        h = self.headers
        ctype = h.get("content-type")
        if ctype and ctype.split(";", 1)[0].strip().lower() not in ("application/json", "text/json"):
            self._drain()
            raise _HttpError(415, "unsupported_media_type",
                             f"Content-Type must be application/json, not {ctype}", "Content-Type")
        length = h.get("content-length")
        if length is None:
            raise _HttpError(411, "length_required",
                             "send a Content-Length header (chunked bodies are not accepted)",
                             "Content-Length")
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            raise _HttpError(400, "invalid_header", f"bad Content-Length {length!r}",
                             "Content-Length") from None
        limit = self.api.max_body_bytes
        if n > limit:
            raise PayloadTooLarge(f"request body is {n} bytes, the limit is {limit}", field="body")
        raw = self.rfile.read(n)
        if len(raw) != n:
            raise _HttpError(400, "invalid_body", "the body ended before Content-Length", "body")
        if not raw:
            raise _HttpError(400, "invalid_json", "the request body is empty: send JSON rows", "body")
        try:
            return _decoder.decode(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _HttpError(400, "invalid_json", f"the body is not UTF-8: {exc.reason}", "body") from exc
        except json.JSONDecodeError as exc:
            raise _HttpError(400, "invalid_json", f"malformed JSON at line {exc.lineno} column "
                             f"{exc.colno}: {exc.msg}", "body") from exc

    def _predict(self, payload: Any) -> dict[str, Any]:
        daemon = self.api.daemon
        if isinstance(payload, dict):
            if "tensors" in payload and len(payload) == 1:
                return daemon.predict_tensors(payload["tensors"])
            if "rows" in payload:
                extra = sorted(set(payload) - {"rows"})
                if extra:
                    raise ValidationError(f"unknown field {extra[0]!r} next to rows", field=extra[0])
                rows = payload["rows"]
                if not isinstance(rows, (list, dict)):
                    raise ValidationError("rows must be a list of objects (or one object)",
                                          field="rows")
            else:
                rows = payload
        elif isinstance(payload, list):
            rows = payload
        else:
            raise ValidationError("send {\"rows\": [...]}, one row object or a list of rows",
                                  field="body")
        if isinstance(rows, list) and len(rows) > self.api.max_rows:
            raise PayloadTooLarge(f"{len(rows)} rows in one call, the limit is {self.api.max_rows}",
                                  field="rows")
        return daemon.predict(rows)

    # ---- responses --------------------------------------------------------------------------
    def _drain(self) -> None:
        n = self.headers.get("content-length")
        if n and n.isdigit() and int(n) <= self.api.max_body_bytes:
            self.rfile.read(int(n))
        else:
            self.close_connection = True

    def _error(self, status: int, code: str, message: str, field: str | None) -> None:
        body: dict[str, Any] = {"error": message, "code": code}
        if field is not None:
            body["field"] = field
        self._json(status, body)

    def _json(self, status: int, body: Any, *, close: bool = False) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        close = close or self.close_connection
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n")
        self.wfile.write(head.encode() + data)
        if close:
            self.close_connection = True


class _HttpError(EdgeError):
    """Transport-level errors (not domain errors): status and code given per case."""

    def __init__(self, status: int, code: str, message: str, field: str | None) -> None:
        super().__init__(message, field=field)
        self.status_code = status
        self.code = code


class _Tracking:
    """Remember open connections so ``stop`` can close idle keep-alive ones."""

    daemon_threads = True
    block_on_close = False

    def _init_tracking(self) -> None:
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def process_request(self, request, client_address):  # type: ignore[override]
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)  # type: ignore[misc]

    def shutdown_request(self, request):  # type: ignore[override]
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)  # type: ignore[misc]

    def close_all(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _TcpServer(_Tracking, socketserver.ThreadingMixIn, HTTPServer):
    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn): skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _UnixServer(_Tracking, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    pass


class LocalApi:
    """The local endpoint of one :class:`Daemon`; ``start()`` runs it in threads."""

    def __init__(self, daemon: Daemon, host: str = "127.0.0.1", port: int = 8700, *,
                 unix_socket: str | Path | None = None, max_body_bytes: int = 1 << 20,
                 max_rows: int = 10_000) -> None:
        self.daemon = daemon
        self.max_body_bytes = max_body_bytes
        self.max_rows = max_rows
        handler = type("Handler", (_Handler,), {"api": self})
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        self.unix_socket = Path(unix_socket) if unix_socket else None
        try:
            tcp = _TcpServer((host, port), handler)
        except OSError as exc:
            raise EdgeError(f"cannot listen on {host}:{port}: {exc.strerror}",
                            field="local_api.port") from exc
        tcp._init_tracking()
        self._servers.append(tcp)
        self.host, self.port = tcp.server_name, tcp.server_port
        if self.unix_socket is not None:
            self._servers.append(self._bind_unix(handler))

    def _bind_unix(self, handler) -> socketserver.BaseServer:
        path = self.unix_socket
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                self._servers[0].server_close()
                raise EdgeError(f"{path} exists and is not a socket", field="local_api.unix_socket")
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            srv = _UnixServer(str(path), handler)
        except OSError as exc:
            self._servers[0].server_close()
            raise EdgeError(f"cannot listen on {path}: {exc.strerror}",
                            field="local_api.unix_socket") from exc
        os.chmod(path, 0o660)
        srv._init_tracking()
        return srv

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def addresses(self) -> list[str]:
        out = [self.url]
        if self.unix_socket is not None:
            out.append(f"unix:{self.unix_socket}")
        return out

    def start(self) -> LocalApi:
        for srv in self._servers:
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2},
                                 name=f"local-api-{type(srv).__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for srv in self._servers:
            if self._threads:
                srv.shutdown()
            srv.server_close()
            srv.close_all()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        if self.unix_socket is not None:
            try:
                if stat.S_ISSOCK(self.unix_socket.lstat().st_mode):
                    self.unix_socket.unlink()
            except OSError:
                pass
