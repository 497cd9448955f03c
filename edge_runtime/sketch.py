"""Mergeable latency sketch (DDSketch-style, relative-error quantiles).

Values land in logarithmic buckets ``ceil(log_gamma(v))`` with
``gamma = (1 + alpha) / (1 - alpha)``; any quantile is then within a relative
error ``alpha`` of the true value, and two sketches merge *exactly* by adding
bucket counts. That is what lets the hub compute a fleet p99 from the windows
of a thousand devices instead of averaging their p99s (which is wrong).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

DEFAULT_ALPHA = 0.01
_MIN_VALUE = 1e-9


class Sketch:
    __slots__ = ("_log_gamma", "alpha", "bins", "count", "gamma", "max", "min", "sum", "zeros")

    def __init__(self, alpha: float = DEFAULT_ALPHA) -> None:
        self.alpha = alpha
        self.gamma = (1 + alpha) / (1 - alpha)
        self._log_gamma = math.log(self.gamma)
        self.bins: dict[int, int] = {}
        self.count = 0
        self.zeros = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float, n: int = 1) -> None:
        self.count += n
        self.sum += value * n
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        if value <= _MIN_VALUE:
            self.zeros += n
            return
        k = math.ceil(math.log(value) / self._log_gamma)
        self.bins[k] = self.bins.get(k, 0) + n

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            self.add(v)

    def merge(self, other: Sketch) -> Sketch:
        if abs(other.alpha - self.alpha) > 1e-12:
            raise ValueError("cannot merge sketches with different alpha")
        for k, c in other.bins.items():
            self.bins[k] = self.bins.get(k, 0) + c
        self.count += other.count
        self.zeros += other.zeros
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    def quantile(self, q: float) -> float | None:
        if self.count == 0:
            return None
        rank = q * (self.count - 1)
        if rank < self.zeros:
            return 0.0
        seen = self.zeros
        for k in sorted(self.bins):
            seen += self.bins[k]
            if seen > rank:
                value = 2 * self.gamma**k / (self.gamma + 1)
                return min(max(value, self.min), self.max)
        return self.max

    def value_at_rank(self, rank: int) -> float | None:
        """The ``rank``-th smallest sample (1-based), within the sketch's relative error ``alpha``.

        Order-statistic bounds on a quantile need a given rank, not a quantile level."""
        if self.count == 0 or not 1 <= rank <= self.count:
            return None
        if rank <= self.zeros:
            return 0.0
        seen = self.zeros
        for k in sorted(self.bins):
            seen += self.bins[k]
            if seen >= rank:
                return min(max(2 * self.gamma**k / (self.gamma + 1), self.min), self.max)
        return self.max

    def count_above(self, value: float) -> tuple[int, int]:
        """(fewest, most) samples that can be ``> value``: samples in buckets entirely above
        ``value`` certainly are; the one bucket straddling ``value`` might be."""
        if self.count == 0 or self.max <= value:
            return 0, 0
        if self.min > value:
            return self.count, self.count
        lo = hi = 0
        for k, c in self.bins.items():
            lower, upper = self.gamma ** (k - 1), self.gamma**k  # bucket k holds (lower, upper]
            if lower >= value:
                lo += c
                hi += c
            elif upper > value:
                hi += c
        if value < 0:  # zeros count as 0.0
            lo += self.zeros
            hi += self.zeros
        return lo, hi

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "count": self.count,
            "zeros": self.zeros,
            "sum": self.sum,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "bins": {str(k): c for k, c in self.bins.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sketch:
        s = cls(float(data.get("alpha", DEFAULT_ALPHA)))
        s.count = int(data.get("count", 0))
        s.zeros = int(data.get("zeros", 0))
        s.sum = float(data.get("sum", 0.0))
        s.min = data["min"] if data.get("min") is not None else math.inf
        s.max = data["max"] if data.get("max") is not None else -math.inf
        s.bins = {int(k): int(c) for k, c in data.get("bins", {}).items()}
        return s

    @classmethod
    def merged(cls, sketches: Iterable[Sketch | dict], alpha: float = DEFAULT_ALPHA) -> Sketch:
        out = cls(alpha)
        for s in sketches:
            out.merge(s if isinstance(s, Sketch) else cls.from_dict(s))
        return out


class Histogram:
    """Fixed-edge histogram (scores in [0, 1], divergences); merges by adding counts."""

    __slots__ = ("counts", "edges")

    def __init__(self, edges: list[float]) -> None:
        self.edges = list(edges)
        self.counts = [0] * (len(edges) - 1)

    @classmethod
    def unit(cls, bins: int = 20) -> Histogram:
        return cls([i / bins for i in range(bins + 1)])

    def add(self, value: float) -> None:
        e = self.edges
        if value <= e[0]:
            self.counts[0] += 1
            return
        if value >= e[-1]:
            self.counts[-1] += 1
            return
        lo, hi = 0, len(e) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if value >= e[mid]:
                lo = mid
            else:
                hi = mid
        self.counts[lo] += 1

    def merge(self, other: Histogram) -> Histogram:
        if other.edges != self.edges:
            raise ValueError("cannot merge histograms with different edges")
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"edges": self.edges, "counts": self.counts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        h = cls(list(data["edges"]))
        h.counts = [int(c) for c in data["counts"]]
        return h
