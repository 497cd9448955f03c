"""Fleet aggregation: merge per-slot window stats across devices.

Fleet quantiles come from *merged* latency sketches (exact merge of bucket counts),
never from an average of per-device p99s; histograms merge by adding counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.sketch import Histogram, Sketch


@dataclass
class SlotAggregate:
    """Statistics of one model (and slot) over a set of devices and windows."""

    requests: int = 0
    errors: int = 0
    latency: Sketch = field(default_factory=Sketch)  # seconds
    scores: Histogram | None = None
    decisions: dict[str, int] = field(default_factory=dict)
    compared: int = 0
    decision_changed: int = 0
    divergence: Histogram | None = None
    dropped: int = 0  # shadow comparisons the devices had to drop (queue full)
    windows: int = 0
    devices: set[str] = field(default_factory=set)

    @property
    def devices_reporting(self) -> int:
        return len(self.devices)

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
    def decision_change_rate(self) -> float | None:
        return self.decision_changed / self.compared if self.compared else None

    def add_row(self, row: Mapping[str, Any]) -> None:
        """Fold one ``fleet_slot_stats`` row (or a SlotStats dict) in."""
        self.requests += int(row.get("requests") or 0)
        self.errors += int(row.get("errors") or 0)
        lat = row.get("latency") or {}
        if lat.get("count"):
            self.latency.merge(Sketch.from_dict(lat))
        self.scores = _merge_hist(self.scores, row.get("scores"))
        for k, v in (row.get("decisions") or {}).items():
            self.decisions[str(k)] = self.decisions.get(str(k), 0) + int(v)
        self.compared += int(row.get("compared") or 0)
        self.decision_changed += int(row.get("decision_changed") or 0)
        self.divergence = _merge_hist(self.divergence, row.get("divergence"))
        self.dropped += int(row.get("dropped") or 0)
        self.windows += 1
        if row.get("device_id"):
            self.devices.add(str(row["device_id"]))

    def to_dict(self) -> dict[str, Any]:
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000.0, 4)

        return {
            "requests": self.requests, "errors": self.errors, "error_rate": self.error_rate,
            "p50_ms": ms(self.p50), "p99_ms": ms(self.p99), "mean_ms": ms(self.latency.mean),
            "latency": self.latency.to_dict(),
            "scores": self.scores.to_dict() if self.scores else None,
            "decisions": dict(self.decisions), "compared": self.compared,
            "decision_changed": self.decision_changed, "decision_change_rate": self.decision_change_rate,
            "divergence": self.divergence.to_dict() if self.divergence else None,
            "dropped": self.dropped, "windows": self.windows,
            "devices_reporting": self.devices_reporting,
        }


def _merge_hist(acc: Histogram | None, data: Mapping[str, Any] | None) -> Histogram | None:
    if not data or not data.get("edges"):
        return acc
    h = Histogram.from_dict(dict(data))
    if acc is None:
        return h
    if acc.edges != h.edges:  # different binning (other runtime version): keep the first
        return acc
    return acc.merge(h)


def aggregate(rows: Iterable[Mapping[str, Any]]) -> SlotAggregate:
    agg = SlotAggregate()
    for r in rows:
        agg.add_row(r)
    return agg
