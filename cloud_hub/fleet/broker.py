"""Embedded MQTT broker (amqtt) for the zero-setup hub: ``cloud-hub serve`` without ``HUB_MQTT_URL``.

amqtt speaks MQTT 3.1.1 only (no shared subscriptions, no session expiry), which is
fine for one hub process and a demo fleet; its URL carries ``?protocol=3.1.1`` so every
client (hub ingest, devices, simulator) picks the right protocol. Production and the
tests use Mosquitto (or any MQTT v5 broker) via ``HUB_MQTT_URL``.
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


class EmbeddedBroker:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or _free_port(host)
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
        from amqtt.broker import Broker

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

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None
