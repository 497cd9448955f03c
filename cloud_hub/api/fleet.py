"""Fleet routes: the device registry, what each device runs, its events, fleet stats."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from cloud_hub.api import schemas as S
from cloud_hub.api.deps import Admin, HubDep, Viewer

router = APIRouter(tags=["fleet"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key"},
    403: {"description": "The key's role does not allow this"},
    404: {"description": "Unknown device"},
    422: {"description": "Invalid request field"},
}


ID = r"^[A-Za-z0-9_.:\-]+$"  # device/document ids: what check_device_id and MQTT topics accept


class RegisterBody(BaseModel):
    id: str = Field(description="Device id (MQTT user name and topic segment): 1-128 letters, digits, "
                    "'-', '_', '.', ':' (checked by the fleet service, field device_id).")
    tags: dict[Annotated[str, Field(min_length=1, max_length=64)], Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict, max_length=64, description="Cohort labels, e.g. region=eu.")
    profile: str = Field("", max_length=64, description="Device profile name, e.g. rpi4.")
    password: str | None = Field(None, min_length=8, max_length=512,
                                 description="MQTT password; stored hashed only.")
    generate_password: bool = Field(False, description="Create a random MQTT password (returned once).")


class DesiredBundleBody(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
                      description="Model name.")
    version: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-+]+$", description="Version.")
    url: str = Field(min_length=1, max_length=2048, description="Where the device downloads the bundle tar "
                     "(http(s), or a path on the hub such as /v1/bundles/SHA256).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Bundle digest (sha256 of the manifest).")
    signature: str | None = Field(None, max_length=512, description="Manifest signature (informative).")


class DesiredBody(BaseModel):
    id: str = Field(min_length=1, max_length=128, pattern=ID,
                    description="Document id; a device applies each id once.")
    bundles: dict[Literal["active", "shadow"], DesiredBundleBody | None] = Field(
        default_factory=dict, description="slot → {name, version, url, sha256} or null.")
    rollout_id: str | None = Field(None, max_length=128, pattern=ID)


@router.get("/v1/devices", responses={**ERRORS, 200: {"model": S.DeviceListOut}})
def list_devices(hub: HubDep, _: Viewer,
                 selector: Annotated[str | None, Query(description="tags, e.g. region=eu,ring=canary")] = None,
                 online: bool | None = None,
                 profile: Annotated[str | None, Query(max_length=64, description="only this profile")] = None,
                 version: Annotated[str | None, Query(max_length=400, description="active slot runs "
                                                      "name:version (or this version)")] = None,
                 problems: Annotated[bool, Query(description="only devices with telemetry gaps, a failed "
                                                 "install or rejected windows")] = False,
                 sort: Annotated[str, Query(description="id | online | profile | last_seen | version | "
                                            "rejected")] = "id",
                 order: Literal["asc", "desc"] = "asc",
                 limit: Annotated[int | None, Query(ge=1, le=1000, description="page size (paged answer "
                                                    "with total; all devices when left out)")] = None,
                 offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
    if limit is None and not (profile or version or problems or offset or sort != "id" or order != "asc"):
        recs = hub.fleet.devices(selector, online=online)
        return {"devices": [r.to_dict() for r in recs], "count": len(recs), "total": len(recs)}
    return hub.fleet.device_page(selector, online=online, profile=profile, version=version, problems=problems,
                                 sort=sort, descending=order == "desc", limit=limit or 10**9, offset=offset)


@router.post("/v1/devices", responses={**ERRORS, 201: {"model": S.RegisteredDeviceOut}}, status_code=201)
def register_device(body: RegisterBody, hub: HubDep, _: Admin) -> dict[str, Any]:
    rec = hub.fleet.register_device(body.id, body.tags, body.profile, password=body.password,
                                    generate_password=body.generate_password)
    out = rec.to_dict()
    if body.generate_password and rec.password:
        out["password"] = rec.password  # shown once; only the hash is stored
    return out


@router.get("/v1/devices/{device_id}", responses={**ERRORS, 200: {"model": S.DeviceDetailOut}})
def show_device(device_id: str, hub: HubDep, _: Viewer,
                events: Annotated[int, Query(ge=0, le=1000)] = 20) -> dict[str, Any]:
    rec = hub.fleet.device(device_id)
    out = rec.to_dict()
    out["events"] = [e.model_dump(mode="json") for e in hub.fleet.events(device_id=device_id, limit=events)]
    summary = hub.fleet.window_summary([device_id]).get(device_id, {})
    out["windows"] = summary.get("windows", 0)  # stored at the hub
    out["first_seq"] = summary.get("first_seq")
    out["last_seq"] = summary.get("last_seq")
    out["missing_windows"] = summary.get("missing", 0)
    out["missing_seqs"] = [list(r) for r in hub.fleet.missing_seqs(device_id)] if out["missing_windows"] else []
    return out


@router.get("/v1/devices/{device_id}/events", responses={**ERRORS, 200: {"model": S.DeviceEventsOut}})
def device_events(device_id: str, hub: HubDep, _: Viewer, since: float | None = None,
                  limit: Annotated[int, Query(ge=1, le=10000)] = 200) -> dict[str, Any]:
    hub.fleet.device(device_id)
    return {"events": [e.model_dump(mode="json") for e in hub.fleet.events(device_id=device_id, since=since,
                                                                           limit=limit)]}


@router.put("/v1/devices/{device_id}/desired", responses={**ERRORS, 200: {"model": S.DesiredOut}})
def put_desired(device_id: str, body: DesiredBody, hub: HubDep, _: Admin) -> dict[str, Any]:
    hub.fleet.device(device_id)  # 404 for a device that was never registered or seen
    doc = hub.fleet.set_desired(device_id, body.model_dump(exclude_none=False))
    return doc.model_dump(mode="json")


@router.get("/v1/fleet/stats", responses={**ERRORS, 200: {"model": S.FleetStatsOut}})
def fleet_stats(hub: HubDep, _: Viewer, model: str | None = None,
                by: Annotated[str, Query(description="version | tag | device | slot")] = "version",
                tag: Annotated[str | None, Query(description="tag key for by=tag")] = None,
                slot: str | None = None, since: float | None = None) -> dict[str, Any]:
    return {"model": model, "by": by, "groups": hub.fleet.stats(model, by=by, tag=tag, slot=slot, since=since)}


@router.get("/v1/fleet/ingest", responses={**ERRORS, 200: {"model": S.IngestOut}})
def ingest_status(hub: HubDep, _: Viewer) -> dict[str, Any]:
    ing = hub.fleet.ingest
    return {"mqtt_url": hub.fleet.mqtt_url, "embedded_broker": hub.fleet.broker is not None,
            "connected": bool(ing and ing.connected.is_set()), "backlog": ing.backlog if ing else 0,
            "stats": dict(ing.stats) if ing else {}}
