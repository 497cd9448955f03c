"""Telemetry windows are checked at ingest: impossible numbers are refused, counted per device and
shown on the device; they never reach (or break) the rollout gates."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from cloud_hub.fleet.aggregate import SlotAggregate
from cloud_hub.fleet.validate import slot_problem, window_problem
from edge_runtime.protocol import TelemetryWindow, topic
from edge_runtime.telemetry import TelemetryRecorder
from tests.fleet.conftest import wait_for


class _Model:
    name, version, digest = "cancer", "1.0.0", "a" * 64


def _real_window(seq: int = 1, device: str = "dev-1") -> TelemetryWindow:
    rec = TelemetryRecorder(device, resources=False)
    rng = np.random.default_rng(seq)
    for _ in range(20):
        rows = int(rng.integers(1, 9))
        rec.record(
            "active",
            _Model(),
            rows,
            float(rng.uniform(0.001, 0.05)),
            scores=rng.random(rows),
            decisions=rng.random(rows) > 0.5,
            error=bool(rng.random() < 0.1),
        )
    rec.record_shadow(
        _Model(), 4, 0.01, scores=rng.random(4), divergence=rng.random(4) / 10, changed=1
    )
    return rec.roll(seq)


def _bad(mutate) -> TelemetryWindow:
    doc = _real_window().model_dump(mode="json")
    mutate(doc)
    return TelemetryWindow.model_validate(doc)


def test_a_real_window_passes_and_reports_calls():
    w = _real_window()
    assert window_problem(w) is None
    active = next(s for s in w.slots if s.slot == "active")
    assert active.calls == 20 and active.latency["count"] == 20 and active.requests >= 20
    assert active.errored_calls <= active.calls and active.errors >= active.errored_calls
    shadow = next(s for s in w.slots if s.slot == "shadow")
    assert shadow.compared_calls == 1 and shadow.changed_share == pytest.approx(0.25)


def _slot(doc, slot="active"):
    return next(s for s in doc["slots"] if s["slot"] == slot)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: _slot(d).update(requests=-1), "requests=-1"),
        (lambda d: _slot(d).update(errors=_slot(d)["requests"] + 1), "errors="),
        (lambda d: _slot(d).update(errored_calls=_slot(d)["calls"] + 1), "errored_calls="),
        (
            lambda d: _slot(d, "shadow").update(decision_changed=99),
            "decision_changed=99 exceeds compared",
        ),
        (lambda d: _slot(d, "shadow").update(changed_share=3.0), "changed_share"),
        (lambda d: _slot(d, "shadow").update(changed_share=math.nan), "changed_share"),
        (lambda d: d.update(cpu_percent=math.inf), "cpu_percent"),
        (lambda d: d.update(end=d["start"] - 5), "before start"),
        (lambda d: _slot(d)["latency"].update(sum=math.nan), "sum is not finite"),
        (lambda d: _slot(d)["latency"].update(alpha=0.02), "alpha 0.02"),
        (
            lambda d: _slot(d)["latency"].update(count=_slot(d)["latency"]["count"] + 3),
            "buckets hold",
        ),
        (
            lambda d: _slot(d)["scores"].update(edges=[i / 10 for i in range(11)], counts=[1] * 10),
            "other edges",
        ),
        (
            lambda d: _slot(d)["scores"].update(counts=[-1] + _slot(d)["scores"]["counts"][1:]),
            "integer counts",
        ),
        (
            lambda d: _slot(d, "shadow")["divergence"].update(edges=[0.0, 0.5, 1.0], counts=[1, 1]),
            "other edges",
        ),
    ],
)
def test_impossible_windows_are_refused_with_the_reason(mutate, reason):
    problem = window_problem(_bad(mutate))
    assert problem is not None and reason in problem


def test_the_aggregate_skips_impossible_stored_rows_instead_of_raising():
    good = _slot(_real_window().model_dump(mode="json"))
    other_alpha = json.loads(json.dumps(good))
    other_alpha["latency"]["alpha"] = 0.05  # used to raise in Sketch.merge: every tick failed
    inconsistent = dict(good, errors=good["requests"] + 5)  # used to raise in the rate gate
    agg = SlotAggregate()
    for row in (
        dict(good, device_id="d1", seq=1),
        dict(other_alpha, device_id="d2", seq=1),
        dict(inconsistent, device_id="d3", seq=1),
        dict(good, device_id="d4", seq=2),
    ):
        agg.add_row(row)
    assert agg.windows == 2 and agg.rejected == 2 and agg.calls == 2 * good["calls"]
    assert "d3 window 1: errors=" in agg.rejected_reason
    assert slot_problem(other_alpha) is not None


@pytest.mark.services
def test_ingest_refuses_counts_acknowledges_and_shows_them(make_hub, mosquitto, prefix):
    import paho.mqtt.client as mqtt
    from fastapi.testclient import TestClient

    from cloud_hub.app import create_app

    host, port = mosquitto
    hub = make_hub(mqtt_url=f"mqtt://{host}:{port}", mqtt_prefix=prefix)
    hub.fleet.register_device("dev-7")
    hub.fleet.start(session_expiry=0)
    assert hub.fleet.ingest.wait_connected(10)
    acks: list[dict] = []
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"dev-7-{time.time_ns()}", protocol=mqtt.MQTTv5
    )
    c.on_message = lambda _c, _u, m: acks.append(json.loads(m.payload))
    c.connect(host, port)
    c.loop_start()
    try:
        c.subscribe(topic(prefix, "dev-7", "ack"), qos=1)
        time.sleep(0.3)
        good = _real_window(1, "dev-7")
        nan = _real_window(2, "dev-7").model_dump(mode="json")
        _slot(nan)["latency"]["sum"] = math.nan
        negative = _real_window(3, "dev-7").model_dump(mode="json")
        _slot(negative)["errors"] = -4
        for body in (good.model_dump_json(), json.dumps(nan), json.dumps(negative)):
            c.publish(topic(prefix, "dev-7", "telemetry"), body, qos=1).wait_for_publish(5)
        wait_for(
            lambda: hub.fleet.device("dev-7").rejected_windows == 2, 15, what="two windows refused"
        )
        assert hub.fleet.window_count("dev-7") == 1  # only the good one stored
        assert _validated_flags(hub) == {True}  # checked at ingest: not checked again on read
        assert hub.fleet.ingest.stats["rejected"] >= 2
        # refused for good, so acknowledged: the device does not resend them forever
        wait_for(
            lambda: (
                {s for a in acks for lo, hi in a.get("windows", []) for s in range(lo, hi + 1)}
                >= {1, 2, 3}
            ),
            10,
            what="acks for all three windows",
        )
        body = TestClient(create_app(hub)).get("/v1/devices/dev-7").json()
        assert body["rejected_windows"] == 2 and "errors=-4" in body["rejected_reason"]
    finally:
        c.loop_stop()
        c.disconnect()


def _validated_flags(hub) -> set[bool]:
    from sqlalchemy import select

    from cloud_hub.fleet import tables as T

    with hub.engine.connect() as conn:
        return {bool(v) for v in conn.execute(select(T.slot_stats.c.validated)).scalars()}


def test_rows_not_validated_at_ingest_are_still_checked_on_read(make_hub):
    """Only windows that passed the ingest's check are marked ``validated``; any other stored row
    (written before the check existed, or by a direct writer) is checked when it is read."""
    hub = make_hub()
    good = _real_window(1, "dev-1")
    bad = _bad(lambda d: _slot(d).update(errors=_slot(d)["requests"] + 5))  # passes the schema
    bad = bad.model_copy(update={"device_id": "dev-2"})
    hub.fleet.write_batch(windows=[(good, 1.0)], validated=True)
    hub.fleet.write_batch(windows=[(bad, 1.0)])  # default: not validated
    assert _validated_flags(hub) == {True, False}
    agg = hub.fleet.window_stats(None, name="cancer", slot="active")
    good_slot = next(s for s in good.slots if s.slot == "active")
    assert agg.windows == 1 and agg.rejected == 1 and agg.calls == good_slot.calls
    assert agg.requests == good_slot.requests and "dev-2 window 1: errors=" in agg.rejected_reason


def test_a_validated_row_that_cannot_be_merged_is_still_skipped_not_raised():
    """The merge's own preconditions (sketch alpha, histogram edges) are checked on every row."""
    good = _slot(_real_window().model_dump(mode="json"))
    other_alpha = json.loads(json.dumps(good))
    other_alpha["latency"]["alpha"] = 0.05
    other_edges = json.loads(json.dumps(good))
    other_edges["scores"]["edges"] = [i / 10 for i in range(11)]
    other_edges["scores"]["counts"] = [0] * 10
    agg = SlotAggregate()
    for row in (
        dict(good, device_id="d1", seq=1, validated=True),
        dict(other_alpha, device_id="d2", seq=1, validated=True),
        dict(other_edges, device_id="d3", seq=1, validated=True),
    ):
        agg.add_row(row)
    assert agg.windows == 1 and agg.rejected == 2 and agg.calls == good["calls"]
    assert "d3 window 1: scores histogram edges differ" in agg.rejected_reason


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_rows_stored_before_the_validated_column_are_marked_not_validated(
    backend, tmp_path, request
):
    from sqlalchemy import delete, select, text

    from cloud_hub.db import connect, migrate, schema_migrations
    from cloud_hub.fleet import tables as T

    url = (
        f"sqlite:///{tmp_path / 'hub.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("fresh_pg_url")
    )
    engine = connect(url)
    try:
        migrate(engine)
        with engine.begin() as conn:  # the schema as it was before the column
            conn.execute(text("ALTER TABLE fleet_slot_stats DROP COLUMN validated"))
            conn.execute(
                delete(schema_migrations).where(schema_migrations.c.id == "0005_fleet_validated")
            )
            conn.execute(
                text(
                    'INSERT INTO fleet_slot_stats (device_id, seq, start, "end", slot, name, version, '
                    "sha256, requests, errors, latency, scores, decisions, compared, decision_changed, "
                    "divergence, dropped) VALUES ('old', 1, 0, 1, 'active', 'm', '1', :sha, 0, 0, "
                    "'{}', '{}', '{}', 0, 0, '{}', 0)"
                ),
                {"sha": "a" * 64},
            )
        assert migrate(engine) == ["0005_fleet_validated"]
        with engine.connect() as conn:
            assert list(conn.execute(select(T.slot_stats.c.validated)).scalars()) == [False]
    finally:
        engine.dispose()
