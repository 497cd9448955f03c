"""Embedded MQTT broker (amqtt) for the zero-setup hub: ``cloud-hub serve`` without ``HUB_MQTT_URL``.

amqtt speaks MQTT 3.1.1 only (no shared subscriptions, no session expiry), which is
fine for one hub process and a demo fleet; its URL carries ``?protocol=3.1.1`` so every
client (hub ingest, devices, simulator) picks the right protocol. Production and the
tests use Mosquitto (or any MQTT v5 broker) via ``HUB_MQTT_URL``.

Memory: amqtt queues every PUBLISH it receives in an *unbounded* ``asyncio.Queue`` before fanning
it out. When devices publish faster than the broker's single pure-Python loop can fan out (about
1,000 simulated devices on a small machine, sharing the GIL with the hub), that queue grew without
limit: the hub reached 12.6 GB in ~9 minutes (benchmarks/RESULTS.md, "Rollouts"). The queue is
bounded here (``max_queued``): a full queue makes amqtt's ``await put()`` wait, so the publishing
connections stop being read and TCP back-pressure slows the devices, which buffer their windows
(``edge_runtime.buffer``) instead of the hub holding them in RAM. amqtt's reader spawns one task per
PUBLISH and sends the PUBACK once the message is in the session's (also unbounded) delivery queue,
so each session's delivery queue is bounded too (``max_session_queued``): a full one delays the
PUBACK, and the device's MQTT in-flight window (paho: 20 QoS1 messages) stops it publishing.

Device limit: the broker runs in the hub's process and shares its GIL; it was measured with 300
simulated devices (benchmarks/RESULTS.md), not beyond. Past ``max_clients`` connections (default
``MAX_CLIENTS``: 300 devices plus the hub's own connections) it refuses a new client with a CONNACK
"server unavailable" and one ERROR log line saying why and what to use instead (Mosquitto), rather
than slowing every device down; the refused device backs off and retries.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

log = logging.getLogger("cloud_hub.fleet.broker")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _SnapshotDict(dict):
    def __iter__(self):
        return iter(list(super().keys()))


#: messages received but not yet fanned out; beyond this the broker stops reading publishers
MAX_QUEUED = 2000
#: QoS1 messages received from one client and not yet fanned out (PUBACK waits beyond this)
MAX_SESSION_QUEUED = 50
#: connections the embedded broker accepts (devices + the hub's ingest and publisher connections)
MAX_CLIENTS = 310
#: MQTT 3.1.1 CONNACK, return code 3: server unavailable
_CONNACK_UNAVAILABLE = b"\x20\x02\x00\x03"


def _bounded_session_class(maxsize: int):
    from amqtt.session import Session

    class BoundedSession(Session):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            self.delivered_message_queue = asyncio.Queue(maxsize=maxsize)

        def __setstate__(self, state) -> None:
            super().__setstate__(state)
            self.delivered_message_queue = asyncio.Queue(maxsize=maxsize)

    return BoundedSession


class EmbeddedBroker:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None, *, max_queued: int = MAX_QUEUED,
                 max_session_queued: int = MAX_SESSION_QUEUED, max_clients: int = MAX_CLIENTS) -> None:
        if max_queued < 1 or max_session_queued < 1 or max_clients < 1:
            raise ValueError("max_queued, max_session_queued and max_clients must be at least 1")
        self.max_clients = max_clients
        self.clients = 0
        self.refused = 0
        self.max_session_queued = max_session_queued
        self.host = host
        self.port = port or _free_port(host)
        self.max_queued = max_queued
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}?protocol=3.1.1"

    def start(self, timeout: float = 15.0) -> None:
        self._thread = threading.Thread(target=self._run, name="embedded-mqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the embedded MQTT broker did not start in time")
        if self._error is not None:
            raise RuntimeError(f"the embedded MQTT broker failed to start: {self._error}") from self._error

    def _run(self) -> None:
        import amqtt.broker
        import amqtt.mqtt.protocol.broker_handler
        from amqtt.broker import Broker

        # amqtt builds its sessions with the module-level name ``Session`` (one broker per hub)
        bounded = _bounded_session_class(self.max_session_queued)
        amqtt.broker.Session = bounded
        amqtt.mqtt.protocol.broker_handler.Session = bounded

        for name in ("amqtt", "transitions"):  # quieter, unless the caller chose a level already
            lg = logging.getLogger(name)
            if lg.level < logging.WARNING:
                lg.setLevel(logging.WARNING)
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 0}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        try:
            self._broker = Broker(config, loop=loop)
            # amqtt 0.12 iterates this dict across an ``await`` when a client connects; another
            # client subscribing meanwhile raised "dictionary changed size during iteration" and
            # killed the connecting client's session. Iterate over a snapshot instead.
            self._broker._subscriptions = _SnapshotDict(self._broker._subscriptions)
            # amqtt's broadcast queue is unbounded (memory grows without limit when publishers
            # outpace the fan-out); bounded, its ``await put()`` back-pressures the publishers.
            self._broker._broadcast_queue = asyncio.Queue(maxsize=self.max_queued)
            self._broker.stream_connected = self._limited(self._broker.stream_connected)
            loop.run_until_complete(self._broker.start())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        try:
            loop.run_until_complete(self._broker.shutdown())
        except Exception:
            log.debug("embedded broker shutdown error", exc_info=True)
        loop.close()

    def _limited(self, accept):
        """Wrap amqtt's per-connection handler: refuse past ``max_clients`` (amqtt's own
        ``max_connections`` makes extra clients wait silently instead)."""

        async def connected(reader, writer, listener_name):
            if self.clients >= self.max_clients:
                self.refused += 1
                peer = writer.get_extra_info("peername")
                log.error("embedded MQTT broker: refused a connection from %s: %d clients connected, the limit "
                          "is %d (the in-process amqtt broker is for demos and small fleets; set HUB_MQTT_URL "
                          "to a Mosquitto or other MQTT v5 broker for more devices)", peer, self.clients,
                          self.max_clients)
                try:
                    writer.write(_CONNACK_UNAVAILABLE)
                    await writer.drain()
                finally:
                    writer.close()
                return
            self.clients += 1
            try:
                await accept(reader, writer, listener_name)
            finally:
                self.clients -= 1

        return connected

    @property
    def queued(self) -> int:
        """Messages received and not yet fanned out (at most ``max_queued``)."""
        return self._broker._broadcast_queue.qsize() if self._broker is not None else 0

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None
