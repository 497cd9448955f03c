"""Post-processing: engine outputs → probability, label/class, risk level, value, raw outputs.

One implementation for every path (``Model.predict``, hub ``/v1`` and OIP, batch,
stream, shadows in the hub and on the device): :meth:`PostProcessor.scores` turns
the engine's outputs into vectorised :class:`Scores`; the encoders below turn
those into what a transport sends — JSON rows (:meth:`PostProcessor.rows`), named
columns (:meth:`PostProcessor.columns`, OIP tensors and batch output) — so a row
gets the same probability, label and risk level everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.errors import BundleError, EngineError
from edge_runtime.manifest import Manifest


@dataclass
class Scores:
    """Vectorised results for a batch (arrays, not per-row dicts)."""

    probability: np.ndarray | None  # score of the positive/top class, or None (regression)
    label_index: np.ndarray | None  # index into classes, or None
    probabilities: np.ndarray | None  # (n, n_classes) for classifiers
    value: np.ndarray | None  # regression output
    raw: list[np.ndarray]

    @property
    def score(self) -> np.ndarray:
        """One number per row: probability for classifiers, value for regression."""
        if self.probability is not None:
            return self.probability
        if self.value is not None:
            return self.value
        return self.raw[0].reshape(len(self.raw[0]), -1)[:, 0].astype(np.float64)

    def slice(self, a: int, b: int) -> Scores:
        return Scores(None if self.probability is None else self.probability[a:b],
                      None if self.label_index is None else self.label_index[a:b],
                      None if self.probabilities is None else self.probabilities[a:b],
                      None if self.value is None else self.value[a:b], [r[a:b] for r in self.raw])


class PostProcessor:
    """The bundle's ``postprocess`` section applied to the engine's outputs."""

    def __init__(self, manifest: Manifest, output_names: list[str]) -> None:
        m = manifest
        self.task = m.task
        self.output_names = list(output_names)
        self.idx = {o.role: _index(self.output_names, o.name, o.role) for o in m.outputs}
        pp = m.postprocess
        self.classes = list(pp.classes)
        self.threshold = pp.threshold
        self.risk_levels = [(r.name, r.min) for r in pp.risk_levels]
        self.pos_idx = 1
        if self.classes and pp.positive_class is not None:
            if pp.positive_class not in self.classes:
                raise BundleError("postprocess.positive_class is not one of postprocess.classes",
                                  field="manifest.postprocess.positive_class")
            self.pos_idx = self.classes.index(pp.positive_class)
        self.int_classes = bool(self.classes) and all(isinstance(c, int) and not isinstance(c, bool)
                                                      for c in self.classes)
        self._risk_mins = np.array([lo for _, lo in self.risk_levels], dtype=np.float64)
        self.label_from_output = pp.label_from == "output"  # see manifest.PostProcess
        self._class_index = {str(c): i for i, c in enumerate(self.classes)}

    # ---- outputs → Scores ------------------------------------------------------------------
    def scores(self, outs: list[np.ndarray]) -> Scores:
        idx = self.idx
        probs = None
        if "probabilities" in idx:
            probs = outs[idx["probabilities"]]
        elif "logits" in idx:
            z = np.asarray(outs[idx["logits"]], dtype=np.float64)
            if z.ndim == 1 or z.shape[1] == 1:  # one logit per row (binary): sigmoid, not a
                with np.errstate(over="ignore"):  # softmax over one column (always 1.0)
                    probs = 1.0 / (1.0 + np.exp(-z.reshape(-1)))
            else:
                z = z - z.max(axis=1, keepdims=True)
                e = np.exp(z)
                probs = e / e.sum(axis=1, keepdims=True)
        if probs is not None:
            probs = np.asarray(probs)
            if probs.ndim == 1 or probs.shape[1] == 1:  # single sigmoid column
                p1 = probs.reshape(-1).astype(np.float64)
                probs = np.stack([1.0 - p1, p1], axis=1)
            if self.task == "binary_classification":
                prob = probs[:, self.pos_idx].astype(np.float64)
                label_index = np.where(prob >= self.threshold, self.pos_idx, 1 - self.pos_idx)
            else:
                label_index = probs.argmax(axis=1)
                prob = probs[np.arange(len(probs)), label_index].astype(np.float64)
            if self.label_from_output and "label" in idx:
                label_index = self._output_labels(outs[idx["label"]])
                if self.task != "binary_classification":
                    prob = probs[np.arange(len(probs)), label_index].astype(np.float64)
            return Scores(prob, label_index, probs, None, outs)
        if "value" in idx:
            v = np.asarray(outs[idx["value"]], dtype=np.float64).reshape(len(outs[idx["value"]]), -1)[:, 0]
            if self.task == "anomaly":  # below the threshold: classes[0] ("anomaly")
                return Scores(None, np.where(v < self.threshold, 0, 1), None, v, outs)
            return Scores(None, None, None, v, outs)
        return Scores(None, None, None, None, outs)

    def _output_labels(self, labels: np.ndarray) -> np.ndarray:
        """The graph's label output → indices into ``classes`` (added by issue 12)."""
        flat = np.asarray(labels).reshape(-1)
        if flat.dtype.kind in "SO":
            keys = [v.decode() if isinstance(v, bytes) else str(v) for v in flat.tolist()]
        else:
            keys = [str(int(v)) if float(v).is_integer() else str(v) for v in flat.tolist()]
        try:
            return np.array([self._class_index[k] for k in keys], dtype=np.int64)
        except KeyError as exc:
            raise EngineError(f"the model's label output {exc.args[0]!r} is not one of "
                              f"postprocess.classes", field="manifest.postprocess.classes") from exc

    # ---- decisions ---------------------------------------------------------------------------
    def risk_level(self, p: float) -> str | None:
        for name, lo in self.risk_levels:
            if p >= lo:
                return name
        return None

    def risk_index(self, p: np.ndarray) -> np.ndarray:
        """Index into ``risk_levels`` per score (-1: no level reached, or NaN), vectorised
        :meth:`risk_level`: the first level (highest minimum first) the score reaches."""
        mins = self._risk_mins
        p = np.asarray(p, dtype=np.float64)
        if len(mins) > 1 and np.all(np.diff(mins) < 0):
            # minimums in decreasing order (the manifest sorts them): the first level reached
            # is the number of minimums above p — one binary search per row
            idx = (len(mins) - np.searchsorted(mins[::-1], p, side="right")).astype(np.int32)
            idx[(idx >= len(mins)) | np.isnan(p)] = -1
            return idx
        idx = np.full(len(p), -1, dtype=np.int32)
        with np.errstate(invalid="ignore"):
            for k in range(len(mins) - 1, -1, -1):
                idx[p >= mins[k]] = k
        return idx

    def labels(self, s: Scores) -> np.ndarray:
        """Class per row: the class values (int64 or object) or the label index."""
        if self.classes:
            classes = np.asarray(self.classes, dtype=object)
            return classes[s.label_index].astype(np.int64) if self.int_classes else classes[s.label_index]
        return np.asarray(s.label_index, dtype=np.int64)

    def decision(self, s: Scores) -> np.ndarray:
        """Per-row decision used for shadow/canary comparisons (label index or sign)."""
        if s.label_index is not None:
            return s.label_index
        return (s.score >= self.threshold).astype(np.int64)

    # ---- encoders ----------------------------------------------------------------------------
    def rows(self, s: Scores) -> list[dict[str, Any]]:
        """One JSON-ready dict per row (``/v1``, the device, ``Model.predict``, stream)."""
        classes = self.classes
        if s.probability is not None:
            probs = s.probability.tolist()
            labels = s.label_index.tolist()
            if classes:
                labels = [classes[i] for i in labels]
            if self.task == "multiclass_classification":
                all_p = s.probabilities.tolist()
                return [{"probability": p, "label": lab, "probabilities": ap}
                        for p, lab, ap in zip(probs, labels, all_p)]
            if self.risk_levels:
                return [{"probability": p, "label": lab, "risk_level": self.risk_level(p)}
                        for p, lab in zip(probs, labels)]
            return [{"probability": p, "label": lab} for p, lab in zip(probs, labels)]
        if s.value is not None and self.task == "anomaly" and s.label_index is not None:
            names = [classes[i] for i in s.label_index.tolist()] if classes else s.label_index.tolist()
            return [{"score": v, "label": lab} for v, lab in zip(s.value.tolist(), names)]
        if s.value is not None:
            return [{"value": v} for v in s.value.tolist()]
        return [{"outputs": [json_safe(o[i]) for o in s.raw]} for i in range(len(s.raw[0]))]

    def column_types(self) -> list[tuple[str, str]]:
        """Names and OIP datatypes of :meth:`columns` (model metadata)."""
        if self.task in ("binary_classification", "multiclass_classification"):
            out = [("probability", "FP64"), ("class", "INT64" if (self.int_classes or not self.classes) else "BYTES")]
            if self.risk_levels:
                out.append(("risk_level", "BYTES"))
            return out
        if self.task == "regression":
            return [("value", "FP64")]
        if self.task == "anomaly":
            return [("score", "FP64"), ("class", "BYTES")]
        return []

    def columns(self, s: Scores, wanted: Callable[[str], bool] = lambda _n: True) -> dict[str, np.ndarray]:
        """Post-processed outputs as named arrays (OIP): ``probability``, ``class``,
        ``risk_level`` (text, "" when no level is reached) or ``value``; only what
        ``wanted(name)`` asks for is built."""
        out: dict[str, np.ndarray] = {}
        if s.probability is not None:
            if wanted("probability"):
                out["probability"] = s.probability.astype(np.float64, copy=False)
            if wanted("class"):
                out["class"] = self.labels(s)
            if self.risk_levels and wanted("risk_level"):
                names = np.asarray([n for n, _ in self.risk_levels] + [""], dtype=object)
                out["risk_level"] = names[self.risk_index(s.probability)]  # -1 → ""
        elif s.value is not None and self.task == "anomaly":
            if wanted("score"):
                out["score"] = s.value.astype(np.float64, copy=False)
            if wanted("class") and s.label_index is not None:
                out["class"] = self.labels(s)
        elif s.value is not None and wanted("value"):
            out["value"] = s.value.astype(np.float64, copy=False)
        return out

    def single_row(self) -> Callable[[list[np.ndarray]], dict[str, Any]] | None:
        """A plain-Python post-processor for one row, identical to ``rows(scores(...))``.

        Single-row calls are the common on-device case; for a small model the numpy
        calls of the vectorised path cost as much as the model itself. Only binary
        classification (probabilities output) and regression get one; other tasks
        use the vectorised path.
        """
        idx = self.idx
        classes, pos, thr = self.classes, self.pos_idx, self.threshold
        risk = self.risk_levels
        if self.label_from_output:
            return None  # the label output needs the vectorised mapping
        if self.task == "binary_classification" and "probabilities" in idx:
            pi = idx["probabilities"]

            def one(outs: list[np.ndarray]) -> dict[str, Any]:
                probs = outs[pi]
                if probs.ndim == 2 and probs.shape[1] > 1:
                    p = float(probs[0, pos])
                else:
                    p1 = float(probs.reshape(-1)[0])
                    p = p1 if pos == 1 else 1.0 - p1
                li = pos if p >= thr else 1 - pos
                out = {"probability": p, "label": classes[li] if classes else li}
                if risk:
                    out["risk_level"] = next((name for name, lo in risk if p >= lo), None)
                return out

            return one
        if self.task == "regression" and "value" in idx and not ({"probabilities", "logits"} & set(idx)):
            vi = idx["value"]
            return lambda outs: {"value": float(outs[vi].reshape(-1)[0])}
        return None


def json_safe(value: Any) -> Any:
    """numpy scalars/arrays → plain JSON values (NaN → None)."""
    import math

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _index(names: list[str], name: str, role: str) -> int:
    if name in names:
        return names.index(name)
    raise BundleError(f"output {name!r} (role {role}) is not an output of the model "
                      f"(outputs: {names})", field="manifest.outputs")
