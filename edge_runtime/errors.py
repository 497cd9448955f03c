"""One root exception that carries its HTTP status and error code, for all three packages.

Every exception ``edge_runtime``, ``cloud_hub`` and ``converters`` raise to a caller is an
:class:`EdgeError`; HTTP handlers answer ``exc.status_code`` with :func:`error_body`, the
three CLIs print :func:`error_line` and exit 1 (:func:`run_cli`)::

    EdgeError (500 internal_error)
    ├── ValidationError (422 invalid_input)     a value of the request is refused; names the field
    │   └── TensorError (400 invalid_tensor)    cloud_hub.api.oip: tensor does not fit the model
    ├── BundleError (400 invalid_bundle)        manifest invalid, file missing, hash/signature wrong
    ├── IntegrityError (500 integrity_error)    a stored artifact's bytes no longer match its sha256
    ├── EngineError (500 engine_error)          engine failed to load or run a model
    ├── NotFoundError (404 not_found)           unknown model, version, alias, slot, device, rollout
    ├── ConflictError (409 conflict)            state does not allow the action
    ├── PayloadTooLarge (413 payload_too_large) request body or batch over the configured limit
    ├── UnavailableError (503 unavailable)      not available now: no active model, optional
    │                                           dependency missing
    ├── StoreError (500 store_error)            a model store / artifact store write failed
    ├── cloud_hub.api.deps.AuthError (401 unauthorized), ForbiddenError (403 forbidden)
    ├── cloud_hub.client.HubClientError         the hub's own code and status, or hub_unreachable
    ├── cloud_hub.stream.transport.TransportError (503 transport_error)
    ├── cloud_hub.batch.ray_engine.RayEngineError (500 ray_error)
    ├── cloud_hub.startup.StartupError (500 startup_refused)
    ├── converters.onnx_source.ConversionError (400 conversion_failed)
    │   ├── UnsupportedOpsError (400 unsupported_ops)
    │   └── converters.tflite.graph.OpError (400 unsupported_ops)   one node, caught per graph
    └── edge_runtime.reconcile.TransientError (500 transient)       retried by the reconciler

Codes: one name per meaning, listed once in :data:`CODES` (code → status, meaning); a code
not listed there is a bug (``tests/edge_runtime/test_errors.py`` checks every class and every
literal). Transport-level codes (malformed HTTP, JSON) are raised with
``EdgeError(message, code=..., status_code=...)``.

Field paths: one style everywhere, built by :func:`field_path` — dotted names with list
indexes in brackets: ``rows[3].age``, ``inputs[0].datatype``, ``files.model.onnx.sha256``.

Third-party errors (onnxruntime, sqlite3, paho, httpx) are wrapped at the boundary and
raised ``from exc``, so the cause stays in logs but never reaches clients.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

CODES: dict[str, tuple[int, str]] = {
    # request content
    "invalid_input": (422, ("a value of the request is refused (row, feature, parameter, "
                           "option); `field` names it")),
    "invalid_tensor": (400, ("an OIP tensor does not fit the model's input (name, datatype, "
                            "shape, data length)")),
    "invalid_json": (400, "the body is not JSON (malformed, not UTF-8, nested too deep)"),
    "invalid_request": (400, ("the HTTP request itself is malformed (request line, headers, "
                             "Content-Length, HTTP version)")),
    "payload_too_large": (413, "request body or batch over the configured limit"),
    "headers_too_large": (431, "request head over the limit"),
    "length_required": (411, "a body without Content-Length"),
    "unsupported_media_type": (415, "a body in a content type the route does not take"),
    "unsupported_encoding": (415, "a Content-Encoding the route does not take"),
    "request_timeout": (408, "the request did not arrive in time"),
    "method_not_allowed": (405, "the route exists, the method does not"),
    # who may call
    "unauthorized": (401, "missing or unknown API key / session"),
    "forbidden": (403, "the caller's role does not allow the action"),
    "csrf": (403, "a cookie-authenticated unsafe request without a valid CSRF token"),
    # what the request names
    "not_found": (404, "unknown route, model, version, alias, slot, device, rollout, job"),
    "conflict": (409, "the current state does not allow the action"),
    "invalid_bundle": (400, ("a bundle's manifest, files, hashes or signature are wrong or "
                            "untrusted")),
    "conversion_failed": (400, "the converter cannot convert this model"),
    "unsupported_ops": (400, "the model uses ops the target format cannot express"),
    # the server side
    "internal_error": (500, "an unexpected failure (logged; no details to clients)"),
    "engine_error": (500, "the inference engine failed to load or run the model"),
    "integrity_error": (500, ("a stored artifact's bytes no longer match its sha256 "
                             "(corruption or tampering); it is neither loaded nor served")),
    "store_error": (500, "the model store or artifact store could not complete a write"),
    "io_error": (500, "a file named on the command line cannot be read or written"),
    "startup_refused": (500, "this hub replica disagrees with the database (key, artifacts)"),
    "ray_error": (500, "the Ray batch engine failed"),
    "transient": (500, "a temporary device-side failure; retried"),
    "unavailable": (503, "not available now: no active model, an optional dependency missing"),
    "busy": (503, "at the connection limit; retry shortly"),
    "transport_error": (503, "the stream broker cannot be reached or refused the operation"),
    "hub_unreachable": (503, "the CLI cannot reach the hub"),
}
"""Every error code, its HTTP status and its meaning (the docs' error table is this)."""


_BY_STATUS = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
              408: "request_timeout", 409: "conflict", 411: "length_required",
              413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_input",
              431: "headers_too_large", 503: "unavailable"}


def code_for_status(status: int) -> str:
    """The code of a bare HTTP status (a framework's own 404/405, …)."""
    return _BY_STATUS.get(status, "invalid_request" if 400 <= status < 500 else "internal_error")


def field_path(*parts: str | int) -> str:
    """``field_path("rows", 3, "age")`` → ``rows[3].age``: the one field-path style."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p != "":
            out += f".{p}" if out else str(p)
    return out


def error_body(message: str, code: str, field: str | None = None,
               details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one JSON error body: ``{"error", "code", "field"}`` (+ ``details`` when any)."""
    body: dict[str, Any] = {"error": message, "code": code}
    if field is not None:
        body["field"] = field
    if details:
        body["details"] = details
    return body


class EdgeError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None,
                 status_code: int | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.message, self.code, self.field, self.details)


class ValidationError(EdgeError):
    status_code = 422
    code = "invalid_input"


class BundleError(EdgeError):
    status_code = 400
    code = "invalid_bundle"


class IntegrityError(EdgeError):
    status_code = 500
    code = "integrity_error"


class EngineError(EdgeError):
    status_code = 500
    code = "engine_error"


class NotFoundError(EdgeError):
    status_code = 404
    code = "not_found"


class ConflictError(EdgeError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(EdgeError):
    status_code = 413
    code = "payload_too_large"


class UnavailableError(EdgeError):
    status_code = 503
    code = "unavailable"


class StoreError(EdgeError):
    status_code = 500
    code = "store_error"


# ---- the command lines ----------------------------------------------------------------------
def error_line(prog: str, exc: EdgeError) -> str:
    """The one CLI error line: ``PROG: error: MESSAGE (code C, field F)``."""
    msg = " ".join(str(exc.message).split())  # one line, whatever the message holds
    where = f", field {exc.field}" if exc.field else ""
    return f"{prog}: error: {msg} ({exc.code}{where})"


def run_cli(prog: str, call: Callable[[], int | None]) -> int:
    """Run a CLI command: a domain error is one line on stderr and exit 1, Ctrl-C exit 130,
    an unreadable/unwritable path one line, anything unexpected one line too (no traceback;
    ``EDGEFLEET_DEBUG=1`` re-raises it)."""
    try:
        return int(call() or 0)
    except EdgeError as exc:
        print(error_line(prog, exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except OSError as exc:  # a path named by the user
        what = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc.strerror or exc)
        print(error_line(prog, EdgeError(what, code="io_error")), file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("EDGEFLEET_DEBUG") == "1":
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        err = EdgeError(f"internal error: {type(exc).__name__}: {first}")
        print(error_line(prog, err), file=sys.stderr)
        return 1
