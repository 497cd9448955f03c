"""Stream transports behind one small, synchronous interface.

    Source.fetch(max_messages, timeout) -> list[InMessage]  (a micro-batch, maybe empty)
    Source.ack(messages)                  (after their results are published)
    Sink.publish(payloads)                (returns when the broker confirmed all)

Implementations: MQTT v5 (``mqtt://host:port/topic``; QoS 1, shared
subscription, persistent session, manual acks) in :mod:`.mqtt` and NATS
JetStream (``nats://host:port/subject``; durable pull consumer, explicit ack)
in :mod:`.nats` and Kafka (``kafka://host:port[,host:port…]/topic``; consumer
group, offsets committed after the results are acknowledged) in :mod:`.kafka`.
URL query options: ``group`` (shared subscription / durable name / consumer
group), ``client_id``, ``stream`` (JetStream stream name, created when missing),
``ack_wait`` (s), ``session_expiry`` (s); Kafka's security options are listed
in :mod:`.kafka`.

A transport with message keys (Kafka) sets ``InMessage.key``; the worker hands
the key back on each result and dead letter as a :class:`KeyedPayload` (plain
``bytes`` to transports without keys), so the output record keeps it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol, Self
from urllib.parse import parse_qs, unquote, urlparse

from edge_runtime.errors import EdgeError, ValidationError


class TransportError(EdgeError):
    status_code = 503
    code = "transport_error"


@dataclass
class InMessage:
    data: bytes
    received_at: float = field(default_factory=time.time)
    handle: Any = None  # transport's own message object (for ack)
    key: bytes | None = None  # the transport's message key (Kafka record key), if any


class KeyedPayload(bytes):
    """An output payload that carries the message key to keep (``bytes`` otherwise)."""

    key: bytes | None

    def __new__(cls, data: bytes, key: bytes | None) -> Self:
        obj = super().__new__(cls, data)
        obj.key = key
        return obj


class Source(Protocol):
    url: str

    def fetch(self, max_messages: int, timeout: float) -> list[InMessage]: ...

    def ack(self, messages: list[InMessage]) -> None: ...

    def close(self) -> None: ...


class Sink(Protocol):
    url: str

    def publish(self, payloads: list[bytes]) -> None: ...

    def close(self) -> None: ...


@dataclass
class Endpoint:
    scheme: str
    host: str
    port: int
    target: str  # MQTT topic or NATS subject
    options: dict[str, str]
    url: str


SCHEMES = ("mqtt", "nats", "kafka")


def parse_url(url: str, role: str) -> Endpoint:
    u = urlparse(url)
    if u.scheme not in SCHEMES:
        raise ValidationError(
            f"{role} URL {url!r}: scheme must be mqtt://, nats:// or kafka://", field=role
        )
    if u.scheme == "kafka":
        from cloud_hub.stream.kafka import parse_kafka_url

        return parse_kafka_url(url, role)
    target = unquote(u.path.lstrip("/"))
    if u.scheme == "nats":
        target = target.replace("/", ".")
    if not target:
        raise ValidationError(
            f"{role} URL {url!r} names no topic/subject (e.g. {u.scheme}://host:port/scores)",
            field=role,
        )
    if not u.hostname:
        raise ValidationError(f"{role} URL {url!r} names no host", field=role)
    try:
        port = u.port or (1883 if u.scheme == "mqtt" else 4222)
    except ValueError as exc:
        raise ValidationError(f"{role} URL {url!r} has a bad port", field=role) from exc
    opts = {k: v[-1] for k, v in parse_qs(u.query).items()}
    return Endpoint(u.scheme, u.hostname, port, target, opts, url)


def open_source(url: str, *, group: str = "cloudhub", name: str = "0") -> Source:
    ep = parse_url(url, "source")
    group = ep.options.get("group", group)
    if ep.scheme == "mqtt":
        from cloud_hub.stream.mqtt import MqttSource

        return MqttSource(ep, group=group, name=name)
    if ep.scheme == "kafka":
        from cloud_hub.stream.kafka import KafkaSource

        return KafkaSource(ep, group=group, name=name)
    from cloud_hub.stream.nats import NatsSource

    return NatsSource(ep, group=group)


def open_sink(url: str, role: str = "sink", *, name: str = "0") -> Sink:
    ep = parse_url(url, role)
    if ep.scheme == "mqtt":
        from cloud_hub.stream.mqtt import MqttSink

        return MqttSink(ep, name=name)
    if ep.scheme == "kafka":
        from cloud_hub.stream.kafka import KafkaSink

        return KafkaSink(ep, name=name)
    from cloud_hub.stream.nats import NatsSink

    return NatsSink(ep)


def default_dead_letter(sink_url: str) -> str:
    """``<sink>/dead-letter`` (MQTT) or ``<sink>.dead-letter`` (NATS, Kafka), same broker."""
    ep = parse_url(sink_url, "sink")
    u = urlparse(sink_url)
    sep = "/" if ep.scheme == "mqtt" else "."
    query = f"?{u.query}" if u.query else ""
    return f"{u.scheme}://{u.netloc}/{ep.target}{sep}dead-letter{query}"
