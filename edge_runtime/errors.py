"""One root exception that carries its HTTP status.

    EdgeError (500)
    ├── ValidationError (422)   bad input rows/tensors; names the field
    ├── BundleError (400)       manifest invalid, file missing, hash/signature wrong
    ├── EngineError (500)       engine failed to load or run a model
    ├── NotFoundError (404)     unknown model, version, alias, slot, device, rollout
    ├── ConflictError (409)     state does not allow the action
    ├── PayloadTooLarge (413)   request body or batch over the configured limit
    ├── UnavailableError (503)  no model is active yet (device store empty)
    └── StoreError (500)        the device model store could not complete an install

Third-party errors (onnxruntime, sqlite3, paho) are wrapped at the boundary and
raised ``from exc`` so the original cause stays in logs but never reaches clients.
"""

from __future__ import annotations

from typing import Any


class EdgeError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.field is not None:
            body["field"] = self.field
        if self.details:
            body["details"] = self.details
        return body


class ValidationError(EdgeError):
    status_code = 422
    code = "invalid_input"


class BundleError(EdgeError):
    status_code = 400
    code = "invalid_bundle"


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
