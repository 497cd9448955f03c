"""The Hub: one object holding the hub's state and services.

The FastAPI app, the CLI, the MQTT ingest and the rollout controller all get
their services from a ``Hub``; nothing reads module-level globals. Areas of the
hub attach their service in :meth:`Hub.start` / ``__init__`` (one line each).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud_hub import db
from cloud_hub.settings import HubSettings

log = logging.getLogger("cloud_hub")


class Hub:
    def __init__(self, settings: HubSettings | None = None) -> None:
        self.settings = settings or HubSettings()
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = db.connect(self.settings.db_url)
        self.applied_migrations = db.migrate(self.engine)
        self._closers: list = []
        self._services_lock = threading.Lock()
        self._attach_registry_and_inference()
        from cloud_hub.fleet import FleetService

        self.fleet = FleetService(self)  # device registry, MQTT ingest, desired state
        from cloud_hub.routing.attach import attach as attach_routing

        attach_routing(self)  # hub-routing: hub.routing (champion/challenger), hub.shadow (mirror)

    def _attach_registry_and_inference(self) -> None:
        # hub-core: registry, loaded-model cache, metrics, online inference.
        from cloud_hub.inference import PredictService
        from cloud_hub.metrics import HubMetrics
        from cloud_hub.models import ModelCache
        from cloud_hub.registry import Registry
        from cloud_hub.startup import check_replica
        from cloud_hub.workdir import WorkDir
        from edge_runtime.engines import EngineOptions

        s = self.settings
        self.workdir = WorkDir(s.data_dir / "tmp")  # uploads/unpacked bundles; swept at start
        self.on_close(self.workdir.close)
        self.metrics = HubMetrics()
        self.registry = Registry.from_settings(self.engine, s, work_dir=self.workdir.path)
        try:
            check_replica(self.registry)  # same signing key and artifacts as the other replicas
        except Exception:
            self.close()
            raise
        self.models = ModelCache(self.registry, EngineOptions(intra_op_threads=s.threads,
                                                              providers=tuple(s.onnx_providers)))
        self.inference = PredictService(self)
        self.on_close(self.models.close)
        self.on_close(self.inference.close)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def on_close(self, fn) -> None:
        self._closers.append(fn)

    def service(self, name: str, factory: Callable[[Hub], Any]) -> Any:
        """The hub's ``name`` service (``hub.<name>``), created once on first use.

        Areas that need not start with the hub (jobs, streams, rollouts) attach this way;
        a service with a ``close()`` is closed with the hub.
        """
        svc = getattr(self, name, None)
        if svc is None:
            with self._services_lock:
                svc = getattr(self, name, None)
                if svc is None:
                    svc = factory(self)
                    setattr(self, name, svc)
                    if callable(getattr(svc, "close", None)):
                        self.on_close(svc.close)
        return svc

    def close(self) -> None:
        for fn in reversed(self._closers):
            try:
                fn()
            except Exception:  # closing must not stop the others
                log.exception("error while closing hub service")
        self._closers.clear()
        self.engine.dispose()
