"""Codecs: JSON rows and raw tensors ⇄ numpy, checked against the input contract.

Kept apart from engines (MLServer's codecs/ idea): HTTP, MQTT, batch and
stream all turn their payloads into numpy through here, so every transport
refuses the same bad input with the same message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from edge_runtime.errors import ValidationError
from edge_runtime.manifest import Inputs

_NUMERIC = (int, float)
_NUM_TYPES = frozenset({int, float, type(None)})


class RowCodec:
    """Packs named-feature rows into one float matrix in the contract's order."""

    def __init__(self, inputs: Inputs, dtype: str = "float32") -> None:
        self.names = [f.name for f in inputs.features]
        self.n = len(self.names)
        self.dtype = np.dtype(dtype)
        mins = [f.min if f.min is not None else -np.inf for f in inputs.features]
        maxs = [f.max if f.max is not None else np.inf for f in inputs.features]
        self.mins = np.array(mins, dtype=np.float64)
        self.maxs = np.array(maxs, dtype=np.float64)
        self.has_range = bool(np.isfinite(self.mins).any() or np.isfinite(self.maxs).any())
        self.reject_nan = np.array([f.nan == "reject" for f in inputs.features])
        self.any_reject_nan = bool(self.reject_nan.any())
        self._all_reject = bool(self.reject_nan.all())
        # "reject" refuses every non-finite value: NaN/null, ±inf, and numbers too large for
        # the model's dtype (1e40 would become inf in float32)
        self._fmax = float(np.finfo(self.dtype).max) if self.dtype.kind == "f" else math.inf
        self._name_set = frozenset(self.names)
        self._getter = itemgetter(*self.names)
        self._min_list = self.mins.tolist()
        self._max_list = self.maxs.tolist()

    def encode(self, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Rows (a dict or a list of dicts) → (n_rows, n_features) array."""
        if type(rows) is dict:
            x = self._encode_one(rows)
            if x is not None:
                return x
        if isinstance(rows, Mapping):
            rows = (rows,)
        elif not isinstance(rows, (list, tuple)):
            raise ValidationError("rows must be an object or a list of objects", field="rows")
        if not rows:
            raise ValidationError("rows is empty: send at least one row", field="rows")
        names = self.names
        getter = self._getter  # operator.itemgetter: the per-row lookups run in C
        try:
            values = [getter(row) for row in rows]
        except KeyError:
            self._raise_row_problem(rows)
            raise  # pragma: no cover
        except TypeError:
            self._raise_row_problem(rows)
            raise  # pragma: no cover
        if self.n == 1:
            values = [(v,) for v in values]
        if set(map(len, rows)) != {self.n}:
            self._raise_row_problem(rows)
        # float64 conversion accepts "1.5" and True; the contract does not.
        types = set(map(type, chain.from_iterable(values)))
        if not types <= _NUM_TYPES:
            self._raise_type_problem(values)
        try:
            if type(None) in types:  # null → NaN (refused below where the policy says so)
                arr = np.array(values, dtype=np.float64)
            else:
                arr = np.fromiter(chain.from_iterable(values), np.float64,
                                  len(values) * self.n).reshape(len(values), self.n)
        except (TypeError, ValueError, OverflowError):
            self._raise_type_problem(values)
            raise ValidationError("rows hold values that are not numbers", field="rows")
        if self.any_reject_nan:
            with np.errstate(invalid="ignore"):
                bad = np.argwhere(~(np.abs(arr) <= self._fmax) & self.reject_nan)
            if len(bad):
                r, c = bad[0]
                v = arr[r, c]
                why = ("NaN/null is not allowed for this feature" if np.isnan(v) else
                       f"{v:g} is not allowed for this feature (not a finite {self.dtype.name})")
                raise ValidationError(f"rows[{r}].{names[c]}: {why}", field=f"rows[{r}].{names[c]}")
        if self.has_range:
            with np.errstate(invalid="ignore"):
                out = (arr < self.mins) | (arr > self.maxs)
            if out.any():
                r, c = np.argwhere(out)[0]
                raise ValidationError(
                    f"rows[{r}].{names[c]}: {arr[r, c]:g} is outside the allowed range "
                    f"[{self.mins[c]:g}, {self.maxs[c]:g}]", field=f"rows[{r}].{names[c]}")
        if self._all_reject:
            return arr.astype(self.dtype, copy=False)
        with np.errstate(over="ignore"):  # "allow" features: too large becomes ±inf, quietly
            return arr.astype(self.dtype, copy=False)

    def _encode_one(self, row: dict) -> np.ndarray | None:
        """Single-row fast path (plain Python checks, one small array).

        Returns None whenever anything is unusual (missing/extra key, non-number,
        NaN, out of range) so the vectorised path produces the exact same result
        or the exact same error.
        """
        if len(row) != self.n:
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
        return np.array((vals,), dtype=self.dtype)

    def _raise_row_problem(self, rows: Sequence[Any]) -> None:
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise ValidationError(f"rows[{i}] must be an object of feature values",
                                      field=f"rows[{i}]")
            missing = [n for n in self.names if n not in row]
            if missing:
                raise ValidationError(f"rows[{i}]: missing feature(s) {', '.join(missing)}",
                                      field=f"rows[{i}].{missing[0]}")
            extra = sorted(set(row) - self._name_set)
            if extra:
                raise ValidationError(f"rows[{i}]: unknown feature(s) {', '.join(extra)}",
                                      field=f"rows[{i}].{extra[0]}")

    def _raise_type_problem(self, values: list[list[Any]]) -> None:
        for i, vals in enumerate(values):
            for name, v in zip(self.names, vals):
                if v is None:
                    if self.reject_nan[self.names.index(name)]:
                        raise ValidationError(f"rows[{i}].{name}: null is not allowed for this feature",
                                              field=f"rows[{i}].{name}")
                    continue
                if isinstance(v, bool) or not isinstance(v, _NUMERIC):
                    raise ValidationError(
                        f"rows[{i}].{name}: expected a number, got {type(v).__name__}",
                        field=f"rows[{i}].{name}")


def encode_tensors(specs, data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Raw tensors by name → arrays of the declared dtype and rank."""
    if not isinstance(data, Mapping):
        raise ValidationError("tensors must be an object of name → nested list", field="tensors")
    out = {}
    known = {s.name for s in specs}
    extra = sorted(set(data) - known)
    if extra:
        raise ValidationError(f"unknown tensor(s) {', '.join(extra)}", field=f"tensors.{extra[0]}")
    for spec in specs:
        if spec.name not in data:
            raise ValidationError(f"missing tensor {spec.name}", field=f"tensors.{spec.name}")
        try:
            arr = np.asarray(data[spec.name], dtype=spec.dtype)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"tensor {spec.name}: cannot convert to {spec.dtype}: {exc}",
                                  field=f"tensors.{spec.name}") from exc
        check_shape(spec, arr.shape, f"tensors.{spec.name}")
        out[spec.name] = arr
    return out


def check_shape(spec, shape: tuple[int, ...], field: str) -> None:
    if spec.shape and len(shape) != len(spec.shape):
        raise ValidationError(f"{field}: expected rank {len(spec.shape)} shape {spec.shape}, "
                              f"got {list(shape)}", field=field)
    for want, got in zip(spec.shape, shape):
        if want is not None and want != got:
            raise ValidationError(f"{field}: expected shape {spec.shape}, got {list(shape)}",
                                  field=field)
    if shape and shape[0] == 0:
        raise ValidationError(f"{field}: empty batch", field=field)


def json_safe(value: Any) -> Any:
    """numpy scalars/arrays → plain JSON values (NaN → None)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
