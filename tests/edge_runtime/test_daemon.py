"""Daemon: in-process predict path, observers, services, settings."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.daemon import Daemon
from edge_runtime.errors import UnavailableError, ValidationError
from edge_runtime.settings import load_settings


@pytest.fixture
def store_daemon(tmp_path, keypair, cancer_bundle):
    settings = load_settings(local_api={"enabled": False},
                             store={"dir": str(tmp_path / "store"), "public_key": str(keypair[1]),
                                    "latency_runs": 20})
    d = Daemon(settings)
    d.store.install(cancer_bundle)
    yield d
    d.stop()


def test_predict_notifies_observers_with_arrays(store_daemon, rows):
    seen = []
    store_daemon.observers.append(seen.append)
    store_daemon.observers.append(lambda rec: 1 / 0)  # a broken observer changes nothing
    out = store_daemon.predict(rows)
    assert out["model"]["version"] == "1.0.0" and len(out["predictions"]) == 5
    (rec,) = seen
    assert rec.slot == "active" and rec.rows == 5 and rec.error is None
    assert rec.x.shape == (5, 30) and rec.latency_s > 0
    np.testing.assert_allclose(rec.scores.probability, [p["probability"] for p in out["predictions"]])
    with pytest.raises(ValidationError):
        store_daemon.predict([{"x": 1}])
    assert seen[-1].error is not None and seen[-1].scores is None


def test_no_model_and_shadow_slot(tmp_path, keypair, cancer_bundle, cancer_bundle_v2, rows):
    settings = load_settings(local_api={"enabled": False},
                             store={"dir": str(tmp_path / "s"), "public_key": str(keypair[1]),
                                    "latency_runs": 20})
    d = Daemon(settings)
    try:
        with pytest.raises(UnavailableError, match="no model is active"):
            d.predict(rows)
        assert d.health()["status"] == "no_model"
        d.store.install(cancer_bundle)
        d.store.install(cancer_bundle_v2, slot="shadow")
        assert d.predict(rows, slot="shadow")["model"]["version"] == "2.0.0"
        assert d.models()["shadow"]["loaded"] is True
    finally:
        d.stop()


def test_services_start_after_the_api_and_stop_before(tmp_path, cancer_bundle):
    calls = []

    class Svc:
        def __init__(self, name):
            self.name = name

        def start(self):
            calls.append(("start", self.name, daemon.api is not None))

        def stop(self):
            calls.append(("stop", self.name, daemon.api is not None))

    daemon = Daemon(load_settings(local_api={"port": 0}), bundle=cancer_bundle)
    daemon.services += [Svc("a"), Svc("b")]
    with daemon:
        pass
    assert calls == [("start", "a", True), ("start", "b", True), ("stop", "b", True),
                     ("stop", "a", True)]


def test_settings_from_toml_and_env(tmp_path, monkeypatch, keypair):
    cfg = tmp_path / "device.toml"
    cfg.write_text(f"""
[device]
id = "dev-001"
profile = "rpi4"
tags = {{ region = "eu" }}

[mqtt]
url = "mqtt://127.0.0.1:1883"

[hub]
url = "http://127.0.0.1:8000"

[store]
dir = "./edge-data"
public_key = "{keypair[1]}"

[telemetry]
interval_s = 10

[shadow]
sample_rate = 0.5

[local_api]
host = "127.0.0.1"
port = 8700
""")
    monkeypatch.setenv("EDGE_LOCAL_API__PORT", "9123")
    monkeypatch.setenv("EDGE_DEVICE__TAGS", '{"region": "us"}')
    s = load_settings(cfg)
    assert s.device.id == "dev-001" and s.device.profile == "rpi4"
    assert s.device.tags == {"region": "us"}
    assert s.local_api.port == 9123
    assert s.store.dir == tmp_path / "edge-data"
    assert s.store.key_paths() == [keypair[1]]
    assert s.shadow.sample_rate == 0.5 and s.telemetry.interval_s == 10
    assert s.mqtt.url == "mqtt://127.0.0.1:1883" and s.hub.url == "http://127.0.0.1:8000"


@pytest.mark.parametrize("text,field", [
    ("[local_api]\nport = 70000\n", "local_api.port"),
    ("[shadow]\nsample_rate = 2\n", "shadow.sample_rate"),
    ("[device]\nid = 'bad id/'\n", "device.id"),
    ("[store]\ncolour = 1\n", "store.colour"),
    ("[mqtt]\npassword = 'changeme'\n", "settings"),
    ("[device\n", "config"),
])
def test_bad_settings_name_the_field(tmp_path, text, field):
    cfg = tmp_path / "device.toml"
    cfg.write_text(text)
    with pytest.raises(ValidationError) as ei:
        load_settings(cfg)
    assert ei.value.field == field


def test_predictions_never_fail_while_models_switch(store_daemon, cancer_bundle_v2, rows):
    """Installs and rollbacks in one thread, predictions and /models reads in others."""
    import threading

    errors, versions = [], set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                versions.add(store_daemon.predict(rows[:2])["model"]["version"])
                assert store_daemon.models()["active"] is not None
            except Exception as exc:  # noqa: BLE001 - the test collects any failure
                errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        store_daemon.store.install(cancer_bundle_v2)
        for _ in range(4):
            store_daemon.store.rollback()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert errors == []
    assert versions <= {"1.0.0", "2.0.0"} and versions
    assert store_daemon.model().version == "2.0.0"
