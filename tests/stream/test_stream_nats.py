"""NATS JetStream: kill -9 and restart loses nothing; bad messages are dead-lettered."""

from __future__ import annotations

import json

import pytest

from edge_runtime import Model
from tests.stream.conftest import (
    messages,
    nats_count,
    nats_publish,
    nats_read_all,
    wait_until,
    worker_cmd,
)

pytestmark = pytest.mark.services

BAD = {5: "json", 17: "missing", 33: "string", 48: "array"}


def _check_outputs(outs: list[dict], n: int, bad: dict, cancer_bundle, cancer_data):
    by_key = {}
    for o in outs:  # at-least-once: duplicates allowed, each must be the same result
        if o["key"] in by_key:
            assert by_key[o["key"]]["score"] == o["score"]
        by_key[o["key"]] = o
    want_keys = {f"k{i}" for i in range(n) if i not in bad}
    assert set(by_key) == want_keys  # every valid input has an output, nothing else
    model = Model.load(cancer_bundle)
    x, _, names = cancer_data
    idx = sorted(int(k[1:]) for k in want_keys)[:200]
    want = model.predict([{k: float(v) for k, v in zip(names, x[i % len(x)])} for i in idx])
    for i, w in zip(idx, want):
        o = by_key[f"k{i}"]
        assert o["probability"] == pytest.approx(w["probability"], abs=1e-9)
        assert o["score"] == o["probability"]
        assert o["label"] == w["label"] and o["risk_level"] == w["risk_level"]
        assert o["flag"] == (w["probability"] >= 0.5) and o["threshold"] == 0.5
        assert o["model"]["version"] == "1.0.0" and o["received_at"] and o["scored_at"]
        assert isinstance(o["ts"], float)


def test_jetstream_kill_restart_no_loss_and_dead_letter(
    nats_names, workers, cancer_bundle, cancer_data
):
    n = nats_names
    src = f"nats://127.0.0.1:4222/{n['in']}?ack_wait=2"
    cmd = worker_cmd(
        cancer_bundle,
        src,
        f"nats://127.0.0.1:4222/{n['out']}",
        f"nats://127.0.0.1:4222/{n['dlq']}",
        "--group",
        n["group"],
        "--batch-size",
        "8",
        "--max-wait-ms",
        "0",
    )
    first = 1200
    nats_publish(n["in"], messages(cancer_data, first, bad=BAD))
    w = workers(cmd)
    w.wait_ready()
    wait_until(lambda: nats_count(n["s_out"]) >= 40, 60, "first outputs")
    w.kill()  # SIGKILL mid-stream: some batches scored, unacked, or unread
    done_at_kill = nats_count(n["s_out"])
    more = 300
    nats_publish(n["in"], messages(cancer_data, more, start=first))  # while no worker runs
    w2 = workers(cmd)
    w2.wait_ready()
    total_valid = first + more - len(BAD)
    wait_until(
        lambda: len({json.loads(m)["key"] for m in nats_read_all(n["s_out"])}) >= total_valid,
        90,
        "all outputs after restart",
    )
    outs = [json.loads(m) for m in nats_read_all(n["s_out"])]
    _check_outputs(outs, first + more, BAD, cancer_bundle, cancer_data)
    assert done_at_kill < total_valid
    dead = [json.loads(m) for m in nats_read_all(n["s_dlq"])]
    reasons = {}
    for d in dead:
        try:
            key = json.loads(d["payload"]).get("key") if d["payload"].startswith("{") else None
        except ValueError:
            key = None
        reasons[key] = d
    assert len({d["payload"] for d in dead}) == len(BAD)
    assert reasons[None]["field"] in ("message",)
    names = cancer_data[2]
    assert reasons["k17"]["field"] == names[3] and "missing" in reasons["k17"]["reason"]
    assert reasons["k33"]["field"] == names[0] and "expected a number" in reasons["k33"]["reason"]
    assert all(d["code"] == "invalid_input" for d in dead)
