"""End to end: hub (embedded amqtt broker + real HTTP API on a free port) and a simulated fleet of
real daemons that download the bundle from ``GET /v1/bundles/{sha256}``."""

from __future__ import annotations

import threading

from edge_runtime.protocol import DesiredBundle, DesiredState
from tests.conftest import free_port
from tests.fleet.conftest import wait_for


def test_embedded_broker_end_to_end(make_hub, prefix, keypair, cancer_bundle, cancer_bundle_v2):
    import uvicorn

    from cloud_hub.app import create_app
    from devices.simulator import Fleet

    port = free_port()
    hub = make_hub(mqtt_prefix=prefix, port=port, trusted_keys=[keypair[1]])  # no HUB_MQTT_URL
    url = hub.fleet.start()
    assert hub.fleet.broker is not None and "protocol=3.1.1" in url
    assert hub.fleet.ingest.wait_connected(10)
    server = uvicorn.Server(uvicorn.Config(create_app(hub), host="127.0.0.1", port=port, log_level="warning",
                                           log_config=None, lifespan="off"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    wait_for(lambda: server.started, what="hub HTTP server")
    mv = hub.registry.push(cancer_bundle_v2)  # verified and re-signed by the hub key
    hub_pub = hub.registry.hub_key.path.with_suffix(".pub")
    fleet = Fleet(3, hub_url=hub.settings.base_url, mqtt_url=url, prefix=prefix, bundle=cancer_bundle,
                  public_keys=[keypair[1], hub_pub], interval_s=0.3, request_rate=20)
    fleet.start()
    try:
        wait_for(lambda: len(hub.fleet.devices(online=True)) == 3, what="3 devices online")
        wait_for(lambda: hub.fleet.window_stats(name="cancer").devices_reporting == 3, what="windows")
        hub.fleet.set_desired("sim-0000", DesiredState(id="e2e-1", rollout_id="ro-1", bundles={
            "shadow": DesiredBundle(name=mv.name, version=mv.version, url=hub.fleet.bundle_url(mv.digest),
                                    sha256=mv.digest)}))
        wait_for(lambda: hub.fleet.device("sim-0000").converged, what="shadow installed")
        assert hub.fleet.device("sim-0000").running("shadow")["sha256"] == mv.digest
        wait_for(lambda: hub.fleet.window_stats(["sim-0000"], slot="shadow").compared >= 10, what="shadow stats")
        groups = {(g["version"], g["slot"]) for g in hub.fleet.stats("cancer", by="version")}
        assert groups == {("1.0.0", "active"), ("2.0.0", "shadow")}
        assert [e.step for e in hub.fleet.events(rollout_id="ro-1")][-1] == "active"
        fleet.inject("crash", ["sim-0002"])
        wait_for(lambda: not hub.fleet.device("sim-0002").online, what="last will via amqtt")
        fleet.inject("restart", ["sim-0002"])
        wait_for(lambda: hub.fleet.device("sim-0002").online, what="restarted device back online")
    finally:
        fleet.stop()
        server.should_exit = True
        t.join(10)


def test_embedded_broker_queues_are_bounded_and_lose_no_qos1_message():
    """amqtt's fan-out queue and per-session delivery queues are unbounded; with 1,000 devices the hub
    grew to 12.6 GB. Bounded, a full queue delays the PUBACK (back-pressure) and drops nothing."""
    import paho.mqtt.client as mqtt

    from cloud_hub.fleet.broker import EmbeddedBroker

    broker = EmbeddedBroker(max_queued=4, max_session_queued=2)
    broker.start()
    received: list[bytes] = []
    clients = []
    try:
        assert broker._broker._broadcast_queue.maxsize == 4
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bounded-sub", protocol=mqtt.MQTTv311)
        sub.on_message = lambda _c, _u, msg: received.append(msg.payload)
        subscribed = threading.Event()
        sub.on_subscribe = lambda *_a: subscribed.set()
        sub.on_connect = lambda c, *_a: c.subscribe("bounded/#", qos=1)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bounded-pub", protocol=mqtt.MQTTv311)
        clients = [sub, pub]
        for c in clients:
            c.connect("127.0.0.1", broker.port)
            c.loop_start()
        assert subscribed.wait(10)
        infos = [pub.publish("bounded/t", str(i).encode(), qos=1) for i in range(300)]
        for info in infos:
            info.wait_for_publish(20)
        sessions = [s for s, _ in broker._broker._sessions.values()]
        assert sessions and all(s.delivered_message_queue.maxsize == 2 for s in sessions)
        wait_for(lambda: len(received) == 300, what="all 300 QoS1 messages fanned out")
        assert sorted(int(p) for p in received) == list(range(300))
        assert broker.queued <= 4
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
        broker.stop()


def test_embedded_broker_refuses_past_its_device_limit_with_a_clear_log_line(caplog):
    import logging

    import paho.mqtt.client as mqtt

    from cloud_hub.fleet.broker import EmbeddedBroker

    broker = EmbeddedBroker(max_clients=2)
    broker.start()
    clients, answers = [], []
    try:
        for i in range(3):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"lim-{i}", protocol=mqtt.MQTTv311)
            c.on_connect = lambda _c, _u, _f, rc, _p=None, i=i: answers.append((i, rc.value))
            with caplog.at_level(logging.ERROR, logger="cloud_hub.fleet.broker"):
                c.connect(broker.host, broker.port)
                c.loop_start()
                wait_for(lambda i=i: any(a[0] == i for a in answers), what=f"CONNACK {i}")
            clients.append(c)
        assert sorted(answers) == [(0, 0), (1, 0), (2, 136)]  # the third: server unavailable (3.1.1 rc 3)
        assert broker.refused >= 1
        assert any("refused a connection" in r.message and "the limit is 2" in r.message and "HUB_MQTT_URL"
                   in r.message for r in caplog.records)
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
        broker.stop()
