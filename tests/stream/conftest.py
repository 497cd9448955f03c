"""Stream test helpers: real Mosquitto and NATS JetStream, unique topics/streams per test."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def messages(cancer_data, n: int, start: int = 0, bad: dict[int, str] | None = None) -> list[bytes]:
    """n input messages keyed k<i>; ``bad`` maps index → kind (json|missing|string|array)."""
    x, _, names = cancer_data
    out = []
    for i in range(start, start + n):
        row = {k: float(v) for k, v in zip(names, x[i % len(x)])}
        kind = (bad or {}).get(i)
        if kind == "json":
            out.append(b"{oops")
            continue
        if kind == "missing":
            del row[names[3]]
        elif kind == "string":
            row[names[0]] = "big"
        msg = {"key": f"k{i}", "features": row, "ts": time.time()}
        if kind == "array":
            msg = [1, 2]
        out.append(json.dumps(msg).encode())
    return out


def worker_cmd(bundle: Path, source: str, sink: str, dlq: str, *extra: str) -> list[str]:
    return [
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
        *extra,
    ]


class WorkerProc:
    """A real `cloud-hub stream` subprocess; killed (by its own PID) at teardown."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.path = log

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b'"event": "ready"' in self.path.read_bytes():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited: {self.path.read_text()[-2000:]}")
            time.sleep(0.05)
        raise AssertionError("worker not ready in time")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        self.log.close()


@pytest.fixture
def workers(tmp_path, keypair):
    """Start `cloud-hub stream` processes; they trust the test fleet key (HUB_TRUSTED_KEYS)
    unless ``env`` says otherwise."""
    procs: list[WorkerProc] = []

    def start(cmd: list[str], env: dict[str, str] | None = None) -> WorkerProc:
        env = {"HUB_TRUSTED_KEYS": json.dumps([str(keypair[1])]), **(env or {})}
        w = WorkerProc(cmd, tmp_path / f"worker-{len(procs)}.log", env)
        procs.append(w)
        return w

    yield start
    for w in procs:
        w.close()


# ---- MQTT ---------------------------------------------------------------------------
class MqttCollector:
    """Subscribes (before anything is published) and keeps every message per topic."""

    def __init__(self, host: str, port: int, topics: list[str]) -> None:
        self.msgs: dict[str, list[bytes]] = {t: [] for t in topics}
        self.lock = threading.Lock()
        self.c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5
        )
        self.c.on_message = self._on
        ready = threading.Event()
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.connect(host, port)
        self.c.loop_start()
        self.c.subscribe([(t, 1) for t in topics])
        assert ready.wait(10)

    def _on(self, c, u, msg):
        with self.lock:
            self.msgs[msg.topic].append(msg.payload)

    def decoded(self, topic: str) -> list[dict]:
        with self.lock:
            return [json.loads(m) for m in self.msgs[topic]]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def mqtt_publish(host: str, port: int, topic: str, payloads: list[bytes]) -> None:
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(500)
    c.connect(host, port)
    c.loop_start()
    try:
        infos = [c.publish(topic, p, qos=1) for p in payloads]
        for i in infos:
            i.wait_for_publish(30)
            assert i.is_published()
    finally:
        c.loop_stop()
        c.disconnect()


def mqtt_forget_session(host: str, port: int, client_id: str) -> None:
    """Remove a persistent session left by a worker (clean start, expiry 0)."""
    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    c.connect(host, port, clean_start=True, properties=props)
    c.loop_start()
    time.sleep(0.2)
    c.disconnect()
    c.loop_stop()


@pytest.fixture
def mqtt_topics(mosquitto):
    base = f"test/stream-{uuid.uuid4().hex[:10]}"
    return {"in": f"{base}/in", "out": f"{base}/out", "dlq": f"{base}/dlq", "base": base}


# ---- NATS ---------------------------------------------------------------------------
def _run(coro):
    return asyncio.run(coro)


async def _nats():
    import nats

    return await nats.connect("nats://127.0.0.1:4222", connect_timeout=5)


def nats_publish(subject: str, payloads: list[bytes]) -> None:
    async def go():
        nc = await _nats()
        js = nc.jetstream()
        await asyncio.gather(*(js.publish(subject, p) for p in payloads))
        await nc.close()

    _run(go())


def nats_read_all(stream: str) -> list[bytes]:
    """Every message currently in a stream (by sequence, no consumer needed)."""

    async def go():
        nc = await _nats()
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream)
        except Exception:
            await nc.close()
            return []
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                m = await js.get_msg(stream, seq)
                out.append(m.data)
            except Exception:
                continue
        await nc.close()
        return out

    return _run(go())


def nats_count(stream: str) -> int:
    async def go():
        nc = await _nats()
        try:
            return (await nc.jetstream().stream_info(stream)).state.messages
        except Exception:
            return 0
        finally:
            await nc.close()

    return _run(go())


@pytest.fixture
def nats_names(nats_server):
    """Unique subjects and stream names; the streams are deleted after the test."""
    u = uuid.uuid4().hex[:10]
    names = {
        "in": f"t{u}.in",
        "out": f"t{u}.out",
        "dlq": f"t{u}.dlq",
        "s_in": f"T{u}_IN",
        "s_out": f"T{u}_OUT",
        "s_dlq": f"T{u}_DLQ",
        "group": f"g{u}",
    }

    async def create():
        nc = await _nats()
        js = nc.jetstream()
        for k in ("in", "out", "dlq"):
            await js.add_stream(name=names[f"s_{k}"], subjects=[names[k]])
        await nc.close()

    _run(create())
    yield names

    async def delete():
        nc = await _nats()
        js = nc.jetstream()
        for k in ("s_in", "s_out", "s_dlq"):
            try:
                await js.delete_stream(names[k])
            except Exception:
                pass
        await nc.close()

    _run(delete())


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
