"""Response schemas of the fleet, health and champion/challenger routes, for the OpenAPI
document (``responses={200: {"model": …}}``): they describe what the routes answer, and
the schemathesis run (``tests/cloud_hub/test_schemathesis.py``) checks every answer
against them. Extra keys are allowed so an added field is not a breaking change."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class DeviceOut(BaseModel):
    id: str
    tags: dict[str, str]
    profile: str
    registered: bool
    online: bool
    last_seen: float | None
    last_window_at: float | None
    bundles: list[dict[str, Any]]
    applied_desired_id: str | None
    runtime_version: str
    desired: dict[str, Any] | None
    dropped_windows: int
    rejected_windows: int
    rejected_reason: str | None
    has_credentials: bool
    converged: bool
    problems: list[str] | None = None  # paged list only: telemetry gaps, failed install, rejected windows


class RegisteredDeviceOut(DeviceOut):
    password: str | None = None


class DeviceListOut(BaseModel):
    devices: list[DeviceOut]
    count: int = Field(description="devices in this answer")
    total: int | None = Field(None, description="devices matching the filters (all pages)")
    offset: int | None = None
    limit: int | None = None


class DeviceEventOut(BaseModel):
    device_id: str
    event_id: str
    step: str
    slot: str | None = None
    bundle: dict[str, str] | None = None
    desired_id: str | None = None
    rollout_id: str | None = None
    reason: str | None = None
    ts: float


class DeviceDetailOut(DeviceOut):
    events: list[DeviceEventOut]
    windows: int
    first_seq: int | None = None
    last_seq: int | None = None
    missing_windows: int
    missing_seqs: list[list[int]]


class DeviceEventsOut(BaseModel):
    events: list[DeviceEventOut]


class DesiredBundleOut(BaseModel):
    name: str
    version: str
    url: str
    sha256: str
    signature: str | None = None


class DesiredOut(BaseModel):
    id: str
    bundles: dict[str, DesiredBundleOut | None]
    rollout_id: str | None = None
    ts: float


class FleetStatsOut(BaseModel):
    model: str | None
    by: str
    groups: list[dict[str, Any]]


class IngestOut(BaseModel):
    mqtt_url: str | None
    embedded_broker: bool
    connected: bool
    backlog: int
    stats: dict[str, Any]


class HealthOut(BaseModel):
    status: str
    database: bool
    models_loaded: int


class LiveOut(BaseModel):
    live: bool


class ReadyOut(BaseModel):
    ready: bool


class SplitOut(BaseModel):
    name: str
    split_id: str
    challenger_fraction: float
    entity_key: str
    enabled: bool
    evaluation: dict[str, Any]
    created_at: str | None
    updated_at: str | None
    history: list[dict[str, Any]]
    salt: str


class SplitListOut(BaseModel):
    splits: list[SplitOut]


class FeedbackOut(BaseModel):
    stored: int
    matched: int
    unmatched: int
