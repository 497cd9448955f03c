"""MQTT v5 transport (paho-mqtt 2): QoS 1 in and out, at-least-once.

The source connects with a stable client id and a persistent session
(``clean_start=False`` + session expiry), subscribes with a shared
subscription ``$share/<group>/<topic>`` so several workers split the topic,
and acknowledges manually (``manual_ack``): a PUBACK goes to the broker only
after the message's result was published, so a worker killed with SIGKILL
gets its unacknowledged messages again when it reconnects. Messages published
while it is away are queued in its session (mind Mosquitto's
``max_queued_messages``, 1000 by default).
"""

from __future__ import annotations

import queue
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_hub.stream.transport import Endpoint, InMessage, TransportError

CONNECT_TIMEOUT_S = 10.0


def _client(client_id: str, *, manual_ack: bool) -> mqtt.Client:
    return mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )


def _connect(
    client: mqtt.Client,
    ep: Endpoint,
    *,
    clean_start: bool,
    expiry: int,
    receive_max: int | None = None,
) -> None:
    connected = threading.Event()
    failure: list[str] = []

    def on_connect(c, userdata, flags, reason, props):
        if reason.is_failure:
            failure.append(str(reason))
        connected.set()

    client.on_connect = on_connect
    if "username" in ep.options:
        client.username_pw_set(ep.options["username"], ep.options.get("password"))
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry
    if receive_max:
        props.ReceiveMaximum = receive_max
    client.reconnect_delay_set(0.2, 5)
    try:
        client.connect(ep.host, ep.port, keepalive=30, clean_start=clean_start, properties=props)
    except OSError as exc:
        raise TransportError(f"cannot reach MQTT broker {ep.host}:{ep.port}: {exc}") from exc
    client.loop_start()
    if not connected.wait(CONNECT_TIMEOUT_S) or failure:
        client.loop_stop()
        raise TransportError(
            f"MQTT broker {ep.host}:{ep.port} refused the connection: "
            f"{failure[0] if failure else 'timeout'}"
        )


class MqttSource:
    def __init__(self, ep: Endpoint, *, group: str, name: str) -> None:
        self.url = ep.url
        self.topic = ep.target
        self.subscription = f"$share/{group}/{ep.target}"
        self.client_id = ep.options.get("client_id", f"cloudhub-{group}-{name}")
        self._q: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = _client(self.client_id, manual_ack=True)
        self.client.on_message = lambda c, u, msg: self._q.put(msg)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        expiry = int(ep.options.get("session_expiry", 86400))
        _connect(
            self.client,
            ep,
            clean_start=False,
            expiry=expiry,
            receive_max=int(ep.options.get("receive_max", 1000)),
        )
        # (Re)subscribing is idempotent; on reconnects paho keeps the session's subscription.
        self.client.on_connect = lambda c, *a: c.subscribe(self.subscription, qos=1)
        self.client.subscribe(self.subscription, qos=1)
        if not subscribed.wait(CONNECT_TIMEOUT_S):
            self.close()
            raise TransportError(
                f"MQTT broker did not confirm the subscription {self.subscription}"
            )

    def fetch(self, max_messages: int, timeout: float) -> list[InMessage]:
        out: list[InMessage] = []
        try:
            first = self._q.get(timeout=timeout)
        except queue.Empty:
            return out
        out.append(InMessage(first.payload, handle=first))
        deadline = time.monotonic() + min(timeout, 0.005)
        while len(out) < max_messages:
            try:
                m = (
                    self._q.get_nowait()
                    if time.monotonic() >= deadline
                    else self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                )
            except queue.Empty:
                break
            out.append(InMessage(m.payload, handle=m))
        return out

    def ack(self, messages: list[InMessage]) -> None:
        for m in messages:  # in the order received (MQTT requires ordered PUBACKs)
            if m.handle.qos > 0:
                self.client.ack(m.handle.mid, m.handle.qos)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class MqttSink:
    def __init__(self, ep: Endpoint, *, name: str = "0") -> None:
        self.url = ep.url
        self.topic = ep.target
        self.retain = ep.options.get("retain") == "1"
        self.client = _client(ep.options.get("client_id", ""), manual_ack=False)
        self.client.max_inflight_messages_set(1000)
        _connect(self.client, ep, clean_start=True, expiry=0)

    def publish(self, payloads: list[bytes], timeout: float = 30.0) -> None:
        infos = [self.client.publish(self.topic, p, qos=1, retain=self.retain) for p in payloads]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.01, deadline - time.monotonic()))
            if not info.is_published():
                raise TransportError(
                    f"MQTT broker did not confirm a publish to {self.topic} (rc {info.rc})"
                )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
