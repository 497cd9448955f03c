"""Database: one SQLAlchemy Core ``metadata``, and migrations recorded in a table.

SQLite is the embedded default; PostgreSQL by URL. Each area of the hub
(registry, fleet, rollouts, jobs, …) defines its tables on ``metadata`` in its
own module and registers a migration with :func:`migration`. ``migrate`` runs
the ones not yet recorded in ``schema_migrations``, each in its own
transaction, in id order.

Several replicas may start together on one empty PostgreSQL database: the
migrations then run under a PostgreSQL advisory lock (session level, held for
the whole run), so one replica migrates and the others wait, then find every
migration recorded and apply nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import Column, DateTime, MetaData, String, Table, create_engine, event, select, text
from sqlalchemy.engine import Connection, Engine

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations", metadata,
    Column("id", String(64), primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

Migration = Callable[[Connection], None]
_MIGRATIONS: dict[str, Migration] = {}


def migration(mid: str) -> Callable[[Migration], Migration]:
    """Register ``fn(conn)`` as migration ``mid`` (ids sort in apply order, e.g. ``0003_fleet``)."""

    def deco(fn: Migration) -> Migration:
        if mid in _MIGRATIONS and _MIGRATIONS[mid] is not fn:
            raise RuntimeError(f"duplicate migration id {mid}")
        _MIGRATIONS[mid] = fn
        return fn

    return deco


def create_tables(*tables: Table) -> Migration:
    """A migration body that creates ``tables`` (used by most first migrations)."""

    def run(conn: Connection) -> None:
        for t in tables:
            t.create(conn, checkfirst=True)

    return run


def connect(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # WAL: readers never block the writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


MIGRATION_LOCK = 0x65646765  # pg_advisory_lock class of the migrations ("edge"), per database


def migrate(engine: Engine) -> list[str]:
    """Apply pending migrations; return the ids applied now."""
    _import_table_modules()
    if engine.dialect.name != "postgresql":
        return _migrate(engine)
    with engine.connect() as lock_conn:
        lock_conn.execute(text("SELECT pg_advisory_lock(:k, hashtext(current_database()))"), {"k": MIGRATION_LOCK})
        lock_conn.commit()
        try:
            return _migrate(engine)
        finally:
            lock_conn.execute(text("SELECT pg_advisory_unlock(:k, hashtext(current_database()))"), {"k": MIGRATION_LOCK})
            lock_conn.commit()


def _migrate(engine: Engine) -> list[str]:
    schema_migrations.create(engine, checkfirst=True)
    with engine.connect() as conn:
        done = set(conn.execute(select(schema_migrations.c.id)).scalars())
    applied = []
    for mid in sorted(_MIGRATIONS):
        if mid in done:
            continue
        with engine.begin() as conn:
            _MIGRATIONS[mid](conn)
            conn.execute(schema_migrations.insert().values(id=mid, applied_at=dt.datetime.now(dt.UTC)))
        applied.append(mid)
    return applied


# Modules that define tables and register migrations. Add yours here.
TABLE_MODULES: list[str] = [
    "cloud_hub.batch.tables",
    "cloud_hub.batch.schedule_tables",
    "cloud_hub.stream.tables",
    "cloud_hub.rollouts.tables",
    "cloud_hub.routing.tables",
    "cloud_hub.shadow.tables",
    "cloud_hub.registry",
    "cloud_hub.artifacts_db",
    "cloud_hub.startup",
    "cloud_hub.fleet.tables",
]


def _import_table_modules() -> None:
    import importlib

    for name in TABLE_MODULES:
        importlib.import_module(name)
