"""MQTT connection settings and a paho client factory shared by the device link and the hub.

``mqtt://host:port`` (plain) or ``mqtts://host:port`` (TLS). ``protocol`` is ``"5"``
(MQTT v5, the default: shared subscriptions, session expiry) or ``"3.1.1"`` (the
embedded amqtt broker speaks only 3.1.1); ``"auto"`` tries v5 and falls back once.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

import paho.mqtt.client as mqtt

from edge_runtime.backoff import Backoff
from edge_runtime.errors import ValidationError

PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}


@dataclass
class MqttConfig:
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None  # TLS client certificate (device identity)
    key_file: str | None = None
    tls_insecure: bool = False  # skip host name check (self-signed test brokers only)
    protocol: str = "5"
    keepalive: int = 30

    @property
    def host(self) -> str:
        return parse_mqtt_url(self.url)[0]

    @property
    def port(self) -> int:
        return parse_mqtt_url(self.url)[1]

    @property
    def tls(self) -> bool:
        return parse_mqtt_url(self.url)[2] or bool(self.ca_file)

    def effective_protocol(self) -> str:
        q = parse_qs(urlparse(self.url).query).get("protocol")
        return q[0] if q else self.protocol


def parse_mqtt_url(url: str) -> tuple[str, int, bool]:
    u = urlparse(url)
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
        raise ValidationError(f"MQTT URL {url!r} must look like mqtt://host:port or mqtts://host:port",
                              field="mqtt.url")
    tls = u.scheme in ("mqtts", "ssl")
    return u.hostname, u.port or (8883 if tls else 1883), tls


def make_client(cfg: MqttConfig, client_id: str, protocol: str | None = None,
                manual_ack: bool = False) -> mqtt.Client:
    proto = protocol or cfg.effective_protocol()
    if proto == "auto":
        proto = "5"
    if proto not in PROTOCOLS:
        raise ValidationError(f"MQTT protocol {proto!r} is not one of 5, 3.1.1, auto", field="mqtt.protocol")
    kw = {}
    if PROTOCOLS[proto] == mqtt.MQTTv311:
        kw["clean_session"] = True
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=PROTOCOLS[proto], manual_ack=manual_ack, **kw)
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password)
    if cfg.tls:
        client.tls_set(ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file,
                       cert_reqs=ssl.CERT_REQUIRED)
        if cfg.tls_insecure:
            client.tls_insecure_set(True)
    return client


def use_backoff(client: mqtt.Client, min_s: float, max_s: float) -> Backoff:
    """Make paho's own reconnect loop (``loop_start``/``loop_forever``) wait with jitter.

    paho doubles a fixed delay, so clients that lost the same broker retry in lockstep; this
    replaces its wait with :class:`~edge_runtime.backoff.Backoff`, reset by every CONNACK that
    accepted the connection (paho clears ``_reconnect_delay`` then)."""
    backoff = Backoff(min_s, max_s)

    def wait() -> None:
        with client._reconnect_delay_mutex:
            if client._reconnect_delay is None:  # connected since the last wait
                backoff.reset()
            delay = backoff.next()
            client._reconnect_delay = delay
        deadline = time.monotonic() + delay
        while not client._thread_terminate and client._state not in _STOPPING:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.2))

    client._reconnect_wait = wait
    return backoff


_STOPPING = (mqtt._ConnectionState.MQTT_CS_DISCONNECTING, mqtt._ConnectionState.MQTT_CS_DISCONNECTED)
