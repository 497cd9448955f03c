"""The input contract of a feature bundle: one vectorised check for every path.

Every transport decodes its payload into a float matrix in the contract's
feature order (JSON rows here, OIP tensors in ``cloud_hub/api/oip.py``, Arrow
columns in ``cloud_hub/batch/scoring.py``) and then asks :class:`FeatureContract`
which rows break the contract. The same value gets the same :class:`Refusal`
(``code``, feature, reason) on every path, so ``/v1``, OIP, batch, stream, the
device's local API and ``Model.predict`` agree on what they refuse and why.

What the contract checks, per feature (in the manifest's order):

* the value's type (:class:`FeatureKind`, chosen by the feature's ``dtype``):
  numbers for number features, ``true``/``false`` (or 0/1) for ``bool`` features;
* ``nan: reject`` (the default) refuses null/NaN and every non-finite value:
  ±inf and numbers too large for the engine's dtype (``1e39`` is inf in float32);
  ``nan: allow`` lets them through (the model handles missing values);
* the declared ``min``/``max`` range;
* an integer engine input takes whole numbers only.

Within a row the first feature (contract order) with a problem is reported; a
row that is not an object, lacks features or has unknown ones is refused as a
whole (``whole_row``). A request path refuses the whole request with the first
bad row; batch and stream refuse only the bad rows and score the others.

Extension point: a new feature dtype (e.g. a text category) is a
:class:`FeatureKind` subclass registered in :data:`KINDS` under the manifest's
dtype name; it turns JSON values (:meth:`FeatureKind.from_value`) and numpy
columns (:meth:`FeatureKind.refused_in`) into the float matrix the engine takes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from edge_runtime.errors import ValidationError
from edge_runtime.manifest import Inputs

_NUM_TYPES = frozenset({int, float, type(None)})
_SMALL = 64  # values; below it the range screen is a Python pass (numpy call overhead dominates)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why row ``row`` breaks the contract; ``feature`` is None when the row is not an object."""

    row: int
    feature: str | None
    reason: str
    whole_row: bool = False  # structure (missing/unknown features), not one value

    @property
    def code(self) -> str:
        return ValidationError.code

    @property
    def field(self) -> str:
        """Field path in a request: ``rows[3].tenure`` (``rows[3]`` for a row that is not an object)."""
        return f"rows[{self.row}]" if self.feature is None else f"rows[{self.row}].{self.feature}"

    @property
    def message(self) -> str:
        where = f"rows[{self.row}]" if self.whole_row or self.feature is None else self.field
        return f"{where}: {self.reason}"

    @property
    def row_reason(self) -> str:
        """The reason for a per-row record (a batch reject, a stream dead letter): the row is
        named by the record, the feature by ``field``."""
        if self.whole_row or self.feature is None:
            return self.reason
        return f"{self.feature}: {self.reason}"

    def error(self) -> ValidationError:
        return ValidationError(self.message, field=self.field)


class Refused(ValueError):
    """Raised by :meth:`FeatureKind.from_value` with the reason a value is not accepted."""


# ---- feature kinds (the per-dtype part of the contract) ----------------------------------------
class FeatureKind:
    """Numbers: JSON/Python ints and floats, null → NaN; booleans and text are refused."""

    name = "number"
    plain = True  # JSON numbers need no per-value decoding (the fast paths apply)

    def from_value(self, v: Any) -> float:
        t = type(v)
        if t is float or t is int:
            return _as_float(v)
        if v is None:
            return math.nan
        if isinstance(v, (np.floating, np.integer)) and not isinstance(v, np.bool_):
            return float(v)
        raise Refused(f"expected a number, got {_type_name(v)}")

    def refused_in(self, a: np.ndarray) -> tuple[np.ndarray | None, str]:
        """A numpy column → (mask of refused values or None, reason); numbers pass."""
        if a.dtype.kind == "b":
            return np.ones(a.shape, dtype=bool), "expected a number, got bool"
        if a.dtype.kind in "fiu":
            return None, ""
        return np.ones(a.shape, dtype=bool), f"expected a number, got {a.dtype.name}"


class BoolKind(FeatureKind):
    """``true``/``false`` (JSON, numpy/Arrow bool) or the numbers 0 and 1; null → NaN."""

    name = "bool"
    plain = False

    def from_value(self, v: Any) -> float:
        if v is True or v is False or isinstance(v, np.bool_):
            return 1.0 if v else 0.0
        if v is None:
            return math.nan
        t = type(v)
        if (t is int or t is float or isinstance(v, (np.integer, np.floating))) and v in (0, 1):
            return float(v)
        shown = f"{v!r}" if t in (int, float, str) else _type_name(v)
        raise Refused(f"expected true or false, got {shown[:40]}")

    def refused_in(self, a: np.ndarray) -> tuple[np.ndarray | None, str]:
        if a.dtype.kind == "b":
            return None, ""
        if a.dtype.kind in "fiu":
            with np.errstate(invalid="ignore"):
                bad = ~((a == 0) | (a == 1) | np.isnan(a) if a.dtype.kind == "f" else (a == 0) | (a == 1))
            return (bad if bad.any() else None), "expected true or false (or 0/1)"
        return np.ones(a.shape, dtype=bool), f"expected true or false, got {a.dtype.name}"


class CategoryKind(FeatureKind):
    """A text category (``dtype: string``): the engine gets its index in the manifest's
    ``categories`` (the exported graph maps it back to the text the model was trained on);
    an unseen category is -1 where ``unknown: allow`` (the model's own handle_unknown), else
    refused; null → NaN (refused unless ``nan: allow``). Added by issue 12 (converters)."""

    name = "string"
    plain = False

    def __init__(self, categories: Sequence[str], unknown: str | None) -> None:
        self.categories = list(categories)
        self.codes = {c: float(i) for i, c in enumerate(self.categories)}
        self.allow_unknown = unknown == "allow"

    def from_value(self, v: Any) -> float:
        if type(v) is str or isinstance(v, np.str_):
            code = self.codes.get(str(v))
            if code is not None:
                return code
            if self.allow_unknown:
                return -1.0
            shown = ", ".join(self.categories[:8]) + (" …" if len(self.categories) > 8 else "")
            raise Refused(f"unknown category {str(v)[:40]!r} (the model knows: {shown})")
        if v is None:
            return math.nan
        raise Refused(f"expected text (one of the categories), got {_type_name(v)}")

    def refused_in(self, a: np.ndarray) -> tuple[np.ndarray | None, str]:
        """A decoded column holds codes: whole numbers in [-1, n) (-1 only where unknown is
        allowed), NaN for a missing value."""
        if a.dtype.kind not in "fiu":
            return np.ones(a.shape, dtype=bool), "expected text codes; decode with decode_column"
        lo = -1 if self.allow_unknown else 0
        with np.errstate(invalid="ignore"):
            bad = ~(((a >= lo) & (a < len(self.categories)) & (a == np.floor(a)))
                    | (np.isnan(a) if a.dtype.kind == "f" else False))
        return (bad if bad.any() else None), "not a known category"

    def decode_column(self, a: Any) -> tuple[np.ndarray, dict[int, str]]:
        """Text values (numpy/Arrow/list) → float codes and {row: reason} for refused values."""
        vals = a.to_pylist() if hasattr(a, "to_pylist") else list(a)
        out = np.full(len(vals), np.nan)
        bad: dict[int, str] = {}
        for i, v in enumerate(vals):
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            try:
                out[i] = self.from_value(v)
            except Refused as exc:
                bad[i] = str(exc)
        return out, bad


#: Feature dtype (manifest ``inputs.features[].dtype``) → how its values are decoded.
KINDS: dict[str, FeatureKind] = {"float32": FeatureKind(), "float64": FeatureKind(), "int64": FeatureKind(),
                                 "int32": FeatureKind(), "bool": BoolKind()}


def kind_of(feature: Any) -> FeatureKind:
    """The kind of one manifest feature (text categories carry their own category list)."""
    if feature.dtype == "string":
        return CategoryKind(feature.categories or [], feature.unknown)
    return KINDS[feature.dtype]


def _as_float(v: float) -> float:
    try:
        return float(v)
    except OverflowError:  # an int beyond float64: a very large number
        return math.inf if v > 0 else -math.inf


def _type_name(v: Any) -> str:
    return {str: "str", bool: "bool", dict: "object", list: "array"}.get(type(v), type(v).__name__)


# ---- the contract ----------------------------------------------------------------------------
class FeatureContract:
    """The checks of one bundle's named features, for a model whose input has ``dtype``."""

    def __init__(self, inputs: Inputs, dtype: str = "float32") -> None:
        feats = inputs.features
        self.names = [f.name for f in feats]
        self.n = len(self.names)
        self.dtype = np.dtype(dtype)
        self.kinds = [kind_of(f) for f in feats]
        self.index = {name: j for j, name in enumerate(self.names)}
        self.mins = np.array([-np.inf if f.min is None else f.min for f in feats], dtype=np.float64)
        self.maxs = np.array([np.inf if f.max is None else f.max for f in feats], dtype=np.float64)
        self.has_range = bool(np.isfinite(self.mins).any() or np.isfinite(self.maxs).any())
        self.reject_nan = np.array([f.nan == "reject" for f in feats])
        self.any_reject_nan = bool(self.reject_nan.any())
        # "reject" refuses every non-finite value, and numbers the engine's dtype cannot hold
        if self.dtype.kind == "f":
            self._fmax = float(np.finfo(self.dtype).max)
        elif self.dtype.kind in "iu":
            self._fmax = float(np.iinfo(self.dtype).max)
        else:
            self._fmax = math.inf
        self._int_input = self.dtype.kind in "iub"
        self._special = [j for j, k in enumerate(self.kinds) if not k.plain]  # checked per column
        self.plain = not self._special
        # no per-feature bounds, kinds or integer input: a matrix passes when its min and max do
        self._screen = not (self.has_range or self._special or self._int_input)
        self._name_set = frozenset(self.names)
        self._getter = itemgetter(*self.names)
        self._min_list = self.mins.tolist()
        self._max_list = self.maxs.tolist()

    # ---- JSON rows ---------------------------------------------------------------------------
    def encode(self, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Rows (a dict or a list of dicts) → (n, n_features) array of the engine's dtype, or
        the first row's :class:`Refusal` as a :class:`ValidationError`."""
        if type(rows) is dict:
            x = self._encode_one(rows)
            if x is not None:
                return x
        rows = self._row_list(rows)
        x, refusals = self.decode_rows(rows)
        first = self.first_refusal(x, refusals)
        if first is not None:
            raise first.error()
        return self.cast(x)

    def encode_valid(self, rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, list[int], dict[int, Refusal]]:
        """Rows → (matrix of the valid rows, their indices, refusals of the others): for paths
        that score what they can (stream)."""
        x, refusals = self.decode_rows(rows)
        refusals = self.refusals(x, refusals)
        if not refusals:
            return self.cast(x), list(range(len(rows))), {}
        keep = [i for i in range(len(rows)) if i not in refusals]
        return self.cast(x[keep]), keep, refusals

    @staticmethod
    def _row_list(rows: Any) -> Sequence[Any]:
        if isinstance(rows, Mapping):
            return (rows,)
        if not isinstance(rows, (list, tuple)):
            raise ValidationError("rows must be an object or a list of objects", field="rows")
        if not rows:
            raise ValidationError("rows is empty: send at least one row", field="rows")
        return rows

    def decode_rows(self, rows: Sequence[Any]) -> tuple[np.ndarray, dict[int, Refusal]]:
        """JSON rows → float64 (n, k) matrix (NaN where a value could not be decoded) and the
        refusals found while decoding (structure, types). Value checks: :meth:`refusals`."""
        if self.plain:
            try:
                values = [self._getter(row) for row in rows]  # itemgetter: the lookups run in C
                if self.n == 1:
                    values = [(v,) for v in values]
                types = set(map(type, chain.from_iterable(values)))
                if set(map(len, rows)) == {self.n} and types <= _NUM_TYPES:
                    if type(None) in types:  # null → NaN (refused later where the policy says so)
                        return np.array(values, dtype=np.float64), {}
                    return np.fromiter(chain.from_iterable(values), np.float64,
                                       len(values) * self.n).reshape(len(values), self.n), {}
            except (KeyError, TypeError, OverflowError, ValueError):
                pass  # the per-row path names the row and the field
        return self._decode_slow(rows)

    def _decode_slow(self, rows: Sequence[Any]) -> tuple[np.ndarray, dict[int, Refusal]]:
        x = np.full((len(rows), self.n), np.nan)
        refusals: dict[int, Refusal] = {}
        names, kinds = self.names, self.kinds
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                refusals[i] = Refusal(i, None, "must be an object of feature values", True)
                continue
            missing = [n for n in names if n not in row]
            if missing:
                refusals[i] = Refusal(i, missing[0], f"missing feature(s) {', '.join(missing)}", True)
                continue
            extra = sorted(k for k in row if k not in self._name_set)
            if extra:
                refusals[i] = Refusal(i, str(extra[0]), f"unknown feature(s) {', '.join(map(str, extra))}", True)
                continue
            xi = x[i]
            for j, (name, kind) in enumerate(zip(names, kinds)):
                try:
                    xi[j] = kind.from_value(row[name])
                except Refused as exc:
                    refusals[i] = Refusal(i, name, str(exc))
                    break
        return x, refusals

    def _encode_one(self, row: dict) -> np.ndarray | None:
        """Single-row fast path (plain Python checks, one small array).

        Returns None whenever anything is unusual (missing/extra key, non-number, NaN,
        out of range, a bool feature) so the vectorised path produces the exact same result
        or the exact same refusal.
        """
        if len(row) != self.n or not self.plain:
            return None
        try:
            vals = [row[k] for k in self.names]
        except (KeyError, TypeError):
            return None
        fmax = self._fmax
        for v in vals:
            t = type(v)
            if t is float or t is int:
                # one chained compare refuses NaN, ±inf and values too large for the dtype:
                # the vectorised path then applies the NaN policy and names the field
                if not -fmax <= v <= fmax:
                    return None
            else:
                return None
        if self.has_range:
            for v, lo, hi in zip(vals, self._min_list, self._max_list):
                if v < lo or v > hi:
                    return None
        if self._int_input and any(type(v) is float and not v.is_integer() for v in vals):
            return None
        return np.array((vals,), dtype=self.dtype)

    # ---- value checks (any numeric matrix) ---------------------------------------------------
    def _bad_cells(self, x: np.ndarray) -> np.ndarray | None:
        """(n, k) mask of the values the contract refuses, or None when all pass."""
        # the common case in two reductions: every value finite and within the dtype (NaN
        # fails both compares); anything else takes the exact checks below
        if self._screen and x.dtype.kind == "f" and x.size:
            fmax = self._fmax
            if x.size <= _SMALL:  # a few values: one Python pass beats two numpy reductions
                if all(-fmax <= v <= fmax for v in x.ravel().tolist()):  # NaN fails the compare
                    return None
            elif x.min() >= -fmax and x.max() <= fmax:
                return None
        bad = None
        with np.errstate(invalid="ignore"):
            if x.dtype.kind == "f":
                if self.any_reject_nan:  # NaN, ±inf and too large for the dtype, where refused
                    bad = ~(np.abs(x) <= self._fmax) & self.reject_nan
                if self._int_input:
                    frac = (x != np.floor(x)) & np.isfinite(x)
                    bad = frac if bad is None else bad | frac
            if self.has_range:
                out = (x < self.mins) | (x > self.maxs)
                bad = out if bad is None else bad | out
        for j in self._special:
            m, _ = self.kinds[j].refused_in(x[:, j])
            if m is not None:
                if bad is None:
                    bad = np.zeros(x.shape, dtype=bool)
                bad[:, j] |= m
        if bad is None or not bad.any():
            return None
        return bad

    def reason(self, j: int, v: float) -> str:
        """Why value ``v`` of feature ``j`` is refused (the cell is known to be bad)."""
        if math.isnan(v):
            return "missing value (null/NaN) is not allowed for this feature"
        if self.reject_nan[j] and not abs(v) <= self._fmax:
            return f"{v:g} is not allowed for this feature (not a finite {self.dtype.name})"
        if j in self._special:
            m, why = self.kinds[j].refused_in(np.array([v]))
            if m is not None:
                return f"{why}, got {v:g}" if "got" not in why else why
        if v < self.mins[j] or v > self.maxs[j]:
            return f"{v:g} is outside the allowed range [{self.mins[j]:g}, {self.maxs[j]:g}]"
        if self._int_input and math.isfinite(v) and not float(v).is_integer():
            return f"{v:g} is not a whole number (the model takes {self.dtype.name})"
        return f"{v!r} is not allowed for this feature"  # pragma: no cover

    def refusals(self, x: np.ndarray, decoded: dict[int, Refusal] | None = None) -> dict[int, Refusal]:
        """Every bad row's refusal: ``decoded`` (found while decoding) merged with the value
        checks on ``x``; per row the first feature in contract order wins, a whole-row
        refusal wins over any value."""
        out = dict(decoded or {})
        bad = self._bad_cells(x)
        if bad is not None:
            for r in np.flatnonzero(bad.any(axis=1)).tolist():
                self._merge(out, r, int(bad[r].argmax()), x)
        return out

    def first_refusal(self, x: np.ndarray, decoded: dict[int, Refusal] | None = None) -> Refusal | None:
        """The refusal of the first bad row (what a request path answers), or None."""
        bad = self._bad_cells(x)
        first_decoded = min(decoded) if decoded else None
        if bad is None:
            return None if first_decoded is None else decoded[first_decoded]
        rows = np.flatnonzero(bad.any(axis=1))
        r = int(rows[0])
        if first_decoded is not None and first_decoded < r:
            return decoded[first_decoded]
        out = {r: decoded[r]} if decoded and r in decoded else {}
        self._merge(out, r, int(bad[r].argmax()), x)
        return out[r]

    def _merge(self, out: dict[int, Refusal], r: int, c: int, x: np.ndarray) -> None:
        prev = out.get(r)
        if prev is not None and (prev.whole_row or prev.feature is None or self.index.get(prev.feature, -1) <= c):
            return
        out[r] = Refusal(r, self.names[c], self.reason(c, float(x[r, c])))

    def column_refusals(self, j: int, col: np.ndarray) -> list[Refusal]:
        """The refusals of the values of feature ``j`` given as one numpy column (row = index
        in the column), for column-wise decoders (batch). The value checks screen the column
        with its min and max and look at single values only on a hit."""
        if len(col) == 0:
            return []
        typ, why = self.kinds[j].refused_in(col)
        out: list[Refusal] = []
        if typ is not None:
            if why.endswith(("(or 0/1)",)):  # a number where a bool is expected: show it
                out = [Refusal(i, self.names[j], f"{why}, got {float(col[i]):g}") for i in np.flatnonzero(typ).tolist()]
            else:
                out = [Refusal(i, self.names[j], why) for i in np.flatnonzero(typ).tolist()]
            if col.dtype.kind not in "fiu":
                return out
        bad = None
        lo, hi = self.mins[j], self.maxs[j]
        if self.reject_nan[j] and col.dtype.kind == "f":
            lo, hi = max(lo, -self._fmax), min(hi, self._fmax)
        if math.isfinite(lo) or math.isfinite(hi):
            mn, mx = col.min(), col.max()  # NaN propagates: a NaN fails both compares
            if not (mn >= lo and mx <= hi):
                with np.errstate(invalid="ignore"):
                    bad = (col < self.mins[j]) | (col > self.maxs[j])
                    if self.reject_nan[j] and col.dtype.kind == "f":
                        bad |= ~(np.abs(col) <= self._fmax)
        if self._int_input and col.dtype.kind == "f":
            with np.errstate(invalid="ignore"):
                frac = (col != np.floor(col)) & np.isfinite(col)
            bad = frac if bad is None else bad | frac
        if bad is not None:
            seen = {r.row for r in out}
            out += [Refusal(i, self.names[j], self.reason(j, float(col[i])))
                    for i in np.flatnonzero(bad).tolist() if i not in seen]
        return out

    # ---- to the engine -----------------------------------------------------------------------
    def check(self, x: np.ndarray, names: Sequence[str] | None = None,
              decoded: dict[int, Refusal] | None = None) -> np.ndarray:
        """A numeric (n, k) matrix → the engine's dtype, or the first refusal (as a
        :class:`ValidationError`). ``names``: the features of x's columns when they are not
        this contract's order (inputs encoded for another model: shadows, routing);
        ``decoded``: refusals a decoder found (a string in an OIP tensor), merged in."""
        x = self.select(x, names)
        first = self.first_refusal(x, decoded)
        if first is not None:
            raise first.error()
        return self.cast(x)

    def select(self, x: np.ndarray, names: Sequence[str] | None) -> np.ndarray:
        """Columns of ``x`` (features ``names``) in this contract's order; a feature of
        this contract that x lacks refuses every row (the first one named)."""
        if names is None or names is self.names or list(names) == self.names:
            return x
        pos = {n: i for i, n in enumerate(names)}
        missing = [n for n in self.names if n not in pos]
        if missing:
            raise Refusal(0, missing[0], f"missing feature(s) {', '.join(missing)}", True).error()
        return x[:, [pos[n] for n in self.names]]

    def cast(self, x: np.ndarray) -> np.ndarray:
        if x.dtype == self.dtype:
            return x
        with np.errstate(over="ignore", invalid="ignore"):  # "allow" features: too large → ±inf
            return x.astype(self.dtype)


#: The old name: the JSON-rows side of the contract (``Model.codec``).
RowCodec = FeatureContract
