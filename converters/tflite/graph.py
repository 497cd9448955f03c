"""Walk an ONNX graph and emit TFLite ops: values, layouts, constants, fusion.

Layout: ONNX images are NCHW, TFLite kernels want NHWC. Each converted value
carries its *logical* ONNX shape plus a ``layout`` saying how it is stored
("plain" = ONNX order, "nhwc" = a rank-4 NCHW value stored as NHWC). Conv and
pooling produce NHWC values; layout-neutral ops (activations, elementwise
with per-channel constants, BatchNormalization, Concat on channels) keep
them NHWC; ops whose meaning depends on element order (Flatten, Reshape,
Transpose, graph outputs) ask for "plain" and get one cached TRANSPOSE. So a
Conv→Relu→Pool→Conv chain has no transposes inside, and the model keeps the
ONNX input/output contract (a named-feature vector or an NCHW tensor).

Constants: initializers and ``Constant`` nodes are numpy arrays; a node whose
inputs are all constants is folded at conversion time with ``onnx.reference``.
Only dimension 0 may be free (the batch), written as ``-1`` in the tensor's
``shape_signature`` so the runtime can resize it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from converters.onnx_source import ConversionError
from converters.tflite.builder import ModelBuilder, Quantization

SUPPORTED_DOMAINS = {"": "", "ai.onnx": "", "ai.onnx.ml": "ai.onnx.ml"}
PERM_TO_NHWC = (0, 2, 3, 1)
PERM_TO_NCHW = (0, 3, 1, 2)
#: hints shown next to an unsupported op; ``{target}`` is the format being written
HINTS = {
    "ZipMap": "export with options={id(model): {'zipmap': False}} (edge-convert export does)",
    "TreeEnsembleClassifier": "tree ensembles have no {target} op here; ship the ONNX bundle",
    "TreeEnsembleRegressor": "tree ensembles have no {target} op here; ship the ONNX bundle",
}
#: a graph input of text (string features): neither TFLite nor Core ML takes one here
STRING_INPUT_HINT = "string features: ship the ONNX bundle"
HINTS["LabelEncoder"] = STRING_INPUT_HINT  # the text-category front of converters.columns
HINTS["OneHotEncoder"] = STRING_INPUT_HINT


def hint_for(op_type: str, target: str) -> str | None:
    h = HINTS.get(op_type)
    return h.format(target=target) if h else None


#: Stands for the free batch size inside a folded shape tensor (``Shape`` of a batched value),
#: so exporter patterns like Shape → Gather → Unsqueeze → Concat → Reshape fold to a
#: constant target whose first entry means "keep the batch".
BATCH = -(2**62) - 7
#: ops allowed on such shape tensors; arithmetic on the batch size is refused
SHAPE_OPS = frozenset({"Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Identity",
                       "Reshape", "Cast"})


def shape_constant(shape: tuple[int, ...], start: int = 0, end: int | None = None) -> np.ndarray:
    """ONNX ``Shape`` of a value whose dim 0 may be free (-1 → :data:`BATCH`)."""
    arr = np.array([BATCH if d == -1 else d for d in shape], np.int64)
    return arr[start:end]


def check_shape_fold(node, inputs: list[str], symbolic: set[str]) -> bool:
    """True when ``node`` folds a batch-dependent shape tensor; raise if it does arithmetic."""
    if not any(x in symbolic for x in inputs):
        return False
    ok = node.op_type in SHAPE_OPS
    if node.op_type == "Cast":
        ok = attrs(node).get("to") == 7  # int64 only
    if not ok:
        raise OpError(f"{node.op_type} on a shape that holds the free batch size (shape "
                      "arithmetic on the batch dimension); export with Flatten or a fixed "
                      "batch size")
    return True


def resolve_batch(target: list[int], in_shape: tuple[int, ...]) -> list[int]:
    """A Reshape target holding :data:`BATCH` → the same target with ONNX's 0 (copy)."""
    if BATCH not in target:
        return target
    if target.index(BATCH) != 0 or target.count(BATCH) > 1 or not in_shape or in_shape[0] != -1:
        raise OpError(f"Reshape moves the batch size to another dimension "
                      f"({['N' if d == BATCH else d for d in target]})")
    return [0] + target[1:]


class OpError(ConversionError):
    """A node the converter cannot express (reported with the node's name; the graph
    converter collects them into one :class:`UnsupportedOpsError`)."""

    code = "unsupported_ops"


@dataclass
class Value:
    index: int  # TFLite tensor index
    shape: tuple[int, ...]  # logical ONNX-order shape; -1 = free batch dim
    dtype: np.dtype
    layout: str = "plain"  # "plain" or "nhwc"

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def physical(self) -> tuple[int, ...]:
        if self.layout == "nhwc":
            return tuple(self.shape[i] for i in PERM_TO_NHWC)
        return self.shape


@dataclass
class OpHandler:
    convert: Callable[[GraphConverter, Any], None]
    check: Callable[[GraphConverter, Any], str | None] | None = None
    doc: str = ""


#: ONNX op type → handler; filled by converters.tflite.ops
REGISTRY: dict[str, OpHandler] = {}


def register(*op_types: str, check: Callable | None = None, doc: str = ""):
    def deco(fn):
        for t in op_types:
            REGISTRY[t] = OpHandler(fn, check, doc)
        return fn
    return deco


def attrs(node) -> dict[str, Any]:
    import onnx

    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [x.decode() for x in v]
        out[a.name] = v
    return out


def constant_value(node) -> np.ndarray:
    """The array an ONNX ``Constant`` node holds (``value`` tensor or scalar/list attributes)."""
    from onnx import numpy_helper

    if node.attribute and node.attribute[0].name == "value":
        return numpy_helper.to_array(node.attribute[0].t)
    a = attrs(node)
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64),
                       ("value_floats", np.float32), ("value_ints", np.int64)):
        if key in a:
            return np.array(a[key], dtype=dtype)
    raise OpError(f"Constant attribute {node.attribute[0].name if node.attribute else '(none)'} "
                  "is not supported")


def linear_weights(node, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """``ai.onnx.ml`` LinearClassifier/LinearRegressor attributes → weights [out, in], bias [out]."""
    a = attrs(node)
    coefs = np.asarray(a["coefficients"], np.float32)
    if n_in < 1 or coefs.size % n_in:
        raise OpError(f"{coefs.size} coefficients do not fit {n_in} inputs")
    w = coefs.reshape(-1, n_in)
    b = np.asarray(a.get("intercepts", [0.0] * w.shape[0]), np.float32)
    if b.size == 1 and w.shape[0] > 1:
        b = np.repeat(b, w.shape[0])
    return w, b


def op_label(node) -> str:
    dom = node.domain or ""
    if dom in ("", "ai.onnx", "ai.onnx.ml"):
        return node.op_type
    return f"{dom}.{node.op_type}"


def broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x == y:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif y == 1:
            out.append(x)
        elif x == -1 or y == -1:
            out.append(max(x, y))
        else:
            raise OpError(f"shapes {list(a)} and {list(b)} do not broadcast")
    return tuple(out)


class GraphConverter:
    """One ONNX model → one TFLite subgraph."""

    def __init__(self, model, *, int8_weights: bool = False, int8_min_elements: int = 1024,
                 per_channel: bool = True) -> None:
        import onnx
        from onnx import numpy_helper

        self.onnx = onnx
        self.model = model
        self.graph = model.graph
        self.opset = {(o.domain or ""): o.version for o in model.opset_import}
        self.int8_weights = int8_weights
        self.int8_min_elements = int8_min_elements
        self.per_channel = per_channel
        self.b = ModelBuilder()
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i)
                                              for i in self.graph.initializer}
        self.values: dict[str, Value] = {}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for node in self.graph.node:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.graph_outputs = [o.name for o in self.graph.output]
        self.skip: set[int] = set()
        self.dropped_outputs: dict[str, str] = {}
        self.dropped: dict[str, str] = {}  # values that cannot exist in TFLite → why
        self.symbolic: set[str] = set()  # folded shape tensors holding BATCH
        self._layout_cache: dict[tuple[str, str], Value] = {}
        self._const_cache: dict[tuple[str, str], int] = {}
        self._n = 0
        self.op_counts: Counter[str] = Counter()
        self.quantized: list[str] = []

    # ---- checking ----------------------------------------------------------------
    def scan(self) -> list[str]:
        """Every reason the graph cannot be converted, grouped by op type (empty = ok)."""
        problems: dict[str, list[str]] = defaultdict(list)
        const = set(self.consts)
        for inp in self.graph.input:
            if inp.name in const:
                continue
            reason = self._input_problem(inp)
            if reason:
                problems[f"graph input {inp.name!r}: {reason}"].append(inp.name)
        for i, node in enumerate(self.graph.node):
            label = op_label(node)
            name = node.name or f"#{i}"
            inputs = [x for x in node.input if x]
            if node.op_type in ("Constant", "Shape") or (inputs and all(x in const for x in inputs)
                                                         and not _has_subgraph(node)):
                const.update(node.output)
                continue
            handler = REGISTRY.get(node.op_type) if (node.domain or "") in SUPPORTED_DOMAINS else None
            if handler is None:
                hint = hint_for(node.op_type, "TFLite")
                problems[label + (f" ({hint})" if hint else "")].append(name)
                continue
            if handler.check is not None:
                self._scan_consts = const
                reason = handler.check(self, node)
                if reason:
                    problems[f"{label} ({reason})"].append(name)
        return [f"{k} [{len(v)} node{'s' if len(v) > 1 else ''}: {', '.join(v[:3])}"
                f"{', …' if len(v) > 3 else ''}]" for k, v in problems.items()]

    def is_const_at_scan(self, name: str) -> bool:
        return name in getattr(self, "_scan_consts", self.consts)

    def _input_problem(self, inp) -> str | None:
        tt = inp.type.tensor_type
        if not inp.type.HasField("tensor_type"):
            return "only tensor inputs are supported"
        dtype = np.dtype(self.onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        if dtype.kind in "OUS":
            return f"{STRING_INPUT_HINT} (TFLite takes numeric tensors only)"
        if dtype not in (np.float32, np.int32, np.int64):
            return f"dtype {dtype} (convert the model with float32 inputs)"
        dims = list(tt.shape.dim)
        for k, d in enumerate(dims):
            if k > 0 and not d.HasField("dim_value"):
                return f"dimension {k} is not fixed (only the batch dimension may be free)"
        return None

    # ---- converting -----------------------------------------------------------------
    def convert(self) -> bytes:
        for inp in self.graph.input:
            if inp.name in self.consts:
                continue
            tt = inp.type.tensor_type
            dtype = np.dtype(self.onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
            v = self.new_value(inp.name, shape, dtype)
            self.b.inputs.append(v.index)
        for node in self.graph.node:
            if id(node) in self.skip:
                continue
            inputs = [x for x in node.input if x]
            if any(x in self.dropped for x in inputs):
                # downstream of a value TFLite cannot carry (string class labels): drop too
                reason = next(self.dropped[x] for x in inputs if x in self.dropped)
                self.dropped.update({o: reason for o in node.output if o})
                continue
            if node.op_type == "Constant":
                self.consts[node.output[0]] = constant_value(node)
                continue
            try:
                if inputs and all(x in self.consts for x in inputs) and not _has_subgraph(node):
                    self._fold(node)
                    continue
                if node.op_type == "Shape":
                    a = attrs(node)
                    self.consts[node.output[0]] = shape_constant(
                        self.value(node.input[0], "any").shape, a.get("start", 0), a.get("end"))
                    self.symbolic.add(node.output[0])
                    continue
                handler = REGISTRY[node.op_type]
                handler.convert(self, node)
            except OpError as exc:
                from converters.onnx_source import UnsupportedOpsError

                raise UnsupportedOpsError("TFLite", [(f"{op_label(node)} node "
                                                     f"{node.name or node.output[0]!r}: {exc}")]) from exc
        self.dropped_outputs.update({n: self.dropped[n] for n in self.graph_outputs
                                     if n in self.dropped})
        if all(n in self.dropped_outputs for n in self.graph_outputs):
            from converters.onnx_source import UnsupportedOpsError

            raise UnsupportedOpsError("TFLite", [(f"no output can be produced: "
                                                 f"{self.dropped_outputs}")])
        used: set[int] = set(self.b.inputs)
        for name in self.graph_outputs:
            if name in self.dropped_outputs:
                continue
            if name in self.consts:
                from converters.onnx_source import UnsupportedOpsError

                raise UnsupportedOpsError("TFLite", [f"graph output {name!r} is a constant"])
            v = self.value(name, "plain")
            idx = v.index
            if idx in used:  # the same tensor can't carry two names: copy it
                out = self.new_value(self.tmp(name), v.shape, v.dtype)
                self.reshape_op(v, out)
                idx = out.index
            used.add(idx)
            self.b.rename(idx, name)
            self.b.outputs.append(idx)
        return self.b.finish()

    def _fold(self, node) -> None:
        from onnx.reference import ReferenceEvaluator

        symbolic = check_shape_fold(node, [x for x in node.input if x], self.symbolic)
        feeds = {x: self.consts[x] for x in node.input if x}
        try:
            outs = ReferenceEvaluator(node).run(None, feeds)
        except Exception as exc:
            from converters.onnx_source import UnsupportedOpsError

            raise UnsupportedOpsError("TFLite", [(f"{op_label(node)} node {node.name!r} on constants "
                                                 f"could not be folded: {exc}")]) from exc
        for name, arr in zip(node.output, outs):
            if name:
                self.consts[name] = np.asarray(arr)
                if symbolic and BATCH in np.asarray(arr).reshape(-1):
                    self.symbolic.add(name)

    # ---- values -----------------------------------------------------------------------
    def tmp(self, base: str) -> str:
        self._n += 1
        return f"{base}__{self._n}"

    def const(self, name: str, *, allow_batch: bool = False) -> np.ndarray | None:
        """The folded constant ``name`` (None for tensors)."""
        if name in self.symbolic and not allow_batch:
            raise OpError(f"{name!r} depends on the free batch size (only Reshape targets may)")
        return self.consts.get(name)

    def new_value(self, name: str, shape: tuple[int, ...], dtype, layout: str = "plain") -> Value:
        shape = tuple(int(d) for d in shape)
        phys = tuple(shape[i] for i in PERM_TO_NHWC) if layout == "nhwc" else shape
        idx = self.b.add_tensor(name, list(phys), dtype)
        v = Value(idx, shape, np.dtype(dtype), layout)
        self.values[name] = v
        return v

    def alias(self, dst: str, src: str) -> None:
        if src in self.consts:
            self.consts[dst] = self.consts[src]
        else:
            self.values[dst] = self.values[src]

    def value(self, name: str, layout: str = "plain") -> Value:
        """The value ``name`` stored in ``layout`` ("plain", "nhwc" or "any")."""
        if name in self.consts:
            arr = self.const(name)
            if layout == "nhwc":
                arr = arr.transpose(PERM_TO_NHWC)
            idx = self.const_tensor(arr, name, layout=layout)
            return Value(idx, tuple(self.consts[name].shape), arr.dtype,
                         "nhwc" if layout == "nhwc" else "plain")
        if name not in self.values:
            raise OpError(f"input {name!r} is not produced by any converted node")
        v = self.values[name]
        if layout == "any" or v.layout == layout:
            return v
        key = (name, layout)
        if key not in self._layout_cache:
            if v.rank != 4:
                raise OpError(f"{name!r} has rank {v.rank}; NHWC needs rank 4")
            perm = PERM_TO_NHWC if layout == "nhwc" else PERM_TO_NCHW
            out_idx = self.b.add_tensor(self.tmp(f"{name}_{layout}"),
                                        [v.shape[i] for i in (PERM_TO_NHWC if layout == "nhwc"
                                                              else range(4))], v.dtype)
            perm_idx = self.const_tensor(np.array(perm, np.int32), f"perm_{layout}")
            self.emit("TRANSPOSE", [v.index, perm_idx], [out_idx])
            self._layout_cache[key] = Value(out_idx, v.shape, v.dtype, layout)
        return self._layout_cache[key]

    def const_tensor(self, arr: np.ndarray, name: str = "const", *, layout: str = "plain",
                     dtype=None, quant: Quantization | None = None) -> int:
        arr = np.asarray(arr)
        if dtype is not None:
            arr = arr.astype(dtype)
        elif arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        key = (name, layout, arr.dtype.str, arr.shape, arr.tobytes()) if arr.size <= 64 else None
        if key is not None and key in self._const_cache:
            return self._const_cache[key]
        idx = self.b.add_tensor(self.tmp(name), list(arr.shape), arr.dtype, data=arr, quant=quant)
        if key is not None:
            self._const_cache[key] = idx
        return idx

    def weights(self, arr: np.ndarray, name: str, axis: int) -> tuple[int, bool]:
        """A weight tensor, int8 per-channel (symmetric) when INT8 weights are asked for."""
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not self.int8_weights or arr.size < self.int8_min_elements:
            return self.const_tensor(arr, name), False
        q, scales = quantize_symmetric(arr, axis if self.per_channel else None)
        self.quantized.append(name)
        return self.b.add_tensor(self.tmp(name), list(q.shape), np.int8, data=q,
                                 quant=Quantization(scales.tolist(), axis)), True

    def emit(self, op: str, inputs: list[int], outputs: list[int], options: Any = None,
             *, version: int = 1) -> None:
        self.b.add_op(op, inputs, outputs, options, version=version)
        self.op_counts[op] += 1

    def options(self, kind: str, **fields: Any) -> Any:
        return self.b.options(kind, **fields)

    def reshape_op(self, src: Value, dst: Value, shape: tuple[int, ...] | None = None) -> None:
        shape = dst.physical if shape is None else shape
        s_idx = self.const_tensor(np.array(shape, np.int32), "shape")
        self.emit("RESHAPE", [src.index, s_idx], [dst.index],
                  self.options("Reshape", newShape=list(shape)))

    # ---- graph structure helpers ----------------------------------------------------------
    def sole_consumer(self, name: str, op_types: tuple[str, ...]) -> Any | None:
        """The one node reading ``name`` if it is of ``op_types`` and ``name`` is internal."""
        if name in self.graph_outputs:
            return None
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type in op_types and id(users[0]) not in self.skip:
            return users[0]
        return None

    def used(self, name: str) -> bool:
        return bool(name) and (name in self.graph_outputs or bool(self.consumers.get(name)))

    def fuse_activation(self, out_name: str) -> tuple[int, str]:
        """Fold a following Relu / Clip(0, 6) into the producing op's fused activation."""
        nxt = self.sole_consumer(out_name, ("Relu", "Clip"))
        if nxt is None:
            return 0, out_name
        if nxt.op_type == "Relu":
            self.skip.add(id(nxt))
            return 1, nxt.output[0]  # RELU
        lo, hi = clip_bounds(self, nxt)
        if lo == 0.0 and hi == 6.0:
            self.skip.add(id(nxt))
            return 3, nxt.output[0]  # RELU6
        if lo == 0.0 and hi == math.inf:
            self.skip.add(id(nxt))
            return 1, nxt.output[0]
        return 0, out_name


def clip_bounds(ctx: GraphConverter, node) -> tuple[float, float]:
    a = attrs(node)
    lo, hi = a.get("min", -math.inf), a.get("max", math.inf)
    ins = list(node.input)
    if len(ins) > 1 and ins[1]:
        c = ctx.const(ins[1])
        lo = float(c) if c is not None else None
    if len(ins) > 2 and ins[2]:
        c = ctx.const(ins[2])
        hi = float(c) if c is not None else None
    return lo, hi


def quantize_symmetric(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """int8 symmetric quantization (zero point 0), per channel along ``axis`` or per tensor."""
    if axis is None:
        amax = np.array([np.abs(w).max()], dtype=np.float64)
        scales = np.where(amax > 0, amax / 127.0, 1.0)
        q = np.clip(np.round(w / scales[0]), -127, 127).astype(np.int8)
        return q, scales.astype(np.float32)
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    amax = np.abs(moved).max(axis=1).astype(np.float64)
    scales = np.where(amax > 0, amax / 127.0, 1.0)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scales.reshape(shape)), -127, 127).astype(np.int8)
    return q, scales.astype(np.float32)


def _has_subgraph(node) -> bool:
    return any(a.type in (5, 10) for a in node.attribute)  # GRAPH, GRAPHS
