"""Desired-state reconciliation: make the store run what the hub's ``desired`` document says.

For each slot of a new desired document: download the bundle from the hub URL,
check that it *is* the bundle asked for (manifest digest = desired sha256), then let
the model store verify hashes and signature, self-test and budget-check it before the
atomic switch. Each step is reported as an event; the device state then reports what
actually runs, by digest. A failure leaves the old model running and says why.

Idempotence: the id of the last desired document applied (or refused for a reason that
a retry cannot fix) is kept in the outbox's meta table, so a replayed or duplicated
desired document (retained re-delivery on every reconnect, QoS 1 duplicates) applies once.
Transient failures (download) are retried with backoff.

Install jitter (``[hub] install_jitter_s``): before *downloading* a bundle the reconciler waits a
random 0…``install_jitter_s`` seconds, so a fleet told at once (a stage of a rollout, a new
champion) does not download, verify, load and self-test in the same instant. The wait happens
after the ``received`` event, once per desired document; a newer desired document ends it (the
old one is then never applied), and a rollback to the previous model (a local slot swap) or a
shadow removal is never delayed.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_runtime.backoff import Backoff, spread_delay
from edge_runtime.errors import ConflictError, EdgeError
from edge_runtime.protocol import DesiredBundle, DesiredState

log = logging.getLogger("edge_runtime.reconcile")

_STORE_STEPS = {"verified": "verified", "self_test_passed": "self_test_passed"}


class TransientError(EdgeError):
    code = "transient"


class _Superseded(ConflictError):
    """A newer desired document arrived while this one waited (install jitter): drop this one
    (never leaves the reconciler)."""


class Reconciler:
    def __init__(self, device_id: str, store: Any, emit: Callable[..., None], *,
                 meta_get: Callable[[str, str], str], meta_set: Callable[[str, Any], None],
                 on_change: Callable[[], None] = lambda: None, hub_url: str | None = None,
                 download_dir: str | Path | None = None, download_timeout_s: float = 60.0,
                 retry_min_s: float = 1.0, retry_max_s: float = 60.0,
                 headers: dict[str, str] | None = None, allow_file_urls: bool = False,
                 install_jitter_s: float = 0.0, rng: random.Random | None = None) -> None:
        self.device_id = device_id
        self.store = store
        self.emit = emit
        self._meta_get, self._meta_set = meta_get, meta_set
        self.on_change = on_change
        self.hub_url = hub_url.rstrip("/") if hub_url else None
        self.download_dir = Path(download_dir) if download_dir else None
        self.download_timeout_s = download_timeout_s
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self.headers = headers or {}
        self.allow_file_urls = allow_file_urls
        self.install_jitter_s = max(0.0, float(install_jitter_s))
        self._rng = rng or random.Random()
        self._jittered_id: str | None = None  # the document whose install already waited its jitter
        self.last_jitter_s = 0.0
        # optional semaphore held while a document is applied (not during the install jitter): a
        # host simulating many devices (devices.simulator) limits how many reconcile at once,
        # as each real device has its own CPU; None on a device
        self.concurrency: threading.Semaphore | None = None
        self._lock = threading.Lock()
        self._pending: DesiredState | None = None
        self._busy = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.applied_count = 0
        self.last_error: str | None = None

    @property
    def applied_id(self) -> str | None:
        return self._meta_get("applied_desired_id", "") or None

    @property
    def settled_id(self) -> str | None:
        """Last desired id applied or refused for good (replays of it are ignored)."""
        return self._meta_get("settled_desired_id", "") or None

    # ---- entry point (MQTT thread): never blocks ---------------------------------------------
    def submit(self, doc: DesiredState) -> None:
        with self._lock:
            if doc.id == self.settled_id or (self._pending is not None and self._pending.id == doc.id):
                return  # replay / duplicate
            self._pending = doc
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=f"reconcile-{self.device_id}",
                                                daemon=True)
                self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        t = self._thread
        if t is not None:
            t.join(timeout=30)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._pending is None and not self._busy:
                    return True
            time.sleep(0.02)
        return False

    # ---- worker --------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = Backoff(self.retry_min_s, self.retry_max_s)
        while not self._stopped:
            with self._lock:
                doc, self._pending = self._pending, None
                if doc is None:
                    self._thread = None
                    return
                if doc.id == self.settled_id:
                    continue
                self._busy = True
            cpu = self.concurrency
            try:
                if cpu is not None:
                    cpu.acquire()
                try:
                    ok = self.apply(doc)
                finally:
                    if cpu is not None:
                        cpu.release()
            except TransientError as exc:
                ok = None
                self.last_error = exc.message
            except _Superseded:  # a newer document (or stop) ended the install jitter
                ok = False
            finally:
                with self._lock:
                    self._busy = False
            if ok is None:  # transient: retry unless a newer document arrived
                with self._lock:
                    if self._pending is None:
                        self._pending = doc
                self._wake.clear()
                self._wake.wait(backoff.next())
            else:
                backoff.reset()

    def apply(self, doc: DesiredState) -> bool:
        """Apply one desired document; True when every slot now runs what it asks."""
        ctx = {"desired_id": doc.id, "rollout_id": doc.rollout_id}
        self.emit("received", **ctx)
        ok = True
        for slot in ("active", "shadow"):
            if slot not in doc.bundles:
                continue
            want = doc.bundles[slot]
            try:
                ok = self._apply_slot(slot, want, ctx) and ok
            except TransientError as exc:  # retried with backoff: not a refusal of the bundle
                self.emit("retrying", slot=slot, bundle=_bundle(want), reason=exc.message, **ctx)
                raise
        if ok:
            self._meta_set("applied_desired_id", doc.id)
            self.applied_count += 1
        self._meta_set("settled_desired_id", doc.id)
        self.on_change()
        return ok

    def _apply_slot(self, slot: str, want: DesiredBundle | None, ctx: dict[str, Any]) -> bool:
        info = self.store.slot(slot)
        if want is None and slot == "active":
            self.emit("failed", slot=slot, reason="the active slot cannot be emptied; desire another bundle "
                      "(or the previous one) instead", **ctx)
            return False
        if want is None:
            if info is not None:
                self.store.remove("shadow")
                self.emit("removed", slot=slot, bundle={"name": info.name, "version": info.version,
                                                         "sha256": info.sha256}, **ctx)
                self.on_change()
            return True
        if info is not None and info.sha256 == want.sha256:
            return True  # already running it
        if slot == "active":
            prev = self.store.slot("previous")
            if prev is not None and prev.sha256 == want.sha256 and hasattr(self.store, "rollback"):
                try:  # the hub asks for the previous model back: a local swap, no download
                    self.store.rollback()
                    self.emit("rolled_back", slot=slot, bundle=_bundle(want), **ctx)
                    self.emit("active", slot=slot, bundle=_bundle(want), **ctx)
                    # no state report here: apply() reports it at the end, microseconds later
                    # (a report is a state document built and sent; at 1,000 devices rolling
                    # back at once on one host it was a tenth of the time)
                    return True
                except EdgeError as exc:
                    log.warning("local rollback failed (%s); downloading instead", exc.message)
        problem = self.url_problem(want.url)
        if problem is not None:  # a signed bundle does not make any URL safe to read
            self.emit("failed", slot=slot, bundle=_bundle(want), reason=problem, **ctx)
            self.last_error = problem
            return False
        self._install_jitter(ctx["desired_id"])
        self.emit("downloading", slot=slot, bundle=_bundle(want), **ctx)
        tmp = Path(tempfile.mkdtemp(prefix="edge-dl-", dir=self.download_dir))
        try:
            path = self._download(want, tmp)
            try:
                from edge_runtime.bundle import read_bundle

                got = read_bundle(path).manifest.digest
            except EdgeError as exc:
                self.emit("failed", slot=slot, bundle=_bundle(want), reason=f"bundle unreadable: {exc.message}",
                          **ctx)
                return False
            if got != want.sha256:
                self.emit("failed", slot=slot, bundle=_bundle(want),
                          reason=f"downloaded bundle has digest {got[:12]}…, desired {want.sha256[:12]}…", **ctx)
                return False

            def progress(event: str, _info: dict[str, Any]) -> None:
                if event in _STORE_STEPS:
                    self.emit(_STORE_STEPS[event], slot=slot, bundle=_bundle(want), **ctx)

            try:
                self.store.install(path, slot, progress=progress)
            except EdgeError as exc:
                self.emit("failed", slot=slot, bundle=_bundle(want), reason=exc.message, **ctx)
                self.last_error = exc.message
                return False
            except Exception as exc:  # engine crash etc.: still a refusal, never a daemon crash
                self.emit("failed", slot=slot, bundle=_bundle(want), reason=f"{type(exc).__name__}: {exc}", **ctx)
                self.last_error = str(exc)
                return False
            self.emit("active", slot=slot, bundle=_bundle(want), **ctx)
            self.on_change()
            return True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _install_jitter(self, desired_id: str) -> None:
        """Wait 0…install_jitter_s before the first download of a desired document; raise
        :class:`_Superseded` when a newer document arrives (or the reconciler stops) meanwhile."""
        if self.install_jitter_s <= 0 or self._jittered_id == desired_id:
            return
        self._jittered_id = desired_id
        delay = self.last_jitter_s = spread_delay(self.install_jitter_s, self._rng)
        self._wake.clear()
        with self._lock:  # (after the clear: a submit or stop that set the event before it is seen here)
            newer = self._pending is not None or self._stopped
        if not newer:
            cpu = self.concurrency if self._thread is threading.current_thread() else None
            if cpu is not None:
                cpu.release()  # nobody's CPU is used while waiting
            try:
                self._wake.wait(delay)
            finally:
                if cpu is not None:
                    cpu.acquire()
        with self._lock:
            if self._stopped or self._pending is not None:
                raise _Superseded(f"desired document {desired_id} superseded while waiting its install jitter")

    def url_problem(self, url: str) -> str | None:
        """Why a desired document's bundle URL is refused, or None.

        ``file://`` would let whoever writes the desired document make the device
        read any local path; it is allowed only with ``[hub] allow_file_urls = true``.
        Otherwise http(s) only, and https only when the hub URL is https (no
        downgrade of the download)."""
        full = self.hub_url + url if url.startswith("/") and self.hub_url else url
        scheme = full.split(":", 1)[0].lower() if ":" in full else ""
        if scheme == "file":
            if self.allow_file_urls:
                return None
            return (f"bundle URL {url[:200]!r} is a local file URL; refused unless the device sets "
                    "[hub] allow_file_urls = true")
        if scheme not in ("http", "https"):
            return f"bundle URL {url[:200]!r} is not an http(s) URL"
        if self.hub_url and self.hub_url.lower().startswith("https:") and scheme != "https":
            return f"bundle URL {url[:200]!r} is not https, but the hub is (no downgrade)"
        return None

    def _download(self, want: DesiredBundle, tmp: Path) -> Path:
        url = want.url
        if url.startswith("/") and self.hub_url:
            url = self.hub_url + url
        if url.startswith("file://"):
            src = Path(url[7:])
            if not src.exists():
                raise TransientError(f"bundle {src} does not exist")
            if src.is_dir():
                return src
            dst = tmp / "bundle.tar"
            shutil.copyfile(src, dst)
            return dst
        dst = tmp / "bundle.tar"
        req = urllib.request.Request(url, headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=self.download_timeout_s) as r, open(dst, "wb") as fh:
                shutil.copyfileobj(r, fh, 1 << 20)
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                raise TransientError(f"download {url} answered HTTP {exc.code}") from exc
            raise TransientError(f"download {url} failed: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise TransientError(f"download {url} failed: {exc}") from exc
        return dst


def _bundle(b: DesiredBundle | None) -> dict[str, str] | None:
    if b is None:
        return None
    return {"name": b.name, "version": b.version, "sha256": b.sha256}


def new_event_id() -> str:
    return uuid.uuid4().hex
