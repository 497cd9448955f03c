"""FleetService without a broker: registry, selectors, dedupe, merged-sketch aggregation, ACL files."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest

from edge_runtime.errors import NotFoundError, ValidationError
from edge_runtime.protocol import (
    DesiredBundle,
    DesiredState,
    DeviceEvent,
    SlotStats,
    TelemetryWindow,
)
from edge_runtime.sketch import Histogram, Sketch


def _window(dev: str, seq: int, latencies: list[float], *, version: str = "1.0.0", slot: str = "active",
            errors: int = 0, compared: int = 0, changed: int = 0) -> TelemetryWindow:
    sk = Sketch()
    sk.extend(latencies)
    h = Histogram.unit(10)
    for v in latencies:
        h.add(min(v * 10, 1.0))
    return TelemetryWindow(device_id=dev, seq=seq, start=seq * 10.0, end=seq * 10.0 + 10, slots=[
        SlotStats(slot=slot, name="cancer", version=version, sha256="a" * 64, requests=len(latencies),
                  errors=errors, latency=sk.to_dict(), scores=h.to_dict(), decisions={"0": len(latencies)},
                  compared=compared, decision_changed=changed)])


def test_register_and_select(make_hub):
    hub = make_hub()
    rec = hub.fleet.register_device("dev-1", {"region": "eu", "hw": "rpi4"}, "rpi4", generate_password=True)
    assert rec.password and rec.has_credentials and rec.registered
    hub.fleet.register_device("dev-2", {"region": "us"}, "x86-gateway")
    assert [d.id for d in hub.fleet.devices("region=eu")] == ["dev-1"]
    assert [d.id for d in hub.fleet.devices({"region": "us"})] == ["dev-2"]
    assert [d.id for d in hub.fleet.devices(["dev-2", "nope"])] == ["dev-2"]
    assert len(hub.fleet.devices()) == 2
    with pytest.raises(NotFoundError):
        hub.fleet.device("ghost")
    with pytest.raises(ValidationError) as ei:
        hub.fleet.register_device("bad/id")
    assert ei.value.field == "device_id"
    with pytest.raises(ValidationError):
        hub.fleet.devices("region")


def test_windows_dedupe_and_merged_quantiles(make_hub):
    hub = make_hub()
    rnd = random.Random(7)
    all_lat: list[float] = []
    batch = []
    for d in range(5):
        for seq in range(1, 4):
            lat = [rnd.lognormvariate(-6, 0.5 + d * 0.3) for _ in range(200)]
            all_lat += lat
            batch.append((_window(f"dev-{d}", seq, lat, errors=d), 1.0))
    hub.fleet.write_batch(windows=batch)
    hub.fleet.write_batch(windows=batch[:7])  # a replay: stored once
    assert hub.fleet.window_count() == 15
    agg = hub.fleet.window_stats(None, name="cancer", version="1.0.0", slot="active")
    assert agg.requests == 3000 and agg.windows == 15 and agg.devices_reporting == 5
    assert agg.errors == 3 * sum(range(5))
    all_lat.sort()
    true_p99 = all_lat[int(0.99 * (len(all_lat) - 1))]
    assert abs(agg.p99 - true_p99) / true_p99 <= 0.0201  # relative-error guarantee of the merged sketch
    assert sum(agg.scores.counts) == 3000
    sub = hub.fleet.window_stats(["dev-0"], name="cancer")
    assert sub.devices_reporting == 1 and sub.requests == 600
    assert hub.fleet.window_stats(None, since=35.0).windows == 5  # only seq 3 windows end at >= 35
    assert hub.fleet.device("dev-4").last_window_at == 1.0  # unregistered devices appear once they report


def test_stats_by_version_and_tag(make_hub):
    hub = make_hub()
    hub.fleet.register_device("a", {"region": "eu"})
    hub.fleet.register_device("b", {"region": "us"})
    hub.fleet.write_batch(windows=[(_window("a", 1, [0.01] * 10, version="1"), 1.0),
                                   (_window("b", 1, [0.02] * 10, version="2"), 1.0),
                                   (_window("b", 2, [0.02] * 5, version="2", slot="shadow", compared=5,
                                            changed=1), 1.0)])
    by_v = hub.fleet.stats("cancer", by="version")
    assert [(r["version"], r["slot"], r["requests"]) for r in by_v] == [("1", "active", 10), ("2", "active", 10),
                                                                       ("2", "shadow", 5)]
    assert by_v[2]["decision_change_rate"] == pytest.approx(0.2)
    by_t = hub.fleet.stats("cancer", by="tag", tag="region")
    assert {(r["tag"], r["requests"]) for r in by_t} == {("region=eu", 10), ("region=us", 10), ("region=us", 5)}
    with pytest.raises(ValidationError):
        hub.fleet.stats("cancer", by="colour")


def test_desired_is_persisted_and_events_deduped(make_hub):
    hub = make_hub()
    doc = DesiredState(id="d1", rollout_id="r1", bundles={"active": DesiredBundle(
        name="cancer", version="1", url=hub.fleet.bundle_url("b" * 64), sha256="b" * 64)})
    hub.fleet.set_desired("dev-1", doc)  # no broker configured: stored, published when the hub starts
    assert hub.fleet.get_desired("dev-1").id == "d1"
    assert hub.fleet.bundle_url("b" * 64).endswith("/v1/bundles/" + "b" * 64)
    ev = DeviceEvent(device_id="dev-1", event_id="e1", step="received", desired_id="d1", rollout_id="r1")
    hub.fleet.write_batch(events=[(ev, 1.0), (ev, 1.0)])
    hub.fleet.write_batch(events=[(ev, 2.0)])
    assert [e.step for e in hub.fleet.events(rollout_id="r1")] == ["received"]
    with pytest.raises(ValidationError):
        hub.fleet.set_desired("dev-1", {"id": "x", "bundles": {"backup": None}})


def test_acl_files_use_mosquitto_format(make_hub, tmp_path):
    from cloud_hub.fleet.acl import check_password

    hub = make_hub()
    rec = hub.fleet.register_device("dev-1", generate_password=True)
    hub.fleet.register_device("dev-2", password="pw-two-123")
    passwd, acl = hub.fleet.write_acl(tmp_path / "acl", hub_user="hub", hub_password="hub-secret")
    lines = dict(line.split(":", 1) for line in passwd.read_text().splitlines())
    assert set(lines) == {"dev-1", "dev-2", "hub"}
    assert check_password(rec.password, lines["dev-1"]) and not check_password("wrong", lines["dev-1"])
    assert "pattern write" in acl.read_text() and "%u/telemetry" in acl.read_text()
    if shutil.which("mosquitto_passwd"):  # the real tool accepts and re-hashes our file
        r = subprocess.run(["mosquitto_passwd", "-b", str(passwd), "dev-3", "x"], capture_output=True, timeout=10)
        assert r.returncode == 0, r.stderr
        assert lines["dev-1"] in passwd.read_text()


@pytest.mark.services
def test_postgresql_dedupe_and_stats(postgres_url, make_hub, tmp_path):
    """The same ingest writes on PostgreSQL (several hub replicas share one database)."""
    import uuid

    from sqlalchemy import create_engine, text

    schema = f"fleet_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        url = postgres_url + ("&" if "?" in postgres_url else "?") + f"options=-csearch_path%3D{schema}"
        hub = make_hub(database_url=url)
        big_seq = 1_795_000_000_000  # time-based sequence numbers need 64-bit columns
        batch = [(_window("dev-1", big_seq + i, [0.001 * (i + 1)] * 50), 1.0) for i in range(4)]
        hub.fleet.write_batch(windows=batch)
        hub.fleet.write_batch(windows=batch)  # replayed: stored once
        ev = DeviceEvent(device_id="dev-1", event_id="e-pg", step="received")
        hub.fleet.write_batch(events=[(ev, 1.0), (ev, 1.0)])
        assert hub.fleet.window_seqs("dev-1") == [big_seq + i for i in range(4)]
        agg = hub.fleet.window_stats(["dev-1"], name="cancer")
        assert agg.requests == 200 and agg.windows == 4
        assert abs(agg.p99 - 0.004) / 0.004 <= 0.02
        assert len(hub.fleet.events(device_id="dev-1")) == 1
        assert hub.fleet.device("dev-1").last_window_at == 1.0
        hub.close()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def test_an_offline_will_without_bundles_keeps_the_last_known_running_bundles(make_hub):
    from edge_runtime.protocol import DeviceState, RunningBundle

    hub = make_hub()
    running = RunningBundle(slot="active", name="cancer", version="1.0.0", sha256="a" * 64)
    hub.fleet.write_batch(states=[(DeviceState(device_id="d1", online=True, bundles=[running]), 1.0)])
    # a will registered at boot, before the first install: online false, no bundles
    hub.fleet.write_batch(states=[(DeviceState(device_id="d1", online=False), 2.0)])
    rec = hub.fleet.device("d1")
    assert rec.online is False
    assert rec.running("active")["sha256"] == "a" * 64
    # an online state is always taken as it is (the device says what it runs now)
    hub.fleet.write_batch(states=[(DeviceState(device_id="d1", online=True), 3.0)])
    assert hub.fleet.device("d1").running("active") is None


def test_set_desired_many_writes_every_document_in_one_go(make_hub):
    from edge_runtime.protocol import DesiredState

    hub = make_hub()
    hub.fleet.set_desired("dev-1", {"id": "old", "bundles": {}})
    hub.fleet.set_desired_many([(f"dev-{i}", DesiredState(id=f"d-{i}", rollout_id="r-1", bundles={}))
                                for i in range(1, 4)])
    assert [hub.fleet.get_desired(f"dev-{i}").id for i in range(1, 4)] == ["d-1", "d-2", "d-3"]
    with pytest.raises(ValidationError) as err:
        hub.fleet.set_desired_many([("dev-9", DesiredState(id="x", bundles={"backup": None}))])
    assert err.value.field == "bundles.backup"
    with pytest.raises(ValidationError):
        hub.fleet.set_desired_many([("bad id!", DesiredState(id="x", bundles={}))])
    assert hub.fleet.get_desired("dev-9") is None
