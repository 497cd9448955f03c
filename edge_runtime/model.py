"""A loaded, callable model: bundle + engine + contract + post-processing.

This is the one transport-neutral data plane: the local HTTP endpoint, the
daemon, the hub's REST/OIP/batch/stream paths all call :class:`Model`, so a
bundle answers identically everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundle import Bundle, read_bundle
from edge_runtime.codec import encode_tensors
from edge_runtime.contract import FeatureContract
from edge_runtime.engines import EngineOptions, engine_class
from edge_runtime.errors import BundleError, EngineError, ValidationError
from edge_runtime.postprocess import PostProcessor, Scores

__all__ = ["Model", "Scores"]


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
        if m.inputs.kind == "features":
            spec = next((t for t in self.engine.inputs if t.name == m.inputs.tensor), None)
            if spec is None and len(self.engine.inputs) == 1:
                spec = self.engine.inputs[0]
            if spec is None:
                raise BundleError(f"inputs.tensor {m.inputs.tensor!r} is not an input of the model "
                                  f"(inputs: {self.engine.input_names})", field="manifest.inputs.tensor")
            self._feed_name = spec.name
            #: the input contract of the named features (decode JSON rows, check any matrix)
            self.codec: FeatureContract | None = FeatureContract(m.inputs, dtype=spec.dtype)
            width = spec.shape[1] if len(spec.shape) > 1 else None
            if width is not None and width != self.codec.n:
                raise BundleError(f"the model expects {width} features, the manifest lists "
                                  f"{self.codec.n}", field="manifest.inputs.features")
        else:
            self._feed_name = None
            self.codec = None
        #: the bundle's post-processing (probability, label, risk level, value)
        self.post = PostProcessor(m, self.engine.output_names)
        self._idx = self.post.idx
        self.classes = self.post.classes
        self.threshold = self.post.threshold
        self.risk_levels = self.post.risk_levels
        self._pos_idx = self.post.pos_idx
        self._one = self.post.single_row() if self.codec is not None else None
        self.loaded_at = time.time()

    # ---- construction ---------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | Bundle, options: EngineOptions | None = None,
             *, warmup: bool = True) -> Model:
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
        """Named-feature rows → one result dict per row: contract → engine → post-processing."""
        if self.codec is None:
            raise ValidationError("this model takes raw tensors, not feature rows", field="rows")
        x = self.codec.encode(rows)
        if self._one is not None and x.shape[0] == 1:
            return [self._one(self.engine.run({self._feed_name: x}))]
        return self.post.rows(self.score_array(x))

    def predict_one(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return self.predict(row)[0]

    def score_array(self, x: np.ndarray) -> Scores:
        """A (n, n_features) array already checked against the contract → vectorised scores."""
        return self.post.scores(self.engine.run({self._feed_name: x}))

    def score_features(self, x: np.ndarray, names: Sequence[str] | None = None) -> Scores:
        """Any numeric (n, k) matrix of features ``names`` (default: this contract's order) →
        this model's contract check → scores. For inputs another model already encoded
        (shadows): the columns are picked by name, and this model's own contract decides."""
        if self.codec is None:
            raise ValidationError("this model takes raw tensors, not feature rows", field="rows")
        return self.score_array(self.codec.check(x, names))

    def run_tensors(self, tensors: Mapping[str, Any]) -> list[np.ndarray]:
        """Raw tensors → raw outputs (in ``self.engine.outputs`` order)."""
        specs = self.engine.inputs if self.contract.kind == "features" else self.contract.tensors
        feeds = encode_tensors(specs, tensors)
        return self.engine.run(feeds)

    def _scores(self, outs: list[np.ndarray]) -> Scores:
        return self.post.scores(outs)

    def to_rows(self, s: Scores) -> list[dict[str, Any]]:
        return self.post.rows(s)

    def risk_level(self, p: float) -> str | None:
        return self.post.risk_level(p)

    def decision(self, s: Scores) -> np.ndarray:
        """Per-row decision used for shadow/canary comparisons (label index or sign)."""
        return self.post.decision(s)

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
