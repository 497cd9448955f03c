"""The rollout controller's device index: every device record, kept in memory and refreshed from
the database's change markers (issue 14: loading all 10,000 records every tick was most of it).

Each refresh asks the database which devices changed since the previous one and re-reads only
those (``FleetService._records`` on their ids, so a record is built exactly as from scratch):

* every insert or update of ``fleet_devices``, ``fleet_device_state`` and ``fleet_desired`` is
  stamped with a ``rev`` by a database trigger (migration ``0005_fleet_rev``), a delete leaves a
  tombstone in ``fleet_device_gone`` — whoever writes: this process, another hub replica, an
  older version of the hub, a hand-written SQL statement;
* the *mark* is read **before** the changed rows: SQLite (one writer at a time) — the trigger
  counter + 1; PostgreSQL — ``txid_snapshot_xmin`` of the current snapshot (rev is the writing
  transaction's id: every transaction below the mark had finished, one still open has an id at or
  above it and is picked up next time).

(On PostgreSQL a transaction left open for long — idle in transaction with an id — holds the
mark back: every refresh then re-reads all devices changed since it began, up to a full reload
per call. Slower, never stale.)

So an index never acts on a state older than its last refresh, on one replica or several. When
the triggers are missing (a database made by ``metadata.create_all``, or they were dropped) it
does not cache at all: every call is a full load, as before.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import select, text

from cloud_hub.fleet import tables as T

log = logging.getLogger("cloud_hub.fleet")

CHUNK = 500  # ids per IN (...) when re-reading changed devices


class DeviceIndex:
    def __init__(self, fleet: Any, *, full_reload_fraction: float = 0.25) -> None:
        self.fleet = fleet
        self.full_reload_fraction = full_reload_fraction
        self._lock = threading.Lock()
        self._mark: int | None = None
        self._recs: dict[str, Any] = {}
        self._list: list[Any] | None = None
        self.stats = {"full": 0, "incremental": 0, "reread": 0, "uncached": 0}

    def invalidate(self) -> None:
        with self._lock:
            self._mark, self._recs, self._list = None, {}, None

    def records(self) -> list[Any]:
        """Every device record, sorted by id, as ``FleetService.devices()`` would return it now.
        The records are shared: read them, never modify them."""
        with self._lock:
            engine = self.fleet.engine
            with engine.connect() as conn:
                if not self._triggers_ok(conn):
                    self._mark, self._recs, self._list = None, {}, None
                    self.stats["uncached"] += 1
                    return self.fleet._records()
                mark = self._current_mark(conn)
                if mark is None:  # the counter row is gone: nothing to compare against
                    self._mark, self._recs, self._list = None, {}, None
                    self.stats["uncached"] += 1
                    return self.fleet._records()
                changed: set[str] | None = None
                if self._mark is not None:
                    changed = set()
                    for table, col in ((T.devices, "id"), (T.device_state, "device_id"),
                                       (T.desired, "device_id"), (T.device_gone, "device_id")):
                        changed.update(conn.execute(select(table.c[col]).where(table.c.rev >= self._mark))
                                       .scalars())
            if changed is None or len(changed) > max(CHUNK, self.full_reload_fraction * len(self._recs)):
                self._recs = {r.id: r for r in self.fleet._records()}
                self._list = None
                self.stats["full"] += 1
            elif changed:
                ids = sorted(changed)
                fresh: dict[str, Any] = {}
                for i in range(0, len(ids), CHUNK):
                    fresh.update((r.id, r) for r in self.fleet._records(ids=set(ids[i:i + CHUNK])))
                for d in ids:
                    if d in fresh:
                        if d not in self._recs:
                            self._list = None
                        self._recs[d] = fresh[d]
                    elif self._recs.pop(d, None) is not None:
                        self._list = None
                if self._list is not None:  # same ids: swap the re-read records in place
                    self._list = [self._recs[r.id] for r in self._list]
                self.stats["incremental"] += 1
                self.stats["reread"] += len(ids)
            self._mark = mark
            if self._list is None:
                self._list = [self._recs[d] for d in sorted(self._recs)]
            return list(self._list)

    @staticmethod
    def _current_mark(conn: Any) -> int | None:
        if conn.dialect.name == "postgresql":
            return int(conn.execute(text("SELECT txid_snapshot_xmin(txid_current_snapshot())")).scalar_one())
        rev = conn.execute(select(T.rev_counter.c.rev).where(T.rev_counter.c.id == 1)).scalar()
        return None if rev is None else int(rev) + 1

    @staticmethod
    def _triggers_ok(conn: Any) -> bool:
        names = T.rev_trigger_names()
        if conn.dialect.name == "sqlite":
            have = set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars())
            return all(n in have for n in names)
        if conn.dialect.name == "postgresql":
            tables = ", ".join(f"to_regclass('{t}')" for t, _ in T.REV_TABLES)
            n = conn.execute(text(f"SELECT count(DISTINCT tgname) FROM pg_trigger WHERE tgrelid IN ({tables}) "
                                  f"AND tgenabled <> 'D' AND tgname = ANY(:names)"), {"names": names}).scalar_one()
            return int(n) == len(names)
        return False
