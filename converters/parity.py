"""Parity of a converted bundle with its source, as measured at conversion time.

Both bundles run through the edge runtime's :class:`~edge_runtime.model.Model`
(so post-processing is the one devices use) on the golden inputs plus a seeded
batch of held-out-like rows drawn from the sample profile the exporter recorded
(:mod:`converters.heldout`; older bundles: uniform within declared feature
ranges, else normal around the golden rows' per-feature mean and spread). The synthetic rows test that the two
graphs compute the same function; accuracy on real data is ``edge-convert check``'s job.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_runtime.bundle import Bundle
from edge_runtime.model import Model, Scores


def _main_output(s: Scores) -> np.ndarray:
    if s.probabilities is not None:
        return np.asarray(s.probabilities, np.float64)
    if s.value is not None:
        return np.asarray(s.value, np.float64).reshape(len(s.value), -1)
    return np.asarray(s.raw[0], np.float64).reshape(len(s.raw[0]), -1)


def _stats(a: list[np.ndarray], b: list[np.ndarray], da: list[np.ndarray],
           db: list[np.ndarray]) -> dict[str, Any]:
    if not a:
        return {"rows": 0, "max_abs_diff": 0.0, "max_rel_diff": 0.0, "label_agreement": 1.0}
    x, y = np.concatenate(a), np.concatenate(b)
    agree = float(np.mean(np.concatenate(da) == np.concatenate(db))) if da else 1.0
    diff = abs_diff(x, y)
    scale = np.maximum(1.0, np.abs(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)))
    return {"rows": len(x), "max_abs_diff": float(diff.max()) if x.size else 0.0,
            # |Δ| / max(1, |source|): the check for values of any magnitude (regression)
            "max_rel_diff": float((diff / scale).max()) if x.size else 0.0,
            "label_agreement": round(agree, 6)}


def abs_diff(a: Any, b: Any) -> np.ndarray:
    """Elementwise |a - b| for parity gates: equal values (NaN and ±inf included) give 0,
    a NaN or inf on one side only gives inf.

    A plain ``np.abs(a - b).max()`` is NaN there, and ``nan > atol`` is False: a converted
    model that returns NaN would pass the gate.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    with np.errstate(invalid="ignore"):
        d = np.abs(a - b)
    d[(a == b) | (np.isnan(a) & np.isnan(b))] = 0.0
    return np.where(np.isnan(d), np.inf, d)


def max_abs_diff(got: Any, want: Any) -> float:
    """max of :func:`abs_diff`; arrays that cannot be compared (shapes) give inf."""
    try:
        a, b = np.broadcast_arrays(np.asarray(got, np.float64), np.asarray(want, np.float64))
    except ValueError:
        return float("inf")
    return float(abs_diff(a, b).max()) if a.size else 0.0


def synthetic_rows(model: Model, n: int, seed: int = 0) -> np.ndarray:
    """Held-out-like rows from the sample profile the exporter recorded
    (:mod:`converters.heldout`); bundles without one: around the golden rows."""
    from converters import heldout

    feats = model.manifest.inputs.features
    cols = heldout.columns_from_profile(heldout.find_profile(model.manifest.provenance) or {},
                                        [f.name for f in feats])
    if cols is not None:
        for c, f in zip(cols, feats):
            c.nan = c.nan and f.nan == "allow"
        return heldout.rows(cols, n, seed).astype(model.codec.dtype)
    rng = np.random.default_rng(seed)
    golden = [r for g in model.manifest.golden if g.rows for r in g.rows]
    gx = model.codec.encode(golden).astype(np.float64) if golden else None
    cols = []
    for j, f in enumerate(feats):
        if f.min is not None and f.max is not None:
            cols.append(rng.uniform(f.min, f.max, n))
        elif gx is not None and len(gx) > 1:
            mu, sd = float(np.nanmean(gx[:, j])), float(np.nanstd(gx[:, j]))
            col = rng.normal(mu, sd if sd > 0 else max(abs(mu), 1.0) * 0.1, n)
            cols.append(np.clip(col, f.min if f.min is not None else -np.inf,
                                f.max if f.max is not None else np.inf))
        else:
            cols.append(rng.normal(0.0, 1.0, n))
    return np.stack(cols, axis=1).astype(model.codec.dtype)


def _synthetic_tensors(model: Model, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in model.contract.tensors:
        shape = [n] + [d if d is not None else 1 for d in spec.shape[1:]]
        feeds[spec.name] = rng.normal(0, 1, shape).astype(spec.dtype)
    return feeds


def compare_bundles(src: Bundle, dst: Bundle, *, rows: int = 256, seed: int = 0) -> dict[str, Any]:
    """Max |Δ| of probabilities/values and decision agreement: golden rows and all rows."""
    ms = Model.load(src, warmup=False)
    md = Model.load(dst, warmup=False)
    xs: list[np.ndarray] = []  # the feature rows behind each block (for the worst row)
    try:
        ga, gb, gda, gdb = [], [], [], []
        for g in src.manifest.golden:
            if g.rows is not None:
                x = ms.codec.encode(g.rows)
                xs.append(np.asarray(x, np.float64))
                sa, sb = ms.score_array(x), md.score_array(x)
            elif g.tensors is not None:
                sa, sb = ms._scores(ms.run_tensors(g.tensors)), md._scores(md.run_tensors(g.tensors))
            else:
                continue
            ga.append(_main_output(sa))
            gb.append(_main_output(sb))
            gda.append(ms.decision(sa))
            gdb.append(md.decision(sb))
        aa, ab, ada, adb = list(ga), list(gb), list(gda), list(gdb)
        if rows:
            if ms.codec is not None:
                x = synthetic_rows(ms, rows, seed)
                xs.append(np.asarray(x, np.float64))
                sa, sb = ms.score_array(x), md.score_array(x)
            else:
                feeds = _synthetic_tensors(ms, rows, seed)
                sa, sb = ms._scores(ms.engine.run(feeds)), md._scores(md.engine.run(feeds))
            aa.append(_main_output(sa))
            ab.append(_main_output(sb))
            ada.append(ms.decision(sa))
            adb.append(md.decision(sb))
        out = {"golden": _stats(ga, gb, gda, gdb), "all": _stats(aa, ab, ada, adb)}
        if ms.codec is not None and aa and len(xs) == len(aa):
            out["worst_row"] = _worst_row(ms, np.concatenate(xs), np.concatenate(aa),
                                          np.concatenate(ab))
        return out
    finally:
        ms.close()
        md.close()


def _worst_row(model: Model, x: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """The row with the largest |Δ|: its feature values as a client sends them (text as
    text, NaN as None) and both answers — what a refusal names."""
    d = abs_diff(a, b).reshape(len(a), -1).max(axis=1)
    i = int(d.argmax())
    feats: dict[str, Any] = {}
    for f, v in zip(model.manifest.inputs.features, x[i].tolist()):
        if np.isnan(v):
            feats[f.name] = None
        elif f.dtype == "string":
            cats = f.categories or []
            feats[f.name] = cats[int(v)] if 0 <= v < len(cats) else "(unseen category)"
        else:
            feats[f.name] = round(v, 6)
    def r(arr: Any) -> list[float]:
        return [round(float(t), 6) for t in np.asarray(arr).reshape(-1)]

    return {"index": i, "features": feats, "source": r(a[i]), "converted": r(b[i]),
            "abs_diff": float(d[i])}


def describe_worst(parity: dict[str, Any], limit: int = 10) -> str:
    """"; worst row: f=…, g=…: source […], converted […]" for a refusal message."""
    w = parity.get("worst_row")
    if not w:
        return ""
    items = list(w["features"].items())
    shown = ", ".join(f"{k}={'NaN' if v is None else v}" for k, v in items[:limit])
    more = ", …" if len(items) > limit else ""
    return f"; worst row: {shown}{more}: source {w['source']}, converted {w['converted']}"


def recompute_golden(bundle: Bundle, golden) -> list[dict[str, Any]]:
    """The source's golden inputs with expectations recomputed by the converted model."""
    model = Model.load(bundle, warmup=False)
    out = []
    try:
        for g in golden:
            d = g.model_dump(mode="json", exclude_none=True)
            if g.rows is not None:
                s = model.score_array(model.codec.encode(g.rows))
            elif g.tensors is not None:
                s = model._scores(model.run_tensors(g.tensors))
            else:
                out.append(d)
                continue
            if g.expected_probability is not None and s.probability is not None:
                d["expected_probability"] = [float(v) for v in s.probability]
            if g.expected_value is not None:
                d["expected_value"] = [float(v) for v in s.score]
            if g.expected_label is not None and s.label_index is not None:
                d["expected_label"] = [model.classes[k] if model.classes else int(k)
                                       for k in s.label_index.tolist()]
            out.append(d)
    finally:
        model.close()
    return out
