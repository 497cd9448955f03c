"""`cloud-hub fleet acl`: a real Mosquitto started from the generated mosquitto.conf, and a
device (valid credentials of its own) trying to harm the hub and another device."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import free_port, port_open
from tests.fleet.conftest import _mosquitto_bin, wait_for

pytestmark = pytest.mark.services

NOT_AUTHORIZED = 0x87


def _run_as() -> str | None:
    # as root, mosquitto drops to the 'mosquitto' user, which cannot read pytest's private temp dir
    return "root" if hasattr(os, "geteuid") and os.geteuid() == 0 else None


@pytest.fixture
def generated_broker(tmp_path):
    """Start ``mosquitto -c DIR/mosquitto.conf`` exactly as written; stopped by PID."""
    procs: list[subprocess.Popen] = []

    def start(conf: Path, port: int) -> subprocess.Popen:
        p = subprocess.Popen(
            [_mosquitto_bin(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        procs.append(p)
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port, 0.2):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"mosquitto did not start from {conf}: {p.stderr.read().decode()[-500:]}"
                )
            time.sleep(0.05)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)


class Probe:
    """A raw MQTT v5 client that records CONNACK and SUBACK reason codes and messages."""

    def __init__(self, port: int, user: str, password: str, client_id: str) -> None:
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.c.username_pw_set(user, password)
        self.connack: list = []
        self.subacks: dict[int, list[int]] = {}
        self.messages: list[str] = []
        self.disconnects = 0
        self.c.on_connect = lambda _c, _u, _f, rc, _p=None: self.connack.append(rc)
        self.c.on_subscribe = lambda _c, _u, mid, rcs, _p=None: self.subacks.__setitem__(
            mid, [r.value for r in rcs]
        )
        self.c.on_message = lambda _c, _u, m: self.messages.append(m.topic)
        self.c.on_disconnect = lambda *_a, **_k: setattr(self, "disconnects", self.disconnects + 1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        wait_for(lambda: self.connack or self.disconnects, timeout=10, what="CONNACK")

    def subscribe(self, topic: str) -> int:
        _, mid = self.c.subscribe(topic, qos=1)
        wait_for(lambda: mid in self.subacks, timeout=10, what=f"SUBACK for {topic}")
        return self.subacks[mid][0]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_generated_mosquitto_conf_stops_a_device_from_harming_others(
    tmp_path, prefix, make_hub, make_agent, cancer_bundle, generated_broker
):
    from edge_runtime.link import client_id_for

    port = free_port()
    hub = make_hub(mqtt_prefix=prefix, mqtt_username="hub", mqtt_password="hub-password-123")
    a = hub.fleet.register_device("dev-a", generate_password=True)
    b = hub.fleet.register_device("dev-b", generate_password=True)
    out = hub.fleet.write_broker_config(
        tmp_path / "broker", port=port, bind="127.0.0.1", run_as=_run_as()
    )
    assert out["devices"] == 2
    generated_broker(out["conf"], port)
    url = f"mqtt://127.0.0.1:{port}"
    hub.fleet.mqtt_url = url
    hub.fleet.start(session_expiry=0)
    assert hub.fleet.ingest.wait_connected(10)
    agent = make_agent(
        "dev-a",
        url=url,
        prefix=prefix,
        bundle=cancer_bundle,
        username="dev-a",
        password=a.password,
        interval_s=0.1,
    )
    agent.start()
    assert agent.link.wait_connected(10)
    hub.fleet.set_desired("dev-a", {"id": "doc-a", "bundles": {}})
    hub.fleet.set_desired("dev-b", {"id": "doc-b", "bundles": {}})

    # dev-b, with its own valid credentials, attacks for a while (the hub must keep every window)
    results: dict[str, object] = {}

    def attack() -> None:
        evil = Probe(port, "dev-b", b.password, client_id_for("dev-b", prefix))
        results["own_connack"] = evil.connack[0].value
        results["share_telemetry"] = evil.subscribe(f"$share/hub/{prefix}/devices/+/telemetry")
        results["share_events"] = evil.subscribe(f"$share/hub/{prefix}/devices/+/events")
        results["share_other_group"] = evil.subscribe(f"$share/evil/{prefix}/devices/+/telemetry")
        results["all_telemetry"] = evil.subscribe(f"{prefix}/devices/+/telemetry")
        results["other_desired"] = evil.subscribe(f"{prefix}/devices/dev-a/desired")
        results["other_ack"] = evil.subscribe(f"{prefix}/devices/dev-a/ack")
        results["own_desired"] = evil.subscribe(f"{prefix}/devices/dev-b/desired")
        takeovers = []
        for _ in range(5):  # connect as dev-a (its client id) to knock it off
            t = Probe(port, "dev-b", b.password, client_id_for("dev-a", prefix))
            takeovers.append(t.connack[0].value if t.connack else None)
            t.close()
        results["takeovers"] = takeovers
        time.sleep(1.0)
        results["messages"] = list(evil.messages)
        evil.close()

    t = threading.Thread(target=attack)
    t.start()
    t.join(60)
    assert results["own_connack"] == 0
    for key in (
        "share_telemetry",
        "share_events",
        "share_other_group",
        "all_telemetry",
        "other_desired",
        "other_ack",
    ):
        assert results[key] == NOT_AUTHORIZED, (key, results[key])
    assert results["own_desired"] == 1  # granted QoS 1: a device reads its own desired document
    assert results["messages"] == [f"{prefix}/devices/dev-b/desired"]  # and nothing else
    assert results["takeovers"] == [NOT_AUTHORIZED] * 5
    assert agent.link.connects == 1 and agent.link.connected.is_set()  # never knocked off
    first = agent.outbox.first_seq
    agent.stop()
    last = agent.last_seq
    wait_for(
        lambda: hub.fleet.window_summary(["dev-a"]).get("dev-a", {}).get("last_seq") == last,
        what="dev-a's last window",
    )
    assert hub.fleet.window_seqs("dev-a") == list(
        range(first, last + 1)
    )  # every window, while attacked
    assert agent.unsent == 0


def test_cli_writes_a_config_mosquitto_starts(tmp_path, generated_broker):
    port = free_port()
    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path / "hub"), "HUB_DEV": "1"}
    env.pop("HUB_MQTT_PASSWORD", None)
    cmd = [
        sys.executable,
        "-m",
        "cloud_hub.cli",
        "fleet",
        "acl",
        "--out",
        str(tmp_path / "b"),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
    ] + (["--run-as", _run_as()] if _run_as() else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert r.returncode == 0, r.stderr
    d = tmp_path / "b"
    names = {p.name for p in d.iterdir()}
    assert names >= {"mosquitto.conf", "dynamic-security.json", "passwd", "acl", "hub.env"}
    conf = (d / "mosquitto.conf").read_text()
    assert f"listener {port} 127.0.0.1" in conf and "persistence true" in conf
    assert "max_queued_messages 200000" in conf
    creds = dict(line.split("=", 1) for line in (d / "hub.env").read_text().splitlines())
    generated_broker(d / "mosquitto.conf", port)
    hub_probe = Probe(port, creds["HUB_MQTT_USERNAME"], creds["HUB_MQTT_PASSWORD"], "hub-probe")
    assert hub_probe.connack[0].value == 0
    assert hub_probe.subscribe("$share/hub/edgefleet/v1/devices/+/telemetry") == 1
    hub_probe.close()
    anon = Probe(port, "nobody", "wrong-password", "x")
    assert anon.connack and anon.connack[0].is_failure
    anon.close()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloud_hub.cli",
            "fleet",
            "acl",
            "--out",
            str(tmp_path / "c"),
            "--port",
            "70000",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert bad.returncode != 0 and "port" in bad.stderr and bad.stderr.count("\n") == 1
