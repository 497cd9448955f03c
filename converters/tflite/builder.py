"""Write a TFLite flatbuffer with LiteRT's own generated schema (no TensorFlow).

``ModelBuilder`` collects tensors, constant buffers, operator codes and
operators of one subgraph, then packs them with the object API of
``ai_edge_litert.schema_py_generated`` and the ``flatbuffers`` package. Constant
buffers are 16-byte aligned (as TensorFlow's writer does) so kernels can read
weights in place on ARM devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flatbuffers
import numpy as np

try:
    from ai_edge_litert import schema_py_generated as schema
except ImportError:  # pragma: no cover - exercised only without the tflite extra
    schema = None  # type: ignore[assignment]

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3

#: numpy dtype → TFLite TensorType value
_TENSOR_TYPES = {
    np.dtype("float32"): 0, np.dtype("float16"): 1, np.dtype("int32"): 2, np.dtype("uint8"): 3,
    np.dtype("int64"): 4, np.dtype("bool"): 6, np.dtype("int16"): 7, np.dtype("int8"): 9,
    np.dtype("float64"): 10,
}


def require_schema():
    if schema is None:
        from converters.onnx_source import ConversionError

        raise ConversionError("the TFLite converter needs LiteRT's schema: "
                              "pip install 'edgefleet[tflite]' (ai-edge-litert)", field="format")
    return schema


def tensor_type(dtype: np.dtype | str) -> int:
    dt = np.dtype(dtype)
    if dt not in _TENSOR_TYPES:
        raise ValueError(f"dtype {dt} has no TFLite tensor type")
    return _TENSOR_TYPES[dt]


@dataclass
class Quantization:
    """Symmetric int8 weight quantization (zero point 0), per tensor or per channel."""

    scale: list[float]
    axis: int = 0


class ModelBuilder:
    """Accumulates one subgraph; ``finish()`` returns the ``.tflite`` bytes."""

    def __init__(self, description: str = "edgefleet converters.tflite") -> None:
        s = require_schema()
        self._s = s
        self.description = description
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [s.BufferT()]  # buffer 0 is the empty sentinel
        self.operators: list[Any] = []
        self.opcodes: list[Any] = []
        self._opcode_index: dict[tuple[int, int], int] = {}
        self.inputs: list[int] = []
        self.outputs: list[int] = []

    # ---- tensors -----------------------------------------------------------------
    def add_tensor(self, name: str, shape: list[int], dtype: np.dtype | str, *,
                   data: np.ndarray | None = None, quant: Quantization | None = None) -> int:
        """Add a tensor; ``-1`` in ``shape`` is a free (batch) dimension."""
        s = self._s
        t = s.TensorT()
        t.name = name
        t.type = tensor_type(dtype)
        dims = [int(d) for d in shape]
        t.shape = np.array([1 if d < 0 else d for d in dims], dtype=np.int32)
        if any(d < 0 for d in dims):
            t.shapeSignature = np.array(dims, dtype=np.int32)
        t.hasRank = True
        if data is not None:
            arr = np.ascontiguousarray(data, dtype=np.dtype(dtype))
            buf = _AlignedBufferT()
            buf.data = np.frombuffer(arr.tobytes(), dtype=np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        else:
            t.buffer = 0
        if quant is not None:
            q = s.QuantizationParametersT()
            q.scale = [float(v) for v in quant.scale]
            q.zeroPoint = [0] * len(quant.scale)
            q.quantizedDimension = int(quant.axis)
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def tensor_name(self, index: int) -> str:
        return self.tensors[index].name

    def rename(self, index: int, name: str) -> None:
        self.tensors[index].name = name

    # ---- operators -------------------------------------------------------------------
    def opcode(self, builtin: int, version: int = 1) -> int:
        key = (builtin, version)
        if key not in self._opcode_index:
            oc = self._s.OperatorCodeT()
            oc.builtinCode = builtin
            # Old readers look at the deprecated byte; codes past 127 use the placeholder.
            oc.deprecatedBuiltinCode = min(builtin, 127)
            oc.version = version
            self.opcodes.append(oc)
            self._opcode_index[key] = len(self.opcodes) - 1
        return self._opcode_index[key]

    def add_op(self, op: str, inputs: list[int], outputs: list[int], options: Any = None,
               *, version: int = 1) -> None:
        """``op`` is a ``BuiltinOperator`` name, e.g. ``"FULLY_CONNECTED"``.

        ``options`` is a ``…OptionsT`` object; its union tag is derived from its class name.
        """
        s = self._s
        o = s.OperatorT()
        o.opcodeIndex = self.opcode(getattr(s.BuiltinOperator, op), version)
        o.inputs = np.array(inputs, dtype=np.int32)
        o.outputs = np.array(outputs, dtype=np.int32)
        if options is not None:
            o.builtinOptionsType = getattr(s.BuiltinOptions, type(options).__name__[:-1])
            o.builtinOptions = options
        self.operators.append(o)

    def options(self, kind: str, **fields: Any) -> Any:
        """Make ``<kind>OptionsT`` with fields set, e.g. ``options("Pool2D", padding=0)``."""
        obj = getattr(self._s, f"{kind}OptionsT")()
        for k, v in fields.items():
            if not hasattr(obj, k):
                raise AttributeError(f"{kind}OptionsT has no field {k}")
            setattr(obj, k, v)
        return obj

    # ---- output ----------------------------------------------------------------------
    def finish(self) -> bytes:
        s = self._s
        sub = s.SubGraphT()
        sub.tensors = self.tensors
        sub.inputs = np.array(self.inputs, dtype=np.int32)
        sub.outputs = np.array(self.outputs, dtype=np.int32)
        sub.operators = self.operators
        sub.name = "main"
        sig = s.SignatureDefT()
        sig.signatureKey = "serving_default"
        sig.subgraphIndex = 0
        sig.inputs = [_tensor_map(s, self.tensors[i].name, i) for i in self.inputs]
        sig.outputs = [_tensor_map(s, self.tensors[i].name, i) for i in self.outputs]
        model = s.ModelT()
        model.version = SCHEMA_VERSION
        model.description = self.description
        model.operatorCodes = self.opcodes
        model.subgraphs = [sub]
        model.buffers = self.buffers
        model.signatureDefs = [sig]
        size = sum(len(b.data) for b in self.buffers if b.data is not None)
        builder = flatbuffers.Builder(1024 + size + 64 * len(self.buffers))
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())


def _tensor_map(s, name: str, index: int):
    m = s.TensorMapT()
    m.name = name
    m.tensorIndex = index
    return m


if schema is not None:
    class _AlignedBufferT(schema.BufferT):
        """A constant buffer whose bytes start on a 16-byte boundary."""

        def Pack(self, builder):
            data = None
            if self.data is not None and len(self.data):
                payload = np.asarray(self.data, dtype=np.uint8).tobytes()
                builder.StartVector(1, len(payload), 16)
                builder.head = builder.head - len(payload)
                builder.Bytes[builder.head: builder.head + len(payload)] = payload
                builder.vectorNumElems = len(payload)
                data = builder.EndVector()
            schema.BufferStart(builder)
            if data is not None:
                schema.BufferAddData(builder, data)
            return schema.BufferEnd(builder)
else:  # pragma: no cover
    _AlignedBufferT = None  # type: ignore[assignment,misc]
