"""End-to-end acknowledgement: the device deletes only what the hub stored, and replays the rest.

Private Mosquitto brokers (persistence on) started and stopped by PID; real device daemons
(``edge-runtime run``) in subprocesses where the test kills them; the hub in-process.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fleet.conftest import wait_for

pytestmark = pytest.mark.services


def _hub(make_hub, prefix, url, data_dir=None):
    kw = {"mqtt_url": url, "mqtt_prefix": prefix}
    if data_dir is not None:
        kw["data_dir"] = data_dir
    hub = make_hub(**kw)
    hub.fleet.start(
        session_expiry=600
    )  # persistent: the broker queues for the hub while it is away
    assert hub.fleet.ingest.wait_connected(10)
    return hub


def test_outbox_deletes_only_the_acknowledged_rows(tmp_path):
    from edge_runtime.buffer import Outbox

    ob = Outbox(tmp_path / "o.sqlite", first_seq=100)
    for _ in range(6):
        ob.add_window(lambda seq, dropped: {"seq": seq})
    ob.add_event({"event_id": "e-1"})
    ob.add_event({"event_id": "e-2"})
    assert len(ob.delete_windows([(101, 102), (104, 104), (200, 300)])) == 3
    assert ob.delete_events(["e-2", "unknown"]) and ob.count("events") == 1
    left = [r for r in ob.pending(0, 100) if r[1] == "telemetry"]
    assert [int(b.split(":")[1].rstrip("}")) for _, _, b in left] == [100, 103, 105]
    assert ob.delete_windows([(100, 105)]) and ob.count("telemetry") == 0
    ob.close()


def test_a_broker_puback_without_a_hub_is_not_a_commit(
    own_mosquitto, prefix, make_hub, make_agent, cancer_bundle
):
    """The issue's loss: the device sent while no hub was subscribed; the broker took (PUBACK) and
    dropped the windows. The device keeps them until the hub acks, and sends them again."""
    broker = own_mosquitto(persist=True)
    agent = make_agent(
        "dev-1",
        url=broker.url,
        prefix=prefix,
        bundle=cancer_bundle,
        interval_s=3600,
        ack_timeout_s=0.5,
    )  # resend soon in a test
    agent.start()
    assert agent.link.wait_connected(10)
    for _ in range(5):
        agent.roll_window()
    wait_for(lambda: agent.link.sent >= 5, what="the broker's PUBACKs")
    assert agent.outbox.count("telemetry") == 5  # PUBACKed, not deleted
    hub = _hub(make_hub, prefix, broker.url)  # subscribes now: the broker dropped the five already
    wait_for(lambda: hub.fleet.window_count("dev-1") == 5, what="the resent windows")
    wait_for(lambda: agent.outbox.count("telemetry") == 0, what="acked windows deleted")
    assert agent.link.resends >= 1
    first = agent.outbox.first_seq
    assert hub.fleet.window_seqs("dev-1") == list(range(first, first + 5))
    assert hub.fleet.window_summary(["dev-1"])["dev-1"]["missing"] == 0


def test_device_record_reports_stored_windows_last_seq_and_missing_seqs(make_hub):
    from fastapi.testclient import TestClient

    from cloud_hub.app import create_app
    from edge_runtime.protocol import TelemetryWindow

    hub = make_hub()
    now = time.time()
    seqs = [10, 11, 12, 15, 16, 20]
    hub.fleet.write_batch(
        windows=[(TelemetryWindow(device_id="dev-g", seq=s, start=s, end=s + 1), now) for s in seqs]
    )
    hub.fleet.write_batch(
        windows=[(TelemetryWindow(device_id="dev-g", seq=15, start=15, end=16), now)]
    )  # replay
    assert hub.fleet.window_summary() == {
        "dev-g": {"windows": 6, "first_seq": 10, "last_seq": 20, "missing": 5}
    }
    assert hub.fleet.missing_seqs("dev-g") == [(13, 14), (17, 19)]
    body = TestClient(create_app(hub)).get("/v1/devices/dev-g").json()
    assert (body["windows"], body["first_seq"], body["last_seq"], body["missing_windows"]) == (
        6,
        10,
        20,
        5,
    )
    assert body["missing_seqs"] == [[13, 14], [17, 19]]


# ---- real daemons ---------------------------------------------------------------------------------
class DaemonProcess:
    """``edge-runtime run`` with its own store and outbox; started, SIGTERMed or SIGKILLed by PID."""

    def __init__(
        self,
        root: Path,
        device_id: str,
        url: str,
        prefix: str,
        keypair,
        bundle: Path | None,
        interval_s: float = 0.2,
    ) -> None:
        self.root = root / device_id
        self.root.mkdir(parents=True, exist_ok=True)
        self.cfg = self.root / "device.toml"
        self.cfg.write_text(
            # dev = true: windows every 0.2 s (below the 0.5 s floor of a production config)
            f'dev = true\n[device]\nid = "{device_id}"\nprofile = "x86-gateway"\n\n'
            f'[mqtt]\nurl = "{url}"\nprefix = "{prefix}"\n\n'
            f'[store]\ndir = "{self.root / "store"}"\npublic_key = "{keypair[1]}"\n\n'
            f"[telemetry]\ninterval_s = {interval_s}\n\n[local_api]\nenabled = false\n"
        )
        if bundle is not None:
            from edge_runtime.store import ModelStore

            store = ModelStore(self.root / "store", "x86-gateway", [keypair[1]], latency_runs=5)
            store.install(bundle)
            store.close()
        self.proc: subprocess.Popen | None = None

    @property
    def outbox(self) -> Path:
        return self.root / "store" / "fleet" / "outbox.sqlite"

    def start(self) -> DaemonProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_runtime.cli", "run", "--config", str(self.cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.outbox.exists, timeout=30, what="the daemon's outbox")
        return self

    def meta(self, key: str) -> int:
        with sqlite3.connect(f"file:{self.outbox}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    def unsent(self) -> int:
        with sqlite3.connect(f"file:{self.outbox}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def last_seq(self) -> int:
        return self.meta("next_seq") - 1

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None


@pytest.fixture
def daemons(tmp_path, keypair):
    made: list[DaemonProcess] = []

    def make(
        device_id: str, url: str, prefix: str, bundle: Path | None = None, **kw
    ) -> DaemonProcess:
        d = DaemonProcess(tmp_path / "devices", device_id, url, prefix, keypair, bundle, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.kill()


def _assert_every_window_once(hub, device, first: int, last: int) -> None:
    from sqlalchemy import func, select

    from cloud_hub.fleet.tables import windows

    seqs = hub.fleet.window_seqs(device)
    assert seqs[0] == first and len(seqs) >= last - first + 1
    assert seqs[: last - first + 1] == list(range(first, last + 1)), hub.fleet.missing_seqs(device)
    with hub.engine.connect() as conn:  # stored once each (nothing doubled)
        n = conn.execute(
            select(func.count()).select_from(windows).where(windows.c.device_id == device)
        ).scalar_one()
    assert n == len(set(seqs))
    assert hub.fleet.window_summary([device])[device]["missing"] == 0


@pytest.mark.slow
def test_broker_restart_loop_loses_no_window(own_mosquitto, prefix, make_hub, daemons):
    """20 broker restarts with the daemon and the hub connected throughout: 0 missing seqs at the hub.

    Gaps between restarts are 0.3–2 s (the issue asks 1–8 s; shortened to keep CI time reasonable —
    what matters is that the device reconnects and replays before, after and while the hub
    resubscribes, which these gaps exercise)."""
    rnd = random.Random(14)
    broker = own_mosquitto(persist=True)
    hub = _hub(make_hub, prefix, broker.url)
    dev = daemons("dev-r", broker.url, prefix).start()
    wait_for(lambda: hub.fleet.window_count("dev-r") >= 3, what="first windows")
    for _ in range(20):
        broker.stop()
        time.sleep(rnd.uniform(0.1, 0.6))
        broker.start()
        time.sleep(rnd.uniform(0.3, 2.0))
    last = dev.last_seq()
    first = dev.meta("first_seq")
    wait_for(
        lambda: (
            hub.fleet.window_summary(["dev-r"]).get("dev-r", {}).get("last_seq", 0) >= last
            and hub.fleet.window_summary(["dev-r"])["dev-r"]["missing"] == 0
        ),
        timeout=60,
        what="every window up to the last one before the loop ended",
    )
    _assert_every_window_once(hub, "dev-r", first, last)
    assert hub.fleet.ingest.stats["acks_sent"] > 0


@pytest.mark.slow
def test_device_and_broker_killed_hub_restarted_nothing_lost_nothing_doubled(
    own_mosquitto, prefix, make_hub, daemons, tmp_path
):
    broker = own_mosquitto(persist=True)
    hub_dir = tmp_path / "hub-data"
    hub = _hub(make_hub, prefix, broker.url, hub_dir)
    devs = [daemons(f"dev-k{i}", broker.url, prefix).start() for i in range(2)]
    wait_for(
        lambda: all(hub.fleet.window_count(d) >= 3 for d in ("dev-k0", "dev-k1")),
        what="first windows",
    )
    # an outage: the broker dies (SIGKILL), then one device dies too while it buffers
    os.kill(broker.proc.pid, signal.SIGKILL)
    broker.proc.wait(5)
    broker.proc = None
    time.sleep(1.0)
    devs[0].kill(signal.SIGKILL)
    time.sleep(0.5)
    devs[0].start()  # restarts offline, its outbox intact
    time.sleep(1.0)
    assert devs[0].unsent() > 0 and devs[1].unsent() > 0
    broker.start()
    # the devices replay; the hub restarts in the middle of it
    wait_for(
        lambda: hub.fleet.ingest.stats["written_windows"] > 0 and any(d.unsent() < 5 for d in devs),
        timeout=30,
        what="replay under way",
    )
    hub.close()
    time.sleep(0.5)
    hub = _hub(make_hub, prefix, broker.url, hub_dir)
    lasts = {d.root.name: d.last_seq() for d in devs}
    firsts = {d.root.name: d.meta("first_seq") for d in devs}
    for name, last in lasts.items():
        wait_for(
            lambda name=name, last=last: (
                (s := hub.fleet.window_summary([name]).get(name)) is not None
                and s["last_seq"] >= last
                and s["missing"] == 0
            ),
            timeout=60,
            what=f"{name}: every window",
        )
        _assert_every_window_once(hub, name, firsts[name], last)
