"""Daemon hardening: telemetry on a full disk, a corrupt outbox, supervised threads, clock jumps,
config errors with their source, a daemon that starts on a full disk."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace

import pytest

from edge_runtime.agent import FleetAgent
from edge_runtime.buffer import Outbox
from edge_runtime.daemon import Daemon
from edge_runtime.errors import ValidationError
from edge_runtime.profile import load_profile
from edge_runtime.settings import load_settings
from edge_runtime.store import ModelStore
from edge_runtime.supervise import Supervisor
from edge_runtime.telemetry import TelemetryRecorder
from tests.edge_runtime.disk import fill


def _wait(cond, timeout=30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _profile():
    return replace(load_profile("x86-gateway"), latency_budget_ms=10_000.0)


# ---- telemetry and the outbox -------------------------------------------------------------------
def test_telemetry_keeps_running_on_a_full_disk_and_counts_what_it_dropped(
    small_disk, tmp_path, cancer_bundle, keypair
):
    with ModelStore(tmp_path / "store", _profile(), [keypair[1]], latency_runs=20) as store:
        store.install(cancer_bundle)
        agent = FleetAgent(
            "d1", store, mqtt=None, data_dir=small_disk / "fleet", interval_s=0.5, resources=False
        )
        agent.start()
        try:
            assert _wait(lambda: agent.outbox.count("telemetry") >= 1)
            filler = fill(small_disk)
            assert _wait(lambda: agent.unwritten_windows >= 2), "windows fail on the full disk"
            assert agent.telemetry_error and agent._timer.is_alive()
            lost = agent.unwritten_windows
            filler.unlink()  # space returns: windows are stored again, the loss is reported
            assert _wait(lambda: agent.telemetry_error is None)
            newest = json.loads(agent.outbox.pending(0, 100_000)[-1][2])
            assert newest["dropped_windows"] >= lost
        finally:
            agent.stop(flush=False)


def test_a_corrupt_outbox_is_set_aside_and_a_new_one_started(tmp_path):
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path)
    for _ in range(3):
        ob.add_window(lambda seq, dropped: {"seq": seq})
    old_last = ob.last_seq
    ob.close()
    with open(path, "r+b") as fh:
        fh.write(b"garbage!" * 64)
    ob = Outbox(path)
    try:
        assert ob.recovered and "moved aside" in ob.recovered
        assert list(tmp_path.glob("outbox.sqlite.broken-*"))  # kept for inspection
        body = ob.add_window(lambda seq, dropped: {"seq": seq})
        assert body["seq"] > old_last  # never reuses a sequence number the hub may hold
    finally:
        ob.close()


def test_a_damaged_next_seq_is_rebuilt_not_fatal(tmp_path):
    ob = Outbox(tmp_path / "o.sqlite", first_seq=10)
    try:
        for _ in range(3):
            ob.add_window(lambda seq, dropped: {"seq": seq})
        ob.set_meta("next_seq", "not-a-number")
        body = ob.add_window(lambda seq, dropped: {"seq": seq})
        assert body["seq"] > 12 and "next_seq" in ob.recovered
        assert ob.add_window(lambda seq, dropped: {"seq": seq})["seq"] == body["seq"] + 1
    finally:
        ob.close()


# ---- clocks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("jump_s", [-3600.0, -2 * 86400.0, 86400.0])
def test_windows_span_monotonic_time_and_mark_a_wall_clock_jump(jump_s):
    clock = {"wall": 1_700_000_000.0, "mono": 500.0}
    rec = TelemetryRecorder(
        "d1", resources=False, wall=lambda: clock["wall"], mono=lambda: clock["mono"]
    )
    clock["wall"] += 10
    clock["mono"] += 10
    w1 = rec.roll(1)
    assert w1.end - w1.start == pytest.approx(10) and w1.clock_jump_s is None
    clock["wall"] += 10 + jump_s  # the wall clock is stepped during the second window
    clock["mono"] += 10
    w2 = rec.roll(2)
    assert w2.end - w2.start == pytest.approx(10)  # never negative, never a day long
    assert w2.clock_jump_s == pytest.approx(jump_s)
    assert w2.end == clock["wall"]  # the wall clock still labels the window
    clock["wall"] += 10
    clock["mono"] += 10
    w3 = rec.roll(3)
    assert w3.clock_jump_s is None and w3.end - w3.start == pytest.approx(10)


def test_uptime_comes_from_the_monotonic_clock(cancer_bundle, keypair, monkeypatch):
    d = Daemon(
        load_settings(local_api={"enabled": False}, store={"public_key": str(keypair[1])}),
        bundle=cancer_bundle,
    ).start()
    try:
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() - 86400)  # the wall clock goes back
        assert d.health()["uptime_s"] >= 0
    finally:
        monkeypatch.undo()
        d.stop()


# ---- supervised threads ---------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_thread_is_restarted_with_its_error_in_health():
    runs = []

    def work():
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("boom")  # the first run dies; the restarted one stays up
        time.sleep(30)

    box = {"t": threading.Thread(target=work, name="worker-x", daemon=True)}
    sup = Supervisor(interval_s=0.05)
    changes = []
    sup.on_change = lambda: changes.append(1)
    sup.watch(
        "worker",
        lambda: box["t"].is_alive(),
        lambda: (
            box.update(t=threading.Thread(target=work, name="worker-x", daemon=True))
            or box["t"].start()
        ),
        thread_name="worker-",
    )
    sup.start()
    try:
        box["t"].start()
        assert _wait(lambda: sup.health()["worker"]["restarts"] == 1)
        h = sup.health()["worker"]
        assert h["last_error"] == "RuntimeError: boom"
        assert _wait(lambda: sup.health()["worker"]["ok"])
        assert len(changes) >= 2  # down, then up: the state message is refreshed each time
    finally:
        sup.stop()


def test_the_daemon_supervises_its_fleet_threads(tmp_path, cancer_bundle, keypair):
    settings = load_settings(
        local_api={"port": 0},
        store={"dir": str(tmp_path / "store"), "public_key": str(keypair[1]), "latency_runs": 20},
        mqtt={"url": "mqtt://127.0.0.1:1"},  # nothing listens: offline
        telemetry={"interval_s": 0.5},
    )
    with Daemon(settings) as d:
        d.supervisor.interval_s = 0.05
        assert {"telemetry", "shadow", "mqtt_link"} <= set(d.supervisor.health())
        # kill the telemetry thread the hard way: its loop ends as if an error escaped
        d.fleet._stop.set()
        d.fleet._timer.join(5)
        d.fleet._stop.clear()
        assert _wait(lambda: d.supervisor.health()["telemetry"]["restarts"] >= 1)
        assert d.fleet._timer.is_alive()
        with pytest.raises(urllib.error.HTTPError) as err:  # 503: no model installed yet
            urllib.request.urlopen(f"{d.api.url}/health", timeout=10)
        health = json.loads(err.value.read())
        assert health["status"] == "no_model"
        assert health["threads"]["telemetry"]["restarts"] >= 1
        assert d.fleet.state().health["threads"]["telemetry"]["restarts"] >= 1


# ---- a daemon started on a full disk -------------------------------------------------------------
def test_the_daemon_starts_on_a_full_disk_and_serves_the_intact_model(
    small_disk, cancer_bundle, keypair, rows
):
    store_dir = small_disk / "store"
    with ModelStore(store_dir, _profile(), [keypair[1]], latency_runs=20) as s:
        s.install(cancer_bundle)
    fill(small_disk)
    settings = load_settings(
        local_api={"port": 0},
        store={"dir": str(store_dir), "public_key": str(keypair[1])},
        mqtt={"url": "mqtt://127.0.0.1:1"},
    )
    with Daemon(settings) as d:
        req = urllib.request.Request(
            f"{d.api.url}/predict",
            data=json.dumps({"rows": rows}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert len(json.loads(r.read())["predictions"]) == 5
        with urllib.request.urlopen(f"{d.api.url}/health", timeout=10) as r:
            health = json.loads(r.read())
        assert health["status"] == "ok" and health["store"]["read_only"]
        assert any("read-only" in line for line in health["degraded"])
        assert d.fleet.state().health["store"]["read_only"]


# ---- configuration ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "toml,env,match",
    [
        (
            "[local_api]\nport = true\n",
            {},
            r"local_api\.port \(device\.toml:2\): expected a number",
        ),
        ("[telemetry]\ninterval_s = 1e-9\n", {}, r"telemetry\.interval_s \(device\.toml:2\)"),
        ("[telemetry]\ninterval_s = inf\n", {}, r"telemetry\.interval_s \(device\.toml:2\)"),
        ("[telemetry]\ninterval_s = nan\n", {}, r"telemetry\.interval_s \(device\.toml:2\)"),
        ('[mqtt]\nurl = "mqtt://h:abc"\n', {}, r"mqtt\.url \(device\.toml:2\): .*port"),
        (
            '[mqtt]\nurl = "mqtt://h:1883"\nkeyfile = "nope.key"\n',
            {},
            r"mqtt\.keyfile \(device\.toml:3\): file not found: .*nope\.key",
        ),
        ('[mqtt]\nca_file = "ca.pem"\n', {}, r"mqtt\.ca_file \(device\.toml:2\): file not found"),
        ("", {"EDGE_LOCAL_API__PORT": "true"}, r"local_api\.port \(env EDGE_LOCAL_API__PORT\)"),
        (
            "[local_api]\nport = 8701\n",
            {"EDGE_LOCAL_API__PORT": "x"},
            r"local_api\.port \(env EDGE_LOCAL_API__PORT\)",
        ),
        (
            "",
            {"EDGE_STORE__PUBLIC_KEYS": "k.pub"},
            r"store\.public_keys \(env EDGE_STORE__PUBLIC_KEYS\): .*JSON",
        ),
        ("", {"EDGE_LOCAL_API": "{bad"}, r"local_api \(env EDGE_LOCAL_API\): .*JSON"),
        (
            "",
            {"EDGE_TELEMETRY__INTERVAL_S": "90000"},
            r"telemetry\.interval_s \(env EDGE_TELEMETRY__INTERVAL_S\)",
        ),
    ],
)
def test_config_errors_are_one_line_with_their_source(tmp_path, monkeypatch, toml, env, match):
    for k in [k for k in os.environ if k.startswith("EDGE_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = tmp_path / "device.toml"
    cfg.write_text(toml)
    with pytest.raises(ValidationError, match=match) as err:
        load_settings(cfg)
    assert "\n" not in err.value.message


@pytest.mark.parametrize("what", ["keyfile", "password"])
def test_secrets_readable_by_others_are_refused_unless_allowed(tmp_path, monkeypatch, caplog, what):
    for k in [k for k in os.environ if k.startswith("EDGE_")]:
        monkeypatch.delenv(k)
    key = tmp_path / "client.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    cfg = tmp_path / "device.toml"
    body = '[mqtt]\nurl = "mqtts://h:8883"\n'
    body += 'keyfile = "client.key"\n' if what == "keyfile" else 'password = "s3cret-value"\n'
    cfg.write_text(body)
    for p in (key, cfg):
        p.chmod(0o600)
    load_settings(cfg)  # private: fine
    (key if what == "keyfile" else cfg).chmod(0o644)
    with pytest.raises(ValidationError, match="readable by other users .*allow_insecure_secrets"):
        load_settings(cfg)
    cfg.write_text("allow_insecure_secrets = true\n" + body)
    cfg.chmod(0o644)
    load_settings(cfg)  # allowed, with a warning
    assert "readable by other users" in caplog.text


def test_the_cli_prints_a_config_error_as_one_line(tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "device.toml"
    cfg.write_text("[local_api]\nport = true\n")
    res = subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "local_api.port (device.toml:2)" in lines[0], res.stderr


def test_sqlite_is_not_needed_to_read_health_of_a_plain_daemon(cancer_bundle, keypair):
    d = Daemon(
        load_settings(local_api={"enabled": False}, store={"public_key": str(keypair[1])}),
        bundle=cancer_bundle,
    )
    h = d.health()
    assert h["status"] == "ok" and h["degraded"] == []
    assert sqlite3  # (the fixed-bundle daemon has no store, no outbox)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_mqtt_link_thread_is_restarted(tmp_path, cancer_bundle, keypair, mosquitto):
    """A callback error ends paho's network thread (paho re-raises by default): the supervisor
    restarts it, the link reconnects and the error is in /health and the state message."""
    import uuid

    import paho.mqtt.client as mqtt

    from edge_runtime.protocol import topic

    host, port = mosquitto
    prefix = f"test-{uuid.uuid4().hex[:10]}/v1"
    settings = load_settings(
        local_api={"enabled": False},
        device={"id": "sup-1"},
        store={"dir": str(tmp_path / "store"), "public_key": str(keypair[1]), "latency_runs": 20},
        mqtt={"url": f"mqtt://{host}:{port}", "prefix": prefix},
    )
    with Daemon(settings) as d:
        d.supervisor.interval_s = 0.05
        link = d.fleet.link
        assert link.wait_connected(20)
        original = link.client.on_message

        def boom_once(client, userdata, msg):
            link.client.on_message = original
            raise RuntimeError("boom in on_message")

        link.client.on_message = boom_once
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect(host, port)
        pub.loop_start()
        try:
            # retained: the link sets "connected" when it sends SUBSCRIBE, not when the broker has
            # it; a plain message could reach the broker first and go to nobody
            pub.publish(topic(prefix, "sup-1", "desired"), b"{}", qos=1, retain=True).wait_for_publish(10)
            assert _wait(lambda: d.supervisor.health()["mqtt_link"]["restarts"] >= 1)
            h = d.health()["threads"]["mqtt_link"]
            assert h["last_error"] == "RuntimeError: boom in on_message"
            assert _wait(lambda: link.connected.is_set() and link.client._thread.is_alive())
            assert d.fleet.state().health["threads"]["mqtt_link"]["restarts"] >= 1
        finally:
            pub.publish(topic(prefix, "sup-1", "desired"), b"", qos=1, retain=True).wait_for_publish(10)
            pub.loop_stop()
            pub.disconnect()
