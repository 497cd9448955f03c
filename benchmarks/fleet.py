"""Fleet ingest benchmark (see benchmarks/RESULTS.md, "Fleet ingest").

    python benchmarks/fleet.py all --devices 1000 --interval 10 --duration 60

Parts (each against the Mosquitto on 127.0.0.1:1883, unique topic prefix per run):
  fleet    N simulated devices (real daemons, shared model sessions) each sending a window
           every --interval s and serving --rate requests/s; the hub ingest runs in a separate
           process (its CPU measured with psutil). Checks that every window produced arrived.
  ceiling  the hub ingest alone, fed pre-built windows as fast as 8 publishers can: windows/s.
  write    the ingest's write path alone in this process (no broker): windows per CPU-second.
  offline  one device offline for --offline-s seconds with a time-compressed window interval,
           then reconnected: every buffered window delivered? how long did the replay take?
  shadow   active-path p50/p99 of single-row predictions with and without a shadow model
           (sample rate 1.0): the shadow comparison must stay off the request path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_sklearn_bundle(out: Path, estimator, x: np.ndarray, names: list[str], *, key,
                         version: str = "1.0.0") -> Path:
    """A signed ONNX bundle of a fitted binary classifier (skl2onnx), with golden vectors."""
    from skl2onnx import to_onnx

    from edge_runtime.bundle import write_bundle

    onx = to_onnx(estimator, x[:1], options={id(estimator): {"zipmap": False}}, target_opset=17)
    proba = estimator.predict_proba(x[:8]).astype(np.float64)
    manifest = {
        "name": "cancer", "version": version, "format": "onnx", "model_file": "model.onnx",
        "task": "binary_classification",
        "inputs": {"kind": "features", "tensor": onx.graph.input[0].name,
                   "features": [{"name": n, "dtype": "float32"} for n in names]},
        "outputs": [{"name": "label", "role": "label"}, {"name": "probabilities", "role": "probabilities"}],
        "postprocess": {"classes": ["benign_no", "malignant_no"], "positive_class": "malignant_no",
                        "threshold": 0.5},
        "golden": [{"rows": [dict(zip(names, map(float, r))) for r in x[:8]],
                    "expected_probability": proba[:, 1].tolist(), "atol": 1e-4}],
        "provenance": {"source": type(estimator).__name__, "dataset": "load_breast_cancer"},
    }
    write_bundle(out, manifest, {"model.onnx": onx.SerializeToString()}, key=key)
    return out


def make_bundles(d: Path):
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edge_runtime.signing import generate_keypair

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    x = data.data.astype(np.float32)
    key, pub = generate_keypair(d / "fleet.key", d / "fleet.pub")
    m1 = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, data.target)
    m2 = make_pipeline(StandardScaler(), LogisticRegression(C=0.005, max_iter=500)).fit(x, data.target)
    b1 = build_sklearn_bundle(d / "v1", m1, x, names, key=key)
    b2 = build_sklearn_bundle(d / "v2", m2, x, names, key=key, version="2.0.0")
    return b1, b2, pub, x, names


# ---- hub process ----------------------------------------------------------------------------------
def hub_main(args) -> int:
    """Child process: the hub's ingest only; prints one JSON line of stats when told to stop."""
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings

    hub = Hub(HubSettings(data_dir=args.data_dir, mqtt_url=args.mqtt, mqtt_prefix=args.prefix,
                          database_url=args.db_url or None))
    hub.fleet.start(session_expiry=0)
    hub.fleet.ingest.wait_connected(30)
    print("ready", flush=True)
    sys.stdin.readline()
    st = dict(hub.fleet.ingest.stats)
    hub.close()
    print(json.dumps(st), flush=True)
    return 0


class HubProcess:
    def __init__(self, mqtt: str, prefix: str, data_dir: Path, db_url: str | None = None) -> None:
        import psutil
        import sqlalchemy

        self.data_dir = data_dir
        self.db = sqlalchemy.create_engine(db_url or f"sqlite:///{data_dir / 'hub.db'}")
        self.proc = subprocess.Popen([sys.executable, __file__, "_hub", "--mqtt", mqtt, "--prefix", prefix,
                                      "--data-dir", str(data_dir)] + (["--db-url", db_url] if db_url else []),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
        assert self.proc.stdout.readline().strip() == "ready"
        self.ps = psutil.Process(self.proc.pid)
        self.cpu0 = self._cpu()
        self.t0 = time.monotonic()

    def _cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def cpu_percent(self) -> float:
        return 100.0 * (self._cpu() - self.cpu0) / (time.monotonic() - self.t0)

    def count(self, sql: str) -> int:
        import sqlalchemy

        with self.db.connect() as c:
            return c.execute(sqlalchemy.text(sql)).scalar_one()

    def stop(self) -> dict:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        self.proc.wait(30)
        return json.loads(out) if out.strip() else {}


def part_fleet(args, tmp: Path, b1, pub) -> dict:
    from devices.simulator import Fleet

    prefix = f"bench-{uuid.uuid4().hex[:8]}/v1"
    hub = HubProcess(args.mqtt, prefix, tmp / "hub-fleet")
    t = time.monotonic()
    fleet = Fleet(args.devices, mqtt_url=args.mqtt, prefix=prefix, bundle=b1, public_keys=[pub],
                  interval_s=args.interval, request_rate=args.rate, workdir=tmp / "fleet", load_threads=2,
                  id_prefix="bench",
                  start_concurrency=4, keepalive_s=60)
    fleet.start(timeout=300)
    boot_s = time.monotonic() - t
    hub.cpu0, hub.t0 = hub._cpu(), time.monotonic()
    time.sleep(args.duration)
    produced_before_stop = sum(d.agent.outbox.last_seq - d.agent.outbox.first_seq + 1 for d in fleet.devices)
    t_stop = time.monotonic()
    fleet.stop()  # graceful: each device sends its last window
    # every device's final seq is in its outbox meta; count from the hub side vs the device side
    expected = 0
    import sqlite3

    for d in fleet.devices:
        with sqlite3.connect(fleet.workdir / d.id / "store" / "fleet" / "outbox.sqlite") as c:
            nxt = c.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
            first = c.execute("SELECT value FROM meta WHERE key='first_seq'").fetchone()
            expected += int(nxt[0]) - int(first[0]) if nxt and first else 0
    deadline = time.monotonic() + 120
    got = 0
    while time.monotonic() < deadline:
        got = hub.count("SELECT COUNT(*) FROM fleet_windows")
        if got >= expected:
            break
        time.sleep(0.5)
    drain_s = time.monotonic() - t_stop
    cpu = hub.cpu_percent()
    stats = hub.stop()
    st = fleet.stats()
    return {"devices": args.devices, "interval_s": args.interval, "duration_s": args.duration,
            "boot_s": round(boot_s, 1), "requests": st["requests"], "windows_expected": expected,
            "windows_stored": got, "lost": expected - got, "produced_before_stop": produced_before_stop,
            "window_rate_per_s": round(args.devices / args.interval, 1), "hub_cpu_percent": round(cpu, 1),
            "drain_after_stop_s": round(drain_s, 1), "ingest": stats}


class OwnMosquitto:
    """A private mosquitto with a production-style queue limit (``max_queued_messages 0``: a
    subscriber that falls behind gets its messages queued, not dropped). Mosquitto's default is
    1000 queued messages per client, past which QoS 1 messages to a slow subscriber are DROPPED."""

    def __init__(self, tmp: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        conf = tmp / f"mosquitto-{self.port}.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false",
                 "max_queued_messages 0", "max_inflight_messages 0"]
        if os.geteuid() == 0:
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def part_ceiling(args, tmp: Path) -> dict:
    import paho.mqtt.client as mqtt

    from edge_runtime.protocol import SlotStats, TelemetryWindow
    from edge_runtime.sketch import Histogram, Sketch

    prefix = f"bench-{uuid.uuid4().hex[:8]}/v1"
    broker = OwnMosquitto(tmp)
    args = argparse.Namespace(**{**vars(args), "mqtt": broker.url})
    hub = HubProcess(args.mqtt, prefix, tmp / "hub-ceiling", args.db_url)
    import sqlalchemy

    with hub.db.begin() as c:  # a database shared between runs (PostgreSQL): start empty
        c.execute(sqlalchemy.text("DELETE FROM fleet_windows"))
        c.execute(sqlalchemy.text("DELETE FROM fleet_slot_stats"))
        c.execute(sqlalchemy.text("DELETE FROM fleet_device_state"))
    sk = Sketch()
    sk.extend(np.random.default_rng(0).lognormal(-7, 0.4, 500).tolist())
    h = Histogram.unit(20)
    for v in np.random.default_rng(1).random(500):
        h.add(float(v))
    slot = SlotStats(slot="active", name="cancer", version="1.0.0", sha256="a" * 64, requests=500,
                     latency=sk.to_dict(), scores=h.to_dict(), decisions={"0": 300, "1": 200})
    n_dev, per_dev = 1000, args.ceiling_windows // 1000
    clients = []
    for k in range(8):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"blaster-{k}-{prefix}", protocol=mqtt.MQTTv5)
        c.max_inflight_messages_set(1000)
        c.connect(args.mqtt.split("//")[1].split(":")[0], int(args.mqtt.rsplit(":", 1)[1]))
        c.loop_start()
        clients.append(c)
    payloads = []
    for seq in range(1, per_dev + 1):
        for dev in range(n_dev):
            w = TelemetryWindow(device_id=f"d{dev:04d}", seq=seq, start=seq * 10.0, end=seq * 10.0 + 10,
                                slots=[slot])
            payloads.append((f"{prefix}/devices/d{dev:04d}/telemetry", w.model_dump_json()))
    hub.cpu0, hub.t0 = hub._cpu(), time.monotonic()
    t0 = time.monotonic()
    infos = [clients[i % 8].publish(t, p, qos=1) for i, (t, p) in enumerate(payloads)]
    for i in infos:
        i.wait_for_publish(120)
    pub_s = time.monotonic() - t0
    total = len(payloads)
    while hub.count("SELECT COUNT(*) FROM fleet_windows") < total and time.monotonic() - t0 < 300:
        time.sleep(0.2)
    dt = time.monotonic() - t0
    stored = hub.count("SELECT COUNT(*) FROM fleet_windows")
    cpu = hub.cpu_percent()
    stats = hub.stop()
    for c in clients:
        c.disconnect()
        c.loop_stop()
    broker.stop()
    hub_cpu_s = cpu / 100 * dt
    return {"broker": "own mosquitto, max_queued_messages 0", "database": hub.db.dialect.name,
            "windows": total, "stored": stored, "publish_s": round(pub_s, 2), "ingest_s": round(dt, 2),
            "windows_per_s": round(stored / dt, 1), "hub_cpu_percent": round(cpu, 1),
            "hub_cpu_s": round(hub_cpu_s, 2), "windows_per_hub_cpu_s": round(stored / hub_cpu_s, 1),
            "acks_sent": stats.get("acks_sent"), "batches": stats.get("batches"),
            "load_avg_after": [round(x, 2) for x in os.getloadavg()]}


def part_write(args, tmp: Path) -> dict:
    """The hub's ingest write path alone, in this process (no broker): ``IngestSubscriber._write``
    fed the ceiling part's windows (1,000 devices) in batches of ``--write-batch`` messages —
    parse, validate, one transaction per batch, acks built (handed to a stub MQTT client). Windows
    per CPU-second of this process; ``--profile FILE`` writes a cProfile of all batches."""
    from cloud_hub.fleet.ingest import IngestSubscriber
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings
    from edge_runtime.protocol import SlotStats, TelemetryWindow
    from edge_runtime.sketch import Histogram, Sketch

    hub = Hub(HubSettings(data_dir=tmp / "hub-write", database_url=args.db_url or None))
    import sqlalchemy

    with hub.engine.begin() as c:  # a database shared between runs (PostgreSQL): start empty
        for t in ("fleet_windows", "fleet_slot_stats", "fleet_device_state"):
            c.execute(sqlalchemy.text(f"DELETE FROM {t}"))
    hub.fleet.mqtt_url = "mqtt://127.0.0.1:9"  # never connected: the stub below replaces the client
    sub = IngestSubscriber(hub.fleet)

    class _Stub:
        published = acked = 0

        def publish(self, *_a, **_k):
            _Stub.published += 1

        def ack(self, *_a, **_k):
            _Stub.acked += 1

    sub.client = _Stub()
    sk = Sketch()
    sk.extend(np.random.default_rng(0).lognormal(-7, 0.4, 500).tolist())
    h = Histogram.unit(20)
    for v in np.random.default_rng(1).random(500):
        h.add(float(v))
    slot = SlotStats(slot="active", name="cancer", version="1.0.0", sha256="a" * 64, requests=500, calls=100,
                     latency=sk.to_dict(), scores=h.to_dict(), decisions={"0": 300, "1": 200})
    n_dev, per_dev = 1000, max(1, args.ceiling_windows // 1000)
    prefix = hub.fleet.prefix
    msgs = []
    for seq in range(1, per_dev + 1):
        for dev in range(n_dev):
            w = TelemetryWindow(device_id=f"d{dev:04d}", seq=seq, start=seq * 10.0, end=seq * 10.0 + 10,
                                slots=[slot])
            msgs.append((f"{prefix}/devices/d{dev:04d}/telemetry", w.model_dump_json().encode(), len(msgs) + 1, 1,
                         time.time()))
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t, c = time.perf_counter(), time.process_time()
    bs = args.write_batch
    for i in range(0, len(msgs), bs):
        sub._write(msgs[i:i + bs])
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    if prof is not None:
        import io
        import pstats

        prof.disable()
        prof.dump_stats(args.profile)
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
        print(buf.getvalue(), file=sys.stderr)
    with hub.engine.connect() as c2:
        stored = c2.execute(sqlalchemy.text("SELECT COUNT(*) FROM fleet_windows")).scalar_one()
    dialect = hub.engine.dialect.name
    hub.close()
    return {"database": dialect, "windows": len(msgs), "stored": stored, "batch": bs,
            "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "windows_per_s": round(len(msgs) / wall, 1),
            "windows_per_cpu_s": round(len(msgs) / cpu, 1), "acks": _Stub.published, "pubacks": _Stub.acked,
            "stats": dict(sub.stats), "load_avg_after": [round(x, 2) for x in os.getloadavg()]}


def part_fanout(args, tmp: Path) -> dict:
    """The hub's desired-state fan-out (a rollback's first step): N documents written one
    transaction each (``set_desired``) vs all in one (``set_desired_many``), no broker."""
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings
    from edge_runtime.protocol import DesiredBundle, DesiredState

    hub = Hub(HubSettings(data_dir=tmp / "hub-fanout", database_url=args.db_url or None))
    f, n = hub.fleet, args.devices

    def doc(i: int) -> DesiredState:
        return DesiredState(id=f"d-{i}", rollout_id="r", bundles={"active": DesiredBundle(
            name="m", version="1", url="http://hub/v1/bundles/" + "a" * 64, sha256="a" * 64, signature="s" * 88)})

    runs = []
    for rep in range(2):
        t, c = time.perf_counter(), time.process_time()
        for i in range(n):
            f.set_desired(f"dev-{i:05d}", doc(2 * rep * n + i))
        each = (time.perf_counter() - t, time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        f.set_desired_many([(f"dev-{i:05d}", doc((2 * rep + 1) * n + i)) for i in range(n)])
        many = (time.perf_counter() - t, time.process_time() - c)
        runs.append({"one_transaction_each_s": round(each[0], 3), "one_transaction_each_cpu_s": round(each[1], 3),
                     "set_desired_many_s": round(many[0], 3), "set_desired_many_cpu_s": round(many[1], 3)})
    hub.close()
    return {"devices": n, "database": "postgresql" if args.db_url else "sqlite", "runs": runs,
            "load_avg_after": [round(x, 2) for x in os.getloadavg()]}


def part_offline(args, tmp: Path, b1, pub) -> dict:
    from devices.simulator import Fleet

    prefix = f"bench-{uuid.uuid4().hex[:8]}/v1"
    hub = HubProcess(args.mqtt, prefix, tmp / "hub-offline")
    fleet = Fleet(1, mqtt_url=args.mqtt, prefix=prefix, bundle=b1, public_keys=[pub],
                  interval_s=args.offline_interval, request_rate=20, workdir=tmp / "offline")
    fleet.start()
    dev = fleet.devices[0]
    time.sleep(2)
    fleet.inject("disconnect", [dev.id])
    time.sleep(args.offline_s)
    buffered = dev.agent.outbox.count("telemetry")
    t0 = time.monotonic()
    fleet.inject("clear", [dev.id])
    while dev.agent.outbox.count("telemetry") > 0 and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    replay_s = time.monotonic() - t0
    fleet.stop()
    last = 0
    import sqlite3

    with sqlite3.connect(fleet.workdir / dev.id / "store" / "fleet" / "outbox.sqlite") as c:
        first = int(c.execute("SELECT value FROM meta WHERE key='first_seq'").fetchone()[0])
        last = int(c.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()[0]) - 1
        dropped = int((c.execute("SELECT value FROM meta WHERE key='dropped_windows'").fetchone() or [0])[0])
    produced = last - first + 1
    deadline = time.monotonic() + 30
    while hub.count("SELECT COUNT(*) FROM fleet_windows") < produced and time.monotonic() < deadline:
        time.sleep(0.1)
    stored = hub.count("SELECT COUNT(*) FROM fleet_windows")
    seqs_ok = hub.count(f"SELECT COUNT(DISTINCT seq) FROM fleet_windows WHERE seq BETWEEN {first} AND {last}") == produced
    hub.stop()
    return {"offline_s": args.offline_s, "interval_s": args.offline_interval,
            "equivalent_offline_at_10s_windows_min": round(args.offline_s / args.offline_interval * 10 / 60, 1),
            "buffered_at_reconnect": buffered, "replay_s": round(replay_s, 2), "windows_produced": produced,
            "windows_stored": stored, "dropped_counted": dropped, "all_seqs_present": seqs_ok}


def part_shadow(args, tmp: Path, b1, b2, pub, x, names) -> dict:
    """Paced single-row requests (``--shadow-rate``/s) through ``Daemon.predict``, rounds alternating
    without/with a shadow model (sample rate 1.0), so drift on a shared machine hits both alike."""
    from edge_runtime.daemon import Daemon
    from edge_runtime.settings import EdgeSettings

    rows = [dict(zip(names, map(float, r))) for r in x]
    daemons = {}
    for label, with_shadow in (("without_shadow", False), ("with_shadow", True)):
        s = EdgeSettings(device={"id": f"bench-{label}", "profile": "x86-gateway"},
                         mqtt={"url": args.mqtt, "prefix": f"bench-{uuid.uuid4().hex[:8]}/v1"},
                         store={"dir": str(tmp / f"shadow-{label}"), "public_keys": [str(pub)], "latency_runs": 10},
                         telemetry={"interval_s": 1.0}, shadow={"sample_rate": 1.0}, local_api={"enabled": False})
        d = Daemon(s)
        d.store.install(b1)
        if with_shadow:
            d.store.install(b2, "shadow")
        d.start()
        daemons[label] = d
    lat: dict[str, list[float]] = {k: [] for k in daemons}
    per_round = max(100, args.shadow_calls // (2 * args.shadow_rounds))
    period = 1.0 / args.shadow_rate
    for rnd in range(args.shadow_rounds):
        for label in (("without_shadow", "with_shadow") if rnd % 2 == 0 else ("with_shadow", "without_shadow")):
            d = daemons[label]
            nxt = time.perf_counter()
            for i in range(per_round):
                nxt += period
                t = time.perf_counter()
                d.predict([rows[i % len(rows)]])
                lat[label].append(time.perf_counter() - t)
                left = nxt - time.perf_counter()
                if left > 0:
                    time.sleep(left)
    out: dict = {"rate_per_s": args.shadow_rate, "rounds": args.shadow_rounds}
    for label, d in daemons.items():
        a = np.array(lat[label]) * 1000
        out[label] = {"calls": len(a), "p50_ms": round(float(np.percentile(a, 50)), 4),
                      "p99_ms": round(float(np.percentile(a, 99)), 4),
                      "shadow_compared": d.fleet.shadow.compared, "shadow_dropped": d.fleet.shadow.dropped}
        d.stop()
    out["p99_growth_percent"] = round(100 * (out["with_shadow"]["p99_ms"] / out["without_shadow"]["p99_ms"] - 1), 1)
    out["p50_growth_percent"] = round(100 * (out["with_shadow"]["p50_ms"] / out["without_shadow"]["p50_ms"] - 1), 1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["all", "fleet", "ceiling", "write", "offline", "shadow", "fanout", "_hub"])
    p.add_argument("--mqtt", default="mqtt://127.0.0.1:1883")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=0.2, help="requests/s per device")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--ceiling-windows", type=int, default=20000)
    p.add_argument("--offline-s", type=float, default=60.0)
    p.add_argument("--offline-interval", type=float, default=1.0)
    p.add_argument("--shadow-calls", type=int, default=20000)
    p.add_argument("--shadow-rate", type=float, default=500.0, help="paced requests/s in the shadow part")
    p.add_argument("--shadow-rounds", type=int, default=6)
    p.add_argument("--prefix")
    p.add_argument("--db-url", help="hub database (default: SQLite in the run's temp dir)")
    p.add_argument("--data-dir")
    p.add_argument("--write-batch", type=int, default=200, help="write part: messages per _write batch")
    p.add_argument("--profile", help="write part: cProfile the batches into this file (pstats)")
    args = p.parse_args(argv)
    if args.part == "_hub":
        return hub_main(args)
    import logging

    logging.basicConfig(level=logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    b1, b2, pub, x, names = make_bundles(tmp)
    import onnxruntime
    import paho.mqtt

    result = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
              "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
              "paho": paho.mqtt.__version__, "load_avg_start": [round(x, 2) for x in os.getloadavg()],
              "mosquitto": subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.split("\n")[0]
              if os.path.exists("/usr/sbin/mosquitto") else "?"}
    parts = ["shadow", "offline", "ceiling", "fleet"] if args.part == "all" else [args.part]
    for part in parts:
        t = time.monotonic()
        if part == "fleet":
            result["fleet"] = part_fleet(args, tmp, b1, pub)
        elif part == "ceiling":
            result["ceiling"] = part_ceiling(args, tmp)
        elif part == "fanout":
            result["fanout"] = part_fanout(args, tmp)
        elif part == "write":
            result["write"] = part_write(args, tmp)
        elif part == "offline":
            result["offline"] = part_offline(args, tmp, b1, pub)
        elif part == "shadow":
            result["shadow"] = part_shadow(args, tmp, b1, b2, pub, x, names)
        print(f"# {part} done in {time.monotonic() - t:.0f}s: {json.dumps(result[part])}", file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
