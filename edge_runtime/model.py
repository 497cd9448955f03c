"""A loaded, callable model: bundle + engine + contract + post-processing.

This is the one transport-neutral data plane: the local HTTP endpoint, the
daemon, the hub's REST/OIP/batch/stream paths all call :class:`Model`, so a
bundle answers identically everywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edge_runtime.bundle import Bundle, read_bundle
from edge_runtime.codec import RowCodec, encode_tensors, json_safe
from edge_runtime.engines import EngineOptions, engine_class
from edge_runtime.errors import BundleError, EngineError, ValidationError


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


class Model:
    """Call ``predict(rows)`` for named features, ``run_tensors`` for raw tensors."""

    def __init__(self, bundle: Bundle, options: EngineOptions | None = None) -> None:
        self.bundle = bundle
        m = bundle.manifest
        self.manifest = m
        self.name, self.version, self.digest = m.name, m.version, m.digest
        self.engine = engine_class(m.format)(bundle.model_path, options)
        self.task = m.task
        self.contract = m.inputs
        out_names = self.engine.output_names
        roles = {o.role: o.name for o in m.outputs}
        self._idx = {role: _index(out_names, name, role) for role, name in roles.items()}
        if m.inputs.kind == "features":
            spec = next((t for t in self.engine.inputs if t.name == m.inputs.tensor), None)
            if spec is None and len(self.engine.inputs) == 1:
                spec = self.engine.inputs[0]
            if spec is None:
                raise BundleError(f"inputs.tensor {m.inputs.tensor!r} is not an input of the model "
                                  f"(inputs: {self.engine.input_names})", field="manifest.inputs.tensor")
            self._feed_name = spec.name
            self.codec = RowCodec(m.inputs, dtype=spec.dtype)
            width = spec.shape[1] if len(spec.shape) > 1 else None
            if width is not None and width != self.codec.n:
                raise BundleError(f"the model expects {width} features, the manifest lists "
                                  f"{self.codec.n}", field="manifest.inputs.features")
        else:
            self._feed_name = None
            self.codec = None
        pp = m.postprocess
        self.classes = list(pp.classes)
        self.threshold = pp.threshold
        self.risk_levels = [(r.name, r.min) for r in pp.risk_levels]
        self._pos_idx = 1
        if self.classes and pp.positive_class is not None:
            if pp.positive_class not in self.classes:
                raise BundleError("postprocess.positive_class is not one of postprocess.classes",
                                  field="manifest.postprocess.positive_class")
            self._pos_idx = self.classes.index(pp.positive_class)
        self._one = self._single_row_post() if self.codec is not None else None
        self.loaded_at = time.time()

    # ---- construction ---------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | Bundle, options: EngineOptions | None = None,
             *, warmup: bool = True) -> "Model":
        bundle = path if isinstance(path, Bundle) else read_bundle(path)
        model = cls(bundle, options)
        if warmup:
            model.warmup((options or EngineOptions()).warmup_runs)
        return model

    def warmup(self, runs: int = 2) -> None:
        g = self.manifest.golden
        for _ in range(max(0, runs)):
            if g and g[0].rows:
                self.predict(g[0].rows)
            elif g and g[0].tensors:
                self.run_tensors(g[0].tensors)

    # ---- inference -------------------------------------------------------------
    def predict(self, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Named-feature rows → one result dict per row."""
        if self.codec is None:
            raise ValidationError("this model takes raw tensors, not feature rows", field="rows")
        x = self.codec.encode(rows)
        if self._one is not None and x.shape[0] == 1:
            return [self._one(self.engine.run({self._feed_name: x}))]
        return self.to_rows(self.score_array(x))

    def _single_row_post(self):
        """A plain-Python post-processor for one row, identical to ``to_rows(_scores(...))``.

        Single-row calls are the common on-device case; for a small model the numpy
        calls of the vectorised path cost as much as the model itself. Only binary
        classification (probabilities output) and regression get one; other tasks
        use the vectorised path.
        """
        idx = self._idx
        classes, pos, thr = self.classes, self._pos_idx, self.threshold
        risk = self.risk_levels
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

    def predict_one(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return self.predict(row)[0]

    def score_array(self, x: np.ndarray) -> Scores:
        """A (n, n_features) array already in contract order → vectorised scores."""
        outs = self.engine.run({self._feed_name: x})
        return self._scores(outs)

    def run_tensors(self, tensors: Mapping[str, Any]) -> list[np.ndarray]:
        """Raw tensors → raw outputs (in ``self.engine.outputs`` order)."""
        specs = self.engine.inputs if self.contract.kind == "features" else self.contract.tensors
        feeds = encode_tensors(specs, tensors)
        return self.engine.run(feeds)

    def _scores(self, outs: list[np.ndarray]) -> Scores:
        idx = self._idx
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
                prob = probs[:, self._pos_idx].astype(np.float64)
                label_index = np.where(prob >= self.threshold, self._pos_idx, 1 - self._pos_idx)
            else:
                label_index = probs.argmax(axis=1)
                prob = probs[np.arange(len(probs)), label_index].astype(np.float64)
            return Scores(prob, label_index, probs, None, outs)
        if "value" in idx:
            v = np.asarray(outs[idx["value"]], dtype=np.float64).reshape(len(outs[idx["value"]]), -1)[:, 0]
            return Scores(None, None, None, v, outs)
        return Scores(None, None, None, None, outs)

    def to_rows(self, s: Scores) -> list[dict[str, Any]]:
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
        if s.value is not None:
            return [{"value": v} for v in s.value.tolist()]
        return [{"outputs": [json_safe(o[i]) for o in s.raw]} for i in range(len(s.raw[0]))]

    def risk_level(self, p: float) -> str | None:
        for name, lo in self.risk_levels:
            if p >= lo:
                return name
        return None

    def decision(self, s: Scores) -> np.ndarray:
        """Per-row decision used for shadow/canary comparisons (label index or sign)."""
        if s.label_index is not None:
            return s.label_index
        return (s.score >= self.threshold).astype(np.int64)

    # ---- verification -----------------------------------------------------------
    def self_test(self) -> int:
        """Run the golden vectors; raise EngineError naming the first mismatch. Returns count."""
        checked = 0
        for i, g in enumerate(self.manifest.golden):
            if g.rows is not None:
                s = self.score_array(self.codec.encode(g.rows))
            elif g.tensors is not None:
                s = self._scores(self.run_tensors(g.tensors))
            else:
                continue
            if g.expected_probability is not None:
                _close(f"golden[{i}].expected_probability", s.probability, g.expected_probability, g.atol)
            if g.expected_value is not None:
                _close(f"golden[{i}].expected_value", s.score, g.expected_value, g.atol)
            if g.expected_label is not None and s.label_index is not None:
                got = [self.classes[k] if self.classes else k for k in s.label_index.tolist()]
                if [str(x) for x in got] != [str(x) for x in g.expected_label]:
                    raise EngineError(f"golden[{i}]: labels {got} differ from expected "
                                      f"{g.expected_label}", field=f"golden[{i}].expected_label")
            checked += 1
        return checked

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.digest,
                "format": self.manifest.format, "task": self.task,
                "features": self.manifest.feature_names, "classes": self.classes,
                "engine": self.engine.describe()}

    def close(self) -> None:
        self.engine.close()


def _index(names: list[str], name: str, role: str) -> int:
    if name in names:
        return names.index(name)
    raise BundleError(f"output {name!r} (role {role}) is not an output of the model "
                      f"(outputs: {names})", field="manifest.outputs")


def _close(what: str, got: np.ndarray | None, want: list[float], atol: float) -> None:
    if got is None:
        raise EngineError(f"{what}: the model produced no such output", field=what)
    got = np.asarray(got, dtype=np.float64)
    want_a = np.asarray(want, dtype=np.float64)
    if got.shape != want_a.shape:
        raise EngineError(f"{what}: got {got.shape[0]} values, expected {want_a.shape[0]}", field=what)
    diff = np.abs(got - want_a)
    if not np.all(diff <= atol):
        k = int(diff.argmax())
        raise EngineError(f"{what}: row {k} gives {got[k]:.6g}, expected {want_a[k]:.6g} "
                          f"(|diff| {diff[k]:.3g} > atol {atol:g})", field=what)
