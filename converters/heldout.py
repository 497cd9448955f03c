"""Held-out-like rows for the parity gates: rows a converted model never saw.

Comparing a conversion only on its own sample rows hides what matters on a
device: a tree split that a float32 threshold moves, a missing value routed the
other way, a category that was not in the sample. The gates therefore also run
synthetic rows where each feature is resampled on its own, within the sample's
range:

- half of the values are sample values (split thresholds sit right between
  them, so this is where float32 rounding bites), half uniform between the
  sample's min and max (integers stay integers, booleans 0/1);
- a missing value (NaN) in 10 % of the cells of every feature whose contract
  allows NaN;
- for text features, the sample's categories plus one unseen category where
  the model accepts one (``unknown: allow``).

The sample's per-feature profile (a few dozen quantile values, the range, the
NaN flag, the categories) is recorded in ``provenance.sample_profile`` so the
format converters (quantize, TFLite, Core ML) draw the same kind of rows from
the bundle alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

UNSEEN = "__unseen_category__"  # the text an unseen category (code -1) reaches the model as
PROFILE_VALUES = 65  # quantile values kept per numeric feature in the manifest
NAN_RATE = 0.1


@dataclass
class Column:
    """What the generator needs to know about one feature (text: category codes)."""

    name: str
    kind: str  # float | int | bool | string
    values: np.ndarray  # observed non-missing values (all of them, or quantiles); text: codes
    nan: bool  # missing values allowed / seen
    unseen: bool = False  # text: an unseen category (code -1) is a valid input

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "nan": self.nan}
        v = np.sort(self.values.astype(np.float64))
        if self.kind == "string":
            d["values"] = [float(x) for x in np.unique(v)]
            d["unseen"] = self.unseen
        elif len(v):
            idx = np.unique(np.linspace(0, len(v) - 1, PROFILE_VALUES).round().astype(int))
            d["values"] = [float(x) for x in v[idx]]
        return d

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> Column:
        vals = np.asarray(d.get("values", []), dtype=np.float64)
        return cls(name, str(d.get("kind", "float")), vals, bool(d.get("nan", False)),
                   bool(d.get("unseen", False)))


def kind_of(dtype: str) -> str:
    if dtype == "bool":
        return "bool"
    if dtype in ("int64", "int32"):
        return "int"
    if dtype == "string":
        return "string"
    return "float"


def columns_of(x: np.ndarray, names: list[str], dtypes: dict[str, str],
               unseen: dict[str, bool] | None = None) -> list[Column]:
    """Columns from a sample matrix (float64 with NaN; text features hold category codes)."""
    cols = []
    for j, n in enumerate(names):
        c = x[:, j].astype(np.float64)
        ok = ~np.isnan(c)
        cols.append(Column(n, kind_of(dtypes.get(n, "float32")), c[ok], bool((~ok).any()),
                           bool((unseen or {}).get(n, False))))
    return cols


def profile(x: np.ndarray, names: list[str], dtypes: dict[str, str],
            unseen: dict[str, bool] | None = None) -> dict[str, Any]:
    """``provenance.sample_profile``: per feature kind, NaN flag, quantile values / codes."""
    return {c.name: c.to_json() for c in columns_of(x, names, dtypes, unseen)}


def columns_from_profile(prof: dict[str, Any], names: list[str]) -> list[Column] | None:
    if not isinstance(prof, dict) or any(n not in prof for n in names):
        return None
    return [Column.from_json(n, prof[n]) for n in names]


def find_profile(provenance: dict[str, Any]) -> dict[str, Any] | None:
    """The sample profile of a bundle or of the bundle it was converted from."""
    p: Any = provenance
    for _ in range(8):
        if not isinstance(p, dict):
            return None
        if isinstance(p.get("sample_profile"), dict):
            return p["sample_profile"]
        src = p.get("source")
        p = src.get("provenance") if isinstance(src, dict) else None
    return None


def rows(cols: list[Column], n: int, seed: int = 0) -> np.ndarray:
    """``n`` held-out-like rows as a float64 matrix (text: category codes, -1 = unseen)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, len(cols)), dtype=np.float64)
    for j, c in enumerate(cols):
        v = c.values.astype(np.float64)
        if c.kind == "string":
            pool = np.unique(v)
            if c.unseen or not len(pool):
                pool = np.append(pool, -1.0)
            col = pool[rng.integers(0, len(pool), n)]
        elif not len(v):
            col = np.full(n, np.nan if c.nan else 0.0)
        else:
            lo, hi = float(v.min()), float(v.max())
            pick = v[rng.integers(0, len(v), n)]
            if c.kind == "bool":
                uni = rng.integers(0, 2, n).astype(np.float64)
            elif c.kind == "int":
                uni = rng.integers(int(np.floor(lo)), int(np.floor(hi)) + 1, n).astype(np.float64)
            else:
                uni = rng.uniform(lo, hi, n)
            col = np.where(rng.random(n) < 0.5, pick, uni)
            col = col.astype(np.float32).astype(np.float64)  # the contract feeds float32
        if c.nan:
            col[rng.random(n) < NAN_RATE] = np.nan
        out[:, j] = col
    return out
