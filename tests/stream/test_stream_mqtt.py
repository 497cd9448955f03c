"""Mosquitto (MQTT v5): kill -9 and restart loses nothing, dead letters, shared subscription."""

from __future__ import annotations

import threading

import pytest

from cloud_hub.stream.service import build_worker
from cloud_hub.stream.worker import StreamOptions
from edge_runtime import Model
from tests.stream.conftest import (
    MqttCollector,
    messages,
    mqtt_forget_session,
    mqtt_publish,
    wait_until,
    worker_cmd,
)
from tests.stream.test_stream_nats import BAD, _check_outputs

pytestmark = pytest.mark.services


def test_mqtt_kill_restart_no_loss_and_dead_letter(
    mosquitto, mqtt_topics, workers, cancer_bundle, cancer_data
):
    host, port = mosquitto
    t = mqtt_topics
    group = t["base"].replace("/", "_")
    base = f"mqtt://{host}:{port}/"
    cmd = worker_cmd(
        cancer_bundle,
        base + t["in"],
        base + t["out"],
        base + t["dlq"],
        "--group",
        group,
        "--name",
        "w1",
        "--batch-size",
        "8",
        "--max-wait-ms",
        "0",
    )
    col = MqttCollector(host, port, [t["out"], t["dlq"]])
    try:
        w = workers(cmd)
        w.wait_ready()
        first = 600
        mqtt_publish(host, port, t["in"], messages(cancer_data, first, bad=BAD))
        wait_until(lambda: len(col.msgs[t["out"]]) >= 40, 60, "first outputs")
        w.kill()
        at_kill = len(col.msgs[t["out"]])
        more = 300  # queued by the broker in the worker's persistent session
        mqtt_publish(host, port, t["in"], messages(cancer_data, more, start=first))
        w2 = workers(cmd)  # same name → same client id → same session
        w2.wait_ready()
        total_valid = first + more - len(BAD)
        wait_until(
            lambda: len({o["key"] for o in col.decoded(t["out"])}) >= total_valid,
            90,
            "all outputs after restart",
        )
        assert at_kill < total_valid
        _check_outputs(col.decoded(t["out"]), first + more, BAD, cancer_bundle, cancer_data)
        dead = col.decoded(t["dlq"])
        assert len({d["payload"] for d in dead}) == len(BAD)
        assert {d["code"] for d in dead} == {"invalid_input"}
        assert any(d["field"] == cancer_data[2][3] for d in dead)
    finally:
        col.close()
        mqtt_forget_session(host, port, f"cloudhub-{group}-w1")


def test_mqtt_shared_subscription_splits_work(mosquitto, mqtt_topics, cancer_bundle, cancer_data):
    host, port = mosquitto
    t = mqtt_topics
    group = t["base"].replace("/", "_")
    base = f"mqtt://{host}:{port}/"
    model = Model.load(cancer_bundle)
    col = MqttCollector(host, port, [t["out"], t["dlq"]])
    ws = [
        build_worker(
            model,
            base + t["in"],
            base + t["out"],
            base + t["dlq"],
            StreamOptions(batch_size=16, max_wait_ms=1),
            group=group,
            name=f"s{i}",
        )
        for i in range(2)
    ]
    threads = [threading.Thread(target=w.run, daemon=True) for w in ws]
    for th in threads:
        th.start()
    try:
        mqtt_publish(host, port, t["in"], messages(cancer_data, 400))
        wait_until(lambda: len(col.msgs[t["out"]]) >= 400, 60, "400 outputs")
        outs = col.decoded(t["out"])
        assert sorted(o["key"] for o in outs) == sorted(f"k{i}" for i in range(400))  # once each
        # a worker counts a batch after acknowledging it, just after its outputs arrive here
        wait_until(lambda: sum(w.stats.published for w in ws) >= 400, 30, "counters")
        counts = [w.stats.published for w in ws]
        assert sum(counts) == 400 and all(c > 0 for c in counts)  # both workers took a share
    finally:
        for w in ws:
            w.stop()
        for th in threads:
            th.join(timeout=10)
        for w in ws:
            w.close()
        col.close()
        for i in range(2):
            mqtt_forget_session(host, port, f"cloudhub-{group}-s{i}")
