"""Fleet fixtures: a hub on a temp dir, unique MQTT topic prefixes, own mosquitto instances."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVICES, free_port, port_open


@pytest.fixture
def prefix():
    """A topic prefix of its own per test, so tests on the shared broker never see each other.

    Afterwards the retained documents the test left under it (state, desired) are cleared."""
    p = f"test-{uuid.uuid4().hex[:10]}/v1"
    yield p
    if port_open("127.0.0.1", 1883, 0.2):
        clear_retained("127.0.0.1", 1883, p)


def clear_retained(host: str, port: int, prefix: str, wait_s: float = 0.3) -> int:
    import paho.mqtt.client as mqtt

    topics: set[str] = set()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_message = lambda _c, _u, m: topics.add(m.topic) if m.retain and m.payload else None
    try:
        c.connect(host, port)
    except OSError:
        return 0
    c.loop_start()
    try:
        c.subscribe(f"{prefix}/#", qos=1)
        time.sleep(wait_s)
        for t in sorted(topics):
            c.publish(t, b"", qos=1, retain=True).wait_for_publish(2)
    finally:
        c.disconnect()
        c.loop_stop()
    return len(topics)


@pytest.fixture
def make_hub(tmp_path):
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings

    hubs = []

    def make(**kw):
        kw.setdefault("data_dir", tmp_path / f"hub{len(hubs)}")
        hub = Hub(HubSettings(**kw))
        hubs.append(hub)
        return hub

    yield make
    for h in hubs:
        h.close()


class MosquittoProcess:
    """A private mosquitto on a free port (killed by its PID), for restart and ACL tests."""

    def __init__(self, workdir: Path, passwd: Path | None = None, acl: Path | None = None,
                 persist: bool = False, extra: list[str] | None = None) -> None:
        self.workdir = workdir
        self.persist = persist
        self.extra = list(extra or [])
        self.port = free_port()
        self.passwd, self.acl = passwd, acl
        self.proc: subprocess.Popen | None = None

    def start(self) -> MosquittoProcess:
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        lines = [f"listener {self.port} 127.0.0.1"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # as root, mosquitto would drop to a user that
            lines += ["user root"]                        # cannot read the test's private temp dir
        if self.persist:  # production setting: queued QoS 1 messages survive a broker restart
            store = self.workdir / f"mosq-{self.port}"
            store.mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {store}/", "autosave_interval 1"]
        else:
            lines += ["persistence false"]
        if self.passwd:
            lines += ["allow_anonymous false", f"password_file {self.passwd}"]
        else:
            lines += ["allow_anonymous true"]
        if self.acl:
            lines += [f"acl_file {self.acl}"]
        lines += self.extra
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([_mosquitto_bin(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port, 0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
                self.stop()
                raise RuntimeError(f"mosquitto did not start on {self.port}: {err}")
            time.sleep(0.05)
        return self

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None


def _mosquitto_bin() -> str:
    path = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if path is None:
        if REQUIRE_SERVICES:
            pytest.fail("the mosquitto binary is required in CI")
        pytest.skip("mosquitto binary not installed")
    return path


@pytest.fixture
def own_mosquitto(tmp_path):
    """Factory: start a private mosquitto (optionally with passwd/acl files); all stopped at the end."""
    procs: list[MosquittoProcess] = []

    def start(passwd: Path | None = None, acl: Path | None = None, persist: bool = False,
              extra: list[str] | None = None) -> MosquittoProcess:
        _mosquitto_bin()
        m = MosquittoProcess(tmp_path, passwd, acl, persist, extra).start()
        procs.append(m)
        return m

    yield start
    for m in procs:
        m.stop()


def wait_for(cond, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def cancer_bundle_v2(tmp_path_factory, cancer_data, keypair) -> Path:
    """A second, different model (stronger regularisation) as version 2.0.0."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tests.conftest import build_sklearn_bundle

    x, y, names = cancer_data
    est = make_pipeline(StandardScaler(), LogisticRegression(C=0.005, max_iter=500)).fit(x, y)
    out = tmp_path_factory.mktemp("bundles") / "cancer-2.0.0"
    return build_sklearn_bundle(out, est, x, names, key=keypair[0], version="2.0.0")


@pytest.fixture
def bundle_server(tmp_path):
    """A real HTTP server (thread, free port) serving bundle tars: ``serve(path) -> url``."""
    import http.server
    import threading
    from functools import partial

    from edge_runtime.bundle import pack_bundle

    root = tmp_path / "served"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()

    def serve(bundle_dir: Path, name: str | None = None) -> str:
        name = name or bundle_dir.name + ".tar"
        pack_bundle(bundle_dir, root / name)
        return f"http://127.0.0.1:{server.server_address[1]}/{name}"

    serve.root = root
    yield serve
    server.shutdown()
    server.server_close()


@pytest.fixture
def make_agent(tmp_path, keypair):
    """Factory for a device: a real ModelStore + FleetAgent; everything stopped at the end."""
    from edge_runtime.agent import FleetAgent
    from edge_runtime.mqtt import MqttConfig
    from edge_runtime.store import ModelStore

    made = []

    def make(device_id: str, *, url: str | None, prefix: str, bundle: Path | None = None,
             interval_s: float = 0.25, username: str | None = None, password: str | None = None,
             ca_file: str | None = None, **kw):
        store = ModelStore(tmp_path / device_id / "store", "x86-gateway", [keypair[1]], latency_runs=10)
        if bundle is not None:
            store.install(bundle)
        mqtt = MqttConfig(url=url, username=username, password=password, ca_file=ca_file) if url else None
        agent = FleetAgent(device_id, store, mqtt=mqtt, data_dir=tmp_path / device_id / "fleet", prefix=prefix,
                           interval_s=interval_s, profile="x86-gateway", tags={"region": "eu"}, **kw)
        made.append((agent, store))
        return agent

    yield make
    for agent, store in made:
        try:
            agent.stop(graceful=False, flush=False)
        except Exception:
            pass
        store.close()
