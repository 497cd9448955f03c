"""LiteRT / TFLite engine.

Uses ``ai_edge_litert`` (the maintained successor of ``tflite-runtime``),
falling back to ``tflite_runtime`` and then ``tensorflow.lite``.
An interpreter is kept per recent batch size (past ``TFLiteEngine.max_sizes`` the
least recently used one is resized) so batch calls stay one ``invoke`` and mixed
single-row/batch traffic does not re-allocate tensors on every call. An
interpreter is not thread-safe, so runs hold a lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
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


class _Sized:
    """One interpreter with its tensors allocated for one batch size."""

    __slots__ = ("batch", "in_dtype", "in_index", "inputs", "interp", "out_indices", "outputs")

    def __init__(self, interp, batch: int) -> None:
        self.interp = interp
        self.batch = batch
        self._details()

    def _details(self) -> None:
        # looked up once per size, not per call (the hot path only reads these)
        self.inputs = self.interp.get_input_details()
        self.outputs = self.interp.get_output_details()
        self.in_index = self.inputs[0]["index"]
        self.in_dtype = np.dtype(self.inputs[0]["dtype"])
        self.out_indices = [d["index"] for d in self.outputs]

    def resize(self, n: int) -> None:
        for d in self.inputs:
            shape = list(d["shape"])
            shape[0] = n
            self.interp.resize_tensor_input(d["index"], shape)
        self.interp.allocate_tensors()
        self._details()
        self.batch = n


class _Closed:
    """Stands in for the last size after ``close``: any run builds a fresh interpreter."""

    batch = -1


class TFLiteEngine(Engine):
    format = "tflite"

    #: interpreters kept, one per recent batch size: a daemon mixing single-row and batch
    #: calls would otherwise re-allocate the tensor arena on every switch (several times
    #: a small model's run). Past this many sizes the least recently used one is resized.
    max_sizes = 4

    def __init__(self, path: str | Path, options: EngineOptions | None = None) -> None:
        options = options or EngineOptions()
        self._cls = load_interpreter_class()
        self._name = Path(path).name
        try:
            # every interpreter shares this one buffer: no file re-opened later (the store
            # moves a bundle after loading it), no second copy of the weights
            self._content = Path(path).read_bytes()
        except OSError as exc:
            raise EngineError(f"TFLite cannot load {self._name}: {exc.strerror}") from exc
        self.threads = max(1, options.intra_op_threads)
        first = self._new_interpreter()
        self._interp = first  # the interpreter of the model's own batch size
        d_in = first.get_input_details()
        d_out = first.get_output_details()
        self.inputs = [TensorSpec(name=d["name"], dtype=_dtype_name(d["dtype"]),
                                  shape=[None if i == 0 else int(s) for i, s in enumerate(d["shape"])])
                       for d in d_in]
        self.outputs = [TensorSpec(name=d["name"], dtype=_dtype_name(d["dtype"]),
                                   shape=[None if i == 0 else int(s) for i, s in enumerate(d["shape"])])
                        for d in d_out]
        batch = int(d_in[0]["shape"][0]) if len(d_in[0]["shape"]) else 1
        self._sizes: OrderedDict[int, _Sized] = OrderedDict({batch: _Sized(first, batch)})
        self._last = self._sizes[batch]  # the size of the previous call: no LRU update
        self._in_name = d_in[0]["name"]
        self._lock = threading.Lock()

    def _new_interpreter(self):
        try:
            interp = self._cls(model_content=self._content, num_threads=self.threads)
            interp.allocate_tensors()
        except Exception as exc:
            raise EngineError(f"TFLite cannot load {self._name}: {exc}") from exc
        return interp

    def _sized(self, n: int) -> _Sized:
        sizes = self._sizes
        s = sizes.get(n)
        if s is not None:
            sizes.move_to_end(n)
            return s
        if len(sizes) < self.max_sizes:
            s = _Sized(self._new_interpreter(), -1)
        else:  # reuse the least recently used interpreter
            _, s = sizes.popitem(last=False)
        s.resize(n)
        sizes[n] = s
        return s

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            try:
                first = feeds.get(self._in_name)
                if first is None:
                    first = next(iter(feeds.values()))
                n = first.shape[0] if first.ndim else 1
                s = self._last
                if s.batch != n:
                    s = self._last = self._sized(n)
                interp = s.interp
                if len(s.inputs) == 1:  # the common case: no dict walking
                    arr = first
                    if arr.dtype != s.in_dtype or not arr.flags.c_contiguous:
                        arr = np.ascontiguousarray(arr, dtype=s.in_dtype)
                    interp.set_tensor(s.in_index, arr)
                else:
                    values = list(feeds.values())
                    for i, d in enumerate(s.inputs):
                        arr = feeds.get(d["name"])
                        if arr is None:
                            arr = values[i]
                        interp.set_tensor(d["index"], np.ascontiguousarray(arr, dtype=d["dtype"]))
                interp.invoke()
                # get_tensor already returns a copy (tensor() would be the view)
                return [interp.get_tensor(i) for i in s.out_indices]
            except EngineError:
                raise
            except Exception as exc:
                raise EngineError(f"TFLite run failed: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._sizes.clear()
            self._last = _Closed()
