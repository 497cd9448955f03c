"""Device ⇄ hub over the real Mosquitto (127.0.0.1:1883), one topic prefix per test."""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt
import pytest

from edge_runtime.protocol import DesiredBundle, DesiredState
from tests.fleet.conftest import wait_for

pytestmark = pytest.mark.services

BROKER = "mqtt://127.0.0.1:1883"


def _hub(make_hub, prefix, url=BROKER):
    hub = make_hub(mqtt_url=url, mqtt_prefix=prefix)
    hub.fleet.start(session_expiry=0)
    assert hub.fleet.ingest.wait_connected(10)
    return hub


def _desired(doc_id: str, bundle, url: str, slot: str = "active") -> DesiredState:
    from edge_runtime.bundle import read_bundle

    m = read_bundle(bundle).manifest
    return DesiredState(id=doc_id, bundles={slot: DesiredBundle(name=m.name, version=m.version, url=url,
                                                                sha256=m.digest)})


def test_state_retained_and_last_will(mosquitto, prefix, make_hub, make_agent, cancer_bundle):
    hub = _hub(make_hub, prefix)
    agent = make_agent("dev-1", url=BROKER, prefix=prefix, bundle=cancer_bundle)
    agent.start()
    rec = wait_for(lambda: (d := hub.fleet.devices()) and d[0].online and d[0], what="device online")
    assert rec.id == "dev-1" and rec.tags == {"region": "eu"} and rec.profile == "x86-gateway"
    from edge_runtime.bundle import read_bundle

    assert rec.running("active")["sha256"] == read_bundle(cancer_bundle).manifest.digest
    # the state is retained: a hub that starts later still learns it
    hub2 = _hub(make_hub, prefix)
    wait_for(lambda: hub2.fleet.devices() and hub2.fleet.device("dev-1").online, what="retained state")
    agent.stop(graceful=False)  # crash: the broker publishes the last will
    wait_for(lambda: not hub.fleet.device("dev-1").online, what="last will → offline")
    assert hub.fleet.device("dev-1").running("active") is not None  # still says what it ran


def test_desired_verified_install_and_duplicates_apply_once(mosquitto, prefix, make_hub, make_agent,
                                                            cancer_bundle, cancer_bundle_v2, bundle_server):
    from edge_runtime.bundle import read_bundle

    hub = _hub(make_hub, prefix)
    agent = make_agent("dev-1", url=BROKER, prefix=prefix, bundle=cancer_bundle)
    agent.start()
    assert agent.link.wait_connected(10)
    v2 = read_bundle(cancer_bundle_v2).manifest.digest
    doc = _desired("d-1", cancer_bundle_v2, bundle_server(cancer_bundle_v2))
    doc.rollout_id = "r-1"
    hub.fleet.set_desired("dev-1", doc)
    rec = wait_for(lambda: (r := hub.fleet.device("dev-1")).converged and r, what="desired applied")
    assert rec.running("active")["sha256"] == v2 and rec.running("active")["version"] == "2.0.0"
    assert agent.store.model("active").digest == v2
    steps = wait_for(lambda: [e.step for e in hub.fleet.events(rollout_id="r-1")] if len(
        hub.fleet.events(rollout_id="r-1")) >= 5 else None, what="events")
    assert steps == ["received", "downloading", "verified", "self_test_passed", "active"]
    # replays: the same document again (retained re-publish), a reconnect, and a direct duplicate
    hub.fleet.set_desired("dev-1", doc)
    agent.link.cut()
    agent.link.resume()
    assert agent.link.wait_connected(10)
    agent.apply_desired(doc)
    time.sleep(1.0)
    assert agent.reconciler.wait_idle(10)
    assert agent.reconciler.applied_count == 1
    assert [e.step for e in hub.fleet.events(rollout_id="r-1")].count("received") == 1
    installs = [j for j in agent.store.journal(50) if j["op"] == "install" and j["sha256"] == v2]
    assert len(installs) == 1


def test_tampered_bundle_refused_old_model_keeps_serving(mosquitto, prefix, make_hub, make_agent, cancer_bundle,
                                                         cancer_bundle_v2, bundle_server, tmp_path, cancer_data):
    import shutil

    from edge_runtime.bundle import read_bundle

    hub = _hub(make_hub, prefix)
    agent = make_agent("dev-1", url=BROKER, prefix=prefix, bundle=cancer_bundle)
    agent.start()
    assert agent.link.wait_connected(10)
    bad = tmp_path / "tampered"
    shutil.copytree(cancer_bundle_v2, bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[-20] ^= 0xFF  # one flipped byte: the manifest (and its digest) is unchanged
    (bad / "model.onnx").write_bytes(bytes(data))
    hub.fleet.set_desired("dev-1", _desired("d-bad", cancer_bundle_v2, bundle_server(bad, "v2.tar")))
    failed = wait_for(lambda: [e for e in hub.fleet.events(device_id="dev-1") if e.step == "failed"],
                      what="failed event")
    assert "sha256" in failed[0].reason or "hash" in failed[0].reason
    v1 = read_bundle(cancer_bundle).manifest.digest
    assert agent.store.model("active").digest == v1
    x, _, names = cancer_data
    model, out = agent.predict([dict(zip(names, map(float, x[0])))])
    assert model.digest == v1 and 0.0 <= out[0]["probability"] <= 1.0
    rec = hub.fleet.device("dev-1")
    assert rec.running("active")["sha256"] == v1 and not rec.converged


def test_windows_replayed_in_order_and_deduped(mosquitto, prefix, make_hub, make_agent, cancer_bundle):
    hub = _hub(make_hub, prefix)
    agent = make_agent("dev-1", url=BROKER, prefix=prefix, bundle=cancer_bundle, interval_s=3600)
    for _ in range(5):  # offline: windows wait in the SQLite outbox
        agent.roll_window()
    assert agent.outbox.count("telemetry") == 5
    agent.start()
    wait_for(lambda: hub.fleet.window_count("dev-1") == 5, what="replayed windows")
    wait_for(lambda: agent.outbox.count("telemetry") == 0, what="the hub's ack empties the outbox")
    from sqlalchemy import select

    from cloud_hub.fleet.tables import windows

    with hub.engine.connect() as conn:  # stored in the order the device produced them
        seqs = list(conn.execute(select(windows.c.seq).where(windows.c.device_id == "dev-1")
                                 .order_by(windows.c.id)).scalars())
    f = agent.outbox.first_seq
    assert seqs == [f, f + 1, f + 2, f + 3, f + 4]
    # the broker delivers a window twice (QoS 1 redelivery, replay after a lost PUBACK): stored once
    body = agent.roll_window()
    raw = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    raw.connect("127.0.0.1", 1883)
    raw.loop_start()
    try:
        for _ in range(3):
            raw.publish(f"{prefix}/devices/dev-1/telemetry", json.dumps(body), qos=1).wait_for_publish(5)
    finally:
        raw.disconnect()
        raw.loop_stop()
    wait_for(lambda: hub.fleet.ingest.stats["written_windows"] >= 9, what="duplicates ingested")
    assert hub.fleet.window_seqs("dev-1") == list(range(f, f + 6))


def test_broker_restart_mid_run_loses_no_window(own_mosquitto, prefix, make_hub, make_agent, cancer_bundle,
                                                cancer_data):
    broker = own_mosquitto(persist=True)
    hub = _hub(make_hub, prefix, broker.url)
    hub.fleet.stop()
    hub.fleet.start(session_expiry=600)  # persistent session: the broker keeps the hub's queue
    assert hub.fleet.ingest.wait_connected(10)
    agent = make_agent("dev-1", url=broker.url, prefix=prefix, bundle=cancer_bundle, interval_s=0.2,
                       ack_timeout_s=0.5)
    agent.start()
    x, _, names = cancer_data
    rows = [dict(zip(names, map(float, r))) for r in x[:20]]
    wait_for(lambda: hub.fleet.window_count("dev-1") >= 3, what="first windows")
    broker.stop()
    t_end = time.monotonic() + 1.5
    served = 0
    # the device keeps serving while the broker is down: 1.5 s (several windows) and at least 100
    # requests (counted, not timed: a loaded machine serves fewer per second)
    while time.monotonic() < t_end or served < 100:
        agent.predict(rows[:1])
        served += 1
        time.sleep(0.01)
    assert agent.outbox.count("telemetry") >= 3
    broker.start()
    wait_for(lambda: agent.link.connected.is_set(), what="device reconnect")
    # windows replayed before the hub resubscribed were taken and dropped by the broker (Mosquitto
    # 2.0 does not restore shared subscriptions): the device resends them until the hub acks
    wait_for(lambda: agent.outbox.count() <= 1, what="the hub acknowledged the replayed windows")
    first = agent.outbox.first_seq
    agent.stop()  # graceful: the last window goes out too
    last = agent.last_seq
    assert agent.unsent == 0
    try:
        wait_for(lambda: hub.fleet.window_count("dev-1") == last - first + 1, timeout=20, what="every window")
    except AssertionError:
        raise AssertionError(f"last={last} got {hub.fleet.window_seqs('dev-1')} {hub.fleet.ingest.stats}")
    assert hub.fleet.window_seqs("dev-1") == list(range(first, last + 1))
    agg = hub.fleet.window_stats(["dev-1"])
    assert agg.requests >= 100


def test_acl_refuses_a_device_publishing_as_another(own_mosquitto, prefix, make_hub, make_agent, cancer_bundle,
                                                    tmp_path):
    hub = make_hub(mqtt_prefix=prefix, mqtt_username="hub", mqtt_password="hub-password-123")
    a = hub.fleet.register_device("dev-a", generate_password=True)
    hub.fleet.register_device("dev-b", generate_password=True)
    passwd, acl = hub.fleet.write_acl(tmp_path / "acl")
    broker = own_mosquitto(passwd=passwd, acl=acl)
    hub.fleet.mqtt_url = broker.url
    hub.fleet.start(session_expiry=0)
    assert hub.fleet.ingest.wait_connected(10)
    agent = make_agent("dev-a", url=broker.url, prefix=prefix, bundle=cancer_bundle, username="dev-a",
                       password=a.password)
    agent.start()
    wait_for(lambda: hub.fleet.window_count("dev-a") >= 1, what="dev-a's own windows")
    # dev-a, with its own valid credentials, publishes a window and a state as dev-b
    spoof = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-a-spoof", protocol=mqtt.MQTTv5)
    spoof.username_pw_set("dev-a", a.password)
    spoof.connect("127.0.0.1", broker.port)
    spoof.loop_start()
    try:
        body = {"device_id": "dev-b", "seq": 1, "start": 0, "end": 1, "slots": []}
        spoof.publish(f"{prefix}/devices/dev-b/telemetry", json.dumps(body), qos=1).wait_for_publish(5)
        spoof.publish(f"{prefix}/devices/dev-b/state", json.dumps({"device_id": "dev-b", "online": True}),
                      qos=1).wait_for_publish(5)
        # and a payload that lies about its device id on its own topic: the hub rejects it
        body["device_id"] = "dev-b"
        spoof.publish(f"{prefix}/devices/dev-a/telemetry", json.dumps(body), qos=1).wait_for_publish(5)
    finally:
        spoof.disconnect()
        spoof.loop_stop()
    wait_for(lambda: hub.fleet.ingest.stats["rejected"] >= 1, what="payload rejected")
    time.sleep(0.5)
    assert hub.fleet.window_count("dev-b") == 0
    assert not hub.fleet.device("dev-b").online
    # a wrong password is refused outright
    bad = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="intruder", protocol=mqtt.MQTTv5)
    bad.username_pw_set("dev-b", "wrong-password")
    answers = []
    bad.on_connect = lambda _c, _u, _f, rc, _p=None: answers.append(rc)
    bad.connect("127.0.0.1", broker.port)
    deadline = time.monotonic() + 5
    while not answers and time.monotonic() < deadline:
        bad.loop(timeout=0.2)
    bad.disconnect()
    assert answers and answers[0].is_failure and not bad.is_connected()
    assert answers[0].value in (0x86, 0x87)  # bad user name or password / not authorized
