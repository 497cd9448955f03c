"""ONNX Runtime engine."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_runtime.engines.base import Engine, EngineOptions
from edge_runtime.errors import EngineError
from edge_runtime.manifest import TensorSpec

log = logging.getLogger(__name__)

_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64",
    "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(bool)": "bool", "tensor(string)": "string", "tensor(float16)": "float16",
}


def _spec(arg) -> TensorSpec:
    shape = [d if isinstance(d, int) else None for d in (arg.shape or [])]
    dtype = _ORT_DTYPES.get(arg.type, "float32")
    if dtype not in ("float32", "float64", "int64", "int32", "int8", "uint8", "bool"):
        dtype = "float32"
    return TensorSpec(name=arg.name, dtype=dtype, shape=shape)


class OnnxEngine(Engine):
    format = "onnx"

    def __init__(self, path: str | Path, options: EngineOptions | None = None) -> None:
        options = options or EngineOptions()
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, options.intra_op_threads)
        so.inter_op_num_threads = max(1, options.inter_op_threads)
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        available = ort.get_available_providers()
        providers = [p for p in options.providers if p in available] or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EngineError(f"ONNX Runtime cannot load {Path(path).name}: {exc}") from exc
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        self.providers = self.session.get_providers()
        # Hot path: on CPU, call the C++ session directly. InferenceSession.run only
        # adds Python-side checks of the feed names (ours come from the model) and a
        # GPU-EP fallback, about 1 µs per call — a sixth of a small model's run.
        # ``_sess`` is private: when a future onnxruntime drops or changes it, the
        # engine uses the public ``run`` (see ``run`` below), never fails because of it.
        self._public_run = lambda feeds: self.session.run(self._output_names, feeds)
        self._run = self._public_run
        inner = getattr(self.session, "_sess", None)
        if self.providers == ["CPUExecutionProvider"] and callable(getattr(inner, "run", None)):
            self._run = lambda feeds: inner.run(self._output_names, feeds, None)

    @property
    def fast_path(self) -> bool:
        """True while runs go straight to the C++ session (private ``_sess.run``)."""
        return self._run is not self._public_run

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self._run(feeds)
        except Exception as exc:
            if self._run is self._public_run:
                raise EngineError(f"ONNX Runtime run failed: {exc}") from exc
            fast_exc = exc
        # The private call failed: the public API either gives ORT's own error for a bad
        # feed (raised as usual) or works, which means the private API changed: keep it.
        try:
            outs = self._public_run(feeds)
        except Exception as exc:
            raise EngineError(f"ONNX Runtime run failed: {exc}") from exc
        log.warning("onnxruntime %s: the direct session call failed (%s); using "
                    "InferenceSession.run from now on", ort.__version__, fast_exc)
        self._run = self._public_run
        return outs

    def describe(self) -> dict:
        return {"format": self.format, "providers": self.providers, "onnxruntime": ort.__version__}
