"""The hub's scratch space: one directory per process under ``HUB_DATA_DIR/tmp``.

Uploads and unpacked bundles live there, never in the system temp dir, so a
``kill -9`` leaves them where the next start finds them. Each process holds an
exclusive ``flock`` on ``tmp/proc-<id>.lock`` while it runs; at start a process
removes every ``proc-*`` directory whose lock it can take (its owner is gone)
and any stray file older layouts left directly in ``tmp``. Replicas or workers
sharing a data dir never remove each other's live files.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("cloud_hub.workdir")

PREFIX = "proc-"


class WorkDir:
    def __init__(self, base: str | Path) -> None:
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.removed = sweep(self.base)
        self._lock_fd, self.path = _claim(self.base)

    def close(self) -> None:
        """Remove this process's directory (called when the hub closes)."""
        if self._lock_fd is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        lock = self.path.with_name(self.path.name + ".lock")
        lock.unlink(missing_ok=True)
        os.close(self._lock_fd)
        self._lock_fd = None


def _claim(base: Path) -> tuple[int, Path]:
    while True:
        name = f"{PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
        lock = base / f"{name}.lock"
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # a sweeper may have taken and removed the lock before we locked it
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                path = base / name
                path.mkdir(mode=0o700)
                return fd, path
        except FileNotFoundError:
            pass
        os.close(fd)


def sweep(base: Path) -> int:
    """Remove what dead processes left under ``base``; return how many entries went."""
    removed = 0
    for entry in sorted(base.iterdir()):
        if entry.name.startswith(PREFIX):
            if entry.suffix == ".lock":
                removed += _sweep_lock(entry)
            elif not entry.with_name(entry.name + ".lock").exists():
                # the lock goes last, so a directory without one belongs to nobody
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
            continue
        try:  # leftovers of older layouts (upload-*.tar, push-*/, bundle-*/)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    if removed:
        log.warning("removed %d leftover temp entr%s under %s", removed, "y" if removed == 1 else "ies", base)
    return removed


def _sweep_lock(lock: Path) -> int:
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # its process is alive
        shutil.rmtree(lock.with_suffix(""), ignore_errors=True)
        lock.unlink(missing_ok=True)
        return 1
    finally:
        os.close(fd)
