"""``cloud-hub serve``: run the hub's HTTP API (uvicorn). Zero configuration works:
SQLite and artifacts under ./hub-data, a hub signing key generated on first start."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the hub HTTP API (registry, inference, metrics)",
                       description="Run the hub HTTP API with uvicorn. Settings come from HUB_* "
                       "variables (HUB_DATABASE_URL, HUB_DATA_DIR, HUB_ADMIN_KEYS, HUB_TRUSTED_KEYS, "
                       "HUB_ALLOW_UNSIGNED, HUB_MICROBATCH, ...); these options override them. "
                       "OpenAPI docs at /docs, Prometheus metrics at /metrics.")
    p.add_argument("--host", help="address to bind (default HUB_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default HUB_PORT or 8000)")
    p.add_argument("--data-dir", type=Path, help="data directory (default HUB_DATA_DIR or ./hub-data)")
    p.add_argument("--database-url", help="SQLAlchemy URL (default sqlite:///<data-dir>/hub.db)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (each loads its own models; use PostgreSQL or the SQLite "
                        "default on one machine)")
    p.add_argument("--dev", action="store_true", help="dev mode (HUB_DEV=1): placeholder keys allowed")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="log level (default HUB_LOG_LEVEL or info)")
    p.set_defaults(func=run)


def _apply_overrides(args) -> None:
    for env, value in (("HUB_HOST", args.host), ("HUB_PORT", args.port), ("HUB_DATA_DIR", args.data_dir),
                       ("HUB_DATABASE_URL", args.database_url), ("HUB_LOG_LEVEL", args.log_level)):
        if value is not None:
            os.environ[env] = str(value)
    if args.dev:
        os.environ["HUB_DEV"] = "1"


def load_settings():
    from pydantic import ValidationError as PydanticError

    from cloud_hub.settings import HubSettings
    from edge_runtime.errors import EdgeError

    try:
        return HubSettings()
    except PydanticError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ())) or "settings"
        raise EdgeError(f"invalid setting {loc}: {err.get('msg')}", field=loc) from exc


def _start_rollout_controller(hub) -> None:
    """The rollout decision loop (one per database via a lease: safe with several workers)."""
    from cloud_hub.rollouts.service import rollout_service

    rollout_service(hub).start_controller()


def app_factory():
    """uvicorn factory (``--workers`` > 1 imports this in each worker)."""
    from cloud_hub.app import create_app
    from cloud_hub.hub import Hub
    from cloud_hub.logs import setup_logging

    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    hub = Hub(settings)
    if settings.mqtt_url:  # several workers share a real broker (v5 shared subscription splits ingest)
        hub.fleet.start(embedded_ok=False)
    else:
        import logging

        logging.getLogger("cloud_hub.fleet").warning(
            "fleet MQTT ingest is off: with --workers > 1 set HUB_MQTT_URL (an embedded broker per "
            "worker process cannot work)")
    _start_rollout_controller(hub)
    app = create_app(hub)
    app.router.on_shutdown.append(hub.close)
    _freeze_startup_objects()
    return app


def _freeze_startup_objects() -> None:
    """Move the ~255k objects made at start-up (modules, SQLAlchemy metadata, FastAPI routes,
    engines) out of the collector's reach: a full (gen 2) collection over them took up to
    ~130 ms on the 2-vCPU dev VM (gc.callbacks), which would stall every request waiting
    behind it when one happens while serving."""
    import gc

    gc.collect()
    gc.freeze()


def run(args: argparse.Namespace) -> int:
    import uvicorn

    _apply_overrides(args)
    settings = load_settings()
    from cloud_hub.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    kw = {"host": settings.host, "port": settings.port, "log_config": None, "access_log": False,
          "server_header": False, "proxy_headers": False, "timeout_keep_alive": 30}
    try:
        import uvloop  # noqa: F401

        kw["loop"] = "uvloop"
    except ImportError:
        pass
    try:
        import httptools  # noqa: F401

        kw["http"] = "httptools"
    except ImportError:
        pass
    if args.workers > 1:
        # Migrate and create the hub key once, here, before the workers start (they
        # would race each other doing it).
        from cloud_hub import db
        from cloud_hub.registry import HubKey

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = db.connect(settings.db_url)
        try:
            db.migrate(engine)
        finally:
            engine.dispose()
        HubKey(settings.signing_key or settings.data_dir / "keys" / "hub.key",
               create=settings.signing_key is None or settings.dev)
        uvicorn.run("cloud_hub.commands.serve:app_factory", factory=True, workers=args.workers, **kw)
        return 0
    from cloud_hub.app import create_app
    from cloud_hub.hub import Hub

    hub = Hub(settings)
    try:
        mqtt_url = hub.fleet.start()  # embedded amqtt broker when HUB_MQTT_URL is unset
        print("cloud-hub: fleet MQTT " + (f"embedded broker (amqtt, MQTT 3.1.1) started on {mqtt_url}; set "
              "HUB_MQTT_URL for Mosquitto in production" if hub.fleet.broker else f"broker {mqtt_url}"),
              file=sys.stderr, flush=True)
        _start_rollout_controller(hub)
        app = create_app(hub)
        app.router.on_shutdown.append(hub.close)  # uvicorn re-raises SIGTERM after shutdown
        _freeze_startup_objects()
        print(f"cloud-hub: serving on http://{settings.host}:{settings.port} (data {settings.data_dir}, "
              f"hub key {hub.registry.hub_key.key_id}); dashboard http://{settings.host}:{settings.port}/ui, "
              f"API docs /docs", file=sys.stderr, flush=True)
        uvicorn.run(app, **kw)
    finally:
        hub.close()
    return 0
