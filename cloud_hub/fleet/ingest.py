"""MQTT ingest: device state, events and telemetry windows → the fleet tables, in batches.

* Events and telemetry use an MQTT v5 *shared* subscription (``$share/hub/…``) so that
  several hub replicas split the load; ``state`` is subscribed non-shared (low volume,
  and retained messages are never delivered to shared subscriptions, so a fresh hub
  would otherwise not learn who is online).
* Messages are acknowledged (manual PUBACK) only after their batch is committed, and
  the session is persistent (``clean_start=False`` + session expiry), so a hub crash or
  restart loses nothing: the broker redelivers. Duplicates are absorbed by the
  (device_id, seq) / event_id unique constraints.
* After each commit the hub tells every device in the batch what it stored
  (``…/devices/D/ack``, :class:`~edge_runtime.protocol.Ack`: window seq ranges, event ids);
  the device deletes only those rows from its outbox and sends the rest again. This is the
  end-to-end commit point: the broker's PUBACK to the device proves nothing (Mosquitto 2.0
  accepts a message while no hub is subscribed, e.g. right after its own restart).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import socket
import threading
import time
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_hub.fleet.validate import record_rejections, split_windows
from edge_runtime.backoff import Backoff
from edge_runtime.mqtt import MqttConfig, make_client, use_backoff
from edge_runtime.protocol import (
    DeviceEvent,
    DeviceState,
    TelemetryWindow,
    hub_subscription,
    parse_topic,
    seq_ranges,
    topic,
)

log = logging.getLogger("cloud_hub.fleet.ingest")

_MESSAGES: dict[str, Any] = {"state": DeviceState, "events": DeviceEvent, "telemetry": TelemetryWindow}


def _hub_config(fleet) -> MqttConfig:
    s = fleet.settings
    return MqttConfig(url=fleet.mqtt_url, username=s.mqtt_username, password=s.mqtt_password,
                      protocol=fleet.mqtt_protocol)


def _client_id(fleet, role: str) -> str:
    base = f"{fleet.settings.db_url}|{fleet.prefix}"
    return f"hub-{role}-{socket.gethostname()[:20]}-{hashlib.sha256(base.encode()).hexdigest()[:10]}"


def _instance_slot(data_dir) -> tuple[int, Any]:
    """The first free instance number on this host (an flock per number in the data dir).

    A restarted hub gets number 0 again (same MQTT client id → its persistent session and
    queued messages), while ``cloud-hub serve --workers 4`` gets 0..3 (distinct client ids,
    so the workers do not kick each other off the broker)."""
    import fcntl
    from pathlib import Path

    d = Path(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    for i in range(256):
        fh = open(d / f".ingest-{i}.lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return i, fh
        except OSError:
            fh.close()
    return os.getpid(), None


class IngestSubscriber:
    def __init__(self, fleet, *, batch_size: int = 2000, max_wait_s: float = 0.05,
                 session_expiry: int = 3600, group: str = "hub") -> None:
        self.fleet = fleet
        self.cfg = _hub_config(fleet)
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.session_expiry = session_expiry
        self.group = group
        self.v5 = self.cfg.effective_protocol() != "3.1.1"
        self._q: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        self.stats = {"received": 0, "written_windows": 0, "written_events": 0, "written_states": 0,
                      "rejected": 0, "batches": 0, "db_errors": 0, "acks_sent": 0}
        self.instance, self._slot_fh = _instance_slot(fleet.settings.data_dir)
        self.client = make_client(self.cfg, f"{_client_id(fleet, 'ingest')}-{self.instance}", manual_ack=True)
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        # reconnect faster than devices do (0.5 s … 30 s): Mosquitto 2.0.x does not restore *shared*
        # subscriptions from its persistence file, so after a broker restart the hub must be
        # subscribed again before the devices replay their buffered windows.
        use_backoff(self.client, 0.1, 1.0)

    def start(self) -> None:
        kw: dict[str, Any] = {}
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = int(self.session_expiry)
            kw = {"clean_start": self.session_expiry <= 0, "properties": props}
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive, **kw)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._writer, name="fleet-ingest-writer", daemon=True)
        self._thread.start()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.connected.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.client.disconnect()
        self.client.loop_stop()
        if self._slot_fh is not None:
            self._slot_fh.close()
            self._slot_fh = None

    @property
    def backlog(self) -> int:
        return self._q.qsize()

    # ---- paho callbacks (network thread) ------------------------------------------------
    def _on_connect(self, client, _userdata, _flags, reason_code, _props=None) -> None:
        if reason_code.is_failure:
            log.error("hub ingest: broker refused the connection: %s", reason_code)
            return
        p = self.fleet.prefix
        group = self.group if self.v5 else None
        client.subscribe([(hub_subscription(p, "state", None), 1),
                          (hub_subscription(p, "events", group), 1),
                          (hub_subscription(p, "telemetry", group), 1)])
        self.connected.set()
        log.info("hub ingest connected to %s (%s)", self.cfg.url, "MQTT v5, shared" if self.v5 else "MQTT 3.1.1")

    def _on_disconnect(self, *_a, **_k) -> None:
        self.connected.clear()

    def _on_message(self, _client, _userdata, msg) -> None:
        self._q.put((msg.topic, msg.payload, msg.mid, msg.qos, time.time()))

    # ---- writer thread ----------------------------------------------------------------------
    def _writer(self) -> None:
        while not self._stop.is_set() or not self._q.empty():
            try:
                first = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.batch_size:
                left = deadline - time.monotonic()
                try:
                    batch.append(self._q.get(timeout=max(0.0, left)) if left > 0 else self._q.get_nowait())
                except queue.Empty:
                    break
            self._write(batch)

    def _write(self, batch: list[tuple]) -> None:
        states, events, windows, acks = [], [], [], []
        for name, payload, mid, qos, at in batch:
            self.stats["received"] += 1
            if qos:
                acks.append((mid, qos))
            parsed = parse_topic(self.fleet.prefix, name)
            if parsed is None:
                self.stats["rejected"] += 1
                continue
            dev, kind = parsed
            model = _MESSAGES.get(kind)
            if model is None:
                self.stats["rejected"] += 1
                continue
            try:  # pydantic's own JSON parser: about twice as fast as json.loads + model_validate
                msg: Any = model.model_validate_json(payload)
            except Exception as exc:  # malformed payload: dropped and counted, never a crash
                self.stats["rejected"] += 1
                log.warning("hub ingest: bad %s message from %s: %s", kind, dev, str(exc)[:200])
                continue
            if msg.device_id != dev:  # the topic (ACL-checked) is the identity, not the payload
                self.stats["rejected"] += 1
                log.warning("hub ingest: %s message on %s claims device %s; rejected", kind, dev, msg.device_id)
                continue
            (states if kind == "state" else events if kind == "events" else windows).append((msg, at))
        windows, refused = split_windows(windows)  # impossible numbers never reach the gates (issue 18)
        self.stats["rejected"] += len(refused)
        backoff = Backoff(0.2, 10.0)
        while True:
            try:
                self.fleet.write_batch(states, events, windows, validated=True)
                break
            except Exception:
                self.stats["db_errors"] += 1
                delay = backoff.next()
                log.exception("hub ingest: database write failed; retrying in %.1fs", delay)
                if self._stop.wait(delay) and backoff.attempts > 5:
                    return  # stopping: leave the messages unacknowledged; the broker redelivers
        if refused:
            try:
                record_rejections(self.fleet.engine, refused)
            except Exception:  # counting is best effort; the windows stay refused
                log.exception("hub ingest: could not count %d refused windows", len(refused))
        self.stats["batches"] += 1
        self.stats["written_states"] += len(states)
        self.stats["written_events"] += len(events)
        self.stats["written_windows"] += len(windows)
        self._send_acks(events, windows + [(w, at) for w, _, at in refused])
        for mid, qos in acks:
            self.client.ack(mid, qos)

    def _send_acks(self, events: list[tuple[DeviceEvent, float]],
                   windows: list[tuple[TelemetryWindow, float]]) -> None:
        """Tell each device which of its windows and events are committed (after the commit).

        Every window handed to ``write_batch`` is acknowledged: stored now, stored before (a
        replay) or refused for good at ingest (counted on the device's record) — resending any of
        them could not change the outcome. A window refused before ``write_batch`` (unparseable,
        wrong device) is not: there is no trustworthy seq to acknowledge.

        QoS 0: an ack is idempotent and its loss heals itself — the device resends what stays
        unacknowledged (after ``ack_timeout_s`` on a live connection, and after every reconnect),
        the hub dedupes and acks again — so broker confirmation buys nothing. With QoS 1, paho's
        in-flight bookkeeping (a scan of the outgoing queue per PUBACK) was ~11 % of the hub's
        ingest CPU at 1,000 devices (issue 14)."""
        per_device: dict[str, tuple[list[int], list[str]]] = {}
        for w, _ in windows:
            per_device.setdefault(w.device_id, ([], []))[0].append(w.seq)
        for ev, _ in events:
            per_device.setdefault(ev.device_id, ([], []))[1].append(ev.event_id)
        now = time.time()
        for dev, (seqs, ids) in per_device.items():
            body = {"device_id": dev, "windows": seq_ranges(seqs), "events": ids, "ts": now}
            self.client.publish(topic(self.fleet.prefix, dev, "ack"), json.dumps(body, separators=(",", ":")),
                                qos=0)
        self.stats["acks_sent"] += len(per_device)


class DesiredPublisher:
    """Publishes desired documents retained (QoS 1); republishes all of them on every (re)connect."""

    def __init__(self, fleet) -> None:
        self.fleet = fleet
        self.cfg = _hub_config(fleet)
        self.client = make_client(self.cfg, _client_id(fleet, "desired") + f"-{id(self) % 100000}")
        # a rollback publishes one document per device at once: with paho's default of 20 in flight
        # the rest waited for PUBACK round trips (2.4 s for 1,000 documents on a busy hub; issue 14)
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = self._on_connect
        use_backoff(self.client, 0.5, 10.0)
        self.connected = threading.Event()

    def start(self) -> None:
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, _u, _f, reason_code, _p=None) -> None:
        if reason_code.is_failure:
            log.error("hub desired publisher: broker refused the connection: %s", reason_code)
            return
        self.connected.set()
        for device_id, doc in self.fleet.all_desired():
            self.publish(self.fleet_topic(device_id), doc)

    def fleet_topic(self, device_id: str) -> str:
        from edge_runtime.protocol import topic

        return topic(self.fleet.prefix, device_id, "desired")

    def publish(self, name: str, body: dict[str, Any]) -> None:
        self.client.publish(name, json.dumps(body), qos=1, retain=True)
