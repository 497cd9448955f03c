"""The rollout controller: a background loop that ticks the rollouts, one controller per database.

Several hub replicas may run; only the holder of the ``rollouts`` lease row ticks.
The lease is renewed every tick and expires after ``ttl`` seconds, so when the
holder dies (even ``kill -9``) another hub takes over within ``ttl`` and
continues from the persisted state. Works on SQLite and PostgreSQL (a
compare-and-set UPDATE; no advisory-lock dialect specifics).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from cloud_hub.rollouts import tables as T

log = logging.getLogger("cloud_hub.rollouts")
LEASE = "rollouts"


def try_acquire(engine: Any, holder: str, ttl: float, now: float | None = None) -> bool:
    """Take or renew the controller lease; True when ``holder`` holds it for the next ``ttl`` s."""
    now = time.time() if now is None else now
    lease = T.controller_lease
    with engine.begin() as conn:
        res = conn.execute(lease.update().where(
            (lease.c.name == LEASE) & ((lease.c.holder == holder) | (lease.c.expires_at < now)))
            .values(holder=holder, expires_at=now + ttl))
        if res.rowcount == 1:
            return True
        if conn.execute(select(lease.c.name).where(lease.c.name == LEASE)).first():
            return False
    try:
        with engine.begin() as conn:
            conn.execute(lease.insert().values(name=LEASE, holder=holder, expires_at=now + ttl))
        return True
    except IntegrityError:
        return False


def release(engine: Any, holder: str) -> None:
    lease = T.controller_lease
    with engine.begin() as conn:
        conn.execute(lease.update().where((lease.c.name == LEASE) & (lease.c.holder == holder))
                     .values(expires_at=0.0))


def lease_holder(engine: Any) -> dict[str, Any] | None:
    lease = T.controller_lease
    with engine.connect() as conn:
        r = conn.execute(select(lease).where(lease.c.name == LEASE)).first()
    return {"holder": r.holder, "expires_at": r.expires_at} if r else None


class Controller:
    def __init__(self, service: Any, interval: float = 5.0, ttl: float | None = None,
                 holder: str | None = None) -> None:
        self.service = service
        self.interval = max(0.05, float(interval))
        self.ttl = ttl if ttl is not None else max(3 * self.interval, 2.0)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0
        self.leader = False
        self.last_tick_s: float | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rollout-controller", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.leader:
            try:
                release(self.service.engine, self.holder)
            except Exception:  # the database may be gone at shutdown
                log.debug("could not release the controller lease", exc_info=True)
            self.leader = False

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                was = self.leader
                self.leader = try_acquire(self.service.engine, self.holder, self.ttl)
                if self.leader and not was:
                    log.info("rollout controller %s holds the lease", self.holder)
                if self.leader:
                    self.service.tick()
                    self.ticks += 1
                    self.last_tick_s = time.monotonic() - t0
            except Exception:  # never let the loop die
                log.exception("rollout controller tick failed")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))
