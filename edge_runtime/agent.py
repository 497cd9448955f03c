"""The fleet agent: glues a device's model store to the hub over MQTT.

One object per device, owned by the :class:`~edge_runtime.daemon.Daemon` when a broker is
configured (and by the fleet simulator, many per process):

    predict path ──► observe() ──► TelemetryRecorder (in-memory window)
                              └──► ShadowComparator.offer() (bounded queue, off the path)
    every interval_s: roll the window ──► Outbox (SQLite, seq) ──► DeviceLink ──► broker
    retained desired ──► DeviceLink ──► Reconciler (download, verify, install) ──► events, state

Local inference never waits for the broker: the link, the window timer, the shadow
worker and the reconciler each run on their own thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import __version__ as RUNTIME_VERSION
from edge_runtime.buffer import Outbox
from edge_runtime.errors import NotFoundError
from edge_runtime.link import DeviceLink
from edge_runtime.mqtt import MqttConfig
from edge_runtime.protocol import (
    DEFAULT_PREFIX,
    DesiredState,
    DeviceEvent,
    DeviceState,
    RunningBundle,
)
from edge_runtime.reconcile import Reconciler, new_event_id
from edge_runtime.shadow_compare import ShadowComparator
from edge_runtime.telemetry import TelemetryRecorder

log = logging.getLogger("edge_runtime.agent")


class FleetAgent:
    def __init__(self, device_id: str, store: Any, *, mqtt: MqttConfig | None, data_dir: str | Path,
                 prefix: str = DEFAULT_PREFIX, hub_url: str | None = None, interval_s: float = 10.0,
                 sample_rate: float = 1.0, shadow_queue: int = 1024, buffer_max_windows: int = 10_000,
                 profile: str = "", tags: Mapping[str, str] | None = None, own_timer: bool = True,
                 resources: bool = True, download_headers: dict[str, str] | None = None,
                 allow_file_urls: bool = False, ack_timeout_s: float = 10.0,
                 install_jitter_s: float = 0.0) -> None:
        self.device_id = device_id
        self.store = store
        self.profile = profile
        self.tags = dict(tags or {})
        self.interval_s = float(interval_s)
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(self.data_dir / "outbox.sqlite", max_windows=buffer_max_windows)
        self.recorder = TelemetryRecorder(device_id, resources=resources)
        self.shadow = ShadowComparator(lambda: self.store.model("shadow"), self.recorder,
                                       sample_rate=sample_rate, queue_size=shadow_queue)
        self.reconciler = Reconciler(device_id, store, self.emit, meta_get=self.outbox.get_meta,
                                     meta_set=self.outbox.set_meta, on_change=self._state_changed,
                                     hub_url=hub_url, download_dir=self.data_dir, headers=download_headers,
                                     allow_file_urls=allow_file_urls, install_jitter_s=install_jitter_s)
        self.link: DeviceLink | None = None
        if mqtt is not None:
            self.link = DeviceLink(mqtt, device_id, self.outbox, prefix=prefix,
                                   on_desired=self.reconciler.submit, state=self.state,
                                   ack_timeout_s=ack_timeout_s)
        self.pre_predict: Callable[[], None] | None = None  # fault-injection hook (simulator)
        self.unwritten_windows = 0  # windows lost because the outbox could not store them
        self._unwritten_pending = 0  # … not yet added to the outbox's dropped_windows count
        self.telemetry_error: str | None = None  # why the last window could not be stored
        self.health: Any = None  # () -> dict: the daemon's health, sent in the state message
        self._own_timer = own_timer
        self._timer: threading.Thread | None = None
        self._stop = threading.Event()
        self._next_roll = time.monotonic() + self.interval_s

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._next_roll = time.monotonic() + self.interval_s
        if self.link is not None:
            self.link.start()
        if self._own_timer:
            self._start_timer()

    def _start_timer(self) -> None:
        self._timer = threading.Thread(target=self._timer_loop, name=f"telemetry-{self.device_id}",
                                       daemon=True)
        self._timer.start()

    def parts(self) -> list[tuple[str, Any, Any]]:
        """(name, alive, restart) of each thread the daemon's supervisor keeps running."""
        out: list[tuple[str, Any, Any]] = []
        if self._own_timer:
            out.append(("telemetry", lambda: self._stop.is_set() or (
                self._timer is not None and self._timer.is_alive()), self._start_timer))
        # the shadow worker exits when idle (thread None); a thread object that is not alive
        # died of an error, and offer() would never start another
        out.append(("shadow", lambda: self.shadow._thread is None or self.shadow._thread.is_alive(),
                    self.shadow._ensure_worker))
        link = self.link
        if link is not None and link.net_loop is None:
            def link_alive() -> bool:
                t = getattr(link.client, "_thread", None)  # paho's network thread
                return not link._started or (t is not None and t.is_alive())

            def link_restart() -> None:
                link.client._thread = None  # paho refuses loop_start while it holds a dead one
                link.client.loop_start()

            out.append(("mqtt_link", link_alive, link_restart))
        return out

    def stop(self, *, graceful: bool = True, flush: bool = True) -> None:
        """Stop; ``graceful=False`` simulates a crash (no last window, socket dropped → last will)."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=5)
            self._timer = None
        if graceful:
            self.shadow.drain(2.0)  # finish the queued comparisons so the last window has them
        self.shadow.stop()
        if graceful and flush:
            self._roll_safely()
            if self.link is not None and self.link.connected.is_set():
                deadline = time.monotonic() + 2.0
                while self.outbox.count() and time.monotonic() < deadline:
                    time.sleep(0.02)
        self.reconciler.stop()
        if self.link is not None:
            self.link.stop(graceful=graceful)
        self.last_seq = self.outbox.last_seq
        self.unsent = self.outbox.count()
        self.outbox.close()

    def _timer_loop(self) -> None:
        # wakes at least every second: the link resends what the hub has not acknowledged in time
        while not self._stop.wait(min(1.0, max(0.0, self._next_roll - time.monotonic()))):
            mono = time.monotonic()
            if mono >= self._next_roll:
                self._next_roll = max(self._next_roll + self.interval_s, mono)
                self._roll_safely()
            if self.link is not None:
                try:
                    self.link.pump()
                except Exception:  # keep the timer alive; the link retries on its own
                    log.exception("device %s: sending from the outbox failed", self.device_id)

    def _roll_safely(self) -> None:
        """Roll a window; one that cannot be stored (disk full, broken outbox) is counted as
        dropped and the timer goes on: the next window that fits reports the count."""
        try:
            self.roll_window()
        except Exception as exc:  # noqa: BLE001 - sqlite3/OSError/anything: never end telemetry
            self.unwritten_windows += 1
            self._unwritten_pending += 1
            first = self.telemetry_error is None
            self.telemetry_error = f"{type(exc).__name__}: {exc}"[:300]
            if first or self.unwritten_windows % 100 == 0:
                log.error("device %s: telemetry window not stored (%s); %d dropped so far",
                          self.device_id, self.telemetry_error, self.unwritten_windows)
        else:
            if self.telemetry_error is not None:
                log.warning("device %s: telemetry windows are stored again (%d were dropped)",
                            self.device_id, self.unwritten_windows)
            self.telemetry_error = None

    def tick(self, now: float | None = None) -> bool:
        """Roll the window when its interval is over (for callers that drive time themselves)."""
        mono = time.monotonic()
        if mono < self._next_roll:
            return False
        self._next_roll = max(self._next_roll + self.interval_s, mono)
        self.roll_window(now)
        return True

    def roll_window(self, now: float | None = None) -> dict[str, Any]:
        if self._unwritten_pending:  # windows lost on a full disk join the dropped count
            self.outbox.set_meta("dropped_windows", self.outbox.dropped + self._unwritten_pending)
            self._unwritten_pending = 0
        body = self.outbox.add_window(lambda seq, dropped: self.recorder.roll(seq, dropped, now)
                                      .model_dump(mode="json"))
        if self.link is not None:
            self.link.pump()
        return body

    # ---- state and events -----------------------------------------------------------------------
    def state(self) -> DeviceState:
        bundles = []
        for slot in ("active", "shadow"):
            info = self.store.slot(slot)
            if info is not None:
                bundles.append(RunningBundle(slot=slot, name=info.name, version=info.version,
                                             sha256=info.sha256, format=info.format))
        health: dict[str, Any] = {}
        if self.health is not None:
            try:
                health = self.health()
            except Exception:  # the state message must go out even if a probe fails
                log.exception("device %s: health probe failed", self.device_id)
        return DeviceState(device_id=self.device_id, online=True, bundles=bundles,
                           runtime_version=RUNTIME_VERSION, profile=self.profile, tags=self.tags,
                           applied_desired_id=self.reconciler.applied_id, health=health)

    def _state_changed(self) -> None:
        if self.link is not None:
            self.link.publish_state()

    def emit(self, step: str, **kw: Any) -> None:
        ev = DeviceEvent(device_id=self.device_id, event_id=new_event_id(), step=step, **kw)
        log.info("device %s: %s %s %s", self.device_id, step, kw.get("slot") or "", kw.get("reason") or "")
        body = ev.model_dump(mode="json")
        if self.link is not None:
            self.link.publish_event(body)
        else:
            self.outbox.add_event(body)

    def apply_desired(self, doc: DesiredState | Mapping[str, Any]) -> None:
        """Hand a desired document to the reconciler (what an MQTT delivery does)."""
        d = doc if isinstance(doc, DesiredState) else DesiredState.model_validate(dict(doc))
        self.reconciler.submit(d)

    # ---- the request path ------------------------------------------------------------------------
    def predict(self, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
        """Score rows with the active model, recording telemetry; returns (model, results).

        The same data plane as :meth:`Daemon.predict` (:func:`edge_runtime.daemon.predict_rows`),
        for an agent used without a daemon (the fleet simulator, tests)."""
        from edge_runtime.daemon import predict_rows

        model = self.store.model("active")
        if model is None:
            raise NotFoundError("no active model installed on this device", field="model")
        return model, predict_rows(model, rows, "active", self.on_prediction)

    def observe(self, model: Any, x: np.ndarray, scores: Any, latency_s: float, *, slot: str = "active") -> None:
        """Record one successful predict call (the Daemon calls this from its own predict path)."""
        dec = model.decision(scores)
        sc = scores.score
        self.recorder.record(slot, model, len(x), latency_s, sc, dec)
        if slot == "active":
            self.shadow.offer(x, sc, dec, names=model.codec.names if model.codec is not None else None)

    def observe_error(self, model: Any, rows: int, latency_s: float, *, slot: str = "active") -> None:
        self.recorder.record(slot, model, rows, latency_s, error=True)

    # ---- daemon integration ------------------------------------------------------------------------
    def on_prediction(self, record: Any) -> None:
        """Daemon observer: one :class:`~edge_runtime.daemon.PredictionRecord` per predict call."""
        if record.error is not None or record.scores is None:
            if record.rows:
                self.recorder.record(record.slot, record.model, record.rows, record.latency_s, error=True)
            return
        self.observe(record.model, record.x, record.scores, record.latency_s, slot=record.slot)

    @classmethod
    def for_daemon(cls, daemon: Any, **overrides: Any) -> FleetAgent:
        """Build the agent from the daemon's settings and hook it in (service + observer)."""
        s = daemon.settings
        m = s.mqtt
        cfg = MqttConfig(url=m.url, username=m.username,
                         password=m.password.get_secret_value() if m.password is not None else None,
                         ca_file=str(m.ca_file) if m.ca_file else None,
                         cert_file=str(m.certfile) if m.certfile else None,
                         key_file=str(m.keyfile) if m.keyfile else None, keepalive=m.keepalive_s)
        kw: dict[str, Any] = dict(
            mqtt=cfg, data_dir=Path(s.store.dir) / "fleet", prefix=m.prefix, hub_url=s.hub.url,
            allow_file_urls=s.hub.allow_file_urls, install_jitter_s=s.hub.install_jitter_s,
            interval_s=s.telemetry.interval_s, buffer_max_windows=s.telemetry.buffer_max_windows,
            sample_rate=s.shadow.sample_rate, profile=daemon.profile.name, tags=s.device.tags)
        kw.update(overrides)
        agent = cls(daemon.device_id, daemon.store, **kw)
        daemon.services.append(agent)
        daemon.observers.append(agent.on_prediction)
        return agent
