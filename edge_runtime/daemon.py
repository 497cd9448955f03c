"""The device daemon: a model store (or one fixed bundle) served to local apps.

``Daemon`` is the transport-neutral core of the device: the local HTTP
endpoint, in-process apps and (later) the MQTT link all go through
:meth:`Daemon.predict`. After every call, observers get a
:class:`PredictionRecord` (model, encoded inputs, vectorised scores, latency,
error) — telemetry and shadow comparison hook in there and must stay cheap
(queue the work; never block the caller).

Extra long-running parts (the MQTT link, telemetry loop) are added as
*services*: objects with ``start()`` and ``stop()`` that the daemon starts
after the local API and stops before it::

    daemon = Daemon(load_settings("device.toml"))
    daemon.services.append(my_link)
    daemon.observers.append(recorder.on_prediction)
    daemon.run_forever()          # until SIGTERM / SIGINT
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_runtime.bundle import read_bundle, verify_bundle
from edge_runtime.errors import EdgeError, EngineError, UnavailableError, ValidationError
from edge_runtime.model import Model, Scores
from edge_runtime.profile import DeviceProfile, load_profile
from edge_runtime.settings import EdgeSettings, load_settings
from edge_runtime.signing import load_public_key
from edge_runtime.store import ModelStore
from edge_runtime.supervise import Supervisor

log = logging.getLogger("edge_runtime.daemon")


@dataclass
class PredictionRecord:
    """What one predict call did, for observers (telemetry, shadow comparison)."""

    slot: str
    model: Model
    rows: int
    latency_s: float
    x: np.ndarray | None  # encoded (n, n_features) inputs, in contract order
    scores: Scores | None
    error: EdgeError | None = None


Observer = Callable[[PredictionRecord], None]


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class Daemon:
    """Open the store (or load ``bundle``), answer predictions, run the local API.

    ``bundle`` serves one fixed bundle without a store (``edge-runtime serve``):
    its hashes are always checked, its signature when public keys are configured.
    """

    def __init__(self, settings: EdgeSettings | None = None, *, bundle: str | Path | None = None,
                 profile: DeviceProfile | None = None) -> None:
        self.settings = settings or load_settings()
        self.profile = profile or load_profile(self.settings.device.profile)
        self.device_id = self.settings.device.id
        self.observers: list[Observer] = []
        self.services: list[Service] = []
        self.api = None
        self.started_at: float | None = None  # wall clock: a label only
        self._started_mono: float | None = None  # uptime comes from the monotonic clock
        self.supervisor: Supervisor | None = None
        self._stop_event = threading.Event()
        self._fixed: Model | None = None
        self.store: ModelStore | None = None
        keys = [load_public_key(p) for p in self.settings.store.key_paths()]
        if bundle is not None:
            b = read_bundle(bundle)
            verify_bundle(b, keys, require_signature=bool(keys))
            self._fixed = Model.load(b, self.profile.engine_options())
        else:
            self.store = ModelStore(self.settings.store.dir, self.profile, keys,
                                    require_signature=not self.settings.store.allow_unsigned,
                                    latency_runs=self.settings.store.latency_runs)
            for line in self.store.recovery:
                log.warning("store recovery: %s", line)
        self.fleet = None  # the MQTT link to the hub (edge_runtime.agent), when a broker is configured
        if self.store is not None and self.settings.mqtt.url:
            from edge_runtime.agent import FleetAgent

            self.fleet = FleetAgent.for_daemon(self)

    # ---- models ---------------------------------------------------------------------
    def model(self, slot: str = "active") -> Model | None:
        if self._fixed is not None:
            return self._fixed if slot == "active" else None
        return self.store.model(slot)

    def active_model(self) -> Model:
        model = self.model("active")
        if model is None:
            raise UnavailableError("no model is active on this device yet", field="model")
        return model

    def models(self) -> dict[str, Any]:
        """Slot → description (name, version, sha256, format, task, features, installed_at)."""
        out: dict[str, Any] = {}
        if self._fixed is not None:
            return {"active": self._fixed.describe(), "shadow": None, "previous": None}
        for slot, info in self.store.status()["slots"].items():
            if info is None:
                out[slot] = None
                continue
            model = self.store.loaded_model(slot)
            desc = model.describe() if model is not None else {
                "name": info["name"], "version": info["version"], "sha256": info["sha256"],
                "format": info["format"]}
            desc["installed_at"] = info["installed_at"]
            desc["loaded"] = model is not None
            out[slot] = desc
        return out

    def health(self) -> dict[str, Any]:
        model = self.model("active")
        body: dict[str, Any] = {"status": "ok" if model is not None else "no_model",
                                "device": self.device_id, "profile": self.profile.name,
                                "uptime_s": round(time.monotonic() - self._started_mono, 3)
                                if self._started_mono is not None else 0.0}
        body.update(self.health_detail())
        degraded = body["degraded"]
        if model is None and self.store is not None and self.store.recovery:
            body["message"] = self.store.recovery[-1]
        if degraded:
            body.setdefault("message", "; ".join(degraded))
        if model is not None:
            body["model"] = model_ref(model)
        return body

    def health_detail(self) -> dict[str, Any]:
        """Store, supervised threads, telemetry and local API state (``/health`` and the state
        message); ``degraded`` lists what is wrong, one line each."""
        out: dict[str, Any] = {}
        degraded: list[str] = []
        if self.store is not None:
            out["store"] = {"read_only": self.store.read_only,
                            "recovery": list(self.store.recovery[-5:])}
            if self.store.read_only:
                degraded.append(f"store read-only: {self.store.read_only}")
        if self.supervisor is not None:
            threads = self.supervisor.health()
            out["threads"] = threads
            degraded += [f"{name} stopped ({t['last_error'] or 'no error recorded'}); restarting"
                         for name, t in threads.items() if not t["ok"]]
        if self.fleet is not None:
            tel = {"unwritten_windows": self.fleet.unwritten_windows,
                   "error": self.fleet.telemetry_error, "buffer": self.fleet.outbox.recovered}
            out["telemetry"] = tel
            if tel["error"]:
                degraded.append(f"telemetry windows not stored: {tel['error']}")
        if self.api is not None:
            out["local_api"] = self.api.health()
        out["degraded"] = degraded
        return out

    # ---- inference --------------------------------------------------------------------
    def predict(self, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                slot: str = "active") -> dict[str, Any]:
        """Named-feature rows → ``{"model": {name, version, sha256}, "predictions": [...]}``."""
        model = self.active_model() if slot == "active" else self.model(slot)
        if model is None:
            raise UnavailableError(f"no model in slot {slot}", field="slot")
        preds = predict_rows(model, rows, slot, self._notify if self.observers else None)
        return {"model": model_ref(model), "predictions": preds}

    def predict_tensors(self, tensors: Mapping[str, Any], slot: str = "active") -> dict[str, Any]:
        """Raw tensors → ``{"model": …, "outputs": {name: nested list}}``."""
        model = self.active_model() if slot == "active" else self.model(slot)
        if model is None:
            raise UnavailableError(f"no model in slot {slot}", field="slot")
        outs = model.run_tensors(tensors)
        return {"model": model_ref(model),
                "outputs": {n: o.tolist() for n, o in zip(model.engine.output_names, outs)}}

    def _notify(self, record: PredictionRecord) -> None:
        for obs in self.observers:
            try:
                obs(record)
            except Exception:  # an observer must never break a prediction
                log.exception("prediction observer %r failed", obs)

    # ---- life cycle -------------------------------------------------------------------
    def start(self) -> Daemon:
        """Start the local API (if enabled) and the services; returns at once."""
        from edge_runtime.local_api import LocalApi

        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self._stop_event.clear()
        cfg = self.settings.local_api
        if cfg.enabled:
            if cfg.host not in ("127.0.0.1", "localhost", "::1"):
                log.warning("local API bound to %s: it has no authentication", cfg.host)
            self.api = LocalApi(self, cfg.host, cfg.port, unix_socket=cfg.unix_socket,
                                max_body_bytes=cfg.max_body_bytes, max_rows=cfg.max_rows,
                                max_connections=cfg.max_connections, workers=cfg.workers,
                                header_timeout_s=cfg.header_timeout_s,
                                body_timeout_s=cfg.body_timeout_s,
                                idle_timeout_s=cfg.idle_timeout_s,
                                max_buffered_bytes=cfg.max_buffered_bytes)
            self.api.start()
            log.info("local API on %s", ", ".join(self.api.addresses))
        started = []
        try:
            for svc in self.services:
                svc.start()
                started.append(svc)
        except BaseException:
            for svc in reversed(started):
                svc.stop()
            if self.api is not None:
                self.api.stop()
            raise
        if self.fleet is not None:  # restart the link/telemetry/shadow threads if they die
            self.supervisor = Supervisor(on_change=self.fleet._state_changed)
            for name, alive, restart in self.fleet.parts():
                self.supervisor.watch(name, alive, restart,
                                      thread_name={"telemetry": "telemetry-",
                                                   "shadow": "shadow-compare",
                                                   "mqtt_link": "paho-mqtt-client-"}.get(name))
            self.fleet.health = self.health_detail
            self.supervisor.start()
        return self

    def stop(self) -> None:
        """Stop the services, then the local API, then close the store. Idempotent."""
        self._stop_event.set()
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
        for svc in reversed(self.services):
            try:
                svc.stop()
            except Exception:
                log.exception("service %r failed to stop", svc)
        if self.api is not None:
            self.api.stop()
            self.api = None
        if self.store is not None:
            self.store.close()
        elif self._fixed is not None:
            self._fixed.close()

    def run_forever(self) -> None:
        """Start, then block until SIGTERM/SIGINT (or :meth:`stop` from another thread)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._stop_event.set())
        from edge_runtime.systemd import sd_notify, watchdog_interval_s

        self.start()
        sd_notify("READY=1")
        ping_s = watchdog_interval_s()
        try:
            # Under systemd with WatchdogSec the main loop feeds the watchdog: a daemon whose
            # main thread hangs stops pinging and systemd restarts it.
            while not self._stop_event.wait(ping_s):
                sd_notify("WATCHDOG=1")
        finally:
            sd_notify("STOPPING=1")
            self.stop()

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def model_ref(model: Model) -> dict[str, str]:
    return {"name": model.name, "version": model.version, "sha256": model.digest}


def predict_rows(model: Model, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]], slot: str,
                 notify: Observer | None) -> list[dict[str, Any]]:
    """The device's data plane (``Daemon.predict``, ``FleetAgent.predict``, the local API):
    the bundle's contract → engine → post-processing; ``notify`` gets one
    :class:`PredictionRecord` per call, failures included (telemetry, shadow comparison)."""
    t0 = time.perf_counter()
    x = None
    try:
        if model.codec is None:
            raise ValidationError("this model takes raw tensors: send {\"tensors\": {...}}",
                                  field="rows")
        x = model.codec.encode(rows)
        try:
            scores = model.score_array(x)
        except EdgeError:
            raise
        except Exception as exc:  # an engine failure the engine did not wrap
            raise EngineError(f"inference failed: {type(exc).__name__}: {exc}") from exc
        preds = model.post.rows(scores)
    except EdgeError as exc:
        if notify is not None:
            notify(PredictionRecord(slot, model, len(x) if x is not None else 0,
                                    time.perf_counter() - t0, x, None, exc))
        raise
    if notify is not None:
        notify(PredictionRecord(slot, model, len(x), time.perf_counter() - t0, x, scores))
    return preds
