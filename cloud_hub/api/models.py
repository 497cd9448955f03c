"""Registry routes: push bundles, list/get versions, aliases, bundle downloads, hub key."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from cloud_hub.api.deps import Admin, HubDep, Viewer
from edge_runtime.errors import ValidationError

router = APIRouter(tags=["registry"])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid bundle (manifest, hash, signature, golden vectors)"},
    401: {"description": "Missing or invalid API key"},
    403: {"description": "The key's role does not allow this"},
    404: {"description": "Unknown model, version or alias"},
    409: {"description": "Conflict (version exists with other content, alias in use)"},
    413: {"description": "Body larger than the configured limit"},
    422: {"description": "Invalid request field"},
}


class ModelVersionOut(BaseModel):
    name: str
    version: str
    sha256: str = Field(description="Bundle digest: sha256 of the canonical unsigned manifest.")
    format: str
    task: str
    size: int = Field(description="Size of the hub-signed bundle tar in bytes.")
    aliases: list[str]
    created_at: str
    provenance: dict[str, Any]
    artifact_sha256: str = Field(description="sha256 of the stored tar (content address).")
    signer_key_id: str | None = Field(description="Key id of the uploader's signature (None: unsigned).")
    hub_key_id: str
    self_test: str


class ModelDetailOut(ModelVersionOut):
    manifest: dict[str, Any]
    download_url: str


class ModelSummaryOut(BaseModel):
    name: str
    aliases: dict[str, str]
    versions: list[str]
    latest_version: str | None


class ModelListOut(BaseModel):
    models: list[ModelSummaryOut]


class VersionsOut(BaseModel):
    name: str
    versions: list[ModelVersionOut]


class AliasesOut(BaseModel):
    name: str
    aliases: dict[str, str]


class AliasEventOut(BaseModel):
    alias: str
    old_version: str | None
    new_version: str | None
    at: str
    reason: str | None


class AliasHistoryOut(BaseModel):
    name: str
    history: list[AliasEventOut]


BUNDLE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The hub-signed bundle tar", "content": {"application/x-tar": {
        "schema": {"type": "string", "format": "binary"}}}},
    304: {"description": "Not modified (If-None-Match matched the bundle's ETag)"},
}


class AliasBody(BaseModel):
    version: str = Field(description="Version the alias should point at.")


class AliasesBody(BaseModel):
    aliases: dict[str, str | None] = Field(description="alias → version (null removes the alias); "
                                           "applied in one transaction.")
    reason: str | None = Field(None, description="Free text kept in the alias history.")


async def _receive_upload(request: Request, dest: Path) -> None:
    """Stream the upload to ``dest``; file writes run in a worker thread so a large
    upload does not stall the event loop (and the predictions it serves)."""
    ctype = request.headers.get("content-type", "")
    fh = await asyncio.to_thread(open, dest, "wb")
    try:
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=10)
            try:
                upload = form.get("bundle")
                if upload is None:
                    upload = next((v for v in form.values() if hasattr(v, "read")), None)
                if upload is None or not hasattr(upload, "read"):
                    raise ValidationError("multipart upload needs a file part named 'bundle'", field="bundle")
                while chunk := await upload.read(1024 * 1024):
                    await asyncio.to_thread(fh.write, chunk)
            finally:
                await form.close()
        else:
            async for chunk in request.stream():
                if chunk:
                    await asyncio.to_thread(fh.write, chunk)
    finally:
        await asyncio.to_thread(fh.close)
    if dest.stat().st_size == 0:
        raise ValidationError("empty upload: send the bundle tar as the body or as multipart "
                              "part 'bundle'", field="bundle")


@router.post("/v1/models", status_code=201, response_model=ModelVersionOut,
             responses={**ERRORS, 200: {"model": ModelVersionOut, "description": "Already registered (same bundle)"}},
             summary="Push a bundle (tar body or multipart part 'bundle')",
             openapi_extra={"requestBody": {"content": {
                 "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "bundle": {"type": "string", "format": "binary"}}}}}}})
async def push_model(request: Request, hub: HubDep, role: Admin,
                     alias: Annotated[list[str] | None, Query(description="Alias(es) to point at the "
                                                              "pushed version.")] = None) -> JSONResponse:
    """Verify (hashes, trusted signature, golden vectors), re-sign with the hub key and register.

    Pushing the same bundle again answers 200 with the existing version; the
    same name:version with different content is 409.
    """
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".tar", dir=hub.workdir.path)
    os.close(fd)
    path = Path(name)
    try:
        await _receive_upload(request, path)
        mv = await asyncio.to_thread(hub.registry.push, path, created_by=role, aliases=alias or [])
    finally:
        path.unlink(missing_ok=True)
    return JSONResponse(mv.to_dict(), status_code=201 if mv.created else 200)


@router.get("/v1/models", responses=ERRORS, response_model=ModelListOut,
            summary="List models with their aliases and versions")
def list_models(hub: HubDep, _: Viewer) -> dict[str, Any]:
    models: dict[str, dict[str, Any]] = {}
    for mv in hub.registry.list():
        m = models.setdefault(mv.name, {"name": mv.name, "aliases": {}, "versions": [],
                                        "latest_version": None})
        m["versions"].append(mv.version)
        m["latest_version"] = mv.version
        for a in mv.aliases:
            m["aliases"][a] = mv.version
    return {"models": list(models.values())}


@router.get("/v1/models/{ref}", responses=ERRORS, response_model=ModelDetailOut, summary="Resolve a reference (name, name@alias, "
            "name:version) to a version, with its manifest")
def get_model(ref: str, hub: HubDep, _: Viewer) -> dict[str, Any]:
    mv = hub.registry.resolve(ref)
    out = mv.to_dict(manifest=True)
    out["download_url"] = f"{hub.settings.base_url}/v1/bundles/{mv.digest}"
    return out


@router.get("/v1/models/{name}/versions", responses=ERRORS, response_model=VersionsOut, summary="All versions of a model, oldest first")
def list_versions(name: str, hub: HubDep, _: Viewer) -> dict[str, Any]:
    return {"name": name, "versions": [mv.to_dict() for mv in hub.registry.versions(name)]}


@router.delete("/v1/models/{name}/versions/{version}", status_code=204, responses=ERRORS,
               summary="Delete a version no alias points at")
def delete_version(name: str, version: str, hub: HubDep, _: Admin) -> Response:
    hub.registry.delete_version(name, version)
    return Response(status_code=204)


@router.get("/v1/models/{name}/aliases", responses=ERRORS, response_model=AliasesOut, summary="Aliases of a model (alias → version)")
def get_aliases(name: str, hub: HubDep, _: Viewer) -> dict[str, Any]:
    return {"name": name, "aliases": hub.registry.aliases(name)}


@router.put("/v1/models/{name}/aliases/{alias}", responses=ERRORS, response_model=AliasesOut, summary="Point an alias at a version")
def put_alias(name: str, alias: str, body: AliasBody, hub: HubDep, _: Admin) -> dict[str, Any]:
    aliases = hub.registry.set_aliases(name, {alias: body.version}, reason="api")
    return {"name": name, "aliases": aliases}


@router.delete("/v1/models/{name}/aliases/{alias}", responses=ERRORS, response_model=AliasesOut, summary="Remove an alias")
def delete_alias(name: str, alias: str, hub: HubDep, _: Admin) -> dict[str, Any]:
    if alias not in hub.registry.aliases(name):
        from edge_runtime.errors import NotFoundError

        raise NotFoundError(f"model {name} has no alias {alias}", field="alias")
    return {"name": name, "aliases": hub.registry.set_aliases(name, {alias: None}, reason="api")}


@router.post("/v1/models/{name}/aliases", responses=ERRORS, response_model=AliasesOut,
             summary="Move several aliases atomically (e.g. promote the challenger)")
def post_aliases(name: str, body: AliasesBody, hub: HubDep, _: Admin) -> dict[str, Any]:
    return {"name": name, "aliases": hub.registry.set_aliases(name, body.aliases,
                                                              reason=body.reason or "api")}


@router.get("/v1/models/{name}/aliases/history", responses=ERRORS, response_model=AliasHistoryOut, summary="Alias changes, newest first")
def alias_history(name: str, hub: HubDep, _: Viewer,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    hub.registry.versions(name)  # 404 for an unknown model
    return {"name": name, "history": hub.registry.alias_history(name, limit)}


@router.get("/v1/models/{ref}/bundle", responses={**ERRORS, **BUNDLE_RESPONSES}, response_class=FileResponse,
            summary="Download the hub-signed bundle tar of a reference")
def download_model(ref: str, request: Request, hub: HubDep, _: Viewer) -> Response:
    mv = hub.registry.resolve(ref)
    return _tar_response(hub, mv, request)


@router.get("/v1/bundles/{digest}", responses={**ERRORS, **BUNDLE_RESPONSES}, response_class=FileResponse,
            summary="Download a bundle tar by its sha256 (what devices fetch)")
def download_bundle(digest: str, request: Request, hub: HubDep) -> Response:
    """The bundle is addressed by its manifest sha256 and signed by the hub key;
    devices verify both before activating it, so this route needs no API key."""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValidationError("digest must be 64 lowercase hex digits (the bundle sha256)", field="digest")
    return _tar_response(hub, hub.registry.by_digest(digest), request)


def _tar_response(hub, mv, request: Request) -> Response:
    """The bundle tar; immutable (its sha256 names it), so a proxy or CDN may keep it
    for a year, and ``If-None-Match`` with its ETag answers 304 without a body."""
    headers = {"ETag": f'"{mv.digest}"', "X-Bundle-Sha256": mv.digest,
               "X-Artifact-Sha256": mv.artifact_sha256,
               "Cache-Control": "public, max-age=31536000, immutable"}
    tags = [t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")]
    if f'"{mv.digest}"' in tags or "*" in tags:
        return Response(status_code=304, headers=headers)
    path = hub.registry.artifact_path(mv)
    return FileResponse(path, media_type="application/x-tar",
                        filename=f"{mv.name}-{mv.version}.tar", headers=headers)


@router.get("/v1/keys/hub.pub", response_class=Response, summary="The hub's public key (PEM) devices trust",
            responses={200: {"content": {"application/x-pem-file": {}}}})
def hub_public_key(hub: HubDep) -> Response:
    return Response(hub.registry.hub_key.public_pem, media_type="application/x-pem-file",
                    headers={"X-Key-Id": hub.registry.hub_key.key_id})

