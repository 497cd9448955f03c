"""Local HTTP endpoint for on-device apps (stdlib + h11 only: no FastAPI on a device).

    POST /predict   {"rows": [{feature: value, ...}, ...]} | one row object | a list of rows
                    | {"tensors": {name: nested list}}  (raw-tensor models)
                    → {"model": {"name", "version", "sha256"}, "predictions": [...]}
    GET  /health    200 {"status": "ok", "model": …} or 503 {"status": "no_model"}
    GET  /models    the active, shadow and previous slots

Served on 127.0.0.1 (TCP, HTTP/1.1 keep-alive) and optionally on a Unix
socket. Every error is a JSON body ``{"error", "code", "field"}`` with a 4xx
status: malformed or too deeply nested JSON 400, body over the limit 413,
missing length 411, non-JSON content type 415, bad rows 422 (the codec names
the field), no active model 503. A handler never lets an exception kill the server.

Built so that a hostile neighbour on the device cannot exhaust it:

* **No thread per connection.** One I/O thread waits on an epoll set (level-triggered,
  many events per wake-up), reads what is there (non-blocking), feeds h11 and, once a
  request is complete, runs it inline (inference included) and writes the answer. A slow
  or idle client holds no thread. With ``workers`` > 1, a request that would hold the I/O
  thread long — a body over 64 KiB, or any ``/predict`` while recent small ones average over
  2 ms (a slow model) — is handed to one of ``workers - 1`` pool threads, so ``/health`` and
  other clients are still served meanwhile (ONNX Runtime releases the GIL while it runs).
  Fast requests never change threads: on a 2-core device, handing each request between
  threads cost more than the request (GIL hand-offs; issue 17).
* **Bounded connections**: past ``max_connections`` the longest-idle keep-alive
  connection is closed to make room; if none is idle the newcomer gets 503 and is closed.
* **Deadlines**: a request head must arrive within ``header_timeout_s`` of its first
  byte (slowloris), its body within ``body_timeout_s``; an idle keep-alive connection is
  closed after ``idle_timeout_s``. A late request gets 408.
* **Bounded memory per connection**: the head is at most ``_MAX_HEAD`` bytes (431), at
  most ``_MAX_HEADERS`` fields; a body is at most ``max_body_bytes`` (413) and bodies over
  ``_SMALL_BODY`` draw from a shared ``max_buffered_bytes`` budget (503 when it is spent);
  nothing more is read from a connection while its answer is still being written.
* **Framing by h11** (RFC 9112-strict; a complete simple request in one read is framed by
  ``_simple_head`` with the same grammar, see there): a request with both ``Transfer-Encoding`` and
  ``Content-Length`` is refused (400, the smuggling pattern), chunked bodies get 411,
  duplicate or odd ``Content-Length`` 400, a head cut by EOF is dropped unanswered.
* **JSON depth** is checked on the raw bytes before parsing (400 past ``_MAX_DEPTH``).

Each response is written with one ``send`` and ``TCP_NODELAY`` set, so keep-alive
requests do not stall on Nagle + delayed ACK.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import queue
import re
import select
import socket
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h11

from edge_runtime.errors import EdgeError, PayloadTooLarge, ValidationError, error_body

if TYPE_CHECKING:  # pragma: no cover
    from edge_runtime.daemon import Daemon

log = logging.getLogger("edge_runtime.local_api")

_MAX_HEAD = 65536  # request line + header fields, bytes
_MAX_HEADERS = 100
_MAX_DEPTH = 32  # JSON nesting ({"rows": [{...}]} is 3; tensors a few more)
_SMALL_BODY = 65536  # bodies up to this size do not draw from the shared budget
_RECV = 65536
_INLINE_MAX_S = 0.002  # a /predict whose recent small calls average more goes to a pool thread


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT

# The common request — one complete HTTP/1.1 GET or POST in one read, nothing after it — is
# framed by ``_simple_head`` with h11's own grammar (RFC 9112: token, request-target, field
# values) instead of h11's state machine, which costs more than the model on one row. Anything
# else (a partial or pipelined request, Transfer-Encoding, Expect, several or odd
# Content-Length or Host fields, obs-fold, HTTP/1.0) is framed by h11 as before.
_REQUEST_LINE = re.compile(rb"(GET|POST) (/[\x21-\x7e]*) HTTP/1\.1")
_FIELD = re.compile(rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*((?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?)[ \t]*")
_DIGITS = re.compile(rb"[0-9]{1,19}")
_H11_FIELDS = frozenset((b"transfer-encoding", b"expect"))


class _Head:
    """A request head framed by ``_simple_head``: what ``_on_request`` and ``_dispatch`` read."""

    __slots__ = ("headers", "method", "target")
    http_version = b"1.1"

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes, bytes]]) -> None:
        self.method = method
        self.target = target
        self.headers = headers


def _simple_head(data: bytes) -> tuple[_Head, bytes] | None:
    """``data`` as exactly one complete simple request (head, body), or None for h11 to frame."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end >= _MAX_HEAD:
        return None
    lines = data[:end].split(b"\r\n")
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None or len(lines) > _MAX_HEADERS + 1:
        return None
    items = []
    host = 0
    length = None
    for line in lines[1:]:
        f = _FIELD.fullmatch(line)
        if f is None:
            return None
        raw, value = f.group(1, 2)
        name = raw.lower()
        if name == b"host":
            host += 1
        elif name == b"content-length":
            if length is not None or not _DIGITS.fullmatch(value):
                return None
            length = int(value)
        elif name in _H11_FIELDS:
            return None
        items.append((raw, name, value))
    if host != 1 or len(data) != end + 4 + (length or 0):
        return None
    return _Head(m.group(1), m.group(2), items), data[end + 4:]


# ---- JSON: depth check and the decoder -------------------------------------------------------
class _NotFinite:
    """Stands in for ``Infinity``/``-Infinity`` or an integer too long for any dtype: the
    codec refuses it as a non-number and names the feature it was sent for."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


_NotFinite.__name__ = "a non-finite number (±Infinity or an integer of over 300 digits)"


def _parse_constant(name: str) -> Any:
    if name == "NaN":
        return math.nan  # the codec refuses it where the feature's NaN policy says so
    return _NotFinite(name)


def _parse_int(text: str) -> Any:
    # float64 tops out near 1.8e308: a longer integer can only be a mistake or an attack
    # (and Python refuses to parse one of over 4,300 digits at all)
    return int(text) if len(text) <= 300 else _NotFinite(text[:20])


_decoder = json.JSONDecoder(parse_constant=_parse_constant, parse_int=_parse_int)
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth_ok(raw: bytes, limit: int = _MAX_DEPTH) -> bool:
    """True when ``raw`` nests at most ``limit`` arrays/objects (checked without parsing)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return True  # cannot be deeper than the number of openers: the common case, in C
    depth = 0
    for tok in re.finditer(rb"[\[\]{}]", _STRINGS.sub(b"", raw)):
        if tok.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return False
        else:
            depth -= 1
    return True


def decode_json(raw: bytes) -> Any:
    if not raw:
        raise _HttpError(400, "invalid_json", "the request body is empty: send JSON rows", "body")
    if not json_depth_ok(raw):
        raise _HttpError(
            400, "invalid_json", f"the JSON nests deeper than {_MAX_DEPTH} levels", "body"
        )
    try:
        return _decoder.decode(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _HttpError(
            400, "invalid_json", f"the body is not UTF-8: {exc.reason}", "body"
        ) from exc
    except json.JSONDecodeError as exc:
        raise _HttpError(
            400,
            "invalid_json",
            f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
            "body",
        ) from exc
    except (ValueError, RecursionError) as exc:  # int too long for str → int, etc.
        raise _HttpError(400, "invalid_json", f"unreadable JSON: {exc}", "body") from exc


class _HttpError(EdgeError):
    """Transport-level errors (not domain errors): status and code given per case."""

    def __init__(self, status: int, code: str, message: str, field: str | None) -> None:
        super().__init__(message, field=field)
        self.status_code = status
        self.code = code


# ---- the adapter: decoded JSON → the daemon's contract path (engineer 11a) ---------------------
def _predict(api: LocalApi, payload: Any) -> dict[str, Any]:
    daemon = api.daemon
    if isinstance(payload, dict):
        if "tensors" in payload and len(payload) == 1:
            return daemon.predict_tensors(payload["tensors"])
        if "rows" in payload:
            extra = sorted(set(payload) - {"rows"})
            if extra:
                raise ValidationError(f"unknown field {extra[0]!r} next to rows", field=extra[0])
            rows = payload["rows"]
            if not isinstance(rows, (list, dict)):
                raise ValidationError(
                    "rows must be a list of objects (or one object)", field="rows"
                )
        else:
            rows = payload
    elif isinstance(payload, list):
        rows = payload
    else:
        raise ValidationError(
            'send {"rows": [...]}, one row object or a list of rows', field="body"
        )
    if isinstance(rows, list) and len(rows) > api.max_rows:
        raise PayloadTooLarge(
            f"{len(rows)} rows in one call, the limit is {api.max_rows}", field="rows"
        )
    return daemon.predict(rows)


# ---- responses ------------------------------------------------------------------------------------
_encode = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps(…, separators=…) builds
# a new encoder per call


def _response(status: int, body: Any, close: bool) -> bytes:
    data = _encode(body).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n"
    )
    return head.encode() + data


def _error(status: int, code: str, message: str, field: str | None, close: bool) -> bytes:
    return _response(status, error_body(message, code, field), close)


_BUSY = _error(
    503, "busy", "the local API is at its connection limit; retry shortly", "connections", True
)


# ---- one connection -----------------------------------------------------------------------------------
class _Conn:
    """State of one client connection. Touched only by the worker that claimed it (``busy``)
    or, under the API lock, by the deadline sweep when nobody has it."""

    __slots__ = (
        "armed",
        "body",
        "busy",
        "close_after",
        "closed",
        "deadline",
        "fd",
        "h",
        "idle_since",
        "out",
        "phase",
        "req",
        "reserved",
        "sock",
        "want",
        "wants_close",
    )

    def __init__(self, sock: socket.socket, now: float, idle_timeout: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.h = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
        self.phase = "idle"  # idle → head → body → (answered) → idle …
        self.deadline = now + idle_timeout
        self.idle_since = now
        self.req: h11.Request | None = None
        self.body = bytearray()
        self.reserved = 0  # bytes drawn from the shared body budget
        self.out = b""  # answer bytes the socket did not take yet
        self.close_after = False  # close once ``out`` is written
        self.wants_close = False  # the current request asked for Connection: close (or HTTP/1.0)
        self.busy = False
        self.closed = False
        self.want = _IN  # what it waits for: _IN or _OUT
        self.armed = _IN  # what epoll watches for it now


class LocalApi:
    """The local endpoint of one :class:`Daemon`; ``start()`` runs its worker threads."""

    def __init__(
        self,
        daemon: Daemon,
        host: str = "127.0.0.1",
        port: int = 8700,
        *,
        unix_socket: str | Path | None = None,
        max_body_bytes: int = 1 << 20,
        max_rows: int = 10_000,
        max_connections: int = 256,
        workers: int = 4,
        header_timeout_s: float = 10.0,
        body_timeout_s: float = 30.0,
        idle_timeout_s: float = 30.0,
        max_buffered_bytes: int = 16 << 20,
    ) -> None:
        self.daemon = daemon
        self.max_body_bytes = max_body_bytes
        self.max_rows = max_rows
        self.max_connections = max(1, int(max_connections))
        self.workers = max(1, int(workers))
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_buffered_bytes = max_buffered_bytes
        self.unix_socket = Path(unix_socket) if unix_socket else None
        self.stats = {
            "accepted": 0,
            "refused_busy": 0,
            "evicted_idle": 0,
            "timed_out": 0,
            "protocol_errors": 0,
            "accept_paused": 0,
        }
        self._lock = threading.Lock()
        self._conns: dict[int, _Conn] = {}
        self._listeners: dict[int, socket.socket] = {}
        self._buffered = 0
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._next_sweep = 0.0
        self._accept_paused_until = 0.0
        self._ep = select.epoll()
        # the I/O thread: level-triggered, many events per wake-up, no re-arming (a request
        # costs recv + send); slow requests go to the pool (``workers - 1`` threads)
        self._jobs: queue.SimpleQueue[_Conn | None] = queue.SimpleQueue()
        self._cost = 0.0  # EWMA seconds of a small /predict (decides inline vs pool)
        try:
            tcp = socket.create_server((host, port), family=_family(host), backlog=1024)
        except OSError as exc:
            self._ep.close()
            raise EdgeError(
                f"cannot listen on {host}:{port}: {exc.strerror}", field="local_api.port"
            ) from exc
        self._add_listener(tcp)
        self.host, self.port = str(tcp.getsockname()[0]), int(tcp.getsockname()[1])
        if self.unix_socket is not None:
            try:
                self._add_listener(self._bind_unix())
            except BaseException:
                self._close_listeners()
                self._ep.close()
                raise

    def _add_listener(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._listeners[sock.fileno()] = sock

    def _bind_unix(self) -> socket.socket:
        path = self.unix_socket
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise EdgeError(f"{path} exists and is not a socket", field="local_api.unix_socket")
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            sock.listen(1024)
        except OSError as exc:
            sock.close()
            raise EdgeError(
                f"cannot listen on {path}: {exc.strerror}", field="local_api.unix_socket"
            ) from exc
        os.chmod(path, 0o660)
        return sock

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def addresses(self) -> list[str]:
        out = [self.url]
        if self.unix_socket is not None:
            out.append(f"unix:{self.unix_socket}")
        return out

    def health(self) -> dict[str, Any]:
        """Connection counts for ``/health``: open now, the limit, and what was refused."""
        with self._lock:
            return {
                "connections": len(self._conns),
                "max_connections": self.max_connections,
                "workers": self.workers,
                **self.stats,
            }

    # ---- life cycle ------------------------------------------------------------------------------
    def start(self) -> LocalApi:
        self._stopping = False
        for fd in self._listeners:
            self._ep.register(fd, _IN)
        targets = [self._worker] + [self._pool_worker] * (self.workers - 1)
        for i, target in enumerate(targets):
            t = threading.Thread(target=target, name=f"local-api-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stopping = True
        for _ in range(self.workers - 1):
            self._jobs.put(None)
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        with self._lock:
            conns = list(self._conns.values())
        for c in conns:
            self._close(c)
        self._close_listeners()
        with contextlib.suppress(OSError):
            self._ep.close()
        if self.unix_socket is not None:
            try:
                if stat.S_ISSOCK(self.unix_socket.lstat().st_mode):
                    self.unix_socket.unlink()
            except OSError:
                pass

    def _close_listeners(self) -> None:
        for fd, sock in list(self._listeners.items()):
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(fd)
            sock.close()
        self._listeners.clear()

    # ---- the I/O thread and the pool -------------------------------------------------------------------
    def _worker(self) -> None:
        ep = self._ep
        while not self._stopping:
            try:
                events = ep.poll(0.25, 64)
            except (OSError, ValueError):
                if self._stopping:
                    return
                continue
            for fd, ev in events:
                try:
                    if fd in self._listeners:
                        self._accept(fd)
                        continue
                    with self._lock:
                        conn = self._conns.get(fd)
                        if conn is None or conn.closed or conn.busy:
                            continue
                        conn.busy = True
                    self._serve(conn, ev)
                except Exception:  # never lose a worker to a bug: log it and go on
                    log.exception("local api: worker error")
            now = time.monotonic()
            if now >= self._next_sweep:
                self._next_sweep = now + 0.25
                self._sweep(now)

    def _accept(self, fd: int) -> None:
        lsock = self._listeners.get(fd)
        if lsock is None:
            return
        now = time.monotonic()
        if now < self._accept_paused_until:  # out of file handles: the sweep re-arms later
            with contextlib.suppress(OSError, ValueError):
                self._ep.modify(fd, 0)
            return
        for _ in range(64):
            try:
                sock, _addr = lsock.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning(
                        "local api: cannot accept (%s); pausing accepts for 0.5 s", exc.strerror
                    )
                    self._accept_paused_until = now + 0.5
                    self.stats["accept_paused"] += 1
                    with contextlib.suppress(OSError, ValueError):
                        self._ep.modify(fd, 0)  # stop watching it (no spin); the sweep re-arms
                    return
                break
            self._admit(sock, now)

    def _admit(self, sock: socket.socket, now: float) -> None:
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        victim = None
        with self._lock:
            if len(self._conns) >= self.max_connections:
                idle = [
                    c
                    for c in self._conns.values()
                    if c.phase == "idle" and not c.busy and not c.out
                ]
                if not idle:
                    self.stats["refused_busy"] += 1
                    full = True
                else:
                    victim = min(idle, key=lambda c: c.idle_since)
                    self.stats["evicted_idle"] += 1
                    full = False
            else:
                full = False
        if full:
            with contextlib.suppress(OSError):
                sock.send(_BUSY)
            sock.close()
            return
        if victim is not None:
            self._close(victim)
        conn = _Conn(sock, now, self.idle_timeout_s)
        with self._lock:
            self._conns[conn.fd] = conn
            self.stats["accepted"] += 1
            self._ep.register(conn.fd, _IN)

    def _release(self, conn: _Conn) -> None:
        """Give the connection back: re-arm it for what it waits on, unless it was closed."""
        with self._lock:
            conn.busy = False
            if not conn.closed:
                try:
                    if conn.want != conn.armed:
                        self._ep.modify(conn.fd, conn.want)
                        conn.armed = conn.want
                except (OSError, ValueError):
                    conn.busy = True  # unusable: close below
            else:
                return
        if conn.busy:
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        with self._lock:
            if conn.closed:
                return
            conn.closed = True
            if self._conns.get(conn.fd) is conn:
                del self._conns[conn.fd]
            self._buffered -= conn.reserved
            conn.reserved = 0
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(conn.fd)
            conn.body = bytearray()
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _sweep(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            for fd in list(self._listeners):
                with contextlib.suppress(OSError, ValueError):
                    self._ep.modify(fd, _IN)
        late: list[_Conn] = []
        with self._lock:
            for c in self._conns.values():
                if not c.busy and now >= c.deadline:
                    c.busy = True  # the sweep holds it now
                    late.append(c)
        for c in late:
            if c.phase in ("head", "body") and not c.out:
                self.stats["timed_out"] += 1
                what = "request head" if c.phase == "head" else "request body"
                limit = self.header_timeout_s if c.phase == "head" else self.body_timeout_s
                with contextlib.suppress(OSError):
                    c.sock.send(
                        _error(
                            408,
                            "request_timeout",
                            f"the {what} did not arrive within {limit:g} s",
                            "headers" if c.phase == "head" else "body",
                            True,
                        )
                    )
            self._close(c)

    # ---- one connection's turn ---------------------------------------------------------------------------
    def _serve(self, conn: _Conn, ev: int) -> None:
        handed_off = False
        try:
            if conn.out:
                if not self._flush(conn):
                    return  # still blocked: wait for EPOLLOUT
                if conn.close_after:
                    self._close(conn)
                    return
            else:
                try:
                    data = conn.sock.recv(_RECV)
                except (BlockingIOError, InterruptedError):
                    data = None
                except OSError:
                    self._close(conn)
                    return
                if data is not None:
                    if conn.phase == "idle" and not conn.h.trailing_data[0]:
                        if not data:
                            self._close(conn)  # the client went away between requests
                            return
                        simple = _simple_head(data)
                        if simple is not None:
                            handed_off = self._simple(conn, *simple)
                            return
                    conn.h.receive_data(data)
            handed_off = self._process(conn)
        except Exception:
            log.exception("local api: connection error")
            self._close(conn)
        finally:
            if not handed_off and not conn.closed:
                self._release(conn)

    def _pool_worker(self) -> None:
        while True:
            conn = self._jobs.get()
            if conn is None:
                return
            try:
                self._answer(conn)
                self._process(conn, inline=True)  # requests pipelined behind it, if any
            except Exception:
                log.exception("local api: connection error")
                self._close(conn)
            finally:
                if not conn.closed:
                    self._release(conn)

    def _hand_off(self, conn: _Conn) -> bool:
        """Give a complete request that would hold the I/O thread long to the pool; True if
        given. The connection stays busy and out of epoll until its pool thread releases it."""
        req = conn.req
        if self.workers == 1 or req is None or req.method != b"POST":
            return False
        if len(conn.body) <= _SMALL_BODY and self._cost <= _INLINE_MAX_S:
            return False
        with self._lock:
            try:  # no events while away (one-shot: a hang-up is reported once, not in a loop)
                self._ep.modify(conn.fd, select.EPOLLONESHOT)
            except (OSError, ValueError):
                return False
            conn.armed = 0
        self._jobs.put(conn)  # from here on the pool thread owns it
        return True

    def _process(self, conn: _Conn, *, inline: bool = False) -> bool:
        """Run every complete request h11 holds; stop when it needs data or output blocks, or
        when a request went to the pool (then True: the caller must not touch the connection
        again; ``inline``: never, the caller is a pool thread)."""
        while not conn.closed and not conn.out:
            h = conn.h  # replaced by a fresh one after each answered request
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                self._protocol_error(conn, exc)
                return False
            if event is h11.NEED_DATA:
                if conn.phase == "idle" and h.trailing_data[0]:
                    conn.phase = "head"
                    conn.deadline = time.monotonic() + self.header_timeout_s
                conn.want = _IN
                return False
            if isinstance(event, h11.Request):
                self._on_request(conn, event)
            elif isinstance(event, h11.Data):
                if conn.body:
                    if isinstance(conn.body, bytes):
                        conn.body = bytearray(conn.body)
                    conn.body += event.data
                else:  # usually the whole body in one piece: no copy
                    conn.body = event.data
            elif isinstance(event, h11.EndOfMessage):
                if not inline and self._hand_off(conn):
                    return True
                self._answer(conn)
                if conn.phase == "idle":
                    return False  # nothing more buffered: wait for the next request
            elif isinstance(event, h11.ConnectionClosed):
                self._close(conn)
                return False
            else:  # PAUSED cannot happen (a fresh h11 state per request); be safe
                self._close(conn)
                return False
        return False

    def _simple(self, conn: _Conn, head: _Head, body: bytes) -> bool:
        """A request framed by ``_simple_head``: the same checks and answer as through h11. True
        when it went to the pool."""
        self._on_request(conn, head)
        if conn.closed or conn.out:  # refused (and answered) by the head checks
            return False
        conn.body = body
        if self._hand_off(conn):
            return True
        self._answer(conn)
        return False

    def _protocol_error(self, conn: _Conn, exc: h11.RemoteProtocolError) -> None:
        h = conn.h
        if h.their_state is h11.ERROR and h.trailing_data[1]:
            # the peer closed mid-request: a truncated head or body is dropped, never run
            self._close(conn)
            return
        self.stats["protocol_errors"] += 1
        status = exc.error_status_hint if exc.error_status_hint in (400, 431) else 400
        if status == 431:
            msg, code, field = (
                f"the request head is over {_MAX_HEAD} bytes",
                "headers_too_large",
                "headers",
            )
        elif "Content-Length" in str(exc):
            msg, code, field = f"bad Content-Length: {exc}", "invalid_request", "Content-Length"
        else:
            msg, code, field = (
                f"malformed request: {exc}",
                "invalid_request",
                "Host" if "Host" in str(exc) else None,
            )
        self._reply(conn, _error(status, code, msg, field, True), close=True)

    def _on_request(self, conn: _Conn, req: h11.Request) -> None:
        conn.req = req
        conn.body = bytearray()
        if req.http_version not in (b"1.1", b"1.0"):
            self._reply(
                conn,
                _error(
                    400,
                    "invalid_request",
                    f"HTTP/{req.http_version.decode()} is not supported",
                    "version",
                    True,
                ),
                close=True,
            )
            return
        if len(req.headers) > _MAX_HEADERS:
            self._reply(
                conn,
                _error(
                    431,
                    "headers_too_large",
                    f"more than {_MAX_HEADERS} header fields",
                    "headers",
                    True,
                ),
                close=True,
            )
            return
        te = cl = ctype = None
        close = req.http_version == b"1.0"
        for _raw, name, value in _items(req.headers):
            if name == b"transfer-encoding":
                te = value
            elif name == b"content-length":
                cl = value
            elif name == b"content-type":
                ctype = value
            elif name == b"connection":
                value = value.lower()
                close = b"keep-alive" not in value if close else b"close" in value
        conn.wants_close = close
        if te is not None and cl is not None:
            self._reply(
                conn,
                _error(
                    400,
                    "invalid_request",
                    "Transfer-Encoding and Content-Length together are refused (request smuggling)",
                    "Transfer-Encoding",
                    True,
                ),
                close=True,
            )
            return
        if te is not None:
            self._reply(
                conn,
                _error(
                    411,
                    "length_required",
                    "send a Content-Length header (chunked bodies are not accepted)",
                    "Content-Length",
                    True,
                ),
                close=True,
            )
            return
        if (
            req.method == b"POST"
            and ctype is not None
            and ctype.split(b";", 1)[0].strip().lower() not in (b"application/json", b"text/json")
        ):
            self._reply(
                conn,
                _error(
                    415,
                    "unsupported_media_type",
                    f"Content-Type must be application/json, not {ctype.decode('latin-1')}",
                    "Content-Type",
                    True,
                ),
                close=True,
            )
            return
        if cl is None and req.method == b"POST":
            self._reply(
                conn,
                _error(
                    411,
                    "length_required",
                    "send a Content-Length header (chunked bodies are not accepted)",
                    "Content-Length",
                    True,
                ),
                close=True,
            )
            return
        n = int(cl) if cl is not None else 0  # h11 accepted only digits, one value
        if n > self.max_body_bytes:
            self._reply(
                conn,
                _error(
                    413,
                    "payload_too_large",
                    f"request body is {n} bytes, the limit is {self.max_body_bytes}",
                    "body",
                    True,
                ),
                close=True,
            )
            return
        if n > _SMALL_BODY:
            with self._lock:
                if self._buffered + n > self.max_buffered_bytes:
                    ok = False
                else:
                    self._buffered += n
                    conn.reserved = n
                    ok = True
            if not ok:
                self._reply(
                    conn,
                    _error(
                        503,
                        "busy",
                        "too many large request bodies in flight; retry shortly",
                        "body",
                        True,
                    ),
                    close=True,
                )
                return
        conn.phase = "body"
        conn.deadline = time.monotonic() + self.body_timeout_s
        if conn.h.client_is_waiting_for_100_continue:
            self._send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")

    def _answer(self, conn: _Conn) -> None:
        req = conn.req
        close = conn.wants_close
        body = bytes(conn.body)
        t0 = time.perf_counter()
        data = self._dispatch(req, body, close)
        if req.method == b"POST" and len(body) <= _SMALL_BODY:
            dt_s = time.perf_counter() - t0
            self._cost = dt_s if self._cost == 0.0 else 0.9 * self._cost + 0.1 * dt_s
        if conn.reserved:
            with self._lock:
                self._buffered -= conn.reserved
                conn.reserved = 0
        conn.body = b""
        conn.req = None
        self._reply(conn, data, close=close)

    def _reply(self, conn: _Conn, data: bytes, *, close: bool) -> None:
        if close:
            conn.close_after = True
            self._send(conn, data)
            if not conn.out:
                self._close(conn)
            return
        # keep-alive: a fresh h11 state for the next request, fed what was already read (the
        # state is still fresh after a request framed by ``_simple_head``: h11 never saw it)
        rest = conn.h.trailing_data[0]
        if rest or conn.h.their_state is not h11.IDLE:
            conn.h = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
            if rest:
                conn.h.receive_data(bytes(rest))
        now = time.monotonic()
        conn.phase = "head" if rest else "idle"
        conn.deadline = now + (self.header_timeout_s if rest else self.idle_timeout_s)
        conn.idle_since = now
        self._send(conn, data)

    def _send(self, conn: _Conn, data: bytes) -> None:
        conn.out = conn.out + data if conn.out else data
        self._flush(conn)

    def _flush(self, conn: _Conn) -> bool:
        """Write what the socket takes; True when everything went out."""
        while conn.out:
            try:
                n = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                conn.want = _OUT
                conn.deadline = time.monotonic() + self.body_timeout_s  # a reader that stalls
                return False
            except OSError:
                conn.out = b""
                self._close(conn)
                return False
            conn.out = conn.out[n:]
        conn.want = _IN
        return True

    # ---- routing ---------------------------------------------------------------------------------------
    def _dispatch(self, req: h11.Request, body: bytes, close: bool) -> bytes:
        method = req.method.decode("ascii", "replace")
        path = req.target.decode("latin-1").split("?", 1)[0]
        try:
            if method == "GET":
                if path == "/health":
                    out = self.daemon.health()
                    return _response(200 if out["status"] == "ok" else 503, out, close)
                if path == "/models":
                    return _response(200, {"models": self.daemon.models()}, close)
                if path == "/predict":
                    return _error(405, "method_not_allowed", "use POST /predict", "method", close)
                return _error(
                    404,
                    "not_found",
                    f"no route {path} (routes: /predict, /health, /models)",
                    "path",
                    close,
                )
            if method == "POST":
                if path == "/predict":
                    return _response(200, _predict(self, decode_json(body)), close)
                if path in ("/health", "/models"):
                    return _error(405, "method_not_allowed", f"use GET {path}", "method", close)
                return _error(404, "not_found", f"no route {path}", "path", close)
            return _error(405, "method_not_allowed", f"{method} is not supported", "method", close)
        except EdgeError as exc:
            return _response(exc.status_code, exc.to_dict(), close)
        except Exception as exc:  # never kill the server on a bug: answer 500 and log it
            log.exception("local api: %s %s failed", method, path)
            return _error(
                500, "internal_error", f"internal error: {type(exc).__name__}", None, close
            )


def _items(headers: h11._headers.Headers | list) -> list[tuple[bytes, bytes, bytes]]:
    """(raw name, lower-case name, value) triples: ``_simple_head``'s list, or h11's own list when
    it has one (iterating the public Sequence goes through ``__getitem__`` per item, a measurable
    cost per request)."""
    if isinstance(headers, list):
        return headers
    full = getattr(headers, "_full_items", None)
    if isinstance(full, list):
        return full
    return [(n, n, v) for n, v in headers]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
