"""Fleet aggregation: merge per-slot window stats across devices.

Fleet quantiles come from *merged* latency sketches (exact merge of bucket counts),
never from an average of per-device p99s; histograms merge by adding counts.

Besides rows (``requests``/``errors``) the aggregate keeps *calls*: the rows of one call
fail together and share their inputs, so the rollout gates test calls, not rows (see
:mod:`cloud_hub.rollouts.gates`). It also keeps each device's score histogram, so the
divergence gate can measure how much devices differ from one another. A stored row that
fails :func:`cloud_hub.fleet.validate.slot_problem` (written before windows were checked at
ingest) is skipped and counted in ``rejected``, never merged and never raised; rows marked
``validated`` at ingest are not checked again (only for what the merge needs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cloud_hub.fleet.validate import slot_problem
from edge_runtime.sketch import DEFAULT_ALPHA, Histogram, Sketch


@dataclass
class SlotAggregate:
    """Statistics of one model (and slot) over a set of devices and windows."""

    requests: int = 0  # rows
    errors: int = 0  # rows of failed calls
    calls: int = 0
    errored_calls: int = 0
    uncounted_windows: int = (
        0  # windows with rows but no call counts (runtimes older than the counts)
    )
    latency: Sketch = field(default_factory=Sketch)  # seconds, one sample per call
    scores: Histogram | None = None
    device_scores: dict[str, list[int]] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    compared: int = 0
    decision_changed: int = 0
    compared_calls: int = 0
    changed_share: float = 0.0  # Σ over compared calls of the call's share of changed decisions
    divergence: Histogram | None = None
    dropped: int = 0  # shadow comparisons the devices had to drop (queue full)
    windows: int = 0
    rejected: int = 0  # stored rows skipped as impossible (see the module docstring)
    rejected_reason: str | None = None
    devices: set[str] = field(default_factory=set)

    @property
    def devices_reporting(self) -> int:
        return len(self.devices)

    @property
    def latency_samples(self) -> int:
        return self.latency.count

    @property
    def p50(self) -> float | None:
        return self.latency.quantile(0.5)

    @property
    def p99(self) -> float | None:
        return self.latency.quantile(0.99)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def call_error_rate(self) -> float | None:
        return self.errored_calls / self.calls if self.calls else None

    @property
    def decision_change_rate(self) -> float | None:
        return self.decision_changed / self.compared if self.compared else None

    def add_row(self, row: Mapping[str, Any]) -> None:
        """Fold one ``fleet_slot_stats`` row (or a SlotStats dict) in; an impossible row is counted
        in ``rejected`` and skipped. A row the ingest validated (``validated`` true) gets only the
        checks the merge itself needs (sketch alpha, histogram edges): the full check of
        :func:`~cloud_hub.fleet.validate.slot_problem` already passed before it was stored, and
        re-running it on every read was most of a controller tick."""
        try:
            problem = (
                None if row.get("validated") else slot_problem(row, hub_edges=False)
            ) or self._merge_problem(row)
        except (AttributeError, TypeError, ValueError) as exc:  # not even the expected types
            problem = f"unreadable row ({type(exc).__name__}: {exc})"
        if problem is not None:
            self.rejected += 1
            self.rejected_reason = (
                f"{row.get('device_id') or '?'} window {row.get('seq')}: {problem}"
            )
            return
        requests = int(row.get("requests") or 0)
        calls = int(row.get("calls") or 0)
        self.requests += requests
        self.errors += int(row.get("errors") or 0)
        self.calls += calls
        self.errored_calls += int(row.get("errored_calls") or 0)
        if requests and not calls:
            self.uncounted_windows += 1
        lat = row.get("latency") or {}
        if lat.get("count"):
            _merge_sketch(self.latency, lat)
        self.scores = _merge_hist(self.scores, row.get("scores"))
        dev = str(row["device_id"]) if row.get("device_id") else None
        sc = row.get("scores") or {}
        if dev is not None and sc.get("counts") and sum(sc["counts"]):
            old = self.device_scores.get(dev)
            counts = [int(c) for c in sc["counts"]]
            self.device_scores[dev] = (
                counts if old is None else [a + b for a, b in zip(old, counts)]
            )
        for k, v in (row.get("decisions") or {}).items():
            self.decisions[str(k)] = self.decisions.get(str(k), 0) + int(v)
        self.compared += int(row.get("compared") or 0)
        self.decision_changed += int(row.get("decision_changed") or 0)
        self.compared_calls += int(row.get("compared_calls") or 0)
        self.changed_share += float(row.get("changed_share") or 0.0)
        self.divergence = _merge_hist(self.divergence, row.get("divergence"))
        self.dropped += int(row.get("dropped") or 0)
        self.windows += 1
        if dev is not None:
            self.devices.add(dev)

    def _merge_problem(self, row: Mapping[str, Any]) -> str | None:
        alpha = (row.get("latency") or {}).get("alpha", self.latency.alpha)
        if abs(float(alpha) - self.latency.alpha) > 1e-12:
            return f"latency sketch alpha {alpha!r} differs from the aggregate's {self.latency.alpha} (cannot merge)"
        for name, mine in (("scores", self.scores), ("divergence", self.divergence)):
            theirs = (row.get(name) or {}).get("edges")
            if mine is not None and theirs and list(theirs) != mine.edges:
                return f"{name} histogram edges differ from the other windows' (cannot merge)"
        return None

    def to_dict(self) -> dict[str, Any]:
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000.0, 4)

        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "calls": self.calls,
            "errored_calls": self.errored_calls,
            "call_error_rate": self.call_error_rate,
            "uncounted_windows": self.uncounted_windows,
            "latency_samples": self.latency_samples,
            "p50_ms": ms(self.p50),
            "p99_ms": ms(self.p99),
            "mean_ms": ms(self.latency.mean),
            "latency": self.latency.to_dict(),
            "scores": self.scores.to_dict() if self.scores else None,
            "decisions": dict(self.decisions),
            "compared": self.compared,
            "decision_changed": self.decision_changed,
            "decision_change_rate": self.decision_change_rate,
            "compared_calls": self.compared_calls,
            "changed_share": self.changed_share,
            "divergence": self.divergence.to_dict() if self.divergence else None,
            "dropped": self.dropped,
            "windows": self.windows,
            "rejected": self.rejected,
            "rejected_reason": self.rejected_reason,
            "devices_reporting": self.devices_reporting,
        }


def _merge_sketch(acc: Sketch, data: Mapping[str, Any]) -> None:
    """``acc.merge(Sketch.from_dict(data))`` without building the intermediate sketch (the same
    conversions, checks and additions in the same order; a tick folds in one per stored row)."""
    alpha = float(data.get("alpha", DEFAULT_ALPHA))
    count, zeros, total = int(data.get("count", 0)), int(data.get("zeros", 0)), float(data.get("sum", 0.0))
    lo = data["min"] if data.get("min") is not None else math.inf
    hi = data["max"] if data.get("max") is not None else -math.inf
    bins = {int(k): int(c) for k, c in data.get("bins", {}).items()}
    if abs(alpha - acc.alpha) > 1e-12:
        raise ValueError("cannot merge sketches with different alpha")
    mine = acc.bins
    for k, c in bins.items():
        mine[k] = mine.get(k, 0) + c
    acc.count += count
    acc.zeros += zeros
    acc.sum += total
    acc.min = min(acc.min, lo)
    acc.max = max(acc.max, hi)


def _merge_hist(acc: Histogram | None, data: Mapping[str, Any] | None) -> Histogram | None:
    if not data or not data.get("edges"):
        return acc
    if acc is None:
        return Histogram.from_dict(dict(data))
    counts = [int(c) for c in data["counts"]]
    if list(data["edges"]) != acc.edges:
        raise ValueError("cannot merge histograms with different edges")  # add_row refused these
    acc.counts = [a + b for a, b in zip(acc.counts, counts)]
    return acc


def aggregate(rows: Iterable[Mapping[str, Any]]) -> SlotAggregate:
    agg = SlotAggregate()
    for r in rows:
        agg.add_row(r)
    return agg
