"""Segment specs: which request fields a comparison record is grouped by in the report.

* ``"field"`` — the row's value of ``field`` (feature or any extra field);
* ``"field:e1,e2,…"`` — a numeric feature cut at ascending edges: ``"<e1"``, ``"e1-e2"``, …, ``">=ek"``;
* ``"tag:NAME"`` — the request's tag ``NAME`` (``tags`` passed by the predict route).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_runtime.errors import ValidationError


@dataclass(frozen=True)
class SegmentSpec:
    key: str  # label in records and reports
    field: str
    tag: bool = False
    edges: tuple[float, ...] = ()

    def value(self, row: Mapping[str, Any], tags: Mapping[str, Any] | None) -> str | None:
        v = (tags or {}).get(self.field) if self.tag else row.get(self.field)
        if v is None:
            return None
        if self.edges:
            try:
                x = float(v)
            except (TypeError, ValueError):
                return None
            if math.isnan(x):
                return "nan"
            i = bisect.bisect_right(self.edges, x)
            if i == 0:
                return f"<{self.edges[0]:g}"
            if i == len(self.edges):
                return f">={self.edges[-1]:g}"
            return f"{self.edges[i - 1]:g}-{self.edges[i]:g}"
        return str(v)[:100]


def parse_segment(spec: str, field: str = "segments") -> SegmentSpec:
    if not isinstance(spec, str) or not spec.strip():
        raise ValidationError("segment spec must be a non-empty string", field=field)
    spec = spec.strip()
    if spec.startswith("tag:"):
        name = spec[4:]
        if not name:
            raise ValidationError(f"segment {spec!r}: tag name missing", field=field)
        return SegmentSpec(spec, name, tag=True)
    name, sep, rest = spec.partition(":")
    if not sep:
        return SegmentSpec(spec, name)
    try:
        edges = tuple(float(e) for e in rest.split(","))
    except ValueError as exc:
        raise ValidationError(f"segment {spec!r}: edges must be numbers separated by commas", field=field) from exc
    if not edges or any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValidationError(f"segment {spec!r}: edges must be strictly ascending", field=field)
    return SegmentSpec(spec, name, edges=edges)


def segment_values(specs: list[SegmentSpec], row: Mapping[str, Any],
                   tags: Mapping[str, Any] | None) -> dict[str, str]:
    out = {}
    for s in specs:
        v = s.value(row, tags)
        if v is not None:
            out[s.key] = v
    return out
