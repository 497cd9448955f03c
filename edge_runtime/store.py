"""The device model store: slots ``active``, ``shadow`` and ``previous``.

Layout of a store directory::

    journal.db            SQLite: table ``slots`` (the truth: slot -> bundle digest)
                          and table ``journal`` (one row per operation, with its step)
    bundles/<sha256>/     verified bundles, never modified once renamed here
    tmp/                  staging area for installs (emptied on open)
    active, shadow, previous   symlinks to bundles/<sha256>, for humans (derived)
    lock                  flock held while a process has the store open

An install runs these steps, each recorded in the journal before it starts::

    stage      copy the bundle directory (or unpack the tar) into tmp/
    verify     sha256 + size of every file, ed25519 signature against the fleet key(s)
    load       open it with the engine, using the device profile's thread settings
    self_test  run the golden vectors
    budget     single-row p99 latency over N runs and RSS growth vs the device profile
    commit     fsync + atomic rename of tmp/<x> to bundles/<sha256>
    switch     ONE SQLite transaction: slots (active/previous or shadow) + journal row "ok"
    cleanup    drop unreferenced bundles, refresh the symlinks

The switch is the commit point. SQLite makes it atomic and durable
(``synchronous=FULL``), so a ``kill -9`` anywhere leaves the old slots (every
step before the transaction commits) or the new ones (after): the active
model is the old or the new bundle, never neither. Opening the store marks
interrupted installs in the journal, empties ``tmp/`` and removes bundles no
slot refers to. Any failure raises :class:`StoreError` naming the step and the
reason, and the old active model keeps serving.

For the crash-safety test, ``EDGE_STORE_PAUSE_AT=<point>`` together with
``EDGE_STORE_PAUSE_FILE=<path>`` makes the process write the point name to that
file and wait there (at most 10 minutes), so a test can kill it at that exact
step (points: ``INSTALL_POINTS``). One variable alone does nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundle import _extract_tar, read_bundle, verify_bundle
from edge_runtime.engines import EngineOptions
from edge_runtime.errors import BundleError, ConflictError, EdgeError, NotFoundError, StoreError
from edge_runtime.model import Model
from edge_runtime.profile import DeviceProfile, load_profile

SLOTS = ("active", "shadow", "previous")
INSTALL_STEPS = ("stage", "verify", "load", "self_test", "budget", "commit", "switch", "cleanup")
# Points where the pause hook can stop an install (the start of each step, plus
# the moments inside commit/switch where a crash is most interesting).
INSTALL_POINTS = INSTALL_STEPS + ("commit:renamed", "switch:in_transaction", "switch:committed")

log = logging.getLogger("edge_runtime.store")

PAUSE_ENV = "EDGE_STORE_PAUSE_AT"
LATENCY_ROUNDS = 3  # rounds of latency_runs timed calls before a model is refused as too slow
_RESERVE_BYTES = 256 * 1024
PAUSE_FILE_ENV = "EDGE_STORE_PAUSE_FILE"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS slots (
    slot TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    format TEXT NOT NULL,
    installed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS kept (digest TEXT PRIMARY KEY);  -- found by a rebuild, no slot
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    op TEXT NOT NULL,
    slot TEXT,
    digest TEXT,
    name TEXT,
    version TEXT,
    state TEXT NOT NULL,
    step TEXT,
    detail TEXT
);
"""


@dataclass
class SlotInfo:
    slot: str
    name: str
    version: str
    sha256: str
    format: str
    installed_at: float
    loaded: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InstallReport:
    """What an install measured; ``switched`` is False when it was already there."""

    slot: str
    name: str
    version: str
    sha256: str
    switched: bool
    golden_checked: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rss_growth_mb: float = 0.0
    duration_s: float = 0.0
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[str, dict[str, Any]], None]


class ModelStore:
    """Open (and recover) a store directory; install, promote, roll back, remove.

    ``public_keys`` are the fleet's ed25519 public keys (objects, PEM paths or
    PEM bytes); a bundle must be signed by one of them unless
    ``require_signature=False`` (development only).
    """

    def __init__(self, directory: str | Path, profile: DeviceProfile | str | None = None,
                 public_keys: Iterable[Any] | Any = None, *, require_signature: bool = True,
                 require_golden: bool = True, latency_runs: int = 200,
                 checkpoint: Callable[[str], None] | None = None) -> None:
        from edge_runtime.signing import load_public_key

        self.dir = Path(directory)
        if profile is None:
            profile = "x86-gateway"
        self.profile = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
        if public_keys is None:
            keys: list[Any] = []
        elif isinstance(public_keys, (str, Path, bytes)) or not isinstance(public_keys, Iterable):
            keys = [public_keys]
        else:
            keys = list(public_keys)
        self.public_keys = [k if hasattr(k, "verify") else load_public_key(k) for k in keys]
        self.require_signature = require_signature
        self.require_golden = require_golden
        self.latency_runs = max(10, int(latency_runs))
        self.options: EngineOptions = self.profile.engine_options()
        self._checkpoint_hook = checkpoint
        self._pause_at = os.environ.get(PAUSE_ENV)
        self._lock = threading.RLock()
        self._models: dict[str, Model] = {}
        self._lockfile = None
        self._db: sqlite3.Connection | None = None
        self.recovery: list[str] = []
        self.read_only: str | None = None  # why installs are refused (full / read-only disk)
        self._reserve_used = False
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # ---- open / recover ----------------------------------------------------------
    def _open(self) -> None:
        try:
            (self.dir / "bundles").mkdir(parents=True, exist_ok=True)
            (self.dir / "tmp").mkdir(exist_ok=True)
            # held open (and flock'ed) until close(), which closes it
            self._lockfile = open(self.dir / "lock", "a+")  # noqa: SIM115
        except OSError as exc:
            raise StoreError(f"open: cannot create the store at {self.dir}: {exc.strerror}",
                             field="store.dir") from exc
        try:
            fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lockfile.seek(0)
            holder = self._lockfile.read().strip() or "another process"
            raise StoreError(f"open: the store {self.dir} is in use by {holder}",
                             field="store.dir") from exc
        try:
            self._lockfile.seek(0)
            self._lockfile.truncate()
            self._lockfile.write(f"pid {os.getpid()}\n")
            self._lockfile.flush()
        except OSError as exc:  # the pid is for humans; the flock is what locks
            if not _disk_full(exc):
                raise
        self._open_journal()

    def _open_journal(self) -> None:
        """Open journal.db; a missing/empty/corrupt one is rebuilt from the bundles on disk,
        and a disk that is full (or read-only) opens the store read-only: the journal is read
        into memory, the intact active model serves, installs are refused with the reason."""
        path = self.dir / "journal.db"
        rebuild = None
        if not path.exists():
            if any((self.dir / "bundles").iterdir()):
                rebuild = "journal.db is missing"
        elif path.stat().st_size == 0:
            rebuild = "journal.db is empty"
        try:
            if rebuild is None and path.exists():
                rebuild = self._check_journal(path)
            if rebuild is not None:
                self._set_aside(path, rebuild)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
                self._db = _Db(db)
                if rebuild is not None:
                    self._rebuild(rebuild)
                self._recover()
                self._ensure_reserve()
                return
            except BaseException:
                self._db = None
                db.close()
                raise
        except (sqlite3.Error, OSError) as exc:
            if not (_disk_full(exc) or _no_space(self.dir)):
                raise StoreError(f"open: the journal {path} is unusable: {exc}",
                                 field="store.dir") from exc
            self._open_read_only(path, exc, rebuild)

    def _check_journal(self, path: Path) -> str | None:
        """None when journal.db reads back whole; else why it must be rebuilt."""
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            res = db.execute("PRAGMA quick_check").fetchall()
            if res != [("ok",)]:
                return f"journal.db is corrupt ({'; '.join(str(r[0]) for r in res[:3])})"
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"slots", "journal"} <= names and any((self.dir / "bundles").iterdir()):
                return "journal.db holds no slots table"
        except sqlite3.DatabaseError as exc:
            msg = str(exc).lower()
            if "not a database" in msg or "malformed" in msg or "corrupt" in msg:
                return f"journal.db is corrupt ({exc})"
            raise  # busy, I/O, no space: not a reason to set the journal aside
        finally:
            db.close()
        return None

    def _set_aside(self, path: Path, why: str) -> None:
        """Keep a broken journal for inspection (renames work on a full disk too)."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            p = Path(f"{path}{suffix}")
            if p.exists():
                os.replace(p, self.dir / f"journal.db{suffix}.broken-{stamp}")
        self.recovery.append(f"{why}: moved aside as journal.db.broken-{stamp}; rebuilding "
                             "the journal from the bundles on disk")
        log.error("store %s: %s; rebuilding from the bundles on disk", self.dir, why)

    def _open_read_only(self, path: Path, exc: BaseException, rebuild: str | None) -> None:
        for m in self._models.values():
            with contextlib.suppress(Exception):
                m.close()
        self._models.clear()
        why = _reason(exc) if _disk_full(exc) else f"{_reason(exc)}; no space left"
        self.read_only = f"the disk is full or read-only ({why})"
        self.recovery.append(f"store opened read-only: {self.read_only}; installs are refused "
                             "until space returns (restart or retry)")
        log.error("store %s: %s: serving read-only", self.dir, self.read_only)
        mem = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        copied = False
        if rebuild is None and path.exists():
            wal = Path(f"{path}-wal")
            # read-only needs a -shm file it may not be able to create on a full disk; with no
            # write-ahead log left (a clean close), the file alone is the whole journal
            uris = [f"file:{path}?mode=ro"]
            if not wal.exists() or wal.stat().st_size == 0:
                uris.append(f"file:{path}?mode=ro&immutable=1")
            for uri in uris:
                try:
                    src = sqlite3.connect(uri, uri=True, timeout=10)
                    try:
                        src.backup(mem)
                        copied = True
                    finally:
                        src.close()
                    break
                except sqlite3.Error as exc2:
                    rebuild = f"journal.db unreadable on a full disk ({exc2})"
            if copied:
                rebuild = None
        mem.executescript(_SCHEMA)
        self._db = _Db(mem)
        if not copied and any((self.dir / "bundles").iterdir()):
            self._rebuild(rebuild or "journal.db is missing")
        self._recover()

    def _rebuild(self, why: str) -> None:
        """Fill an empty journal from the verified bundles on disk; never delete one.

        Which bundle goes in which slot comes from ``slots.json`` (written after every switch)
        or else the ``active``/``shadow``/``previous`` links; without either, nothing is
        activated (guessing could serve a model the hub rolled back) and the bundles are kept.
        """
        verified: dict[str, Model | None] = {}
        infos: dict[str, SlotInfo] = {}
        for root in sorted((self.dir / "bundles").iterdir()):
            try:
                bundle = read_bundle(root)
                if bundle.manifest.digest != root.name:
                    raise StoreError(f"holds {bundle.manifest.digest[:12]}", field="store")
                verify_bundle(bundle, self.public_keys, require_signature=self.require_signature)
            except EdgeError as exc:
                self.recovery.append(f"rebuild: bundle {root.name[:12]} kept but not usable: "
                                     f"{exc.message}")
                continue
            m = bundle.manifest
            verified[root.name] = None
            infos[root.name] = SlotInfo("", m.name, m.version, m.digest, m.format,
                                        root.stat().st_mtime)
        hint = self._slot_hint()
        placed = []
        if hint.get("active") and hint["active"] not in infos and hint.get("previous") in infos:
            # the active bundle does not verify: the previous one serves (as on a normal start)
            self.recovery.append(f"rebuild: active bundle {hint['active'][:12]} unusable: "
                                 "previous reactivated")
            hint["active"] = hint.pop("previous")
        with self._txn():
            for slot in SLOTS:
                digest = hint.get(slot)
                if digest in infos:
                    info = infos[digest]
                    info.slot = slot
                    self._put_slot(slot, info)
                    placed.append(f"{slot} {info.name} {info.version}")
            placed_digests = {hint.get(slot) for slot in SLOTS if hint.get(slot) in infos}
            for root in (self.dir / "bundles").iterdir():  # unverifiable ones too: for inspection
                if root.name not in placed_digests:
                    self._db.execute("INSERT OR IGNORE INTO kept VALUES (?)", (root.name,))
            self._journal_start("rebuild", None, "switch", f"{why}; {len(infos)} verified "
                                f"bundle(s); slots: {', '.join(placed) or 'none'}")
            self._db.execute("UPDATE journal SET state='ok' WHERE op='rebuild' AND state='running'")
        if placed:
            self.recovery.append(f"rebuild: {len(infos)} verified bundle(s); restored "
                                 f"{', '.join(placed)} from {hint.get('_source', 'the links')}")
        else:
            self.recovery.append(f"rebuild: {len(infos)} verified bundle(s) kept, none activated: "
                                 "no record of which one ran (slots.json, links); install or "
                                 "roll out a bundle to choose")

    def _slot_hint(self) -> dict[str, str]:
        try:
            doc = json.loads((self.dir / "slots.json").read_text())
            hint = {k: v for k, v in doc.get("slots", {}).items() if isinstance(v, str)}
            if hint:
                return {**hint, "_source": "slots.json"}
        except (OSError, ValueError, AttributeError):
            pass
        hint = {}
        for slot in SLOTS:
            link = self.dir / slot
            with contextlib.suppress(OSError):
                if link.is_symlink():
                    hint[slot] = Path(os.readlink(link)).name
        if hint:
            hint["_source"] = "the active/shadow/previous links"
        return hint

    def _ensure_reserve(self) -> None:
        """Keep ``reserve`` (a few hundred KiB): freed when the disk fills, so a refused
        install can still record its reason in the journal."""
        p = self.dir / "reserve"
        if p.exists() and p.stat().st_size >= _RESERVE_BYTES:
            return
        try:
            with open(p, "wb") as fh:
                fh.write(b"\0" * _RESERVE_BYTES)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                p.unlink()

    def _journal_write(self, fn: Callable[[], Any]) -> Any:
        """Run a journal write; on a full disk free the reserve and try once more."""
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not (_disk_full(exc) or _no_space(self.dir)):
                raise
            reserve = self.dir / "reserve"
            if not reserve.exists():
                raise
            with contextlib.suppress(OSError):
                reserve.unlink()
            self._reserve_used = True
            log.warning("store %s: disk full; the reserve was freed to record the journal",
                        self.dir)
            return fn()

    def _recover(self) -> None:
        db = self._db
        running = db.execute("SELECT id, op, slot, step FROM journal WHERE state='running'").fetchall()
        for jid, op, slot, step in running:
            db.execute("UPDATE journal SET state='interrupted', detail=? WHERE id=?",
                       (f"process stopped during step {step}", jid))
            self.recovery.append(f"{op} into {slot} interrupted at step {step}")
        for p in (self.dir / "tmp").iterdir():
            _rmtree(p)
            self.recovery.append(f"removed staging leftover {p.name}")
        # Load the active and shadow models; fall back to previous if active is unusable.
        for slot in ("active", "shadow"):
            info = self._slot_row(slot)
            if info is None:
                continue
            try:
                self._models[slot] = self._load_installed(info.sha256)
            except EdgeError as exc:
                self.recovery.append(f"{slot} bundle {info.sha256[:12]} unusable: {exc.message}")
                self._journal_done("recover", slot, info, "failed", "load", exc.message)
                if slot == "active" and self._slot_row("previous") is not None:
                    prev = self._slot_row("previous")
                    try:
                        model = self._load_installed(prev.sha256)
                    except EdgeError as exc2:
                        self.recovery.append(f"previous bundle unusable too: {exc2.message}")
                        continue
                    with self._txn():
                        self._set_slot("active", model)
                        self._del_slot("previous")
                        self._journal_done("recover", "active", self._slot_row("active"), "ok",
                                           "switch", "active bundle unusable: previous reactivated")
                    self._models["active"] = model
                    self.recovery.append(f"reactivated previous {prev.name} {prev.version}")
                elif slot == "shadow":
                    with self._txn():
                        self._del_slot("shadow")
        if self.read_only is None:
            self._gc()
            self._sync_links()

    def close(self) -> None:
        for m in self._models.values():
            with contextlib.suppress(Exception):
                m.close()
        self._models.clear()
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        if self._lockfile is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_UN)
            self._lockfile.close()
            self._lockfile = None

    def __enter__(self) -> ModelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading ------------------------------------------------------------------
    def model(self, slot: str = "active") -> Model | None:
        """The loaded model in ``slot`` (``previous`` is loaded on demand)."""
        _check_slot(slot)
        m = self._models.get(slot)
        if m is None and slot == "previous":
            info = self._slot_row("previous")
            if info is not None:
                with self._lock:
                    m = self._models.get(slot) or self._load_installed(info.sha256)
                    self._models[slot] = m
        return m

    def loaded_model(self, slot: str) -> Model | None:
        """The model in ``slot`` if it is in memory (never loads)."""
        return self._models.get(slot)

    def slot(self, slot: str) -> SlotInfo | None:
        _check_slot(slot)
        info = self._slot_row(slot)
        if info is not None:
            info.loaded = slot in self._models
        return info

    def status(self) -> dict[str, Any]:
        slots = {}
        for s in SLOTS:
            info = self.slot(s)
            slots[s] = info.to_dict() if info else None
        return {"dir": str(self.dir), "profile": self.profile.name, "slots": slots,
                "recovery": list(self.recovery), "journal": self.journal(10)}

    def journal(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id, ts, op, slot, digest, name, version, state, step, detail FROM journal "
            "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        keys = ("id", "ts", "op", "slot", "sha256", "name", "version", "state", "step", "detail")
        return [dict(zip(keys, r)) for r in rows]

    # ---- install --------------------------------------------------------------------
    def install(self, bundle_path: str | Path, slot: str = "active", *,
                progress: Progress | None = None) -> InstallReport:
        """Verify, load, self-test and budget-check a bundle, then switch it into ``slot``.

        ``slot`` is ``active`` (the old active becomes ``previous``) or ``shadow``.
        ``progress(event, info)`` is called with ``staged``, ``verified``, ``loaded``,
        ``self_test_passed``, ``budget_ok``, then ``active``/``shadow`` or ``failed``.
        """
        if slot not in ("active", "shadow"):
            raise ConflictError(f"install into {slot!r}: only 'active' or 'shadow' can be installed",
                                field="slot")
        with self._lock:
            return self._install(Path(bundle_path), slot, progress or (lambda e, i: None))

    def _install(self, src: Path, slot: str, progress: Progress) -> InstallReport:
        t0 = time.perf_counter()
        if self.read_only is not None:
            raise StoreError(f"stage: installs are refused: {self.read_only}", field="store.dir",
                             step="stage")
        self._ensure_reserve()  # space may have returned since it was used
        try:
            jid = self._journal_write(lambda: self._journal_start("install", slot, "stage",
                                                                  str(src)))
        except sqlite3.Error as exc:
            raise StoreError(f"stage: cannot record the install in the journal: {_reason(exc)}",
                             field="store.dir", step="stage") from exc
        if self._reserve_used:  # the journal row took the reserve: no room for a bundle
            self._reserve_used = False
            reason = "the disk is full (the journal needed the store's reserve space)"
            self._journal_end(jid, "failed", "stage", reason)
            raise StoreError(f"stage: {reason}", field="store.dir", step="stage")
        step = "stage"
        staged: Path | None = None
        model: Model | None = None
        report = InstallReport(slot=slot, name="", version="", sha256="", switched=False)
        try:
            self._point("stage")
            staged = Path(tempfile.mkdtemp(prefix="install-", dir=self.dir / "tmp")) / "bundle"
            self._stage(src, staged)
            bundle = read_bundle(staged)
            m = bundle.manifest
            report.name, report.version, report.sha256 = m.name, m.version, m.digest
            self._db.execute("UPDATE journal SET digest=?, name=?, version=? WHERE id=?",
                             (m.digest, m.name, m.version, jid))
            progress("staged", report.to_dict())

            current = self._slot_row(slot)
            if current is not None and current.sha256 == m.digest and slot in self._models:
                self._journal_end(jid, "noop", "verify", f"{m.name} {m.version} already {slot}")
                _rmtree(staged)
                report.duration_s = time.perf_counter() - t0
                progress(slot, report.to_dict())
                return report

            step = self._step(jid, "verify")
            verify_bundle(bundle, self.public_keys, require_signature=self.require_signature)
            progress("verified", report.to_dict())

            step = self._step(jid, "load")
            rss0 = _rss()
            model = Model.load(bundle, self.options, warmup=True)
            progress("loaded", report.to_dict())

            step = self._step(jid, "self_test")
            if self.require_golden and not m.golden:
                raise StoreError("the bundle has no golden vectors, so it cannot be self-tested",
                                 field="golden")
            report.golden_checked = model.self_test()
            progress("self_test_passed", report.to_dict())

            step = self._step(jid, "budget")
            self._check_budget(model, report, rss0)
            progress("budget_ok", report.to_dict())

            step = self._step(jid, "commit")
            final = self._commit(staged, m.digest)
            staged = None
            model.bundle.root = final

            step = self._step(jid, "switch")
            with self._txn():
                if slot == "active":
                    old = self._slot_row("active")
                    if old is not None:
                        self._copy_slot("active", "previous")
                self._set_slot(slot, model)
                if slot == "active":  # a deliberate choice: bundles kept by a rebuild may go
                    self._db.execute("DELETE FROM kept")
                self._point("switch:in_transaction")
                self._journal_end(jid, "ok", "switch", None)
            self._point("switch:committed")
            old_model = self._models.get(slot)
            self._models[slot] = model
            if slot == "active":
                self._models.pop("previous", None)
                if old_model is not None:
                    self._models["previous"] = old_model  # keep for an instant rollback
            elif old_model is not None:
                old_model.close()
            model = None
            report.switched = True

            step = "cleanup"
            self._point("cleanup")
            self._gc()
            self._sync_links()
        except EdgeError as exc:
            self._fail(jid, step, exc, staged, model)
            progress("failed", {**report.to_dict(), "step": step, "reason": exc.message})
            if isinstance(exc, (StoreError, BundleError)) and exc.message.startswith(f"{step}:"):
                raise
            cls = BundleError if isinstance(exc, BundleError) else StoreError
            raise cls(f"{step}: {exc.message}", field=exc.field or step, step=step) from exc
        except Exception as exc:  # disk full, permissions, ...: never a half-switched store
            self._fail(jid, step, exc, staged, model)
            progress("failed", {**report.to_dict(), "step": step, "reason": str(exc)})
            raise StoreError(f"{step}: {type(exc).__name__}: {exc}", field=step, step=step) from exc
        report.duration_s = time.perf_counter() - t0
        report.steps = list(INSTALL_STEPS)
        progress(slot, report.to_dict())
        return report

    def _stage(self, src: Path, dest: Path) -> None:
        tmp = dest.parent
        if src.is_dir():
            try:
                shutil.copytree(src, dest, symlinks=False)
            except (OSError, shutil.Error) as exc:
                raise BundleError(f"cannot copy bundle {src}: {exc}", field="bundle") from exc
        elif src.is_file() and tarfile.is_tarfile(src):
            dest.mkdir()
            _extract_tar(src, dest)
            inner = list(dest.iterdir())
            if not (dest / "manifest.json").exists() and len(inner) == 1 and inner[0].is_dir():
                inner[0].rename(tmp / "inner")
                dest.rmdir()
                (tmp / "inner").rename(dest)
        elif not src.exists():
            raise BundleError(f"bundle not found: {src}", field="bundle")
        else:
            raise BundleError(f"bundle is neither a directory nor a tar file: {src}", field="bundle")

    def _check_budget(self, model: Model, report: InstallReport, rss0: int) -> None:
        call = _single_row_call(model)
        if call is None:
            raise StoreError("no golden row or tensor to time a single-row call", field="golden")
        prof = self.profile
        # Wall-clock timing: on a busy device a p99 over 200 calls is the 2nd-slowest call, and two
        # preemptions by other processes would refuse a model that fits its budget. A round over
        # the budget is therefore measured again (up to LATENCY_ROUNDS): the best round is judged,
        # so a model that is really too slow fails every round, and the message gives them all.
        rounds: list[tuple[float, float]] = []
        for _ in range(LATENCY_ROUNDS):
            times = np.empty(self.latency_runs)
            for i in range(self.latency_runs):
                t = time.perf_counter()
                call()
                times[i] = time.perf_counter() - t
            rounds.append((float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)))
            if rounds[-1][1] <= prof.latency_budget_ms:
                break
        report.p50_ms, report.p99_ms = min(rounds, key=lambda r: r[1])
        report.rss_growth_mb = max(0.0, (_rss() - rss0) / 2**20)
        if report.p99_ms > prof.latency_budget_ms:
            each = ", ".join(f"{p99:.3f}" for _p50, p99 in rounds)
            raise StoreError(f"single-row p99 {report.p99_ms:.3f} ms (best of {len(rounds)} rounds of "
                             f"{self.latency_runs} runs: {each} ms) exceeds the {prof.name} latency "
                             f"budget {prof.latency_budget_ms:g} ms", field="profile.latency_budget_ms")
        if report.rss_growth_mb > prof.memory_budget_mb:
            raise StoreError(f"loading the model grew RSS by {report.rss_growth_mb:.1f} MB, over the "
                             f"{prof.name} memory budget {prof.memory_budget_mb} MB",
                             field="profile.memory_budget_mb")

    def _commit(self, staged: Path, digest: str) -> Path:
        _fsync_tree(staged)
        final = self.dir / "bundles" / digest
        if final.exists():
            try:  # the same bundle is already held (shadow/previous): keep it if intact
                verify_bundle(read_bundle(final), require_signature=False)
                _rmtree(staged.parent)
                return final
            except BundleError:
                os.replace(final, self.dir / "tmp" / f"corrupt-{digest[:12]}")
        os.replace(staged, final)
        _fsync_dir(final.parent)
        _rmtree(staged.parent)
        self._point("commit:renamed")
        return final

    def _fail(self, jid: int, step: str, exc: BaseException, staged: Path | None,
              model: Model | None) -> None:
        reason = exc.message if isinstance(exc, EdgeError) else f"{type(exc).__name__}: {exc}"
        if _disk_full(exc) or _disk_full(exc.__cause__):
            reason = f"the disk is full: {reason}"
        if staged is not None:  # free the space first: the journal row may need it
            _rmtree(staged.parent)
            staged = None
        try:
            self._journal_write(lambda: self._journal_end(jid, "failed", step, reason))
        except sqlite3.Error as exc2:
            log.error("store %s: install failed at %s (%s) and the journal could not record it: "
                      "%s", self.dir, step, reason, exc2)
        if model is not None:
            with contextlib.suppress(Exception):
                model.close()
        if staged is not None:
            _rmtree(staged.parent)

    # ---- promote / rollback / remove -------------------------------------------------
    def promote(self) -> SlotInfo:
        """Make the shadow bundle active (the old active becomes previous)."""
        with self._lock:
            shadow = self._slot_row("shadow")
            if shadow is None:
                raise ConflictError("promote: there is no shadow bundle", field="slot")
            jid = self._journal_start("promote", "active", "switch", None, shadow)
            with self._txn():
                if self._slot_row("active") is not None:
                    self._copy_slot("active", "previous")
                self._copy_slot("shadow", "active")
                self._del_slot("shadow")
                self._journal_end(jid, "ok", "switch", None)
            old = self._models.pop("active", None)
            self._models.pop("previous", None)
            self._models["active"] = self._models.pop("shadow")
            if old is not None:
                self._models["previous"] = old
            self._gc()
            self._sync_links()
            return self.slot("active")

    def rollback(self) -> SlotInfo:
        """Swap ``previous`` back in as active (the rolled-back bundle becomes previous).

        The previous model is loaded first (it is usually still in memory), then the journal row
        and both slots are written in ONE transaction (one fsync, not three: the rollback is the
        fast path back, and a fleet's devices may all take it at once); a crash before the commit
        leaves the store as it was. A load failure is journaled as a failed rollback."""
        with self._lock:
            prev = self._slot_row("previous")
            if prev is None:
                raise ConflictError("rollback: there is no previous bundle to roll back to",
                                    field="slot")
            try:
                model = self._models.get("previous") or self._load_installed(prev.sha256)
            except EdgeError as exc:
                self._journal_done("rollback", "active", prev, "failed", "load", exc.message)
                raise StoreError(f"load: previous bundle {prev.name} {prev.version} cannot run: "
                                 f"{exc.message}", field="previous") from exc
            with self._txn():
                jid = self._journal_start("rollback", "active", "switch", None, prev)
                cur = self._slot_row("active")
                self._set_slot("active", model)
                if cur is not None:
                    self._put_slot("previous", cur)
                else:
                    self._del_slot("previous")
                self._journal_end(jid, "ok", "switch", None)
            old = self._models.get("active")
            self._models["active"] = model
            self._models.pop("previous", None)
            if old is not None:
                self._models["previous"] = old
            self._sync_links()
            return self.slot("active")

    def remove(self, slot: str) -> None:
        """Empty ``shadow`` or ``previous``; the active slot cannot be emptied."""
        _check_slot(slot)
        with self._lock:
            if slot == "active":
                raise ConflictError("remove: the active model cannot be removed (install another "
                                    "bundle or roll back instead)", field="slot")
            info = self._slot_row(slot)
            if info is None:
                raise NotFoundError(f"remove: slot {slot} is empty", field="slot")
            jid = self._journal_start("remove", slot, "switch", None, info)
            with self._txn():
                self._del_slot(slot)
                self._journal_end(jid, "ok", "switch", None)
            m = self._models.pop(slot, None)
            if m is not None and all(m is not o for o in self._models.values()):
                m.close()
            self._gc()
            self._sync_links()

    # ---- internals ---------------------------------------------------------------------
    def _load_installed(self, digest: str) -> Model:
        root = self.dir / "bundles" / digest
        if not root.is_dir():
            raise StoreError(f"bundle directory {root} is missing", field="store")
        bundle = read_bundle(root)
        if bundle.manifest.digest != digest:
            raise StoreError(f"bundle {root} holds {bundle.manifest.digest[:12]}, "
                             f"not {digest[:12]}", field="store")
        verify_bundle(bundle, self.public_keys, require_signature=self.require_signature)
        model = Model.load(bundle, self.options)
        if bundle.manifest.golden:
            model.self_test()
        return model

    def _point(self, name: str) -> None:
        if self._checkpoint_hook is not None:
            self._checkpoint_hook(name)
        marker = os.environ.get(PAUSE_FILE_ENV) if self._pause_at == name else None
        if marker:  # test hook: both variables must be set, and the pause is bounded
            # written under a temporary name, then renamed: the test polls for the marker and
            # must never see it created but still empty
            tmp = f"{marker}.tmp{os.getpid()}"
            with open(tmp, "w") as fh:
                fh.write(f"{name} {os.getpid()}\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, marker)
            log.warning("store paused at %s for a crash test (%s=%s)", name, PAUSE_ENV, name)
            deadline = time.monotonic() + 600.0
            while time.monotonic() < deadline:  # wait here to be killed
                time.sleep(1.0)

    def _step(self, jid: int, step: str) -> str:
        self._db.execute("UPDATE journal SET step=? WHERE id=?", (step, jid))
        self._point(step)
        return step

    @contextlib.contextmanager
    def _txn(self):
        db = self._db
        with db.lock:  # readers in other threads wait for the commit, never see half of it
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _slot_row(self, slot: str) -> SlotInfo | None:
        row = self._db.execute("SELECT slot, name, version, digest, format, installed_at "
                               "FROM slots WHERE slot=?", (slot,)).fetchone()
        return SlotInfo(*row) if row else None

    def _set_slot(self, slot: str, model: Model) -> None:
        self._db.execute("INSERT OR REPLACE INTO slots VALUES (?,?,?,?,?,?)",
                         (slot, model.digest, model.name, model.version,
                          model.manifest.format, time.time()))

    def _put_slot(self, slot: str, info: SlotInfo) -> None:
        self._db.execute("INSERT OR REPLACE INTO slots VALUES (?,?,?,?,?,?)",
                         (slot, info.sha256, info.name, info.version, info.format,
                          info.installed_at))

    def _copy_slot(self, src: str, dst: str) -> None:
        info = self._slot_row(src)
        if info is not None:
            self._put_slot(dst, info)

    def _del_slot(self, slot: str) -> None:
        self._db.execute("DELETE FROM slots WHERE slot=?", (slot,))

    def _journal_start(self, op: str, slot: str, step: str, detail: str | None,
                       info: SlotInfo | None = None) -> int:
        cur = self._db.execute(
            "INSERT INTO journal (ts, op, slot, digest, name, version, state, step, detail) "
            "VALUES (?,?,?,?,?,?, 'running', ?, ?)",
            (time.time(), op, slot, info.sha256 if info else None, info.name if info else None,
             info.version if info else None, step, detail))
        return int(cur.lastrowid)

    def _journal_end(self, jid: int, state: str, step: str, detail: str | None) -> None:
        self._db.execute("UPDATE journal SET state=?, step=?, detail=COALESCE(?, detail), ts=? "
                         "WHERE id=?", (state, step, detail, time.time(), jid))

    def _journal_done(self, op: str, slot: str, info: SlotInfo | None, state: str, step: str,
                      detail: str) -> None:
        jid = self._journal_start(op, slot, step, detail, info)
        self._journal_end(jid, state, step, detail)

    def _gc(self) -> None:
        keep = {r[0] for r in self._db.execute("SELECT digest FROM slots UNION "
                                               "SELECT digest FROM kept")}
        for p in (self.dir / "bundles").iterdir():
            if p.name not in keep:
                _rmtree(p)

    def _sync_links(self) -> None:
        """Refresh the slot links and ``slots.json`` (a copy of the slots that survives a lost
        journal: the rebuild restores the slots from it)."""
        doc = {"slots": {}}
        for slot in SLOTS:
            info = self._slot_row(slot)
            if info is not None:
                doc["slots"][slot] = info.sha256
        try:
            tmp = self.dir / ".slots.json.tmp"
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.dir / "slots.json")
        except OSError:
            pass  # a full disk: the journal (and the links) still hold the truth
        for slot in SLOTS:
            link = self.dir / slot
            info = self._slot_row(slot)
            try:
                if info is None:
                    if link.is_symlink():
                        link.unlink()
                    continue
                target = Path("bundles") / info.sha256
                if link.is_symlink() and Path(os.readlink(link)) == target:
                    continue
                tmp = self.dir / f".{slot}.link"
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                os.symlink(target, tmp)
                os.replace(tmp, link)
            except OSError:
                pass  # the links are a convenience; the journal is the truth


class _Rows:
    __slots__ = ("rows", "lastrowid")

    def __init__(self, rows: list[tuple], lastrowid: int | None) -> None:
        self.rows, self.lastrowid = rows, lastrowid

    def fetchall(self) -> list[tuple]:
        return self.rows

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None

    def __iter__(self):
        return iter(self.rows)


class _Db:
    """One SQLite connection shared by the daemon's threads: each statement (and each
    transaction, via ``lock``) runs alone, and results are fetched before the lock drops."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.lock = threading.RLock()

    def execute(self, sql: str, params: tuple = ()) -> _Rows:
        with self.lock:
            cur = self.conn.execute(sql, params)
            return _Rows(cur.fetchall(), cur.lastrowid)

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def _check_slot(slot: str) -> None:
    if slot not in SLOTS:
        raise NotFoundError(f"unknown slot {slot!r} (slots: {', '.join(SLOTS)})", field="slot")


def _single_row_call(model: Model) -> Callable[[], Any] | None:
    for g in model.manifest.golden:
        if g.rows:
            row = dict(g.rows[0])
            return lambda: model.predict(row)
        if g.tensors:
            first = {k: np.asarray(v)[:1] for k, v in g.tensors.items()}
            return lambda: model.run_tensors(first)
    return None


def _rss() -> int:
    """This process's resident set size in bytes (psutil, else Linux ``/proc``).

    Never a silent 0: that would let every model pass the memory budget.
    """
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except Exception as exc:  # noqa: BLE001 - no psutil, or psutil.Error in odd containers
        err = exc
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError) as exc:
        raise StoreError(f"budget: cannot measure memory to check the budget ({err}; {exc})",
                         field="profile.memory_budget_mb") from exc


def _disk_full(exc: BaseException | None) -> bool:
    """ENOSPC/EDQUOT/EROFS, or SQLite's words for them."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    if isinstance(exc, sqlite3.Error):
        msg = str(exc).lower()
        return "disk is full" in msg or "readonly" in msg or "read-only" in msg
    return exc is not None and "no space left on device" in str(exc).lower()


def _no_space(directory: Path) -> bool:
    """SQLite reports a full tmpfs as "disk I/O error": look at the free space itself."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 256 * 1024 or st.f_favail == 0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _rmtree(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        with contextlib.suppress(OSError):
            p.unlink()
    else:
        shutil.rmtree(p, ignore_errors=True)


def _fsync_dir(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def main_install(argv: list[str] | None = None) -> int:
    """``python -m edge_runtime.store DIR BUNDLE [SLOT] [--key PUB]``: used by the crash test."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m edge_runtime.store")
    ap.add_argument("dir")
    ap.add_argument("bundle")
    ap.add_argument("--slot", default="active")
    ap.add_argument("--public-key", action="append", default=[])
    ap.add_argument("--profile", default="x86-gateway")
    args = ap.parse_args(argv)
    with ModelStore(args.dir, args.profile, args.public_key) as store:
        report = store.install(args.bundle, args.slot)
    print(json.dumps(report.to_dict()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main_install())
