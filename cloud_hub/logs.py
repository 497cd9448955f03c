"""Structured JSON logs with the request id of the request being served.

The HTTP middleware puts each request's id in :data:`request_id_var`; every
log line written while serving it carries ``request_id``, so one grep finds
all lines of one request. ``setup_logging`` is called by ``cloud-hub serve``.
"""

from __future__ import annotations

import contextvars
import io
import json
import logging
import sys
import time

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is in the hub extra
    orjson = None

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, and the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        out = {"ts": "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour,
                                                           t.tm_min, t.tm_sec, int(record.msecs)),
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        rid = request_id_var.get()
        if rid is not None:
            out["request_id"] = rid
        for k, v in record.__dict__.items():
            if k not in _STD and k[0] != "_":
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if orjson is not None:
            return orjson.dumps(out, default=str).decode()
        return json.dumps(out, default=str)


class AccessLog:
    """Per-request access lines, cheap enough for the predict hot path.

    One ``orjson.dumps`` per request into a list; lines are written to the
    stream in chunks (every ``max_lines`` lines or ``interval_s`` seconds,
    whichever comes first, and at close) instead of a formatted LogRecord and
    a flush per request. With ``log_format=text`` or without orjson, lines go
    through the ``cloud_hub.access`` logger instead.
    """

    def __init__(self, stream=None, *, use_logger: bool = False, max_lines: int = 256,
                 interval_s: float = 0.25) -> None:
        self.stream = stream
        self.use_logger = use_logger or orjson is None
        self.max_lines = max_lines
        self.interval_s = interval_s
        self._lines: list[bytes] = []
        self._timer = None
        self._logger = logging.getLogger("cloud_hub.access")
        self._sec = -1
        self._prefix = ""

    def log(self, rec: dict) -> None:
        if self.use_logger:
            if self._logger.isEnabledFor(logging.INFO):
                self._logger.info("request", extra=rec)
            return
        t = time.time()
        sec = int(t)
        if sec != self._sec:  # format the date once per second
            g = time.gmtime(sec)
            self._sec, self._prefix = sec, "%04d-%02d-%02dT%02d:%02d:%02d." % (
                g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec)
        line = {"ts": f"{self._prefix}{int((t - sec) * 1000):03d}Z",
                "level": "info", "logger": "cloud_hub.access", "msg": "request"}
        line.update(rec)
        self._lines.append(orjson.dumps(line))
        if len(self._lines) >= self.max_lines:
            self.flush()
        elif self._timer is None:
            try:
                import asyncio

                self._timer = asyncio.get_running_loop().call_later(self.interval_s, self.flush)
            except RuntimeError:  # no event loop (called from a thread): write now
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        data = b"\n".join(self._lines) + b"\n"
        self._lines.clear()
        stream = self.stream if self.stream is not None else sys.stderr
        try:
            buf = getattr(stream, "buffer", None)
            if buf is not None:
                buf.write(data)
            elif isinstance(stream, io.TextIOBase):
                stream.write(data.decode())
            else:
                stream.write(data)
            stream.flush()
        except (OSError, ValueError):  # closed stream at shutdown: drop the lines
            pass


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our middleware logs requests
