"""A batching background writer: hot paths hand rows over without touching the database.

The predict path and the shadow worker call :meth:`BatchWriter.put_many` with
the rows of one request (never blocks; when the bounded buffer — ``capacity``
requests — is full the rows are dropped and counted) and a
daemon thread inserts in batches (one transaction per batch). ``flush()`` waits
until everything handed over so far is stored — readers (evaluation, reports)
call it first so they see every request answered before them.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Engine

log = logging.getLogger("cloud_hub.writer")


class BatchWriter:
    def __init__(self, engine: Engine, table: Table, *, max_batch: int = 200, interval_s: float = 0.2,
                 capacity: int = 100_000, name: str = "writer") -> None:
        self.engine, self.table = engine, table
        self.max_batch, self.interval_s = max_batch, interval_s
        self._q: queue.Queue = queue.Queue(maxsize=capacity)
        self.dropped = 0
        self.written = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._accepted = 0
        self._handled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._name = name

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._thread.start()

    def put(self, row: dict[str, Any]) -> bool:
        return self.put_many([row])

    def put_many(self, rows: list[dict[str, Any]]) -> bool:
        """Hand over the rows of one request as one queue item (one lock round-trip, not one per row)."""
        if not rows:
            return True
        self._ensure_thread()
        try:
            self._q.put_nowait(rows)
        except queue.Full:
            with self._lock:
                self.dropped += len(rows)
            return False
        with self._lock:
            self._accepted += 1
        return True

    def _run(self) -> None:
        while not self._stop.is_set() or not self._q.empty():
            try:
                first = self._q.get(timeout=self.interval_s)
            except queue.Empty:
                continue
            items = [first]
            batch = list(first)
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                items.append(nxt)
                batch.extend(nxt)
            ok = self._insert(batch)
            with self._lock:
                self.written += ok
                self.failed += len(batch) - ok
                self._handled += len(items)
                self._done.notify_all()

    def _insert(self, batch: list[dict[str, Any]]) -> int:
        """Insert a batch in one transaction; if that fails, row by row so one bad row loses only itself."""
        try:
            with self.engine.begin() as conn:
                conn.execute(self.table.insert(), batch)
            return len(batch)
        except Exception:  # a failed batch must not kill the writer
            log.exception("could not store %d %s rows as a batch; retrying row by row", len(batch),
                          self.table.name)
        ok = 0
        for row in batch:
            try:
                with self.engine.begin() as conn:
                    conn.execute(self.table.insert(), [row])
                ok += 1
            except Exception as exc:  # counted in ``failed`` and said: never a silent loss
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                log.error("could not store one %s row (request %s): %s", self.table.name,
                          row.get("request_id"), reason)
        return ok

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every row accepted so far has been written (or failed)."""
        with self._lock:
            target = self._accepted
            return self._done.wait_for(lambda: self._handled >= target, timeout=timeout)

    def close(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        self.flush(timeout)
        self._stop.set()
        self._thread.join(timeout)
