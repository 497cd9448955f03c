"""An in-process hub for the demo, the rollout tests and the rollout benchmark.

It is the real thing, wired in one process: :class:`~cloud_hub.hub.Hub` (SQLite or
any database URL), the fleet service with its MQTT ingest (the embedded broker when
no URL is given), the HTTP API served by uvicorn on a free port (devices download
bundles from ``/v1/bundles/{digest}``) and the rollout controller.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn, Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalHub:
    def __init__(self, data_dir: str | Path, *, mqtt_url: str | None = None, database_url: str | None = None,
                 trusted_keys: Sequence[str | Path] = (), tick_s: float = 0.5, silent_after_s: float = 30.0,
                 port: int | None = None, controller: bool = True, **settings: Any) -> None:
        self.data_dir = Path(data_dir)
        self.mqtt_url = mqtt_url
        self.database_url = database_url
        self.trusted_keys = [Path(k) for k in trusted_keys]
        self.tick_s = tick_s
        self.silent_after_s = silent_after_s
        self.port = port or free_port()
        self.with_controller = controller
        self.extra = settings
        self.hub: Any = None
        self.server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "LocalHub":
        import uvicorn

        from cloud_hub.app import create_app
        from cloud_hub.hub import Hub
        from cloud_hub.rollouts.service import rollout_service
        from cloud_hub.settings import HubSettings

        settings = HubSettings(data_dir=self.data_dir, database_url=self.database_url, host="127.0.0.1",
                               port=self.port, mqtt_url=self.mqtt_url, dev=True,
                               trusted_keys=self.trusted_keys, rollout_tick_s=self.tick_s,
                               device_silent_after_s=self.silent_after_s, access_log=False, **self.extra)
        self.hub = Hub(settings)
        self.hub.fleet.start()
        app = create_app(self.hub)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
                                log_config=None, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="hub-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the hub's HTTP server did not start on port {self.port}")
            time.sleep(0.02)
        if self.with_controller:
            rollout_service(self.hub).start_controller(interval=self.tick_s)
        return self

    @property
    def rollouts(self) -> Any:
        from cloud_hub.rollouts.service import rollout_service

        return rollout_service(self.hub)

    @property
    def hub_public_key(self) -> Path:
        return self.hub.registry.hub_key.path.with_suffix(".pub")

    def stop(self) -> None:
        if self.hub is not None:
            try:
                self.rollouts.stop_controller()
            except Exception:
                pass
        if self.server is not None:
            self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.hub is not None:
            self.hub.close()
            self.hub = None

    def serve_until_terminated(self) -> NoReturn:
        """Block until SIGTERM (or Ctrl-C), then stop: a started hub run as its own process
        (the rollout kill -9 test, the live rollout benchmark)."""
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while True:
                time.sleep(1)
        finally:
            self.stop()

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
