"""Keep the daemon's long-running threads alive: restart a dead one with backoff, report health.

The MQTT link (paho's network thread), the telemetry timer and the shadow-comparison
worker each run on their own thread; an exception that escapes one of them used to end
it for good (no telemetry until a restart, no link to the hub). A :class:`Supervisor`
checks each *part* once a second: when ``alive()`` is false it calls ``restart()``,
waiting a growing, jittered delay (:class:`~edge_runtime.backoff.Backoff`) between tries,
and keeps per part: alive, restarts, the last error and when — for ``/health`` and the
state message. A part that stays up for ``healthy_after_s`` gets its backoff reset.

Threads report the exception that killed them with :meth:`Supervisor.record_error`
(the parts' run loops call it) or through ``threading.excepthook``, which the supervisor
chains to while it runs.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.backoff import Backoff

log = logging.getLogger("edge_runtime.supervise")


@dataclass
class Part:
    name: str
    alive: Callable[[], bool]
    restart: Callable[[], None]
    thread_name: str | None = None  # threads of this name report their fatal errors here
    backoff: Backoff = field(default_factory=lambda: Backoff(0.5, 30.0))
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None  # wall clock, a label only
    next_try: float = 0.0  # monotonic
    up_since: float = 0.0  # monotonic
    ok: bool = True


class Supervisor:
    def __init__(
        self,
        interval_s: float = 1.0,
        healthy_after_s: float = 60.0,
        *,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.on_change = on_change  # called when a part goes down or comes back
        self.healthy_after_s = healthy_after_s
        self._parts: dict[str, Part] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(
        self,
        name: str,
        alive: Callable[[], bool],
        restart: Callable[[], None],
        *,
        thread_name: str | None = None,
    ) -> None:
        with self._lock:
            self._parts[name] = Part(name, alive, restart, thread_name, up_since=time.monotonic())

    def record_error(self, name: str, exc: BaseException) -> None:
        with self._lock:
            part = self._parts.get(name)
            if part is not None:
                part.last_error = f"{type(exc).__name__}: {exc}"[:300]
                part.last_error_at = time.time()

    # ---- life cycle -----------------------------------------------------------------------
    def start(self) -> Supervisor:
        self._stop.clear()
        _install_hook(self)
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        _LIVE.discard(self)

    def _on_thread_error(self, args: Any) -> None:
        name = getattr(args.thread, "name", None) or ""
        with self._lock:
            parts = [
                p for p in self._parts.values() if p.thread_name and name.startswith(p.thread_name)
            ]
        for p in parts:
            self.record_error(p.name, args.exc_value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()

    def check(self) -> None:
        """One pass: restart what is dead and due (also callable directly, e.g. in tests)."""
        now = time.monotonic()
        with self._lock:
            parts = list(self._parts.values())
        before = [p.ok for p in parts]
        self._check(parts, now)
        if self.on_change is not None and before != [p.ok for p in parts]:
            try:
                self.on_change()
            except Exception:
                log.exception("supervisor: on_change failed")

    def _check(self, parts: list[Part], now: float) -> None:
        for p in parts:
            try:
                alive = bool(p.alive())
            except Exception as exc:  # noqa: BLE001 - a broken probe counts as dead
                alive = False
                self.record_error(p.name, exc)
            if alive:
                if not p.ok:
                    log.info("%s is running again", p.name)
                p.ok = True
                if p.backoff.attempts and now - p.up_since >= self.healthy_after_s:
                    p.backoff.reset()
                continue
            if p.ok:
                p.ok = False
                p.next_try = now + p.backoff.next()
                log.error(
                    "%s stopped (%s); restarting in %.1f s",
                    p.name,
                    p.last_error or "no error recorded",
                    p.next_try - now,
                )
                continue
            if now < p.next_try:
                continue
            try:
                p.restart()
                p.restarts += 1
                p.up_since = now
                log.warning("%s restarted (restart %d)", p.name, p.restarts)
            except Exception as exc:  # noqa: BLE001 - any failure: try again later
                self.record_error(p.name, exc)
                log.error("%s could not be restarted: %s", p.name, exc)
            p.next_try = now + p.backoff.next()

    def health(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            parts = list(self._parts.values())
        out = {}
        for p in parts:
            out[p.name] = {
                "ok": p.ok,
                "restarts": p.restarts,
                "last_error": p.last_error,
                "last_error_at": p.last_error_at,
            }
        return out


# One process-wide threading.excepthook for every running supervisor (a simulator runs many
# daemons in one process: chaining one hook per supervisor would grow without end).
_LIVE: weakref.WeakSet[Supervisor] = weakref.WeakSet()
_hook_lock = threading.Lock()
_prev_hook: Callable[[Any], Any] | None = None


def _install_hook(sup: Supervisor) -> None:
    global _prev_hook
    with _hook_lock:
        _LIVE.add(sup)
        if threading.excepthook is not _excepthook:
            _prev_hook = threading.excepthook
            threading.excepthook = _excepthook


def _excepthook(args: Any) -> None:
    for sup in list(_LIVE):
        try:
            sup._on_thread_error(args)
        except Exception:  # reporting must never raise
            log.exception("supervisor: recording a thread error failed")
    (_prev_hook or threading.__excepthook__)(args)
