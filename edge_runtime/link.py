"""The device's MQTT link to the hub (paho-mqtt v2, MQTT v5 by default).

* ``state`` is published retained (QoS 1) on every (re)connect and change; the last
  will (also retained) says ``online: false`` when the device vanishes.
* The device subscribes to its own retained ``desired`` document and to its ``ack`` topic.
* Events and telemetry windows go through the :class:`~edge_runtime.buffer.Outbox`:
  stored first, sent in order, deleted only when the *hub* acknowledges it stored them
  (:class:`~edge_runtime.protocol.Ack`; a broker's PUBACK only means the broker took them, and
  Mosquitto takes them even while no hub is subscribed). Everything not acknowledged is sent
  again after every reconnect and restart, and after ``ack_timeout_s`` (jittered, growing while
  no ack comes) on a live connection; the hub dedupes on (device, seq) and event id. At most
  ``max_unacked`` rows wait for the hub at a time, so a hub outage does not flood the broker.
* reconnects back off exponentially with jitter (``reconnect_min_s`` … ``reconnect_max_s``,
  :mod:`edge_runtime.backoff`), so a fleet that lost its broker does not return in lockstep;
  nothing on the inference path ever waits for the broker.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from edge_runtime.backoff import Backoff
from edge_runtime.buffer import Outbox
from edge_runtime.mqtt import MqttConfig, make_client, use_backoff
from edge_runtime.protocol import DEFAULT_PREFIX, Ack, DesiredState, DeviceState, topic

log = logging.getLogger("edge_runtime.link")


class ExternalLoop(Protocol):
    """A network loop that drives many links' paho clients from one thread (the fleet
    simulator's :class:`devices.network_loop.NetworkLoop`); a link with none runs paho's own
    thread."""

    def attach(self, link: DeviceLink) -> None: ...

    def detach(self, link: DeviceLink) -> None: ...


def client_id_for(device_id: str, prefix: str) -> str:
    """The MQTT client id: the device id, plus a short hash of a non-default topic prefix, so two
    fleets that share a broker under different prefixes (test runs, staging) never take over each
    other's sessions. Authorisation uses the user name (the device id), not the client id."""
    if prefix == DEFAULT_PREFIX:
        return device_id
    return f"{device_id}@{hashlib.sha256(prefix.encode()).hexdigest()[:8]}"


class DeviceLink:
    def __init__(self, cfg: MqttConfig, device_id: str, outbox: Outbox, *, prefix: str = "edgefleet/v1",
                 on_desired: Callable[[DesiredState], None] | None = None,
                 state: Callable[[], DeviceState] | None = None, max_inflight: int = 20,
                 reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0, max_unacked: int = 500,
                 ack_timeout_s: float = 10.0, ack_timeout_max_s: float = 300.0) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.prefix = prefix
        self.outbox = outbox
        self.on_desired = on_desired
        self._state_fn = state
        self.max_inflight = max_inflight
        self._lock = threading.RLock()
        self._acked: collections.deque[int] = collections.deque()
        self._inflight: dict[int, int] = {}  # paho mid → outbox row id (waiting for the broker's PUBACK)
        self._last_sent = 0  # highest outbox id handed to paho in this connection
        # rows sent in this connection and not yet acknowledged by the hub: row id → monotonic send time
        self._awaiting: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._hub_acked: collections.deque[list[int]] = collections.deque()  # deleted row ids, to forget
        self.max_unacked = max(1, int(max_unacked))
        self._ack_backoff = Backoff(ack_timeout_s, max(ack_timeout_s, ack_timeout_max_s))
        self._ack_wait: float | None = None  # current resend timeout (drawn from _ack_backoff)
        self.hub_acked = 0  # rows the hub acknowledged (deleted from the outbox)
        self.resends = 0  # times unacknowledged rows were sent again on a live connection
        self.connected = threading.Event()
        self.connects = 0
        self.sent = 0
        self.refused: str | None = None  # last CONNACK refusal (bad credentials, …)
        self._started = False
        self.net_loop: ExternalLoop | None = None  # shared loop (simulator); None: paho's own thread
        self.connect_failures = 0  # since the last CONNACK; an external loop's reconnect backoff
        self.client = make_client(cfg, client_id=client_id_for(device_id, prefix))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.backoff = use_backoff(self.client, reconnect_min_s, reconnect_max_s)
        self.client.max_inflight_messages_set(max(max_inflight, 20))
        offline = DeviceState(device_id=device_id, online=False)
        if state is not None:
            try:
                offline = state().model_copy(update={"online": False})
            except Exception:  # the will must be set even if the state callback is not ready
                pass
        self.client.will_set(self.topic("state"), offline.model_dump_json(), qos=1, retain=True)

    def topic(self, kind: str) -> str:
        return topic(self.prefix, self.device_id, kind)

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (retries with backoff until the broker answers)."""
        if self._started:
            return
        self._started = True
        if self.net_loop is not None:
            self.net_loop.attach(self)
            return
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()

    def stop(self, *, graceful: bool = True) -> None:
        """``graceful``: publish ``online: false`` first; otherwise drop the socket so the broker
        fires the last will (a crash)."""
        if not self._started:
            return
        self._started = False
        if self.net_loop is not None:
            self._stop_external(graceful)
            return
        if graceful and self.connected.is_set():
            try:
                info = self.client.publish(self.topic("state"), self._state(False), qos=1, retain=True)
                info.wait_for_publish(2.0)
            except Exception:
                pass
            self.client.disconnect()
            self.client.loop_stop()
        elif graceful:
            self.client.disconnect()
            self.client.loop_stop()
        else:  # stop the network loop first so nothing reconnects, then drop the socket
            self.client.loop_stop()
            sock = self.client.socket()
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
        self.connected.clear()

    def _stop_external(self, graceful: bool) -> None:
        loop = self.net_loop
        if graceful and self.connected.is_set():
            try:
                info = self.client.publish(self.topic("state"), self._state(False), qos=1, retain=True)
                info.wait_for_publish(2.0)
                self.client.disconnect()
                deadline = time.monotonic() + 2.0
                while self.client.socket() is not None and time.monotonic() < deadline:
                    time.sleep(0.01)
            except Exception:
                pass
        loop.detach(self)
        if self.client.socket() is not None:  # a crash: the broker sees the socket drop → the will
            try:
                self.client._sock_close()  # paho's own close (forgets the socket, so a resume reconnects)
            except Exception:
                sock = self.client.socket()
                if sock is not None:
                    sock.close()
        self.connected.clear()
        self._on_disconnect()

    def cut(self) -> None:
        """Simulate a network cut: the socket drops (the broker fires the will), no reconnect
        until :meth:`resume`; windows and events keep accumulating in the outbox."""
        self.stop(graceful=False)

    def resume(self) -> None:
        self.start()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.connected.wait(timeout)

    # ---- publishing --------------------------------------------------------------------------
    def _state(self, online: bool) -> str:
        if self._state_fn is None:
            st = DeviceState(device_id=self.device_id, online=online)
        else:
            st = self._state_fn().model_copy(update={"online": online})
        return st.model_dump_json()

    def publish_state(self) -> None:
        # Keep the last will in step with what runs, so a device that vanishes still shows
        # (offline) which bundles it was running; paho sends it with the next CONNECT.
        # One state document for both (building it reads the store and the daemon's health).
        st: DeviceState | None = None
        try:
            st = self._state_fn() if self._state_fn is not None else DeviceState(device_id=self.device_id)
            self.client.will_set(self.topic("state"), st.model_copy(update={"online": False}).model_dump_json(),
                                 qos=1, retain=True)
        except Exception:  # a state callback failing must not stop the online report
            log.exception("refreshing the last will failed")
        if self.connected.is_set():
            body = st.model_copy(update={"online": True}).model_dump_json() if st is not None else self._state(True)
            self.client.publish(self.topic("state"), body, qos=1, retain=True)

    def publish_event(self, body: dict[str, Any]) -> None:
        self.outbox.add_event(body)
        self.pump()

    def pump(self) -> None:
        """Hand the next outbox rows to paho: at most ``max_inflight`` waiting for the broker's
        PUBACK and ``max_unacked`` waiting for the hub's ack; resend what the hub did not
        acknowledge within the ack timeout."""
        if not self.connected.is_set():
            return
        with self._lock:
            self._drain_acks()
            self._resend_overdue()
            room = min(self.max_inflight - len(self._inflight), self.max_unacked - len(self._awaiting))
            if room <= 0:
                return
            now = time.monotonic()
            for row_id, kind, body in self.outbox.pending(self._last_sent, room):
                info = self.client.publish(self.topic(kind), body, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    break  # disconnected meanwhile: resent from the outbox after reconnect
                self._inflight[info.mid] = row_id
                self._awaiting[row_id] = now
                self._last_sent = row_id

    def _resend_overdue(self) -> None:
        """The hub has not acknowledged the oldest row in time (it was down, or the broker took the
        message while no hub was subscribed): send everything unacknowledged again, from the oldest
        row on, and wait longer next time (jittered) until an ack comes. Caller holds self._lock."""
        if not self._awaiting:
            return
        if self._ack_wait is None:
            self._ack_wait = self._ack_backoff.next()
        first_row, sent_at = next(iter(self._awaiting.items()))
        if time.monotonic() - sent_at < self._ack_wait:
            return
        log.info("device %s: the hub has not acknowledged %d row(s) for %.0fs; sending them again",
                 self.device_id, len(self._awaiting), self._ack_wait)
        self.resends += 1
        self._awaiting.clear()
        self._last_sent = min(self._last_sent, first_row - 1)
        self._ack_wait = self._ack_backoff.next()

    # ---- paho callbacks ------------------------------------------------------------------------
    def _on_connect(self, client, _u, _flags, reason_code, _props=None) -> None:
        if reason_code.is_failure:
            self.refused = str(reason_code)
            log.error("device %s: broker refused the connection: %s", self.device_id, reason_code)
            return
        self.refused = None
        self.connect_failures = 0
        self.backoff.reset()
        with self._lock:  # a new connection: everything still in the outbox is sent again
            self._inflight.clear()
            self._awaiting.clear()
            self._last_sent = 0
        self.connects += 1
        client.subscribe([(self.topic("desired"), 1), (self.topic("ack"), 1)])
        client.publish(self.topic("state"), self._state(True), qos=1, retain=True)
        self.connected.set()
        log.info("device %s connected to %s", self.device_id, self.cfg.url)
        self.pump()

    def _on_disconnect(self, *_a, **_k) -> None:
        self.connected.clear()
        with self._lock:
            self._inflight.clear()
            self._awaiting.clear()
            self._last_sent = 0

    def _on_publish(self, _client, _u, mid, _reason_code=None, _props=None) -> None:
        # paho calls this with its out-message lock held, while pump() takes self._lock and then
        # paho's lock: blocking on self._lock here would deadlock (lock-order inversion). Queue
        # the ack; handle it now if the lock is free, else the thread inside pump() does.
        self._acked.append(mid)
        if self._lock.acquire(blocking=False):
            try:
                self.pump()
            finally:
                self._lock.release()

    def _drain_acks(self) -> None:
        """Apply queued PUBACKs (the broker took the row: room for the next) and hub acks (the
        hub stored it: already deleted from the outbox, stop waiting for it). Caller holds
        self._lock."""
        while self._acked:
            mid = self._acked.popleft()
            if self._inflight.pop(mid, None) is not None:
                self.sent += 1
        while self._hub_acked:
            for row_id in self._hub_acked.popleft():
                self._awaiting.pop(row_id, None)

    def _on_ack(self, payload: bytes) -> None:
        try:
            ack = Ack.model_validate(json.loads(payload))
        except Exception as exc:
            log.warning("device %s: ignoring a malformed ack: %s", self.device_id, str(exc)[:200])
            return
        if ack.device_id != self.device_id:
            log.warning("device %s: ignoring an ack for device %s", self.device_id, ack.device_id)
            return
        deleted = self.outbox.delete_windows(ack.windows) + self.outbox.delete_events(ack.events)
        self.hub_acked += len(deleted)
        self._hub_acked.append(deleted)
        self._ack_backoff.reset()
        self._ack_wait = None
        if self._lock.acquire(blocking=False):  # same rule as _on_publish: never block paho's thread
            try:
                self.pump()
            finally:
                self._lock.release()

    def _on_message(self, _client, _u, msg) -> None:
        if msg.topic == self.topic("ack") and msg.payload:
            self._on_ack(msg.payload)
            return
        if msg.topic != self.topic("desired") or not msg.payload:  # stray message / document cleared
            return
        try:
            doc = DesiredState.model_validate(json.loads(msg.payload))
        except Exception as exc:
            log.warning("device %s: ignoring a malformed desired document: %s", self.device_id, str(exc)[:200])
            return
        if self.on_desired is not None:
            try:
                self.on_desired(doc)
            except Exception:  # never let the network thread die
                log.exception("device %s: desired handler failed", self.device_id)
