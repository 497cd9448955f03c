"""LiteRT / TFLite engine.

Uses ``ai_edge_litert`` (the maintained successor of ``tflite-runtime``),
falling back to ``tflite_runtime`` and then ``tensorflow.lite``.
The interpreter is resized per batch size (cached) so batch calls stay one
``invoke``. An interpreter is not thread-safe, so runs hold a lock.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from edge_runtime.engines.base import Engine, EngineOptions
from edge_runtime.errors import EngineError
from edge_runtime.manifest import TensorSpec


def load_interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore

        return Interpreter
    except ImportError:
        pass
    try:
        import tensorflow as tf  # type: ignore

        return tf.lite.Interpreter
    except ImportError as exc:
        raise EngineError("no TFLite runtime installed: pip install 'edgefleet[tflite]' "
                          "(ai-edge-litert)") from exc


def _dtype_name(dt) -> str:
    name = np.dtype(dt).name
    return name if name in ("float32", "float64", "int64", "int32", "int8", "uint8", "bool") else "float32"


class TFLiteEngine(Engine):
    format = "tflite"

    def __init__(self, path: str | Path, options: EngineOptions | None = None) -> None:
        options = options or EngineOptions()
        cls = load_interpreter_class()
        try:
            self.threads = max(1, options.intra_op_threads)
            self._interp = cls(model_path=str(path), num_threads=self.threads)
            self._interp.allocate_tensors()
        except Exception as exc:
            raise EngineError(f"TFLite cannot load {Path(path).name}: {exc}") from exc
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()
        self.inputs = [TensorSpec(name=d["name"], dtype=_dtype_name(d["dtype"]),
                                  shape=[None if i == 0 else int(s) for i, s in enumerate(d["shape"])])
                       for d in self._in]
        self.outputs = [TensorSpec(name=d["name"], dtype=_dtype_name(d["dtype"]),
                                   shape=[None if i == 0 else int(s) for i, s in enumerate(d["shape"])])
                        for d in self._out]
        self._batch = int(self._in[0]["shape"][0]) if len(self._in[0]["shape"]) else 1
        self._lock = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            try:
                interp = self._interp
                first = feeds.get(self._in[0]["name"])
                if first is None:
                    first = next(iter(feeds.values()))
                n = first.shape[0] if first.ndim else 1
                if n != self._batch:
                    for d in self._in:
                        shape = list(d["shape"])
                        shape[0] = n
                        interp.resize_tensor_input(d["index"], shape)
                    interp.allocate_tensors()
                    self._in = interp.get_input_details()
                    self._out = interp.get_output_details()
                    self._batch = n
                if len(self._in) == 1:  # the common case: no dict walking
                    d = self._in[0]
                    arr = first
                    if arr.dtype != d["dtype"] or not arr.flags.c_contiguous:
                        arr = np.ascontiguousarray(arr, dtype=d["dtype"])
                    interp.set_tensor(d["index"], arr)
                else:
                    values = list(feeds.values())
                    for i, d in enumerate(self._in):
                        arr = feeds.get(d["name"])
                        if arr is None:
                            arr = values[i]
                        interp.set_tensor(d["index"], np.ascontiguousarray(arr, dtype=d["dtype"]))
                interp.invoke()
                # get_tensor already returns a copy (tensor() would be the view)
                return [interp.get_tensor(d["index"]) for d in self._out]
            except EngineError:
                raise
            except Exception as exc:
                raise EngineError(f"TFLite run failed: {exc}") from exc
