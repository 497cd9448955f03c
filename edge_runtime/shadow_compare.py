"""On-device shadow comparison, off the request path.

The active path only calls :meth:`ShadowComparator.offer`: a sampling draw and a
non-blocking ``put`` on a bounded queue (a full queue drops the item and counts
the drop). A worker thread scores the sampled inputs with the shadow slot's model
and records, per candidate bundle: compared rows, rows whose decision changed,
the |score_shadow − score_active| histogram, and the candidate's own latency and
score distribution. The request never waits for the candidate.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from typing import Any, Callable

import numpy as np

from edge_runtime.telemetry import TelemetryRecorder

log = logging.getLogger("edge_runtime.shadow")


class ShadowComparator:
    def __init__(self, shadow_model: Callable[[], Any], recorder: TelemetryRecorder, *,
                 sample_rate: float = 1.0, queue_size: int = 1024, seed: int | None = None,
                 idle_exit_s: float = 30.0) -> None:
        self._shadow_model = shadow_model
        self.recorder = recorder
        self.sample_rate = float(sample_rate)
        self._q: queue.Queue = queue.Queue(maxsize=max(1, int(queue_size)))
        self._rnd = random.Random(seed)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._idle_exit_s = idle_exit_s
        self.offered = 0
        self.dropped = 0
        self.compared = 0
        self.errors = 0

    # ---- request path -----------------------------------------------------------------------
    def offer(self, x: np.ndarray, active_scores: np.ndarray, active_decisions: np.ndarray) -> bool:
        """Maybe queue a comparison; never blocks. Returns True when queued."""
        shadow = self._shadow_model()
        if shadow is None or self.sample_rate <= 0.0:
            return False
        if self.sample_rate < 1.0 and self._rnd.random() >= self.sample_rate:
            return False
        self.offered += 1
        try:
            self._q.put_nowait((shadow, x, active_scores, active_decisions))
        except queue.Full:
            self.dropped += 1
            self.recorder.record_drop(shadow, len(x))
            return False
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
        while not self._stop.is_set():
            try:
                item = self._q.get(timeout=min(self._idle_exit_s, 0.5))
            except queue.Empty:
                if self._idle_ok():
                    with self._lock:  # exit only when nothing was queued meanwhile
                        if self._q.empty():
                            self._thread = None
                            return
                continue
            try:
                self.compare(*item)
            finally:
                self._q.task_done()

    def _idle_ok(self) -> bool:
        self._idle = getattr(self, "_idle", 0.0) + 0.5
        if self._idle >= self._idle_exit_s:
            self._idle = 0.0
            return True
        return False

    def compare(self, shadow: Any, x: np.ndarray, active_scores: np.ndarray,
                active_decisions: np.ndarray) -> None:
        """Score ``x`` with ``shadow`` and record the comparison (also usable synchronously)."""
        self._idle = 0.0
        n = len(x)
        t0 = time.perf_counter()
        try:
            s = shadow.score_array(x)
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
        self.recorder.record_shadow(shadow, n, dt, scores=cand, divergence=np.abs(cand - act), changed=changed)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued comparison is done (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._q.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._q.unfinished_tasks == 0

    @property
    def backlog(self) -> int:
        return self._q.qsize()

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout=5)
