"""The Hub: one object holding the hub's state and services.

The FastAPI app, the CLI, the MQTT ingest and the rollout controller all get
their services from a ``Hub``; nothing reads module-level globals. Areas of the
hub attach their service in :meth:`Hub.start` / ``__init__`` (one line each).
"""

from __future__ import annotations

import logging
from pathlib import Path

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
        from cloud_hub.fleet import FleetService

        self.fleet = FleetService(self)  # device registry, MQTT ingest, desired state

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def on_close(self, fn) -> None:
        self._closers.append(fn)

    def close(self) -> None:
        for fn in reversed(self._closers):
            try:
                fn()
            except Exception:  # closing must not stop the others
                log.exception("error while closing hub service")
        self._closers.clear()
        self.engine.dispose()
