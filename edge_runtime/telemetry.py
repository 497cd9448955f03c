"""Telemetry windows: per bundle and slot, what the device's models did in the last N seconds.

The hot path (:meth:`TelemetryRecorder.record`) only adds to in-memory
accumulators under a lock; :meth:`TelemetryRecorder.roll` closes the window,
stamps resources (RSS, CPU) and hands the window to the outbox, which gives it
its per-device sequence number.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_runtime.protocol import SlotStats, TelemetryWindow
from edge_runtime.sketch import Histogram, Sketch

SCORE_BINS = 20
CLOCK_JUMP_S = 1.0  # wall vs monotonic disagreement over one window that counts as a jump
DIVERGENCE_EDGES = [0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]


def score_histogram() -> Histogram:
    return Histogram.unit(SCORE_BINS)


def divergence_histogram() -> Histogram:
    return Histogram(list(DIVERGENCE_EDGES))


def add_many(hist: Histogram, values: np.ndarray) -> None:
    """Vectorised Histogram.add (same bin rule: left-closed, outer values clamp)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return
    if v.size == 1:
        hist.add(float(v[0]))
        return
    edges = np.asarray(hist.edges)
    idx = np.searchsorted(edges, v, side="right") - 1
    idx = np.clip(idx, 0, len(hist.counts) - 1)
    for i, c in zip(*np.unique(idx, return_counts=True)):
        hist.counts[int(i)] += int(c)


class SlotAccumulator:
    __slots__ = (
        "calls",
        "changed_share",
        "compared",
        "compared_calls",
        "decision_changed",
        "decisions",
        "divergence",
        "dropped",
        "errored_calls",
        "errors",
        "latency",
        "name",
        "requests",
        "scores",
        "sha256",
        "slot",
        "version",
    )

    def __init__(self, slot: str, name: str, version: str, sha256: str) -> None:
        self.slot, self.name, self.version, self.sha256 = slot, name, version, sha256
        self.requests = 0
        self.errors = 0
        self.calls = 0
        self.errored_calls = 0
        self.latency = Sketch()
        self.scores = score_histogram()
        self.decisions: dict[str, int] = {}
        self.compared = 0
        self.decision_changed = 0
        self.compared_calls = 0
        self.changed_share = 0.0
        self.divergence = divergence_histogram()
        self.dropped = 0

    def add_decisions(self, decisions: np.ndarray | None) -> None:
        if decisions is None:
            return
        vals, counts = np.unique(np.asarray(decisions).reshape(-1), return_counts=True)
        for v, c in zip(vals.tolist(), counts.tolist()):
            self.decisions[str(v)] = self.decisions.get(str(v), 0) + int(c)

    def to_stats(self) -> SlotStats:
        return SlotStats(slot=self.slot, name=self.name, version=self.version, sha256=self.sha256,
                         requests=self.requests, errors=self.errors, calls=self.calls,
                         errored_calls=self.errored_calls, latency=self.latency.to_dict(),
                         scores=self.scores.to_dict(), decisions=dict(self.decisions),
                         compared=self.compared, decision_changed=self.decision_changed,
                         compared_calls=self.compared_calls, changed_share=self.changed_share,
                         divergence=self.divergence.to_dict() if self.compared else {},
                         dropped=self.dropped)


class TelemetryRecorder:
    """Thread-safe accumulators of the current window, keyed by (slot, bundle sha256)."""

    def __init__(self, device_id: str, *, resources: bool = True,
                 wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.device_id = device_id
        self._lock = threading.Lock()
        self._acc: dict[tuple[str, str], SlotAccumulator] = {}
        self._wall, self._mono = wall, mono  # injectable clocks (tests fake a clock jump)
        self._start = wall()
        self._start_mono = mono()
        self._resources = resources
        self._proc = None
        if resources:
            import psutil

            self._proc = psutil.Process()
            self._proc.cpu_percent(None)

    def _get(self, slot: str, model: Any) -> SlotAccumulator:
        key = (slot, model.digest)
        acc = self._acc.get(key)
        if acc is None:
            acc = self._acc[key] = SlotAccumulator(slot, model.name, model.version, model.digest)
        return acc

    def record(self, slot: str, model: Any, rows: int, latency_s: float, scores: np.ndarray | None = None,
               decisions: np.ndarray | None = None, error: bool = False) -> None:
        """One predict call of ``rows`` rows that took ``latency_s`` (one latency sample per call)."""
        with self._lock:
            acc = self._get(slot, model)
            acc.requests += rows
            acc.calls += 1
            if error:
                acc.errors += rows
                acc.errored_calls += 1
            acc.latency.add(latency_s)
            if scores is not None:
                add_many(acc.scores, scores)
            acc.add_decisions(decisions)

    def record_shadow(self, model: Any, rows: int, latency_s: float | None, *, scores: np.ndarray | None,
                      divergence: np.ndarray | None, changed: int, error: bool = False) -> None:
        """A shadow comparison of ``rows`` rows scored by the candidate ``model``."""
        with self._lock:
            acc = self._get("shadow", model)
            acc.requests += rows
            acc.calls += 1
            if error:
                acc.errors += rows
                acc.errored_calls += 1
                return
            if latency_s is not None:
                acc.latency.add(latency_s)
            if scores is not None:
                add_many(acc.scores, scores)
            acc.compared += rows
            acc.decision_changed += int(changed)
            if rows > 0:
                acc.compared_calls += 1
                acc.changed_share += min(1.0, int(changed) / rows)
            if divergence is not None:
                add_many(acc.divergence, divergence)

    def record_drop(self, model: Any, n: int = 1) -> None:
        with self._lock:
            self._get("shadow", model).dropped += n

    def snapshot(self) -> dict[tuple[str, str], SlotStats]:
        with self._lock:
            return {k: a.to_stats() for k, a in self._acc.items()}

    def roll(self, seq: int, dropped_windows: int = 0, now: float | None = None) -> TelemetryWindow:
        """Close the current window (numbered ``seq``) and start a new one."""
        jump = None
        with self._lock:
            acc, self._acc = self._acc, {}
            if now is None:
                # the span comes from the monotonic clock, so end >= start whatever the wall
                # clock did; the wall clock only labels the end, and a disagreement between
                # the two is a jump, marked in the window
                mono, wall = self._mono(), self._wall()
                span = max(0.0, mono - self._start_mono)
                drift = wall - (self._start + span)
                if abs(drift) > CLOCK_JUMP_S:
                    jump = round(drift, 3)
                now, start = wall, wall - span
                self._start_mono = mono
            else:  # the caller drives time (simulator): its clock, as given
                start = self._start
                self._start_mono = self._mono()
            self._start = now
        rss, cpu = 0, 0.0
        if self._proc is not None:
            try:
                rss = int(self._proc.memory_info().rss)
                cpu = float(self._proc.cpu_percent(None))
            except Exception:  # psutil can fail in odd containers; telemetry must not
                pass
        return TelemetryWindow(device_id=self.device_id, seq=seq, start=start, end=now,
                               slots=[a.to_stats() for a in acc.values()], rss_bytes=rss, cpu_percent=cpu,
                               dropped_windows=dropped_windows, clock_jump_s=jump)
