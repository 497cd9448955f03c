"""ONNX → Core ML ``mlprogram`` (``.mlpackage``) through coremltools' MIL builder.

    from converters.coreml import onnx_to_coreml, CoreMLConfig
    onnx_to_coreml("bundles/cancer-1.0.0", "bundles/cancer-1.0.0-coreml",
                   CoreMLConfig(key="fleet.key"))

**Core ML runs only on macOS/iOS.** On Linux this module builds the MIL program
op by op (one handler per ONNX op type in :data:`COREML_OPS`), lets coremltools
serialise it, and validates the resulting spec: program type, input names /
shapes / flexible batch range, output names, and the op graph (every ONNX
compute op must have produced its Core ML counterpart). It cannot check the
numbers here: the bundle keeps the ONNX source's golden vectors, which a Mac
checks (``edge-convert check`` on macOS, or the device's self-test). On macOS
the golden vectors are run at conversion time as well.

The package is a directory; the bundle lists every file in it and points
``model_file`` at ``model.mlpackage/Manifest.json`` (the package is its parent).
Label outputs (int64 class ids) are left out: Core ML gets the probabilities and
``postprocess.classes`` names the label, as for every other format.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters.onnx_source import (
    ConversionError,
    UnsupportedOpsError,
    carried_manifest,
    check_out_dir,
    load_source,
    publish,
    resolve_key,
    staging_dir,
)
from edge_runtime.bundle import Bundle

PACKAGE = "model.mlpackage"
MODEL_FILE = f"{PACKAGE}/Manifest.json"
NUMERICAL_NOTE = ("Core ML cannot run on Linux: the spec (inputs, outputs, op graph) was validated "
                  "here, but numerical checks need macOS (run `edge-convert check` on a Mac; the "
                  "bundle's golden vectors are the ONNX source's).")
_TARGETS = {"iOS15": "iOS15", "iOS16": "iOS16", "iOS17": "iOS17", "iOS18": "iOS18",
            "macOS12": "macOS12", "macOS13": "macOS13", "macOS14": "macOS14", "macOS15": "macOS15"}


@dataclass(frozen=True)
class CoreMLConfig:
    """Options of ``onnx_to_coreml`` (checked before any work)."""

    key: Any = None
    """ed25519 private key (path or key object); None → ``$EDGE_CONVERT_KEY``."""
    compute_precision: str = "float32"
    """"float32" (matches ONNX) or "float16" (smaller, ANE-friendly, looser golden atol)."""
    minimum_deployment_target: str = "iOS15"
    """Oldest OS the package must load on (mlprogram needs iOS15 / macOS12 or later)."""
    max_batch: int = 4096
    """Upper bound of the flexible batch dimension."""
    public_key: Any = None
    """Verify the source bundle's signature against this key when given."""
    version: str | None = None
    extra_provenance: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.compute_precision not in ("float32", "float16"):
            raise ConversionError("compute_precision must be 'float32' or 'float16', got "
                                  f"{self.compute_precision!r}", field="compute_precision")
        if self.minimum_deployment_target not in _TARGETS:
            raise ConversionError(f"minimum_deployment_target must be one of {sorted(_TARGETS)}, "
                                  f"got {self.minimum_deployment_target!r}",
                                  field="minimum_deployment_target")
        if not 1 <= self.max_batch <= 1_000_000:
            raise ConversionError("max_batch must be between 1 and 1000000", field="max_batch")


def import_coremltools():
    """coremltools, imported quietly (it prints warnings about missing macOS libraries)."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import coremltools as ct
    except ImportError as exc:
        raise ConversionError("the Core ML converter needs coremltools: "
                              "pip install 'edgefleet[coreml]'", field="format") from exc
    return ct


# ---- op handlers -----------------------------------------------------------------------------
from converters.parity import max_abs_diff
from converters.tflite.graph import OpError, linear_weights

Handler = Callable[["MilGraph", Any], None]
COREML_OPS: dict[str, Handler] = {}


def _op(*names: str):
    def deco(fn):
        for n in names:
            COREML_OPS[n] = fn
        return fn
    return deco


def _attrs(node) -> dict[str, Any]:
    from converters.tflite.graph import attrs

    return attrs(node)


class MilGraph:
    """Builds one MIL function from the part of the ONNX graph the kept outputs need."""

    def __init__(self, model, outputs: list[str], mb, types) -> None:
        from onnx import numpy_helper

        self.model, self.mb, self.types = model, mb, types
        self.graph = model.graph
        self.opset = {(o.domain or ""): o.version for o in model.opset_import}
        self.outputs = outputs
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i)
                                              for i in self.graph.initializer}
        self.vars: dict[str, Any] = {}
        self.symbolic: set[str] = set()  # folded shape tensors holding the free batch size
        self.names: set[str] = set()
        self.expected: Counter[str] = Counter()  # Core ML op types this build must contain
        self.nodes = self._needed_nodes()

    def _needed_nodes(self) -> list[Any]:
        want = set(self.outputs)
        keep = []
        for node in reversed(list(self.graph.node)):
            if any(o in want for o in node.output):
                keep.append(node)
                want.update(i for i in node.input if i)
        return list(reversed(keep))

    def scan(self) -> list[str]:
        from converters.tflite.graph import STRING_INPUT_HINT, hint_for, op_label

        problems: dict[str, list[str]] = {}
        const = set(self.consts)
        for i, node in enumerate(self.nodes):
            inputs = [x for x in node.input if x]
            if node.op_type in ("Constant", "Shape") or (inputs and all(x in const for x in inputs)):
                const.update(node.output)
                continue
            label = op_label(node)
            if (node.domain or "") not in ("", "ai.onnx", "ai.onnx.ml") or \
                    node.op_type not in COREML_OPS:
                hint = hint_for(node.op_type, "Core ML")
                problems.setdefault(label + (f" ({hint})" if hint else ""), []).append(
                    node.name or f"#{i}")
        for inp in self.graph.input:
            if inp.name in self.consts:
                continue
            from onnx import helper

            dt = np.dtype(helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type))
            if dt.kind in "OUS":
                problems.setdefault(f"graph input {inp.name!r}: {STRING_INPUT_HINT} (Core ML "
                                    "takes numeric tensors only)", []).append(inp.name)
            elif dt != np.float32:
                problems.setdefault(f"graph input {inp.name!r}: dtype {dt} (float32 only)", []).append(
                    inp.name)
        return [f"{k} [{len(v)} node{'s' if len(v) > 1 else ''}: {', '.join(v[:3])}"
                f"{', …' if len(v) > 3 else ''}]" for k, v in problems.items()]

    def name(self, onnx_name: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_]", "_", onnx_name) or "v"
        if base[0].isdigit():
            base = f"v_{base}"
        n, k = base, 1
        while n in self.names:
            k += 1
            n = f"{base}_{k}"
        self.names.add(n)
        return n

    def get(self, name: str):
        if name in self.symbolic:
            raise OpError(f"{name!r} depends on the free batch size (only Reshape targets may)")
        if name in self.consts:
            arr = self.consts[name]
            if arr.dtype == np.float64:
                arr = arr.astype(np.float32)
            if arr.dtype == np.int64:
                arr = arr.astype(np.int32)
            return arr
        if name not in self.vars:
            raise OpError(f"input {name!r} is not produced by any converted node")
        return self.vars[name]

    def const(self, name: str) -> np.ndarray | None:
        """The folded constant ``name``, or None for a tensor (shared helpers such as
        ``clip_bounds`` ask the graph this, as they ask the TFLite converter)."""
        if name in self.symbolic:
            raise OpError(f"{name!r} depends on the free batch size (only Reshape targets may)")
        return self.consts.get(name)

    def shape(self, name: str) -> tuple[int, ...]:
        v = self.get(name)
        if isinstance(v, np.ndarray):
            return v.shape
        from coremltools.converters.mil.mil.types.symbolic import is_symbolic

        return tuple(-1 if is_symbolic(d) else int(d) for d in v.shape)

    def set(self, onnx_name: str, var) -> None:
        self.vars[onnx_name] = var

    def emit(self, kind: str, onnx_out: str, **kw):
        self.expected[kind] += 1
        var = getattr(self.mb, kind)(name=self.name(onnx_out), **kw)
        self.set(onnx_out, var)
        return var

    def tmp(self, kind: str, base: str, **kw):
        self.expected[kind] += 1
        return getattr(self.mb, kind)(name=self.name(f"{base}_{kind}"), **kw)

    def build(self, func_inputs: dict[str, Any]) -> list[Any]:
        from onnx.reference import ReferenceEvaluator

        from converters.tflite.graph import (
            BATCH,
            check_shape_fold,
            constant_value,
            op_label,
            shape_constant,
        )

        self.vars.update(func_inputs)
        for node in self.nodes:
            inputs = [x for x in node.input if x]
            try:
                if node.op_type == "Constant":
                    self.consts[node.output[0]] = constant_value(node)
                    continue
                if inputs and all(x in self.consts for x in inputs):
                    sym = check_shape_fold(node, inputs, self.symbolic)
                    outs = ReferenceEvaluator(node).run(None, {x: self.consts[x] for x in inputs})
                    for n, arr in zip(node.output, outs):
                        if n:
                            self.consts[n] = np.asarray(arr)
                            if sym and BATCH in self.consts[n].reshape(-1):
                                self.symbolic.add(n)
                    continue
                if node.op_type == "Shape":
                    a = _attrs(node)
                    self.consts[node.output[0]] = shape_constant(self.shape(node.input[0]),
                                                                 a.get("start", 0), a.get("end"))
                    self.symbolic.add(node.output[0])
                    continue
                COREML_OPS[node.op_type](self, node)
            except OpError as exc:
                raise UnsupportedOpsError("Core ML", [(f"{op_label(node)} node "
                                                      f"{node.name or node.output[0]!r}: {exc}")]) from exc
        outs = []
        for name in self.outputs:
            var = self.get(name)
            if isinstance(var, np.ndarray):
                raise UnsupportedOpsError("Core ML", [f"graph output {name!r} is a constant"])
            if var.name != name or any(o is var for o in outs) or var in func_inputs.values():
                var = self.mb.identity(x=var, name=name)
            outs.append(var)
        return outs


_BIN = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "real_div", "Max": "maximum",
        "Min": "minimum", "Pow": "pow"}


@_op(*_BIN)
def _binary(g: MilGraph, node) -> None:
    if len(node.input) != 2:
        raise OpError("only two inputs are supported")
    a, b = g.get(node.input[0]), g.get(node.input[1])
    a = a.astype(np.float32) if isinstance(a, np.ndarray) else a
    b = b.astype(np.float32) if isinstance(b, np.ndarray) else b
    g.emit(_BIN[node.op_type], node.output[0], x=a, y=b)


_UN = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log",
       "Sqrt": "sqrt", "Abs": "abs", "Floor": "floor", "Ceil": "ceil", "Erf": "erf",
       "Sin": "sin", "Cos": "cos"}


@_op(*_UN)
def _unary(g: MilGraph, node) -> None:
    g.emit(_UN[node.op_type], node.output[0], x=g.get(node.input[0]))


@_op("Reciprocal")
def _reciprocal(g: MilGraph, node) -> None:
    # not MIL's ``inverse``: it computes 1 / (x + epsilon) with epsilon 1e-4 by default
    g.emit("real_div", node.output[0], x=np.float32(1.0), y=g.get(node.input[0]))


@_op("HardSwish")
def _hard_swish(g: MilGraph, node) -> None:
    # x * max(0, min(1, x / 6 + 1 / 2))
    x = g.get(node.input[0])
    gate = g.tmp("sigmoid_hard", node.output[0], x=x, alpha=np.float32(1.0 / 6.0),
                 beta=np.float32(0.5))
    g.emit("mul", node.output[0], x=x, y=gate)


@_op("Neg")
def _neg(g: MilGraph, node) -> None:
    g.emit("mul", node.output[0], x=g.get(node.input[0]), y=np.float32(-1.0))


@_op("LeakyRelu")
def _leaky(g: MilGraph, node) -> None:
    g.emit("leaky_relu", node.output[0], x=g.get(node.input[0]),
           alpha=np.float32(_attrs(node).get("alpha", 0.01)))


@_op("Elu")
def _elu(g: MilGraph, node) -> None:
    g.emit("elu", node.output[0], x=g.get(node.input[0]),
           alpha=np.float32(_attrs(node).get("alpha", 1.0)))


@_op("Clip")
def _clip(g: MilGraph, node) -> None:
    from converters.tflite.graph import clip_bounds

    lo, hi = clip_bounds(g, node)  # type: ignore[arg-type]
    if lo is None or hi is None:
        raise OpError("min/max must be constants")
    x = g.get(node.input[0])
    if lo == 0.0 and hi == 6.0:
        g.emit("relu6", node.output[0], x=x)
    elif lo == 0.0 and hi == math.inf:
        g.emit("relu", node.output[0], x=x)
    else:
        if lo != -math.inf:
            x = g.tmp("maximum", node.output[0], x=x, y=np.float32(lo))
        if hi != math.inf:
            x = g.tmp("minimum", node.output[0], x=x, y=np.float32(hi))
        g.set(node.output[0], x)


@_op("Identity", "Dropout")
def _identity(g: MilGraph, node) -> None:
    if node.input[0] in g.consts:
        g.consts[node.output[0]] = g.consts[node.input[0]]
    else:
        g.set(node.output[0], g.get(node.input[0]))


@_op("Cast")
def _cast(g: MilGraph, node) -> None:
    from onnx import helper

    to = np.dtype(helper.tensor_dtype_to_np_dtype(_attrs(node)["to"]))
    x = g.get(node.input[0])
    cur = g.types.nptype_from_builtin(x.dtype)
    if np.dtype(cur) == to or (to == np.int64 and np.dtype(cur) == np.int32):
        g.set(node.output[0], x)
        return
    names = {np.dtype("float32"): "fp32", np.dtype("int32"): "int32", np.dtype("int64"): "int32",
             np.dtype("bool"): "bool", np.dtype("float16"): "fp16"}
    if to not in names:
        raise OpError(f"cast to {to}")
    g.emit("cast", node.output[0], x=x, dtype=names[to])


@_op("Not")
def _not(g: MilGraph, node) -> None:
    g.emit("logical_not", node.output[0], x=g.get(node.input[0]))


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


@_op("Softmax", "LogSoftmax")
def _softmax(g: MilGraph, node) -> None:
    rank = len(g.shape(node.input[0]))
    axis = _axis(_attrs(node).get("axis", -1 if g.opset.get("", 13) >= 13 else 1), rank)
    if g.opset.get("", 13) < 13 and axis != rank - 1:
        raise OpError("opset < 13 softmax over a non-last axis")
    x = g.get(node.input[0])
    if node.op_type == "Softmax":
        g.emit("softmax", node.output[0], x=x, axis=axis)
    else:
        lse = g.tmp("reduce_log_sum_exp", node.output[0], x=x, axes=[axis], keep_dims=True)
        g.emit("sub", node.output[0], x=x, y=lse)


@_op("Gemm")
def _gemm(g: MilGraph, node) -> None:
    a = _attrs(node)
    if a.get("transA", 0):
        raise OpError("transA=1")
    bmat = g.consts.get(node.input[1])
    if bmat is None:
        raise OpError("B must be a constant")
    w = (bmat if a.get("transB", 0) else bmat.T).astype(np.float32) * np.float32(a.get("alpha", 1.0))
    bias = np.zeros(w.shape[0], np.float32)
    if len(node.input) > 2 and node.input[2]:
        c = g.consts.get(node.input[2])
        if c is None or c.size not in (1, w.shape[0]):
            raise OpError("C must be a constant broadcasting to the output width")
        bias = np.broadcast_to(c.astype(np.float32).reshape(-1) * np.float32(a.get("beta", 1.0)),
                               (w.shape[0],)).copy()
    g.emit("linear", node.output[0], x=g.get(node.input[0]), weight=w, bias=bias)


@_op("MatMul")
def _matmul(g: MilGraph, node) -> None:
    b = g.consts.get(node.input[1])
    x = g.get(node.input[0])
    if isinstance(x, np.ndarray):
        raise OpError("a constant left operand is not supported")
    if b is not None and b.ndim == 2:
        g.emit("linear", node.output[0], x=x, weight=b.astype(np.float32).T,
               bias=np.zeros(b.shape[1], np.float32))
    else:
        g.emit("matmul", node.output[0], x=x, y=g.get(node.input[1]))


def _pad_args(node, rank_spatial: int) -> dict[str, Any]:
    a = _attrs(node)
    auto = a.get("auto_pad", "NOTSET")
    if auto == "SAME_UPPER":
        return {"pad_type": "same"}
    if auto == "SAME_LOWER":
        return {"pad_type": "same_lower"}
    if auto == "VALID":
        return {"pad_type": "valid"}
    p = list(a.get("pads", [0] * 2 * rank_spatial))
    half = len(p) // 2
    pad = []
    for b, e in zip(p[:half], p[half:]):  # MIL: [begin0, end0, begin1, end1]
        pad += [b, e]
    return {"pad_type": "custom", "pad": np.array(pad, np.int32)}


@_op("Conv")
def _conv(g: MilGraph, node) -> None:
    a = _attrs(node)
    w = g.consts.get(node.input[1])
    if w is None:
        raise OpError("weights must be constants")
    sp = w.ndim - 2
    kw: dict[str, Any] = dict(x=g.get(node.input[0]), weight=w.astype(np.float32),
                              strides=np.array(a.get("strides", [1] * sp), np.int32),
                              dilations=np.array(a.get("dilations", [1] * sp), np.int32),
                              groups=int(a.get("group", 1)), **_pad_args(node, sp))
    if len(node.input) > 2 and node.input[2]:
        b = g.consts.get(node.input[2])
        if b is None:
            raise OpError("bias must be a constant")
        kw["bias"] = b.astype(np.float32)
    g.emit("conv", node.output[0], **kw)


@_op("MaxPool", "AveragePool")
def _pool(g: MilGraph, node) -> None:
    a = _attrs(node)
    if len(node.output) > 1 and node.output[1]:
        raise OpError("the Indices output")
    if any(d != 1 for d in a.get("dilations", [1])):
        raise OpError("dilated pooling")
    ks = list(a["kernel_shape"])
    kw: dict[str, Any] = dict(x=g.get(node.input[0]), kernel_sizes=np.array(ks, np.int32),
                              strides=np.array(a.get("strides", [1] * len(ks)), np.int32),
                              ceil_mode=bool(a.get("ceil_mode", 0)), **_pad_args(node, len(ks)))
    if node.op_type == "MaxPool":
        g.emit("max_pool", node.output[0], **kw)
    else:
        g.emit("avg_pool", node.output[0],
               exclude_padding_from_average=not bool(a.get("count_include_pad", 0)), **kw)


@_op("GlobalAveragePool", "GlobalMaxPool")
def _gpool(g: MilGraph, node) -> None:
    rank = len(g.shape(node.input[0]))
    kind = "reduce_mean" if node.op_type == "GlobalAveragePool" else "reduce_max"
    g.emit(kind, node.output[0], x=g.get(node.input[0]), axes=list(range(2, rank)), keep_dims=True)


@_op("BatchNormalization")
def _bn(g: MilGraph, node) -> None:
    vals = [g.consts.get(n) for n in node.input[1:5]]
    if any(v is None for v in vals):
        raise OpError("scale/bias/mean/var must be constants")
    s, b, m, v = (x.astype(np.float32) for x in vals)
    g.emit("batch_norm", node.output[0], x=g.get(node.input[0]), mean=m, variance=v, gamma=s,
           beta=b, epsilon=np.float32(_attrs(node).get("epsilon", 1e-5)))


def _reshape(g: MilGraph, node, shape: tuple[int, ...]) -> None:
    g.emit("reshape", node.output[0], x=g.get(node.input[0]), shape=np.array(shape, np.int32))


@_op("Reshape")
def _reshape_op(g: MilGraph, node) -> None:
    from converters.tflite.graph import resolve_batch
    from converters.tflite.ops import _reshape_target

    t = g.consts.get(node.input[1])
    if t is None:
        raise OpError("the target shape must be a constant")
    in_shape = g.shape(node.input[0])
    target = resolve_batch([int(d) for d in t.reshape(-1)], in_shape)
    _reshape(g, node, _reshape_target(in_shape, target, bool(_attrs(node).get("allowzero", 0))))


@_op("Flatten")
def _flatten(g: MilGraph, node) -> None:
    s = g.shape(node.input[0])
    axis = _axis(_attrs(node).get("axis", 1), len(s))
    if axis == 0:
        raise OpError("axis=0 folds the batch dimension")
    lead = -1 if -1 in s[:axis] else int(np.prod(s[:axis]))
    _reshape(g, node, (lead, int(np.prod(s[axis:]))))


def _const_axes(g: MilGraph, node) -> list[int] | None:
    a = _attrs(node)
    if "axes" in a:
        return list(a["axes"])
    if len(node.input) > 1 and node.input[1]:
        c = g.consts.get(node.input[1])
        if c is None:
            raise OpError("axes must be a constant")
        return [int(v) for v in c.reshape(-1)]
    return None


@_op("Squeeze", "Unsqueeze")
def _squeeze(g: MilGraph, node) -> None:
    axes = _const_axes(g, node)
    x = g.get(node.input[0])
    if node.op_type == "Squeeze":
        kw = {"axes": axes} if axes is not None else {}
        g.emit("squeeze", node.output[0], x=x, **kw)
    else:
        g.emit("expand_dims", node.output[0], x=x, axes=axes)


@_op("Transpose")
def _transpose(g: MilGraph, node) -> None:
    rank = len(g.shape(node.input[0]))
    perm = list(_attrs(node).get("perm", list(reversed(range(rank)))))
    g.emit("transpose", node.output[0], x=g.get(node.input[0]), perm=perm)


@_op("Concat")
def _concat(g: MilGraph, node) -> None:
    vals = [g.get(n) for n in node.input if n]
    vals = [v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
            for v in vals]
    g.emit("concat", node.output[0], values=vals, axis=int(_attrs(node)["axis"]),
           interleave=False)


@_op("Slice")
def _slice(g: MilGraph, node) -> None:
    s = g.shape(node.input[0])
    ins = list(node.input) + [""] * (5 - len(node.input))
    c = [g.consts.get(n) if n else None for n in ins[1:]]
    if c[0] is None or c[1] is None or (ins[3] and c[2] is None) or (ins[4] and c[3] is None):
        raise OpError("starts/ends/axes/steps must be constants")
    starts, ends = [int(v) for v in c[0].reshape(-1)], [int(v) for v in c[1].reshape(-1)]
    axes = [int(v) for v in c[2].reshape(-1)] if c[2] is not None else list(range(len(starts)))
    steps = [int(v) for v in c[3].reshape(-1)] if c[3] is not None else [1] * len(starts)
    rank = len(s)
    begin, end, stride = [0] * rank, [0] * rank, [1] * rank
    bmask, emask = [True] * rank, [True] * rank
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = _axis(ax, rank)
        n = s[ax]
        if n == -1:
            raise OpError("slicing the batch dimension")
        begin[ax] = min(max(st + n if st < 0 else st, 0), n)
        end[ax] = min(max(en + n if en < 0 else en, 0), n)
        stride[ax] = sp
        bmask[ax] = emask[ax] = False
    g.emit("slice_by_index", node.output[0], x=g.get(node.input[0]),
           begin=np.array(begin, np.int32), end=np.array(end, np.int32),
           stride=np.array(stride, np.int32), begin_mask=bmask, end_mask=emask)


@_op("Gather")
def _gather(g: MilGraph, node) -> None:
    idx = g.consts.get(node.input[1])
    if idx is None:
        raise OpError("indices must be constants")
    g.emit("gather", node.output[0], x=g.get(node.input[0]), indices=idx.astype(np.int32),
           axis=int(_attrs(node).get("axis", 0)))


_RED = {"ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max",
        "ReduceMin": "reduce_min"}


@_op(*_RED)
def _reduce(g: MilGraph, node) -> None:
    axes = _const_axes(g, node)
    kw = {"axes": axes} if axes is not None else {}
    g.emit(_RED[node.op_type], node.output[0], x=g.get(node.input[0]),
           keep_dims=bool(_attrs(node).get("keepdims", 1)), **kw)


@_op("ArgMax")
def _argmax(g: MilGraph, node) -> None:
    a = _attrs(node)
    if a.get("select_last_index", 0):
        raise OpError("select_last_index=1")
    g.emit("reduce_argmax", node.output[0], x=g.get(node.input[0]), axis=int(a.get("axis", 0)),
           keep_dims=bool(a.get("keepdims", 1)))


@_op("ArrayFeatureExtractor")
def _afe(g: MilGraph, node) -> None:
    idx = g.consts.get(node.input[1])
    if idx is None or node.input[0] in g.consts:
        raise OpError("only column selection with constant indices")
    rank = len(g.shape(node.input[0]))
    g.emit("gather", node.output[0], x=g.get(node.input[0]),
           indices=idx.reshape(-1).astype(np.int32), axis=rank - 1)


@_op("Scaler")
def _scaler(g: MilGraph, node) -> None:
    a = _attrs(node)
    x = g.get(node.input[0])
    offset = np.asarray(a.get("offset", [0.0]), np.float32)
    if np.any(offset != 0):
        x = g.tmp("sub", node.output[0], x=x, y=offset)
    g.emit("mul", node.output[0], x=x, y=np.asarray(a.get("scale", [1.0]), np.float32))


@_op("Normalizer")
def _normalizer(g: MilGraph, node) -> None:
    norm = _attrs(node).get("norm", "MAX")
    x = g.get(node.input[0])
    out = node.output[0]
    if norm == "L2":
        sq = g.tmp("mul", out, x=x, y=x)
        den = g.tmp("sqrt", out, x=g.tmp("reduce_sum", out, x=sq, axes=[1], keep_dims=True))
    elif norm == "L1":
        den = g.tmp("reduce_l1_norm", out, x=x, axes=[1], keep_dims=True)
    elif norm == "MAX":
        den = g.tmp("reduce_max", out, x=x, axes=[1], keep_dims=True)
    else:
        raise OpError(f"norm={norm}")
    if norm != "MAX":  # an all-zero row stays zero, as in ONNX Runtime
        den = g.tmp("maximum", out, x=den, y=np.float32(1e-30))
    g.emit("real_div", out, x=x, y=den)


@_op("LinearRegressor")
def _linreg(g: MilGraph, node) -> None:
    if _attrs(node).get("post_transform", "NONE") != "NONE":
        raise OpError("post_transform other than NONE")
    w, b = linear_weights(node, g.shape(node.input[0])[-1])
    g.emit("linear", node.output[0], x=g.get(node.input[0]), weight=w, bias=b)


@_op("LinearClassifier")
def _linclf(g: MilGraph, node) -> None:
    a = _attrs(node)
    pt = a.get("post_transform", "NONE")
    if pt not in ("NONE", "LOGISTIC", "SOFTMAX"):
        raise OpError(f"post_transform={pt}")
    if len(node.output) < 2 or node.output[1] not in g.outputs and not _feeds_needed(g, node.output[1]):
        raise OpError("only the scores output is converted (labels come from postprocess.classes)")
    w, b = linear_weights(node, g.shape(node.input[0])[-1])
    classes = a.get("classlabels_ints", a.get("classlabels_strings"))
    out = node.output[1]
    raw = g.tmp("linear", out, x=g.get(node.input[0]), weight=w, bias=b)
    if w.shape[0] == 1 and len(classes) == 2:  # ONNX Runtime: [1 - s, s] after the transform
        if pt == "SOFTMAX":
            raise OpError("SOFTMAX on a single score column")
        s = g.tmp("sigmoid", out, x=raw) if pt == "LOGISTIC" else raw
        neg = g.tmp("sub", out, x=np.float32(1.0), y=s)
        g.emit("concat", out, values=[neg, s], axis=1, interleave=False)
    elif pt == "NONE":
        g.set(out, raw)
    elif pt == "LOGISTIC":
        g.emit("sigmoid", out, x=raw)
    else:
        g.emit("softmax", out, x=raw, axis=-1)


def _feeds_needed(g: MilGraph, name: str) -> bool:
    return any(name in n.input for n in g.nodes)


# ---- conversion ----------------------------------------------------------------------------------
def supported_ops() -> list[str]:
    return sorted(COREML_OPS)


def kept_outputs(manifest, model) -> tuple[list[str], dict[str, str]]:
    """Outputs the Core ML program produces (all but label outputs) and the dropped ones."""
    graph_outs = [o.name for o in model.graph.output]
    roles = {o.name: o.role for o in manifest.outputs}
    keep = [n for n in graph_outs if roles.get(n) != "label"
            and (roles or n not in ("label", "output_label"))]
    dropped = {n: "label output: Core ML returns probabilities; postprocess.classes names the label"
               for n in graph_outs if n not in keep}
    if not keep:
        raise ConversionError("the model has no output to convert besides labels", field="outputs")
    return keep, dropped


def build_program(model, outputs: list[str], config: CoreMLConfig):
    """ONNX → (MIL program, coremltools MLModel, expected Core ML op counts)."""
    ct = import_coremltools()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program, get_new_symbol, types

    g = MilGraph(model, outputs, mb, types)
    problems = g.scan()
    if problems:
        raise UnsupportedOpsError("Core ML", problems)
    target = getattr(ct.target, _TARGETS[config.minimum_deployment_target])
    specs, ct_inputs = {}, []
    for inp in model.graph.input:
        if inp.name in g.consts:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in inp.type.tensor_type.shape.dim]
        if any(d is None for d in dims[1:]):
            raise UnsupportedOpsError("Core ML", [(f"graph input {inp.name!r}: only the batch "
                                                  "dimension may be free")])
        sym = get_new_symbol()
        shape = tuple([sym if dims and dims[0] is None else dims[0]] + dims[1:])
        specs[inp.name] = mb.TensorSpec(shape=shape, dtype=types.fp32)
        ct_shape = tuple([ct.RangeDim(1, config.max_batch, 1) if dims[0] is None else dims[0]]
                         + dims[1:])
        ct_inputs.append(ct.TensorType(name=inp.name, shape=ct_shape))
    prog = Program()
    with Function(specs, target) as func:
        func.set_outputs(g.build({n: func.inputs[n] for n in specs}))
        prog.add_function("main", func)
    precision = ct.precision.FLOAT32 if config.compute_precision == "float32" else \
        ct.precision.FLOAT16
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):  # progress bars, macOS-library notices
        warnings.simplefilter("ignore")
        try:
            mlmodel = ct.convert(prog, convert_to="mlprogram", inputs=ct_inputs,
                                 minimum_deployment_target=target, compute_precision=precision,
                                 skip_model_load=True)
        except Exception as exc:
            raise ConversionError(f"coremltools could not compile the MIL program: "
                                  f"{str(exc).splitlines()[0][:300]}", field="model") from exc
    return prog, mlmodel, g.expected


#: ops coremltools' default passes may legitimately fold into a neighbour (bias/scale/batch-norm
#: into linear/conv, reshape chains, identities); every other op built must survive into the spec.
FOLDABLE = frozenset({"add", "sub", "mul", "real_div", "batch_norm", "reshape", "transpose",
                      "identity", "cast", "squeeze", "expand_dims", "maximum", "minimum"})


def validate_spec(spec, model, outputs: list[str], expected: Counter, config: CoreMLConfig
                  ) -> dict[str, Any]:
    """Structural checks of the Core ML spec; returns facts for the provenance."""
    problems = []
    if spec.WhichOneof("Type") != "mlProgram":
        problems.append(f"model type is {spec.WhichOneof('Type')}, expected mlProgram")
    want_in = {i.name: i for i in model.graph.input}
    got_in = {i.name: i for i in spec.description.input}
    if set(got_in) != {n for n in want_in if n not in {x.name for x in model.graph.initializer}}:
        problems.append(f"inputs {sorted(got_in)} differ from the ONNX inputs {sorted(want_in)}")
    for name, inp in got_in.items():
        arr = inp.type.multiArrayType
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in want_in[name].type.tensor_type.shape.dim]
        if list(arr.shape)[1:] != dims[1:]:
            problems.append(f"input {name} has shape {list(arr.shape)}, ONNX {dims}")
        if arr.dataType != arr.FLOAT32:
            problems.append(f"input {name} is not float32")
        ranges = arr.shapeRange.sizeRanges
        if dims and dims[0] is None and (not ranges or ranges[0].upperBound != config.max_batch):
            problems.append(f"input {name} has no flexible batch range up to {config.max_batch}")
    got_out = [o.name for o in spec.description.output]
    if got_out != outputs:
        problems.append(f"outputs {got_out} differ from the expected {outputs}")
    fn = spec.mlProgram.functions["main"]
    block = fn.block_specializations[fn.opset]
    ops = Counter(op.type for op in block.operations)
    for kind, n in expected.items():
        if kind not in ops and kind not in FOLDABLE:
            problems.append(f"the program lost its {kind} op(s) ({n} built)")
    if problems:
        raise ConversionError("the Core ML spec does not match the ONNX model: "
                              + "; ".join(problems), field="model")
    return {"coreml_ops": dict(sorted((k, v) for k, v in ops.items() if k != "const")),
            "opset": fn.opset, "specification_version": spec.specificationVersion}


def mil_value_check(model, outputs: list[str], source: Bundle) -> dict[str, Any]:
    """Evaluate the MIL translation on the golden inputs with coremltools' own numpy op
    semantics (MIL value inference) and compare with ONNX Runtime.

    This checks the ONNX → MIL mapping on Linux; it does not run the Core ML runtime
    (which only exists on macOS/iOS). Ops without value inference (conv, pooling) make
    the check "not computable" rather than passing.
    """
    import_coremltools()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    from edge_runtime.model import Model

    src = Model.load(source, warmup=False)
    try:
        return _mil_values_vs_onnx(src, model, outputs, source, mb, types)
    finally:
        src.close()


def _mil_values_vs_onnx(src, model, outputs: list[str], source: Bundle, mb, types
                        ) -> dict[str, Any]:
    from coremltools.converters.mil.mil import Function

    feeds: list[dict[str, np.ndarray]] = []
    for gv in source.manifest.golden:
        if gv.rows is not None and src.codec is not None:
            feeds.append({src._feed_name: src.codec.encode(gv.rows)})
        elif gv.tensors is not None:
            from edge_runtime.codec import encode_tensors

            feeds.append(encode_tensors(src.contract.tensors, gv.tensors))
    if not feeds:
        return {"status": "not computable", "reason": "the source bundle has no golden vectors"}
    worst, rows = 0.0, 0
    target = import_coremltools().target.iOS15
    for feed in feeds:
        want = dict(zip(src.engine.output_names, src.engine.run(feed)))
        g = MilGraph(model, outputs, mb, types)
        # value inference evaluates e.g. sigmoid as 1/(1+exp(-x)): exp overflows to inf for
        # large |x| and gives the exact limit; numpy's warning about it is noise here
        with Function({}, target), np.errstate(over="ignore", under="ignore"):
            outs = g.build({k: mb.const(val=v.astype(np.float32)) for k, v in feed.items()})
            missing = [n for n, v in g.vars.items() if not isinstance(v, np.ndarray)
                       and v.val is None and not isinstance(v, dict)]
            if any(o.val is None for o in outs):
                ops = sorted({v.op.op_type for n, v in g.vars.items()
                              if n in missing and getattr(v, "op", None) is not None
                              and all(getattr(i, "val", None) is not None
                                      for i in v.op.inputs.values() if hasattr(i, "val"))})
                return {"status": "not computable",
                        "reason": f"no MIL value inference for {', '.join(ops[:5]) or 'some ops'}"}
            for name, o in zip(outputs, outs):
                worst = max(worst, max_abs_diff(o.val, want[name]))  # NaN-safe: inf, not nan
        rows += len(next(iter(feed.values())))
    return {"status": "passed", "rows": rows, "max_abs_diff": worst}


def onnx_to_coreml(src_bundle: str | Path | Bundle, out_dir: str | Path,
                   config: CoreMLConfig | None = None) -> Path:
    """Convert an ONNX bundle to a signed Core ML bundle at ``out_dir``; return its path.

    Numerical checks need macOS: on Linux the spec is validated structurally (see
    :data:`NUMERICAL_NOTE`, also recorded in the bundle's provenance).
    """
    config = config or CoreMLConfig()
    config.validate()
    key = resolve_key(config.key)
    ct = import_coremltools()
    t0 = time.perf_counter()
    src = load_source(src_bundle, public_key=config.public_key)
    out = check_out_dir(src.bundle.root, out_dir)
    m = src.manifest
    outputs, dropped = kept_outputs(m, src.onnx_model)
    _, mlmodel, expected = build_program(src.onnx_model, outputs, config)
    facts = validate_spec(mlmodel.get_spec(), src.onnx_model, outputs, expected, config)
    convert_s = time.perf_counter() - t0
    mil = mil_value_check(src.onnx_model, outputs, src.bundle)
    with staging_dir(out) as stage:
        pkg = stage / PACKAGE
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            mlmodel.save(str(pkg))
        files = {f"{PACKAGE}/{p.relative_to(pkg).as_posix()}": p
                 for p in sorted(pkg.rglob("*")) if p.is_file()}
        if MODEL_FILE not in files:
            raise ConversionError("coremltools wrote no Manifest.json in the package",
                                  field="model")
        numerical = _numerical_check(pkg, src) if sys.platform == "darwin" else {
            "status": "not run", "reason": NUMERICAL_NOTE}
        tol = 1e-4 if config.compute_precision == "float32" else 1e-2
        if mil["status"] == "passed" and mil["max_abs_diff"] > tol:
            raise ConversionError(f"the MIL program disagrees with ONNX Runtime on the golden "
                                  f"inputs: max |Δ| {mil['max_abs_diff']:.3g} > {tol:g}",
                                  field="parity", mil_value_check=mil)
        provenance = {
            "converter": "edgefleet.converters.coreml", "coremltools": ct.__version__,
            "compute_precision": config.compute_precision,
            "minimum_deployment_target": config.minimum_deployment_target,
            "max_batch": config.max_batch, "conversion_seconds": round(convert_s, 3),
            "dropped_outputs": dropped, "numerical_check": numerical, "mil_value_check": mil,
            **facts, **config.extra_provenance,
        }
        fields = carried_manifest(m, fmt="coreml", model_file=MODEL_FILE, output_names=outputs,
                                  provenance=provenance)
        if config.compute_precision == "float16":
            for gv in fields.get("golden", []):
                gv["atol"] = max(gv.get("atol", 1e-4), 1e-2)
        if config.version:
            fields["version"] = config.version
        # Core ML cannot be loaded here, so no self-test: the golden vectors stay the source's.
        return publish(stage, out, fields, files, key, self_test=False)


def _numerical_check(pkg: Path, src) -> dict[str, Any]:  # pragma: no cover - macOS only
    """On macOS: run the golden inputs through Core ML and the ONNX source."""
    import coremltools as ct

    from edge_runtime.model import Model

    mlm = ct.models.MLModel(str(pkg))
    onnx_model = Model.load(src.bundle, warmup=False)
    worst = 0.0
    for gv in src.manifest.golden:
        if gv.rows is None:
            continue
        x = onnx_model.codec.encode(gv.rows)
        want = onnx_model.engine.run({onnx_model._feed_name: x})
        got = mlm.predict({onnx_model._feed_name: x})
        for name, arr in zip(onnx_model.engine.output_names, want):
            if name in got:
                worst = max(worst, max_abs_diff(got[name], arr))
    return {"status": "run on macOS", "max_abs_diff": worst}
