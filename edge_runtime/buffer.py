"""Store-and-forward outbox for a device (SQLite): telemetry windows and events.

Every window and event is written here *before* it is sent and deleted only when the
*hub* acknowledged storing it (the ``…/ack`` message, :class:`~edge_runtime.protocol.Ack`);
a broker's PUBACK proves nothing (Mosquitto accepts a message even while no hub is
subscribed). Everything not acknowledged is sent again after each reconnect and restart,
so a broker restart, a network cut, a hub outage or a daemon crash loses nothing that fit in
the buffer. The buffer is bounded: past
``max_windows`` telemetry windows the *oldest* are dropped and the drop is
counted (the count travels in every later window as ``dropped_windows``).
The per-device window sequence number lives here too, so it keeps growing
across daemon restarts (the hub dedupes on (device, seq)). A *new* outbox (first
boot, or a device whose disk was wiped) starts its sequence at ``unix_time × 1000``
rather than 1, so a re-provisioned device never reuses numbers the hub has already
stored (which it would silently discard as duplicates).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from edge_runtime.errors import StoreError

log = logging.getLogger("edge_runtime.buffer")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,           -- 'telemetry' | 'events'
    seq INTEGER,                  -- window sequence number (telemetry)
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Outbox:
    def __init__(self, path: str | Path, max_windows: int = 10_000, max_events: int = 10_000,
                 first_seq: int | None = None) -> None:
        self.path = Path(path)
        self.max_windows = max(1, int(max_windows))
        self.max_events = max(1, int(max_events))
        self._lock = threading.Lock()
        self._first_seq = first_seq
        self.recovered: str | None = None  # why the outbox on disk was set aside / not used
        try:
            self._db = self._open(str(path))
        except sqlite3.DatabaseError as exc:
            if str(path) == ":memory:":
                raise StoreError(f"cannot open the telemetry buffer {path}: {exc}",
                                 field="telemetry.buffer") from exc
            self._db = self._recover_open(exc)

    def _open(self, path: str) -> sqlite3.Connection:
        if path != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            if path != ":memory:" and Path(path).exists() and Path(path).stat().st_size:
                res = db.execute("PRAGMA quick_check").fetchall()
                if res != [("ok",)]:
                    raise sqlite3.DatabaseError(f"corrupt: {res[0][0]}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            if db.execute("SELECT 1 FROM meta WHERE key='next_seq'").fetchone() is None:
                start = self._fresh_seq()
                db.execute("INSERT INTO meta(key, value) VALUES('next_seq', ?)", (str(start),))
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('first_seq', ?)",
                           (str(start),))
        except BaseException:
            db.close()
            raise
        return db

    def _fresh_seq(self) -> int:
        return int(time.time()) * 1000 if self._first_seq is None else int(self._first_seq)

    def _recover_open(self, exc: sqlite3.DatabaseError) -> sqlite3.Connection:
        """A broken outbox never blocks the device: set it aside (kept for inspection) and
        start a new one; on a full disk keep the windows in memory until the next start."""
        msg = str(exc).lower()
        if "full" in msg or "i/o" in msg or "readonly" in msg or "unable to open" in msg:
            self.recovered = f"the telemetry buffer {self.path} cannot be written ({exc}): " \
                "windows are held in memory until the next start"
            log.error("%s", self.recovered)
            return self._open(":memory:")
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            p = Path(f"{self.path}{suffix}")
            if p.exists():
                os.replace(p, p.with_name(f"{p.name}.broken-{stamp}"))
        # the broken file's last seq is unknown: start past any the old buffer could have
        # handed out (it started at its creation second × 1000 and adds at most a few a second)
        self._first_seq = int(time.time() * 1000) + 1000
        self.recovered = (f"the telemetry buffer {self.path} was unreadable ({exc}): moved aside "
                          f"as {self.path.name}.broken-{stamp}, a new one started")
        log.error("%s", self.recovered)
        return self._open(str(self.path))

    # ---- meta ---------------------------------------------------------------------------
    def _get(self, key: str, default: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def _set(self, key: str, value: Any) -> None:
        self._db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                         (key, str(value)))

    def _next_seq(self) -> int:
        """The stored next sequence number; a damaged value is rebuilt (never reusing a seq
        the hub may hold: past both the highest buffered one and a fresh time-based start)."""
        raw = self._get("next_seq", "")
        try:
            seq = int(raw)
            if seq >= 0:
                return seq
        except ValueError:
            pass
        top = self._db.execute("SELECT MAX(seq) FROM outbox WHERE kind='telemetry'").fetchone()[0]
        seq = max(int(top or 0) + 1, int(time.time()) * 1000)
        self._set("next_seq", seq)
        self.recovered = f"next_seq was {raw[:40]!r}: restarted at {seq}"
        log.error("telemetry buffer %s: %s", self.path, self.recovered)
        return seq

    def get_meta(self, key: str, default: str = "") -> str:
        with self._lock:
            return self._get(key, default)

    def set_meta(self, key: str, value: Any) -> None:
        with self._lock:
            self._set(key, value)

    @property
    def dropped(self) -> int:
        with self._lock:
            return int(self._get("dropped_windows", "0"))

    @property
    def dropped_events(self) -> int:
        with self._lock:
            return int(self._get("dropped_events", "0"))

    @property
    def first_seq(self) -> int:
        with self._lock:
            return int(self._get("first_seq", "1"))

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._next_seq() - 1

    # ---- writes ---------------------------------------------------------------------------
    def add_window(self, build) -> dict[str, Any]:
        """Allocate the next seq, build the window body with ``build(seq, dropped)``, store it.

        Returns the body. Sequence allocation, insert and overflow drop are one transaction.
        """
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._next_seq()
                dropped = int(self._get("dropped_windows", "0"))
                n = db.execute("SELECT COUNT(*) FROM outbox WHERE kind='telemetry'").fetchone()[0]
                over = n + 1 - self.max_windows
                if over > 0:
                    db.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE kind='telemetry' "
                               "ORDER BY id LIMIT ?)", (over,))
                    dropped += over
                    self._set("dropped_windows", dropped)
                body = build(seq, dropped)
                db.execute("INSERT INTO outbox(kind, seq, body) VALUES('telemetry', ?, ?)",
                           (seq, json.dumps(body, separators=(",", ":"))))
                self._set("next_seq", seq + 1)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return body

    def add_event(self, body: dict[str, Any]) -> None:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                n = db.execute("SELECT COUNT(*) FROM outbox WHERE kind='events'").fetchone()[0]
                over = n + 1 - self.max_events
                if over > 0:
                    db.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE kind='events' "
                               "ORDER BY id LIMIT ?)", (over,))
                    self._set("dropped_events", int(self._get("dropped_events", "0")) + over)
                db.execute("INSERT INTO outbox(kind, seq, body) VALUES('events', NULL, ?)",
                           (json.dumps(body, separators=(",", ":")),))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # ---- reads / acks -------------------------------------------------------------------------
    def pending(self, after_id: int = 0, limit: int = 100) -> list[tuple[int, str, str]]:
        """Rows after ``after_id`` in order: (id, kind, body json)."""
        with self._lock:
            return self._db.execute("SELECT id, kind, body FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                                    (after_id, limit)).fetchall()

    def delete_windows(self, ranges: list[tuple[int, int]]) -> list[int]:
        """Delete the telemetry windows whose seq lies in one of the inclusive ``ranges`` (the hub
        stored them); returns the deleted row ids."""
        deleted: list[int] = []
        with self._lock:
            for lo, hi in ranges:
                deleted += [r[0] for r in self._db.execute(
                    "DELETE FROM outbox WHERE kind='telemetry' AND seq BETWEEN ? AND ? RETURNING id",
                    (int(lo), int(hi)))]
        return deleted

    def delete_events(self, event_ids: list[str]) -> list[int]:
        """Delete the events with these ids (the hub stored them); returns the deleted row ids."""
        deleted: list[int] = []
        with self._lock:
            for i in range(0, len(event_ids), 500):
                chunk = [str(e) for e in event_ids[i:i + 500]]
                marks = ",".join("?" * len(chunk))
                deleted += [r[0] for r in self._db.execute(
                    f"DELETE FROM outbox WHERE kind='events' AND json_extract(body, '$.event_id') IN ({marks}) "
                    "RETURNING id", chunk)]
        return deleted

    def count(self, kind: str | None = None) -> int:
        with self._lock:
            if kind is None:
                return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM outbox WHERE kind=?", (kind,)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
