"""On-device shadow comparison, off the request path.

The active path only calls :meth:`ShadowComparator.offer`: a sampling draw and an
append to a bounded deque (a full one drops the item and counts the drop). A worker thread scores the sampled inputs with the shadow slot's model
and records, per candidate bundle: compared rows, rows whose decision changed,
the |score_shadow − score_active| histogram, and the candidate's own latency and
score distribution. The request never waits for the candidate.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edge_runtime.telemetry import TelemetryRecorder

log = logging.getLogger("edge_runtime.shadow")


class ShadowComparator:
    def __init__(self, shadow_model: Callable[[], Any], recorder: TelemetryRecorder, *,
                 sample_rate: float = 1.0, queue_size: int = 1024, seed: int | None = None,
                 idle_exit_s: float = 30.0, batch_interval_s: float = 0.02) -> None:
        self._shadow_model = shadow_model
        self.recorder = recorder
        self.sample_rate = float(sample_rate)
        self.queue_size = max(1, int(queue_size))
        # a deque, not a queue.Queue: append/popleft are atomic and wake nobody, so the request
        # thread never hands the GIL to the worker; the worker wakes on its own every
        # ``batch_interval_s`` and works through what accumulated.
        self._items: collections.deque = collections.deque()
        self._rnd = random.Random(seed)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._idle_exit_s = idle_exit_s
        self._interval = batch_interval_s
        self._busy = False
        self.offered = 0
        self.dropped = 0
        self.compared = 0
        self.errors = 0

    # ---- request path -----------------------------------------------------------------------
    def offer(self, x: np.ndarray, active_scores: np.ndarray, active_decisions: np.ndarray, *,
              names: Sequence[str] | None = None) -> bool:
        """Maybe queue a comparison; never blocks. Returns True when queued. ``names``: the
        features of x's columns (the active model's contract order); the candidate picks its
        own by name and applies its own contract."""
        if self.sample_rate <= 0.0:
            return False
        shadow = self._shadow_model()
        if shadow is None:
            return False
        if self.sample_rate < 1.0 and self._rnd.random() >= self.sample_rate:
            return False
        self.offered += 1
        if len(self._items) >= self.queue_size:
            self.dropped += 1
            self.recorder.record_drop(shadow, len(x))
            return False
        self._items.append((shadow, x, active_scores, active_decisions, tuple(names) if names else None))
        if self._thread is None:
            self._ensure_worker()
        return True

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="shadow-compare", daemon=True)
                self._thread.start()

    # ---- worker -------------------------------------------------------------------------------
    def _run(self) -> None:
        idle = 0.0
        while not self._stop.wait(self._interval):
            if not self._items:
                idle += self._interval
                if idle >= self._idle_exit_s:
                    with self._lock:  # exit only when nothing was queued meanwhile
                        if not self._items:
                            self._thread = None
                            return
                continue
            idle = 0.0
            self._busy = True
            try:
                self._pass()
            finally:
                self._busy = False

    def _pass(self) -> None:
        """Work through what accumulated: per candidate, the first sample is scored alone and
        timed (the candidate's latency sketch), the rest in one batch (one engine call, so the
        worker holds the GIL for a few short stretches instead of one per sample)."""
        batch = []
        while self._items and len(batch) < self.queue_size:
            batch.append(self._items.popleft())
        groups: dict[tuple[int, Any], list] = {}
        for item in batch:
            groups.setdefault((id(item[0]), item[4]), []).append(item)
        for items in groups.values():
            shadow, names = items[0][0], items[0][4]
            self.compare(*items[0][:4], names=names)
            rest = items[1:]
            if rest:
                time.sleep(0)  # let a waiting request thread run first
                self.compare(shadow, np.concatenate([r[1] for r in rest]),
                             np.concatenate([np.asarray(r[2]).reshape(-1) for r in rest]),
                             np.concatenate([np.asarray(r[3]).reshape(-1) for r in rest]), timed=False,
                             names=names)

    def compare(self, shadow: Any, x: np.ndarray, active_scores: np.ndarray,
                active_decisions: np.ndarray, *, timed: bool = True,
                names: Sequence[str] | None = None) -> None:
        """Score ``x`` with ``shadow`` — through the candidate's own contract, columns picked by
        feature ``names`` — and record the comparison (also usable synchronously)."""
        n = len(x)
        t0 = time.perf_counter()
        try:
            s = shadow.score_features(x, names)
            dt = time.perf_counter() - t0
            cand = np.asarray(s.score, dtype=np.float64).reshape(-1)
            dec = np.asarray(shadow.decision(s)).reshape(-1)
        except Exception as exc:  # a broken candidate is a finding, not a crash
            self.errors += 1
            log.warning("shadow model %s failed on a sampled request: %s", getattr(shadow, "version", "?"), exc)
            self.recorder.record_shadow(shadow, n, None, scores=None, divergence=None, changed=0, error=True)
            return
        act = np.asarray(active_scores, dtype=np.float64).reshape(-1)
        changed = int(np.count_nonzero(dec != np.asarray(active_decisions).reshape(-1)))
        self.compared += n
        self.recorder.record_shadow(shadow, n, dt if timed else None, scores=cand, divergence=np.abs(cand - act),
                                    changed=changed)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued comparison is done (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while (self._items or self._busy) and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._items and not self._busy

    @property
    def backlog(self) -> int:
        return len(self._items)

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout=5)
        self._thread = None
