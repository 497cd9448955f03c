"""Kafka transport (confluent-kafka / librdkafka): consumer group in, acknowledged produce out.

``kafka://host:port[,host:port…]/topic?group=…&client_id=…`` — the source joins
consumer group ``group`` (several workers split the topic's partitions), the
sink produces with ``acks=all``; the message key of each input is kept on its
result and dead letter.

At-least-once without a commit per message:

* ``fetch`` hands out messages in partition order; ``ack`` (called by the
  worker only after the broker acknowledged the micro-batch's results and dead
  letters) *stores* the offsets: per partition, up to the first message not yet
  acknowledged — never past a gap, so nothing is skipped;
* librdkafka commits the stored offsets in the background every
  ``commit_interval_ms`` (default 1000), when partitions are revoked by a
  rebalance (before the new owner starts) and on close; a SIGKILL loses at
  most the results whose offsets were not committed yet, which are then
  scored again (duplicates, never losses);
* a message handed out but not acknowledged within ``ack_wait`` seconds
  (default 30: the worker dropped its batch) is read again: its partition is
  rewound to it, like JetStream's ack wait;
* on a rebalance, the revoked partitions' acknowledged offsets are committed
  synchronously (once per rebalance) and their pending messages forgotten;
  results of those still in flight may be published twice — at-least-once.

Missing topics are created (``partitions``, default 3; ``replication``,
default the broker's) so a fresh broker works as NATS and MQTT do.

URL options (query parameters): ``group``, ``client_id``, ``partitions``,
``replication``, ``ack_wait`` (s), ``connect_timeout`` (s, default 10), ``commit_interval_ms``, ``auto_offset_reset``
(earliest|latest, default earliest), ``session_timeout_ms``,
``heartbeat_interval_ms``, ``max_poll_interval_ms``, ``fetch_wait_max_ms`` (default
100), ``linger_ms``,
``compression`` (none|gzip|snappy|lz4|zstd), ``idempotence`` (1|0, default 1),
and for SASL/TLS ``security_protocol`` (PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL),
``sasl_mechanism`` (PLAIN|SCRAM-SHA-256|SCRAM-SHA-512), ``sasl_username``,
``sasl_password`` or ``sasl_password_env`` (the name of an environment variable
holding it, so no secret is stored in a URL), ``ssl_ca_location``,
``ssl_certificate_location``, ``ssl_key_location``, ``ssl_key_password``,
``ssl_endpoint_identification_algorithm`` (https|none). Any other option is refused.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from cloud_hub.stream.transport import Endpoint, InMessage, TransportError
from edge_runtime.errors import ValidationError

log = logging.getLogger("cloud_hub.stream.kafka")

DEFAULT_PORT = 9092
TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")

# URL option → librdkafka setting (passed through as given).
_CLIENT_OPTIONS = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_username": "sasl.username",
    "sasl_password": "sasl.password",
    "ssl_ca_location": "ssl.ca.location",
    "ssl_certificate_location": "ssl.certificate.location",
    "ssl_key_location": "ssl.key.location",
    "ssl_key_password": "ssl.key.password",
    "ssl_endpoint_identification_algorithm": "ssl.endpoint.identification.algorithm",
}
_CONSUMER_OPTIONS = {
    "session_timeout_ms": "session.timeout.ms",
    "heartbeat_interval_ms": "heartbeat.interval.ms",
    "max_poll_interval_ms": "max.poll.interval.ms",
    "commit_interval_ms": "auto.commit.interval.ms",
    "auto_offset_reset": "auto.offset.reset",
    "fetch_wait_max_ms": "fetch.wait.max.ms",
}
_PRODUCER_OPTIONS = {"linger_ms": "linger.ms", "compression": "compression.type"}
_OWN_OPTIONS = {
    "group",
    "client_id",
    "partitions",
    "replication",
    "ack_wait",
    "idempotence",
    "sasl_password_env",
    "connect_timeout",
}
_CHOICES = {
    "security_protocol": {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"},
    "sasl_mechanism": {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"},
    "auto_offset_reset": {"earliest", "latest"},
    "compression": {"none", "gzip", "snappy", "lz4", "zstd"},
    "idempotence": {"0", "1"},
    "ssl_endpoint_identification_algorithm": {"https", "none"},
}
_INTEGERS = {
    "partitions",
    "replication",
    "session_timeout_ms",
    "heartbeat_interval_ms",
    "max_poll_interval_ms",
    "commit_interval_ms",
    "linger_ms",
    "fetch_wait_max_ms",
}
KNOWN_OPTIONS = (
    set(_CLIENT_OPTIONS) | set(_CONSUMER_OPTIONS) | set(_PRODUCER_OPTIONS) | _OWN_OPTIONS
)


def parse_kafka_url(url: str, role: str) -> Endpoint:
    """``kafka://h1:9092[,h2:9092]/topic?opts`` → Endpoint; every part checked, naming ``role``."""
    u = urlparse(url)
    if not u.netloc:
        raise ValidationError(f"{role} URL {url!r} names no host", field=role)
    servers = []
    for part in u.netloc.split(","):
        host, _, port = part.rpartition(":") if ":" in part else (part, "", str(DEFAULT_PORT))
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValidationError(f"{role} URL {url!r}: bad broker address {part!r}", field=role)
        servers.append(f"{host}:{port}")
    topic = unquote(u.path.lstrip("/"))
    if not topic:
        raise ValidationError(
            f"{role} URL {url!r} names no topic (e.g. kafka://host:9092/scores)", field=role
        )
    if not TOPIC_RE.fullmatch(topic) or topic in (".", ".."):
        raise ValidationError(
            f"{role} URL {url!r}: topic {topic!r} must be 1-249 letters, digits, '.', '_', '-'",
            field=role,
        )
    opts = {k: v[-1] for k, v in parse_qs(u.query, keep_blank_values=True).items()}
    for k, v in opts.items():
        if k not in KNOWN_OPTIONS:
            raise ValidationError(
                f"{role} URL option {k!r} is not a Kafka option (known: "
                f"{', '.join(sorted(KNOWN_OPTIONS))})",
                field=f"{role}.{k}",
            )
        if k in _CHOICES and v not in _CHOICES[k]:
            raise ValidationError(
                f"{role} URL option {k}={v!r}: one of {', '.join(sorted(_CHOICES[k]))}",
                field=f"{role}.{k}",
            )
        if k in _INTEGERS and not (v.isdigit() and int(v) > 0):
            raise ValidationError(
                f"{role} URL option {k}={v!r} must be a positive integer", field=f"{role}.{k}"
            )
        if k in ("ack_wait", "connect_timeout"):
            try:
                ok = float(v) > 0
            except ValueError:
                ok = False
            if not ok:
                raise ValidationError(
                    f"{role} URL option {k}={v!r} must be a positive number of seconds",
                    field=f"{role}.{k}",
                )
    if "sasl_password_env" in opts and opts["sasl_password_env"] not in os.environ:
        raise ValidationError(
            f"{role} URL option sasl_password_env names {opts['sasl_password_env']!r}, "
            "which is not set in the environment",
            field=f"{role}.sasl_password_env",
        )
    host, port = servers[0].rsplit(":", 1)
    opts["bootstrap_servers"] = ",".join(servers)
    return Endpoint("kafka", host, int(port), topic, opts, url)


def _ck() -> Any:
    try:
        import confluent_kafka
        import confluent_kafka.admin
    except ImportError as exc:  # the [kafka] extra is not installed
        raise TransportError(
            "kafka:// needs confluent-kafka: pip install 'edgefleet[kafka]'"
        ) from exc
    return confluent_kafka


def _client_config(ep: Endpoint, client_id: str) -> dict[str, Any]:
    o = ep.options
    cfg: dict[str, Any] = {
        "bootstrap.servers": o["bootstrap_servers"],
        "client.id": o.get("client_id", client_id),
        "log_level": 4,  # warnings and worse, through the logging module
    }
    for k, setting in _CLIENT_OPTIONS.items():
        if k in o:
            cfg[setting] = o[k]
    if "sasl_password_env" in o:
        cfg["sasl.password"] = os.environ[o["sasl_password_env"]]
    return cfg


def _ensure_topic(ck: Any, ep: Endpoint, cfg: dict[str, Any]) -> None:
    """Check the broker is reachable; create ``ep.target`` when it does not exist."""
    admin = ck.admin.AdminClient(cfg)
    where = ep.options["bootstrap_servers"]
    try:
        md = admin.list_topics(timeout=float(ep.options.get("connect_timeout", 10)))
    except ck.KafkaException as exc:
        raise TransportError(f"cannot reach Kafka at {where}: {exc.args[0]}") from exc
    if ep.target in md.topics and md.topics[ep.target].error is None:
        return
    new = ck.admin.NewTopic(
        ep.target,
        num_partitions=int(ep.options.get("partitions", 3)),
        replication_factor=int(ep.options.get("replication", -1)),
    )
    try:
        admin.create_topics([new], operation_timeout=10)[ep.target].result(15)
    except ck.KafkaException as exc:
        err = exc.args[0]
        if getattr(err, "code", lambda: None)() != ck.KafkaError.TOPIC_ALREADY_EXISTS:
            raise TransportError(
                f"Kafka topic {ep.target!r} does not exist at {where} and could not be "
                f"created: {err}"
            ) from exc


class KafkaSource:
    def __init__(self, ep: Endpoint, *, group: str, name: str = "0") -> None:
        ck = self._ck = _ck()
        self.url = ep.url
        self.topic = ep.target
        self.group = group
        self.ack_wait = float(ep.options.get("ack_wait", 30))
        cfg = _client_config(ep, f"cloudhub-{group}-{name}")
        _ensure_topic(ck, ep, cfg)
        cfg.update(
            {
                "group.id": group,
                # stored offsets only (after ack) are committed: by librdkafka in the
                # background, on rebalance and on close
                "enable.auto.commit": True,
                "enable.auto.offset.store": False,
                "auto.commit.interval.ms": 1000,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                # a broker that does not answer a fetch as soon as data arrives (Tansu)
                # would add up to this much latency; 100 ms instead of librdkafka's 500
                "fetch.wait.max.ms": 100,
                "logger": log,
            }
        )
        for k, setting in _CONSUMER_OPTIONS.items():
            if k in ep.options:
                cfg[setting] = ep.options[k]
        # per partition: offset → time handed out, for messages not acknowledged yet;
        # and the next offset to commit when nothing is pending.
        self._pending: dict[tuple[str, int], dict[int, float]] = {}
        self._done: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self.rebalances = 0
        self.assigned: set[int] = set()  # partitions of ``topic`` this member owns now
        self.consumer = ck.Consumer(cfg)
        self.consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    # ---- rebalance callbacks (run inside consume(), on the worker's thread) --------------
    def _on_assign(self, consumer: Any, partitions: list) -> None:
        self.rebalances += 1
        self.assigned |= {p.partition for p in partitions}
        log.info("kafka %s: assigned partitions %s", self.topic, [p.partition for p in partitions])

    def _forget(self, partitions: list) -> None:
        self.assigned -= {p.partition for p in partitions}
        with self._lock:
            for p in partitions:
                self._pending.pop((p.topic, p.partition), None)
                self._done.pop((p.topic, p.partition), None)

    def _on_revoke(self, consumer: Any, partitions: list) -> None:
        """Commit what was acknowledged on the partitions we lose, before the new owner reads."""
        offsets = self._committable([(p.topic, p.partition) for p in partitions])
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except self._ck.KafkaException as exc:  # the new owner re-reads: duplicates only
                log.warning("kafka %s: commit on revoke failed: %s", self.topic, exc)
        self._forget(partitions)
        log.info("kafka %s: revoked partitions %s", self.topic, [p.partition for p in partitions])

    def _on_lost(self, consumer: Any, partitions: list) -> None:
        self._forget(partitions)  # another member owns them now; committing would be refused
        log.warning("kafka %s: lost partitions %s", self.topic, [p.partition for p in partitions])

    def _committable(self, keys: list[tuple[str, int]]) -> list:
        tp = self._ck.TopicPartition
        out = []
        with self._lock:
            for key in keys:
                pend = self._pending.get(key)
                off = min(pend) if pend else self._done.get(key)
                if off is not None:
                    out.append(tp(key[0], key[1], off))
        return out

    # ---- the Source interface ---------------------------------------------------------------
    def _rewind_stale(self) -> None:
        """Read again what was handed out but not acknowledged within ``ack_wait``."""
        now = time.time()
        stale = []
        with self._lock:
            for key, pend in self._pending.items():
                if pend and now - min(pend.values()) > self.ack_wait:
                    stale.append((key, min(pend)))
            for key, off in stale:  # everything below ``off`` was acknowledged
                self._pending[key] = {}
                self._done[key] = off
        for (topic, part), off in stale:
            log.warning(
                "kafka %s[%d]: offset %d not acknowledged in %.0f s; reading again",
                topic,
                part,
                off,
                self.ack_wait,
            )
            try:
                self.consumer.seek(self._ck.TopicPartition(topic, part, off))
            except self._ck.KafkaException as exc:  # not assigned any more: the owner reads it
                log.warning("kafka %s[%d]: rewind failed: %s", topic, part, exc)

    def fetch(self, max_messages: int, timeout: float) -> list[InMessage]:
        self._rewind_stale()
        try:
            # consume(n, t) waits until n messages or t: wait for the first only, then
            # take what librdkafka has already fetched (a lone message is not held back)
            msgs = self.consumer.consume(1, timeout)
            if msgs and max_messages > 1:
                msgs += self.consumer.consume(max_messages - 1, 0)
        except self._ck.KafkaException as exc:
            raise TransportError(f"Kafka consume from {self.topic} failed: {exc}") from exc
        now = time.time()
        out = []
        with self._lock:
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.fatal():
                        raise TransportError(f"Kafka consumer on {self.topic}: {err}")
                    log.warning("kafka %s: %s", self.topic, err)
                    continue
                key = (m.topic(), m.partition())
                self._pending.setdefault(key, {})[m.offset()] = now
                out.append(InMessage(m.value() or b"", now, key + (m.offset(),), m.key()))
        return out

    def ack(self, messages: list[InMessage]) -> None:
        touched = set()
        with self._lock:
            for m in messages:
                topic, part, off = m.handle
                pend = self._pending.get((topic, part))
                if pend is None or pend.pop(off, None) is None:
                    continue  # revoked or rewound meanwhile: it is read again (at-least-once)
                key = (topic, part)
                self._done[key] = max(self._done.get(key, 0), off + 1)
                touched.add(key)
        offsets = self._committable(sorted(touched))
        if offsets:
            try:
                self.consumer.store_offsets(offsets=offsets)
            except self._ck.KafkaException as exc:  # partition revoked: the new owner re-reads
                log.warning("kafka %s: storing offsets failed: %s", self.topic, exc)

    def close(self) -> None:
        try:
            self.consumer.close()  # commits the stored offsets, leaves the group
        except (RuntimeError, self._ck.KafkaException) as exc:
            log.warning("kafka %s: close: %s", self.topic, exc)


class KafkaSink:
    def __init__(self, ep: Endpoint, *, name: str = "0") -> None:
        ck = self._ck = _ck()
        self.url = ep.url
        self.topic = ep.target
        cfg = _client_config(ep, f"cloudhub-sink-{name}")
        _ensure_topic(ck, ep, cfg)
        cfg.update(
            {
                "acks": "all",
                "enable.idempotence": ep.options.get("idempotence", "1") == "1",
                "linger.ms": 2,
                "message.timeout.ms": 30000,
                "logger": log,
            }
        )
        for k, setting in _PRODUCER_OPTIONS.items():
            if k in ep.options:
                cfg[setting] = ep.options[k]
        self.producer = ck.Producer(cfg)

    def publish(self, payloads: list[bytes], timeout: float = 35.0) -> None:
        """Produce all, then wait until the broker acknowledged every one (or raise)."""
        if not payloads:
            return
        failures: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        deadline = time.monotonic() + timeout
        for p in payloads:
            while True:
                try:
                    self.producer.produce(
                        self.topic, p, key=getattr(p, "key", None), on_delivery=delivered
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain it
                    if time.monotonic() > deadline:
                        raise TransportError(f"Kafka producer queue for {self.topic} stays full")
                    self.producer.poll(0.05)
                except self._ck.KafkaException as exc:
                    raise TransportError(f"Kafka produce to {self.topic} failed: {exc}") from exc
        left = self.producer.flush(max(0.1, deadline - time.monotonic()))
        if left or failures:
            raise TransportError(
                f"Kafka did not acknowledge {left + len(failures)} of {len(payloads)} "
                f"messages to {self.topic}: {failures[0] if failures else 'timeout'}"
            )

    def close(self) -> None:
        self.producer.flush(5)
