"""The OpenAPI document tells the truth about errors.

Every route can answer the hub's error body (``{"error", "code", "field"}``) with
the status codes the shared machinery produces, whatever the route itself
declares: 400 (malformed body, bad bundle/tensor), 401/403 (API key and role),
404 (unknown name in the path), 409, 413 (body limit), 415 (content encoding,
``cloud_hub/api/guard.py``), 422 (field validation, NUL) and 503 (not ready).
:func:`install` adds the ``ErrorBody`` schema and these responses to each
operation that does not document them yet, keeping route-specific descriptions,
so a schema-driven client (or schemathesis) can check every answer.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_BODY: dict[str, Any] = {
    "title": "ErrorBody",
    "type": "object",
    "required": ["error", "code"],
    "properties": {
        "error": {"type": "string", "description": "What went wrong, for a person."},
        "code": {"type": "string", "description": "Stable machine-readable code, e.g. invalid_input."},
        "field": {"type": "string", "description": "The request field (or header) at fault."},
        "details": {"type": "object", "description": "Extra facts about the error."},
        "auth_required": {"type": "boolean"},
    },
}

COMMON: dict[str, str] = {
    "400": "Malformed request or body (e.g. invalid JSON, bad bundle or tensor)",
    "401": "Missing or invalid API key",
    "403": "The key's role does not allow this, or a cross-site/CSRF request",
    "404": "Unknown model, version, alias, device, rollout, job or stream",
    "409": "The current state does not allow this",
    "413": "Body larger than the configured limit",
    "415": "Unsupported Content-Encoding",
    "422": "Invalid field: the body names the field and the reason",
    "503": "Not ready (no model loaded, service not started)",
}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            add_error_responses(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def add_error_responses(schema: dict[str, Any]) -> None:
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    comps["ErrorBody"] = ERROR_BODY
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for ops in schema.get("paths", {}).values():
        for method, op in ops.items():
            if method not in ("get", "put", "post", "delete", "patch"):
                continue
            responses = op.setdefault("responses", {})
            for code, entry in responses.items():  # a documented model wins over FastAPI's generic
                sch = (entry.get("content") or {}).get("application/json", {}).get("schema")  # dict
                if code.startswith("2") and isinstance(sch, dict) and "$ref" in sch and len(sch) > 1:
                    entry["content"]["application/json"]["schema"] = {"$ref": sch["$ref"]}
            for code, desc in COMMON.items():
                entry = responses.setdefault(code, {"description": desc})
                content = entry.get("content") or {}
                # FastAPI's own 422 (HTTPValidationError) is not what the hub answers
                content["application/json"] = ref["application/json"]
                entry["content"] = content
                for other in [c for c in content if c != "application/json"]:
                    content.pop(other)
