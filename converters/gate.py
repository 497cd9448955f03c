"""The numeric parity gate: a converted model answers like its source, or nothing is written.

    result = measure(reference, converted, x, names, task=..., threshold=..., tol=...)
    enforce(result, "the ONNX model")  # raises ConversionError naming the worst row

``reference`` and ``converted`` are the answers of the two models on the same
rows (the sample rows plus held-out-like rows from :mod:`converters.heldout`):
``{"probabilities": (n, k)}`` / ``{"value": (n,)}`` / ``{"score": (n,)}``, and
``{"label": (n,)}`` class indices where the model decides. Every numeric output
is compared (max |Δ|; for values, |Δ| / max(1, |source|)); labels are compared
with the source model's own ``predict``, except rows whose source score sits
within ``tol`` of the decision boundary (a tie no float32 engine can decide the
same way; they are counted as ``ties``). The numbers returned are what gets
printed and recorded in ``provenance.parity``: measured on the model being
written, never copied from its source.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from converters.onnx_source import ConversionError
from converters.parity import abs_diff

DEFAULT_TOLERANCE = 1e-4


def measure(
    ref: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    x: np.ndarray,
    names: list[str],
    *,
    tol: float,
    threshold: float | None = None,
    pos: int = 1,
    split: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Per-output max |Δ| and label agreement; ``split`` names row ranges (sample/heldout)."""
    n = len(x)
    res: dict[str, Any] = {"rows": n, "tolerance": tol}
    if split:
        res["rows_by_set"] = dict(split)
    worst_row, worst = -1, -1.0
    per_out: dict[str, float] = {}
    for key in ("probabilities", "value", "score"):
        if key not in ref or key not in got:
            continue
        a = np.asarray(ref[key], np.float64).reshape(n, -1)
        b = np.asarray(got[key], np.float64).reshape(n, -1)
        if a.shape != b.shape:
            raise ConversionError(
                f"the converted model gives {b.shape[1]} {key} per row, the "
                f"source model {a.shape[1]}",
                field="model",
            )
        d = abs_diff(a, b)
        if key != "probabilities":  # values of any magnitude: relative to max(1, |source|)
            d = d / np.maximum(1.0, np.abs(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)))
        row_d = d.max(axis=1) if d.size else np.zeros(n)
        per_out[key] = float(row_d.max()) if n else 0.0
        if n and per_out[key] > worst:
            worst, worst_row = per_out[key], int(row_d.argmax())
    res["max_abs_diff"] = max(per_out.values()) if per_out else 0.0
    res["outputs"] = {k: _round(v) for k, v in per_out.items()}
    if split and per_out:
        start = 0
        for name, k in split.items():
            sl = slice(start, start + k)
            res[f"{name}_max_abs_diff"] = _round(
                max(_part_diff(ref, got, key, sl) for key in per_out)
            )
            start += k
    if "label" in ref and "label" in got:
        la, lb = np.asarray(ref["label"]), np.asarray(got["label"])
        tie = _ties(ref, tol, threshold, pos, n)
        bad = (la != lb) & ~tie
        res["label_agreement"] = round(float(np.mean(la == lb)), 6) if n else 1.0
        res["label_disagreements"] = int(bad.sum())
        res["ties"] = int(((la != lb) & tie).sum())
        if bad.any() and (worst <= tol):
            worst_row = int(np.flatnonzero(bad)[0])
    if 0 <= worst_row < n:
        res["worst_row"] = {
            "index": worst_row,
            "set": _set_of(worst_row, split),
            "features": {nm: _plain(v) for nm, v in zip(names, x[worst_row])},
            "source": _answer(ref, worst_row),
            "converted": _answer(got, worst_row),
        }
    res["max_abs_diff"] = _round(res["max_abs_diff"])
    return res


def enforce(res: dict[str, Any], what: str, *, fix: str = "") -> None:
    """Raise ConversionError when ``res`` exceeds its tolerance or labels disagree."""
    tol = res["tolerance"]
    over = res["max_abs_diff"] > tol or not np.isfinite(res["max_abs_diff"])
    bad_labels = res.get("label_disagreements", 0)
    if not over and not bad_labels:
        return
    w = res.get("worst_row", {})
    feats = w.get("features", {})
    shown = ", ".join(f"{k}={_fmt(v)}" for k, v in list(feats.items())[:12])
    if len(feats) > 12:
        shown += ", …"
    why = []
    if over:
        why.append(f"max |Δ| {res['max_abs_diff']:.3g} > tolerance {tol:g}")
    if bad_labels:
        why.append(f"{bad_labels} of {res['rows']} labels differ from the source model's predict()")
    where = (
        (
            f"; worst: {w.get('set', 'row')} row {w.get('index')} ({shown}): source "
            f"{w.get('source')}, converted {w.get('converted')}"
        )
        if w
        else ""
    )
    raise ConversionError(
        f"{what} does not answer like the source on {res['rows']} rows "
        f"({', '.join(why)}){where}; nothing written{fix}",
        field="parity",
        parity=res,
    )


def _ties(
    ref: dict[str, np.ndarray], tol: float, threshold: float | None, pos: int, n: int
) -> np.ndarray:
    if "probabilities" in ref:
        p = np.asarray(ref["probabilities"], np.float64).reshape(n, -1)
        if p.shape[1] == 2 and threshold is not None:
            return np.abs(p[:, pos] - threshold) <= tol
        top = np.sort(p, axis=1)[:, -2:] if p.shape[1] > 1 else np.zeros((n, 2))
        return (top[:, 1] - top[:, 0]) <= tol
    if "score" in ref and threshold is not None:
        s = np.asarray(ref["score"], np.float64).reshape(-1)
        return np.abs(s - threshold) <= tol * np.maximum(1.0, np.abs(s))
    return np.zeros(n, dtype=bool)


def _part_diff(ref, got, key, sl) -> float:
    a = np.asarray(ref[key], np.float64)[sl]
    b = np.asarray(got[key], np.float64)[sl]
    if not a.size:
        return 0.0
    d = abs_diff(a, b)
    if key != "probabilities":
        d = d / np.maximum(1.0, np.abs(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)))
    return float(d.max())


def _set_of(i: int, split: dict[str, int] | None) -> str:
    if not split:
        return "row"
    start = 0
    for name, k in split.items():
        if i < start + k:
            return name
        start += k
    return "row"


def _answer(d: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        a = np.asarray(v)
        val = a[i] if a.ndim else a
        out[k] = _plain(val.tolist() if isinstance(val, np.ndarray) else val)
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 6)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _fmt(v: Any) -> str:
    if v is None:
        return "NaN"
    if isinstance(v, bool):
        return "true" if v else "false"
    return f"{v:g}" if isinstance(v, float) else repr(v)


def _round(v: float) -> float:
    return float(v) if not np.isfinite(v) else float(f"{v:.4g}")
