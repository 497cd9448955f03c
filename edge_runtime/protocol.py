"""MQTT protocol between devices and the hub (see DESIGN.md).

Topic layout, per device ``D`` under a configurable prefix (default
``edgefleet/v1``):

    {prefix}/devices/D/state      dev→hub  QoS1 retained, LWT = offline
    {prefix}/devices/D/desired    hub→dev  QoS1 retained
    {prefix}/devices/D/events     dev→hub  QoS1
    {prefix}/devices/D/telemetry  dev→hub  QoS1, per-device seq number
    {prefix}/devices/D/ack        hub→dev  QoS0, what the hub has *stored* (window seq ranges,
                                           event ids): the device deletes only these from its
                                           outbox; a broker's PUBACK proves nothing about the hub
                                           (a lost ack heals: the device resends, the hub acks again)

Payloads are JSON objects built by the pydantic models below, so device and
hub agree on every field name.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_PREFIX = "edgefleet/v1"
SLOTS = ("active", "shadow")
# "retrying": a transient error (the hub or the network unreachable during a download) that the
# device retries with backoff — not a refusal of the bundle, so rollout gates never count it as a
# failed install (a device stuck retrying becomes "unknown" at the install timeout instead).
EVENT_STEPS = ("received", "downloading", "retrying", "verified", "self_test_passed", "active", "failed",
               "removed", "rolled_back")


def topic(prefix: str, device_id: str, kind: str) -> str:
    return f"{prefix}/devices/{device_id}/{kind}"


def hub_subscription(prefix: str, kind: str, group: str | None = "hub") -> str:
    """Subscription for all devices' ``kind`` messages; a shared one when ``group`` is set."""
    base = f"{prefix}/devices/+/{kind}"
    return f"$share/{group}/{base}" if group else base


def parse_topic(prefix: str, name: str) -> tuple[str, str] | None:
    """``{prefix}/devices/D/kind`` → (D, kind), else None."""
    if not name.startswith(prefix + "/devices/"):
        return None
    rest = name[len(prefix) + len("/devices/"):].split("/")
    if len(rest) != 2:
        return None
    return rest[0], rest[1]


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RunningBundle(_Msg):
    slot: Literal["active", "shadow"]
    name: str
    version: str
    sha256: str
    format: str = "onnx"


class DeviceState(_Msg):
    device_id: str
    online: bool
    bundles: list[RunningBundle] = Field(default_factory=list)
    runtime_version: str = ""
    profile: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    applied_desired_id: str | None = None
    # the daemon's own health: store (read-only?), supervised threads, telemetry buffer
    health: dict[str, Any] = Field(default_factory=dict)
    ts: float = Field(default_factory=time.time)


class DesiredBundle(_Msg):
    name: str
    version: str
    url: str
    sha256: str  # bundle digest (sha256 of the canonical manifest)
    signature: str | None = None


class DesiredState(_Msg):
    """What the hub wants a device to run; ``id`` makes replays idempotent."""

    id: str
    bundles: dict[str, DesiredBundle | None] = Field(default_factory=dict)  # slot → bundle / None
    rollout_id: str | None = None
    ts: float = Field(default_factory=time.time)


class DeviceEvent(_Msg):
    device_id: str
    event_id: str
    step: str
    slot: str | None = None
    bundle: dict[str, str] | None = None
    desired_id: str | None = None
    rollout_id: str | None = None
    reason: str | None = None
    ts: float = Field(default_factory=time.time)


class SlotStats(_Msg):
    """One window's statistics for one bundle in one slot."""

    slot: str
    name: str
    version: str
    sha256: str
    requests: int = 0  # rows
    errors: int = 0  # rows of failed calls
    # The rows of one call fail (and change decisions) together, so the gates count calls:
    # calls, failed calls, shadow calls compared and the sum over compared
    # calls of each call's share of changed decisions. 0 from devices older than these fields.
    calls: int = 0
    errored_calls: int = 0
    latency: dict[str, Any] = Field(default_factory=dict)  # Sketch.to_dict(), seconds
    scores: dict[str, Any] = Field(default_factory=dict)  # Histogram.to_dict()
    decisions: dict[str, int] = Field(default_factory=dict)
    # shadow pairs (only on the shadow slot)
    compared: int = 0
    decision_changed: int = 0
    compared_calls: int = 0
    changed_share: float = 0.0  # Σ over compared calls of (changed rows / rows)
    divergence: dict[str, Any] = Field(default_factory=dict)  # Histogram of |p_shadow - p_active|
    dropped: int = 0


class Ack(_Msg):
    """Hub → device: the windows (inclusive seq ranges) and events (ids) the hub has committed.

    Sent after the hub's database transaction, for every window and event it received — newly
    stored, already stored (a replay) or refused for good at ingest (counted there) — so the device
    never resends them. Anything not acknowledged stays in the device's outbox and is sent again."""

    device_id: str
    windows: list[tuple[int, int]] = Field(default_factory=list)
    events: list[str] = Field(default_factory=list)
    ts: float = Field(default_factory=time.time)


def seq_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged inclusive ranges: [5, 1, 2, 3, 7] → [(1, 3), (5, 5), (7, 7)]."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


class TelemetryWindow(_Msg):
    device_id: str
    seq: int
    start: float
    end: float
    slots: list[SlotStats] = Field(default_factory=list)
    rss_bytes: int = 0
    cpu_percent: float = 0.0
    dropped_windows: int = 0  # windows the offline buffer had to drop, cumulative
    # start/end are wall-clock labels; the span end - start is measured on the monotonic
    # clock. When the wall clock moved by more than a second against it during the window
    # (NTP step, RTC reset, manual change), clock_jump_s says by how much (+ forward).
    clock_jump_s: float | None = None
