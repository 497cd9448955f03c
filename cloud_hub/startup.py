"""Start-up checks that keep hub replicas on one truth.

Replicas share the database; each has its own signing key file and artifact
store (a directory, or the database with ``HUB_ARTIFACTS=database``). A replica
whose key differs from the others would sign bundles devices do not trust; one
whose store lacks the artifacts the database lists would list models it cannot
serve. So at start a replica

* records its signing key in ``hub_signing_key`` if the database has none yet
  (the first replica wins) and refuses to start when its key is another one;
* checks that every artifact the database references is in its store, and
  refuses to start otherwise, naming the first missing ones and the fix.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from sqlalchemy import Column, DateTime, Integer, String, Table, Text, insert, select
from sqlalchemy.exc import IntegrityError

from cloud_hub import db
from edge_runtime.errors import EdgeError

if TYPE_CHECKING:
    from cloud_hub.registry import Registry

hub_signing_key = Table(
    "hub_signing_key", db.metadata,
    Column("id", Integer, primary_key=True),  # always 1: one key per hub database
    Column("key_id", String(32), nullable=False),
    Column("public_pem", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

db.migration("0102_hub_signing_key")(db.create_tables(hub_signing_key))


class StartupError(EdgeError):
    """This replica cannot join the hub: its key or store disagrees with the database."""

    code = "startup_refused"


def check_replica(registry: Registry) -> None:
    check_signing_key(registry)
    check_artifacts(registry)


def check_signing_key(registry: Registry) -> None:
    from cloud_hub.registry import model_versions

    key = registry.hub_key
    with registry.engine.connect() as conn:
        row = conn.execute(select(hub_signing_key.c.key_id)).first()
        if row is None:
            others = sorted(set(conn.execute(select(model_versions.c.hub_key_id).distinct()).scalars())
                            - {key.key_id})
            if others:  # a database from before this check, signed by another key
                raise StartupError(
                    f"this hub's signing key {key.key_id} is not the key {', '.join(others)} that signed "
                    "the registered bundles; start with HUB_SIGNING_KEY set to that key", field="signing_key")
    if row is None:
        try:
            with registry.engine.begin() as conn:
                conn.execute(insert(hub_signing_key).values(
                    id=1, key_id=key.key_id, public_pem=key.public_pem.decode(),
                    recorded_at=dt.datetime.now(dt.UTC)))
        except IntegrityError:  # another replica recorded its key first
            pass
        with registry.engine.connect() as conn:
            row = conn.execute(select(hub_signing_key.c.key_id)).first()
    if row.key_id != key.key_id:
        raise StartupError(
            f"this hub's signing key {key.key_id} ({key.path}) is not the hub key {row.key_id} recorded in "
            "the database: every replica must sign with the same key (copy the key file to "
            "HUB_SIGNING_KEY on each replica)", field="signing_key")


def check_artifacts(registry: Registry, *, show: int = 3) -> None:
    from cloud_hub.registry import model_versions

    with registry.engine.connect() as conn:
        rows = conn.execute(select(model_versions.c.name, model_versions.c.version,
                                   model_versions.c.artifact_sha256)).all()
    store = registry.store
    missing = [r for r in rows if not store.exists(r.artifact_sha256)]
    if missing:
        some = ", ".join(f"{r.name}:{r.version}" for r in missing[:show])
        more = f" and {len(missing) - show} more" if len(missing) > show else ""
        raise StartupError(
            f"{len(missing)} bundle artifact(s) the database lists are not in this replica's artifact "
            f"store ({describe_store(store)}): {some}{more}. Replicas must share the store: use "
            "HUB_ARTIFACTS=database, or point every replica's HUB_DATA_DIR artifacts at one shared "
            "directory", field="artifacts")


def describe_store(store) -> str:
    root = getattr(store, "root", None)
    return f"directory {root}" if root is not None else "database"
