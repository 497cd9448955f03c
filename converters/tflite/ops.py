"""ONNX op handlers for the TFLite writer: one function per ONNX op type.

Each handler reads its node's inputs from the :class:`GraphConverter` (tensors
or folded constants), emits TFLite builtin ops and registers its outputs. A
``check`` function, when given, rejects attribute combinations up front so the
converter can list *every* unsupported node before writing anything.
"""

from __future__ import annotations

import math

import numpy as np

from converters.tflite.graph import (
    GraphConverter,
    OpError,
    Value,
    attrs,
    broadcast_shape,
    clip_bounds,
    linear_weights,
    register,
    resolve_batch,
)

NONE, RELU, RELU_N1_TO_1, RELU6, TANH = 0, 1, 2, 3, 4
STRING_LABELS = ("string class labels have no TFLite tensor here; the bundle's "
                 "postprocess.classes names the label from the probabilities")
SAME, VALID = 0, 1
INT64 = 4


# ---- helpers -------------------------------------------------------------------------
def _const_for(ctx: GraphConverter, arr: np.ndarray, like: Value, name: str) -> Value:
    """A constant operand for an elementwise op with ``like``, in ``like``'s layout."""
    arr = np.asarray(arr).astype(like.dtype)
    logical = arr.shape
    if like.layout == "nhwc":
        if arr.ndim > 4:
            raise OpError(f"constant of rank {arr.ndim} cannot broadcast against NHWC")
        arr = arr.reshape((1,) * (4 - arr.ndim) + arr.shape).transpose(0, 2, 3, 1)
        logical = tuple(arr.shape[i] for i in (0, 3, 1, 2))
    if arr.ndim == 0:
        arr = arr.reshape(1)
        logical = (1,)
    idx = ctx.const_tensor(arr, name)
    return Value(idx, tuple(logical), arr.dtype, like.layout)


def _binary_operands(ctx: GraphConverter, a: str, b: str, name: str) -> tuple[Value, Value]:
    ca, cb = ctx.const(a), ctx.const(b)
    if ca is not None and cb is not None:  # pragma: no cover - folded earlier
        raise OpError("both operands are constants")
    if ca is None and cb is None:
        va, vb = ctx.value(a, "any"), ctx.value(b, "any")
        if va.layout != vb.layout:
            want = "nhwc" if va.rank == vb.rank == 4 else "plain"
            va, vb = ctx.value(a, want), ctx.value(b, want)
        if va.layout == "nhwc" and (va.rank != 4 or vb.rank != 4):
            va, vb = ctx.value(a, "plain"), ctx.value(b, "plain")
        return va, vb
    tensor_name, c = (a, cb) if ca is None else (b, ca)
    v = ctx.value(tensor_name, "any")
    if v.layout == "nhwc" and np.ndim(c) > 4:
        v = ctx.value(tensor_name, "plain")
    cv = _const_for(ctx, c, v, name)
    return (v, cv) if ca is None else (cv, v)


def _out_layout_shape(va: Value, vb: Value) -> tuple[str, tuple[int, ...]]:
    layout = "nhwc" if "nhwc" in (va.layout, vb.layout) else "plain"
    return layout, broadcast_shape(va.shape, vb.shape)


# ---- elementwise ---------------------------------------------------------------------
_BINARY = {"Add": ("ADD", "Add"), "Sub": ("SUB", "Sub"), "Mul": ("MUL", "Mul"),
           "Div": ("DIV", "Div"), "Max": ("MAXIMUM", None), "Min": ("MINIMUM", None),
           "Pow": ("POW", None)}


def _check_variadic(ctx, node):
    if node.op_type in ("Max", "Min") and len([x for x in node.input if x]) != 2:
        return "only two inputs are supported"
    return None


@register(*_BINARY, check=_check_variadic, doc="ADD/SUB/MUL/DIV/MAXIMUM/MINIMUM/POW, broadcasting")
def binary(ctx: GraphConverter, node) -> None:
    op, opt_kind = _BINARY[node.op_type]
    a, b = node.input[0], node.input[1]
    va, vb = _binary_operands(ctx, a, b, f"{node.output[0]}_operand")
    layout, shape = _out_layout_shape(va, vb)
    act, out_name = (ctx.fuse_activation(node.output[0]) if opt_kind else (NONE, node.output[0]))
    dtype = va.dtype
    out = ctx.new_value(out_name, shape, dtype, layout)
    opts = ctx.options(opt_kind, fusedActivationFunction=act) if opt_kind else None
    ctx.emit(op, [va.index, vb.index], [out.index], opts)


_UNARY = {"Relu": "RELU", "Sigmoid": "LOGISTIC", "Tanh": "TANH", "Exp": "EXP", "Log": "LOG",
          "Sqrt": "SQRT", "Abs": "ABS", "Neg": "NEG", "Floor": "FLOOR", "Ceil": "CEIL",
          "HardSwish": "HARD_SWISH", "Sin": "SIN", "Cos": "COS", "Reciprocal": None,
          "Elu": "ELU", "LeakyRelu": "LEAKY_RELU", "Erf": None}
_UNARY.pop("Erf")


def _check_unary(ctx, node):
    a = attrs(node)
    if node.op_type == "Elu" and abs(a.get("alpha", 1.0) - 1.0) > 1e-7:
        return "alpha other than 1.0"
    return None


@register(*_UNARY, check=_check_unary, doc="layout-neutral unary activations")
def unary(ctx: GraphConverter, node) -> None:
    v = ctx.value(node.input[0], "any")
    out = ctx.new_value(node.output[0], v.shape, v.dtype, v.layout)
    if node.op_type == "Reciprocal":
        one = ctx.const_tensor(np.ones(1, v.dtype), "one")
        ctx.emit("DIV", [one, v.index], [out.index], ctx.options("Div", fusedActivationFunction=0))
        return
    opts = None
    if node.op_type == "LeakyRelu":
        opts = ctx.options("LeakyRelu", alpha=float(attrs(node).get("alpha", 0.01)))
    ctx.emit(_UNARY[node.op_type], [v.index], [out.index], opts)


def _check_clip(ctx, node):
    for k in (1, 2):
        if len(node.input) > k and node.input[k] and not ctx.is_const_at_scan(node.input[k]):
            return "min/max must be constants"
    return None


@register("Clip", check=_check_clip, doc="RELU / RELU6 / RELU_N1_TO_1, else MAXIMUM+MINIMUM")
def clip(ctx: GraphConverter, node) -> None:
    v = ctx.value(node.input[0], "any")
    lo, hi = clip_bounds(ctx, node)
    named = {(0.0, 6.0): "RELU6", (0.0, math.inf): "RELU", (-1.0, 1.0): "RELU_N1_TO_1"}
    out = ctx.new_value(node.output[0], v.shape, v.dtype, v.layout)
    if (lo, hi) in named:
        ctx.emit(named[(lo, hi)], [v.index], [out.index])
        return
    cur = v
    if lo != -math.inf:
        nxt = out if hi == math.inf else ctx.new_value(ctx.tmp(node.output[0]), v.shape, v.dtype,
                                                       v.layout)
        ctx.emit("MAXIMUM", [cur.index, ctx.const_tensor(np.array([lo], v.dtype), "clip_min")],
                 [nxt.index])
        cur = nxt
    if hi != math.inf:
        ctx.emit("MINIMUM", [cur.index, ctx.const_tensor(np.array([hi], v.dtype), "clip_max")],
                 [out.index])
    if lo == -math.inf and hi == math.inf:
        ctx.alias(node.output[0], node.input[0])


@register("Identity", "Dropout", doc="no-op at inference")
def identity(ctx: GraphConverter, node) -> None:
    ctx.alias(node.output[0], node.input[0])


def _check_cast(ctx, node):
    to = ctx.onnx.helper.tensor_dtype_to_np_dtype(attrs(node)["to"])
    if np.dtype(to) not in (np.float32, np.int32, np.int64, np.bool_, np.int8, np.uint8):
        return f"cast to {np.dtype(to)}"
    return None


@register("Cast", check=_check_cast, doc="no-op when the type does not change, else CAST")
def cast(ctx: GraphConverter, node) -> None:
    to = np.dtype(ctx.onnx.helper.tensor_dtype_to_np_dtype(attrs(node)["to"]))
    v = ctx.value(node.input[0], "any")
    if v.dtype == to:
        ctx.alias(node.output[0], node.input[0])
        return
    from converters.tflite.builder import tensor_type

    out = ctx.new_value(node.output[0], v.shape, to, v.layout)
    ctx.emit("CAST", [v.index], [out.index],
             ctx.options("Cast", inDataType=tensor_type(v.dtype), outDataType=tensor_type(to)))


@register("Not", doc="LOGICAL_NOT (skl2onnx's OvR normalisation: Cast bool → Not → Cast)")
def logical_not(ctx: GraphConverter, node) -> None:
    v = ctx.value(node.input[0], "any")
    if v.dtype != np.bool_:
        raise OpError(f"Not on a {v.dtype} tensor (bool only)")
    out = ctx.new_value(node.output[0], v.shape, np.bool_, v.layout)
    ctx.emit("LOGICAL_NOT", [v.index], [out.index])


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


@register("Softmax", "LogSoftmax", doc="SOFTMAX / LOG_SOFTMAX on the last (or channel) axis")
def softmax(ctx: GraphConverter, node) -> None:
    v = ctx.value(node.input[0], "any")
    opset = ctx.opset.get("", 13)
    axis = _axis(attrs(node).get("axis", -1 if opset >= 13 else 1), v.rank)
    op = "SOFTMAX" if node.op_type == "Softmax" else "LOG_SOFTMAX"
    opts = ctx.options("Softmax", beta=1.0) if op == "SOFTMAX" else None
    last_physical = (v.layout == "nhwc" and axis == 1) or (v.layout == "plain" and axis == v.rank - 1)
    if last_physical:
        out = ctx.new_value(node.output[0], v.shape, v.dtype, v.layout)
        ctx.emit(op, [v.index], [out.index], opts)
        return
    if opset < 13:  # old semantics: flatten to 2-D at axis
        v = ctx.value(node.input[0], "plain")
        if v.shape[0] != -1 or axis == 0:
            raise OpError("axis 0 softmax over a free batch dimension")
        inner = int(np.prod(v.shape[axis:]))
        flat = ctx.new_value(ctx.tmp(node.output[0]), (-1, inner), v.dtype)
        ctx.reshape_op(v, flat, (-1, inner))
        sm = ctx.new_value(ctx.tmp(node.output[0]), (-1, inner), v.dtype)
        ctx.emit(op, [flat.index], [sm.index], opts)
        out = ctx.new_value(node.output[0], v.shape, v.dtype)
        ctx.reshape_op(sm, out, tuple(-1 if i == 0 else d for i, d in enumerate(v.shape)))
        return
    raise OpError(f"softmax over axis {axis} (not the last axis) is not supported")


# ---- dense ---------------------------------------------------------------------------------
def _fully_connected(ctx: GraphConverter, x: Value, w: np.ndarray, bias: np.ndarray | None,
                     out_name: str, *, fuse: bool = True, keep_dims: bool = False) -> Value:
    """FULLY_CONNECTED: ``w`` is [units, in] (TFLite layout)."""
    units = w.shape[0]
    w_idx, quantized = ctx.weights(w, f"{out_name}_weights", axis=0)
    if bias is None:
        bias = np.zeros(units, np.float32)
    b_idx = ctx.const_tensor(np.asarray(bias, np.float32).reshape(units), f"{out_name}_bias")
    act, final = ctx.fuse_activation(out_name) if fuse else (NONE, out_name)
    shape = (x.shape[:-1] + (units,)) if keep_dims else (x.shape[0], units)
    out = ctx.new_value(final, shape, np.float32)
    opts = ctx.options("FullyConnected", fusedActivationFunction=act, keepNumDims=keep_dims,
                       asymmetricQuantizeInputs=quantized)
    ctx.emit("FULLY_CONNECTED", [x.index, w_idx, b_idx], [out.index], opts,
             version=9 if quantized else 1)
    return out


def _check_gemm(ctx, node):
    a = attrs(node)
    if a.get("transA", 0):
        return "transA=1"
    if not ctx.is_const_at_scan(node.input[1]):
        return "B must be a constant (weights)"
    if len(node.input) > 2 and node.input[2] and not ctx.is_const_at_scan(node.input[2]):
        return "C must be a constant (bias)"
    return None


@register("Gemm", check=_check_gemm, doc="FULLY_CONNECTED (+ fused Relu)")
def gemm(ctx: GraphConverter, node) -> None:
    a = attrs(node)
    x = ctx.value(node.input[0], "plain")
    if x.rank != 2:
        raise OpError(f"Gemm input has rank {x.rank}, expected 2")
    bmat = ctx.const(node.input[1]).astype(np.float32)
    w = (bmat if a.get("transB", 0) else bmat.T) * np.float32(a.get("alpha", 1.0))
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = ctx.const(node.input[2]).astype(np.float32) * np.float32(a.get("beta", 1.0))
        if c.size not in (1, w.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
            raise OpError(f"bias C of shape {list(c.shape)} does not broadcast to [{w.shape[0]}]")
        bias = np.broadcast_to(c.reshape(-1), (w.shape[0],)).copy()
    _fully_connected(ctx, x, w, bias, node.output[0])


def _check_matmul(ctx, node):
    if ctx.is_const_at_scan(node.input[0]):
        return "a constant left operand is not supported"
    return None


@register("MatMul", check=_check_matmul, doc="FULLY_CONNECTED (+ fused bias Add and Relu) "
                                             "or BATCH_MATMUL for two tensors")
def matmul(ctx: GraphConverter, node) -> None:
    x = ctx.value(node.input[0], "plain")
    wmat = ctx.const(node.input[1])
    if wmat is None:
        y = ctx.value(node.input[1], "plain")
        shape = broadcast_shape(x.shape[:-2], y.shape[:-2]) + (x.shape[-2], y.shape[-1])
        out = ctx.new_value(node.output[0], shape, x.dtype)
        ctx.emit("BATCH_MATMUL", [x.index, y.index], [out.index],
                 ctx.options("BatchMatMul", adjX=False, adjY=False))
        return
    if wmat.ndim != 2:
        raise OpError(f"constant right operand of rank {wmat.ndim}; only 2-D weights")
    w = wmat.astype(np.float32).T  # [units, in]
    units = w.shape[0]
    bias, out_name = None, node.output[0]
    add = ctx.sole_consumer(out_name, ("Add",))
    if add is not None:
        other = add.input[1] if add.input[0] == out_name else add.input[0]
        c = ctx.const(other)
        if c is not None and c.size == units and c.shape[-1] == units and c.ndim <= x.rank:
            bias = c.astype(np.float32).reshape(units)
            ctx.skip.add(id(add))
            out_name = add.output[0]
    _fully_connected(ctx, x, w, bias, out_name, keep_dims=x.rank > 2)


# ---- convolution and pooling ----------------------------------------------------------------
def _pads(node, in_hw, kernel, strides, dilations, ceil_mode=False):
    """ONNX padding → ("SAME"|"VALID", explicit [(before, after)] or None, out_hw)."""
    a = attrs(node)
    auto = a.get("auto_pad", "NOTSET")
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for n, s, e in zip(in_hw, strides, eff):
            out = math.ceil(n / s)
            total = max((out - 1) * s + e - n, 0)
            small = total // 2
            pads.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
    elif auto == "VALID":
        pads = [(0, 0)] * len(in_hw)
    else:
        p = list(a.get("pads", [0] * (2 * len(in_hw))))
        half = len(p) // 2
        pads = list(zip(p[:half], p[half:]))
    rnd = math.ceil if ceil_mode else math.floor
    out_hw = [int(rnd((n + b + e - k) / s)) + 1 for n, (b, e), k, s in zip(in_hw, pads, eff, strides)]
    if ceil_mode:
        floor_hw = [(n + b + e - k) // s + 1 for n, (b, e), k, s in zip(in_hw, pads, eff, strides)]
        if floor_hw != out_hw:
            raise OpError("ceil_mode=1 changes the output size; not supported")
    if all(b == 0 and e == 0 for b, e in pads):
        return "VALID", None, out_hw
    same = []
    for n, s, e in zip(in_hw, strides, eff):
        out = math.ceil(n / s)
        total = max((out - 1) * s + e - n, 0)
        same.append(((total // 2, total - total // 2), out))
    if all(o == so and p == sp for (sp, so), p, o in zip(same, pads, out_hw)):
        return "SAME", None, out_hw
    return "VALID", pads, out_hw


def _pad_nhwc(ctx: GraphConverter, v: Value, pads, value: float | None, name: str) -> Value:
    (t, b), (l, r) = pads
    n, c, h, w = v.shape
    out = ctx.new_value(ctx.tmp(name), (n, c, h + t + b, w + l + r), v.dtype, "nhwc")
    paddings = ctx.const_tensor(np.array([[0, 0], [t, b], [l, r], [0, 0]], np.int32), "paddings")
    if value is None:
        ctx.emit("PAD", [v.index, paddings], [out.index])
    else:
        cval = ctx.const_tensor(np.array([value], np.float32), "pad_value")
        ctx.emit("PADV2", [v.index, paddings, cval], [out.index])
    return out


def _check_conv(ctx, node):
    if not ctx.is_const_at_scan(node.input[1]):
        return "weights must be constants"
    if len(node.input) > 2 and node.input[2] and not ctx.is_const_at_scan(node.input[2]):
        return "bias must be a constant"
    ks = attrs(node).get("kernel_shape")
    w = ctx.const(node.input[1])
    dims = len(ks) if ks is not None else (w.ndim - 2 if w is not None else 2)
    if dims != 2:
        return f"{dims}-D convolution (only 2-D)"
    return None


@register("Conv", check=_check_conv, doc="CONV_2D / DEPTHWISE_CONV_2D in NHWC (+ fused Relu)")
def conv(ctx: GraphConverter, node) -> None:
    a = attrs(node)
    x = ctx.value(node.input[0], "nhwc")
    if x.rank != 4:
        raise OpError(f"input of rank {x.rank}; only 2-D convolution (rank 4) is supported")
    w = ctx.const(node.input[1]).astype(np.float32)  # [O, I/g, kh, kw]
    o_ch, _, kh, kw = w.shape
    n, c, h, wd = x.shape
    group = int(a.get("group", 1))
    strides = list(a.get("strides", [1, 1]))
    dil = list(a.get("dilations", [1, 1]))
    mode, explicit, (ho, wo) = _pads(node, (h, wd), (kh, kw), strides, dil)
    if explicit is not None:
        x = _pad_nhwc(ctx, x, explicit, None, node.output[0])
    bias = np.zeros(o_ch, np.float32)
    if len(node.input) > 2 and node.input[2]:
        bias = ctx.const(node.input[2]).astype(np.float32).reshape(o_ch)
    act, final = ctx.fuse_activation(node.output[0])
    out = ctx.new_value(final, (n, o_ch, ho, wo), np.float32, "nhwc")
    b_idx = ctx.const_tensor(bias, f"{final}_bias")
    pad = SAME if mode == "SAME" else VALID
    if group == 1:
        w_idx, q = ctx.weights(w.transpose(0, 2, 3, 1), f"{final}_weights", axis=0)  # OHWI
        ctx.emit("CONV_2D", [x.index, w_idx, b_idx], [out.index],
                 ctx.options("Conv2D", padding=pad, strideH=strides[0], strideW=strides[1],
                             dilationHFactor=dil[0], dilationWFactor=dil[1],
                             fusedActivationFunction=act), version=2 if q else 1)
    elif group == c and o_ch % c == 0:
        w_idx, q = ctx.weights(w.transpose(1, 2, 3, 0), f"{final}_weights", axis=3)  # 1HWO
        ctx.emit("DEPTHWISE_CONV_2D", [x.index, w_idx, b_idx], [out.index],
                 ctx.options("DepthwiseConv2D", padding=pad, strideH=strides[0],
                             strideW=strides[1], depthMultiplier=o_ch // c,
                             dilationHFactor=dil[0], dilationWFactor=dil[1],
                             fusedActivationFunction=act), version=2 if not q else 6)
    else:
        raise OpError(f"grouped convolution (group={group}) other than depthwise")


def _check_pool(ctx, node):
    a = attrs(node)
    if len(a.get("kernel_shape", [])) != 2:
        return "only 2-D pooling"
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        return "dilated pooling"
    if node.op_type == "MaxPool" and len(node.output) > 1 and ctx.used(node.output[1]):
        return "the Indices output"
    return None


@register("MaxPool", "AveragePool", check=_check_pool, doc="MAX_POOL_2D / AVERAGE_POOL_2D in NHWC")
def pool(ctx: GraphConverter, node) -> None:
    a = attrs(node)
    x = ctx.value(node.input[0], "nhwc")
    if x.rank != 4:
        raise OpError(f"input of rank {x.rank}; only 2-D pooling (rank 4) is supported")
    n, c, h, w = x.shape
    kh, kw = a["kernel_shape"]
    strides = list(a.get("strides", [1, 1]))
    mode, explicit, (ho, wo) = _pads(node, (h, w), (kh, kw), strides, [1, 1],
                                     bool(a.get("ceil_mode", 0)))
    is_max = node.op_type == "MaxPool"
    include = bool(a.get("count_include_pad", 0))
    if not is_max and include and mode == "SAME":
        # TFLite's SAME average excludes padding; ONNX asked to include it.
        _, explicit, _ = _pads_explicit(node, (h, w), (kh, kw), strides)
        mode = "VALID"
    if explicit is not None:
        if not is_max and not include:
            raise OpError("asymmetric padding with count_include_pad=0")
        x = _pad_nhwc(ctx, x, explicit, float(np.finfo(np.float32).min) if is_max else None,
                      node.output[0])
    act, final = ctx.fuse_activation(node.output[0])
    out = ctx.new_value(final, (n, c, ho, wo), x.dtype, "nhwc")
    ctx.emit("MAX_POOL_2D" if is_max else "AVERAGE_POOL_2D", [x.index], [out.index],
             ctx.options("Pool2D", padding=SAME if mode == "SAME" else VALID,
                         strideH=strides[0], strideW=strides[1], filterHeight=kh,
                         filterWidth=kw, fusedActivationFunction=act))


def _pads_explicit(node, in_hw, kernel, strides):
    a = attrs(node)
    p = list(a.get("pads", [0, 0, 0, 0]))
    if a.get("auto_pad", "NOTSET") != "NOTSET":
        raise OpError("auto_pad with count_include_pad=1")
    return "VALID", [(p[0], p[2]), (p[1], p[3])], None


@register("GlobalAveragePool", "GlobalMaxPool", doc="MEAN / REDUCE_MAX over H, W (NHWC)")
def global_pool(ctx: GraphConverter, node) -> None:
    x = ctx.value(node.input[0], "nhwc")
    if x.rank != 4:
        raise OpError(f"input of rank {x.rank}; only rank 4 is supported")
    n, c, _, _ = x.shape
    out = ctx.new_value(node.output[0], (n, c, 1, 1), x.dtype, "nhwc")
    axes = ctx.const_tensor(np.array([1, 2], np.int32), "hw_axes")
    ctx.emit("MEAN" if node.op_type == "GlobalAveragePool" else "REDUCE_MAX", [x.index, axes],
             [out.index], ctx.options("Reducer", keepDims=True))


def _check_bn(ctx, node):
    if not all(ctx.is_const_at_scan(i) for i in node.input[1:5]):
        return "scale/bias/mean/var must be constants"
    if len([o for o in node.output if o]) > 1:
        return "training mode outputs"
    return None


@register("BatchNormalization", check=_check_bn, doc="MUL + ADD with folded per-channel constants")
def batch_norm(ctx: GraphConverter, node) -> None:
    eps = float(attrs(node).get("epsilon", 1e-5))
    scale, bias, mean, var = (ctx.const(i).astype(np.float64) for i in node.input[1:5])
    mul = scale / np.sqrt(var + eps)
    add = bias - mean * mul
    x = ctx.value(node.input[0], "any")
    shape = (x.shape[1],) + (1,) * (x.rank - 2)  # per-channel, ONNX broadcast form
    mv = _const_for(ctx, mul.reshape(shape), x, "bn_mul")
    av = _const_for(ctx, add.reshape(shape), x, "bn_add")
    tmp = ctx.new_value(ctx.tmp(node.output[0]), x.shape, x.dtype, x.layout)
    ctx.emit("MUL", [x.index, mv.index], [tmp.index], ctx.options("Mul", fusedActivationFunction=0))
    act, final = ctx.fuse_activation(node.output[0])
    out = ctx.new_value(final, x.shape, x.dtype, x.layout)
    ctx.emit("ADD", [tmp.index, av.index], [out.index], ctx.options("Add", fusedActivationFunction=act))


# ---- shape ops --------------------------------------------------------------------------------
def _reshape_target(in_shape: tuple[int, ...], target: list[int], allowzero: bool = False
                    ) -> tuple[int, ...]:
    """Resolve an ONNX Reshape target against an input whose dim 0 may be free (-1)."""
    t = [in_shape[i] if (d == 0 and not allowzero and i < len(in_shape)) else int(d)
         for i, d in enumerate(target)]
    free_batch = in_shape and in_shape[0] == -1
    known = int(np.prod([d for d in in_shape if d != -1])) if in_shape else 1
    if free_batch:
        batch_kept = (len(target) > 0 and target[0] == 0 and not allowzero)
        if batch_kept:
            rest = [d for d in t[1:]]
            if rest.count(-1) > 1:
                raise OpError(f"Reshape target {target} has several -1")
            if -1 in rest:
                fixed = int(np.prod([d for d in rest if d != -1]))
                rest[rest.index(-1)] = known // fixed
            return tuple([-1] + rest)
        if t.count(-1) != 1:
            raise OpError(f"Reshape target {target} fixes the batch dimension")
        k = t.index(-1)
        fixed = int(np.prod([d for d in t if d != -1]))
        if k != 0:
            raise OpError(f"Reshape target {target} folds the batch into dimension {k}")
        if known % fixed:
            raise OpError(f"Reshape target {target} does not divide {list(in_shape)}")
        return tuple(t)
    total = known
    if -1 in t:
        fixed = int(np.prod([d for d in t if d != -1]))
        t[t.index(-1)] = total // fixed
    return tuple(t)


def _check_reshape(ctx, node):
    if len(node.input) < 2 or not ctx.is_const_at_scan(node.input[1]):
        return "the target shape must be a constant"
    return None


@register("Reshape", check=_check_reshape, doc="RESHAPE (constant target)")
def reshape(ctx: GraphConverter, node) -> None:
    x = ctx.value(node.input[0], "plain")
    target = [int(d) for d in ctx.const(node.input[1], allow_batch=True).reshape(-1)]
    target = resolve_batch(target, x.shape)
    shape = _reshape_target(x.shape, target, bool(attrs(node).get("allowzero", 0)))
    out = ctx.new_value(node.output[0], shape, x.dtype)
    ctx.reshape_op(x, out)


@register("Flatten", doc="RESHAPE to 2-D (NCHW order is restored first)")
def flatten(ctx: GraphConverter, node) -> None:
    x = ctx.value(node.input[0], "plain")
    axis = _axis(attrs(node).get("axis", 1), x.rank)
    if axis == 0:
        raise OpError("axis=0 folds the batch dimension")
    lead = -1 if -1 in x.shape[:axis] else int(np.prod(x.shape[:axis]))
    shape = (lead, int(np.prod(x.shape[axis:])))
    out = ctx.new_value(node.output[0], shape, x.dtype)
    ctx.reshape_op(x, out)


def _axes(ctx, node) -> list[int] | None:
    a = attrs(node)
    if "axes" in a:
        return list(a["axes"])
    if len(node.input) > 1 and node.input[1]:
        c = ctx.const(node.input[1])
        if c is None:
            raise OpError("axes must be a constant")
        return [int(v) for v in c.reshape(-1)]
    return None


@register("Squeeze", "Unsqueeze", doc="RESHAPE")
def squeeze(ctx: GraphConverter, node) -> None:
    x = ctx.value(node.input[0], "plain")
    axes = _axes(ctx, node)
    if node.op_type == "Squeeze":
        axes = [_axis(k, x.rank) for k in axes] if axes is not None else \
            [i for i, d in enumerate(x.shape) if d == 1]
        if 0 in axes and x.shape[0] == -1:
            raise OpError("squeezing the batch dimension")
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    else:
        rank = x.rank + len(axes)
        axes = sorted(_axis(k, rank) for k in axes)
        if 0 in axes and x.shape and x.shape[0] == -1:
            raise OpError("unsqueezing before the batch dimension")
        dims = list(x.shape)
        for k in axes:
            dims.insert(k, 1)
        shape = tuple(dims)
    out = ctx.new_value(node.output[0], shape, x.dtype)
    ctx.reshape_op(x, out)


@register("Transpose", doc="TRANSPOSE")
def transpose(ctx: GraphConverter, node) -> None:
    x = ctx.value(node.input[0], "plain")
    perm = list(attrs(node).get("perm", list(reversed(range(x.rank)))))
    if perm[0] != 0 and x.shape[0] == -1:
        raise OpError("moving the batch dimension")
    out = ctx.new_value(node.output[0], tuple(x.shape[p] for p in perm), x.dtype)
    ctx.emit("TRANSPOSE", [x.index, ctx.const_tensor(np.array(perm, np.int32), "perm")],
             [out.index])


@register("Concat", doc="CONCATENATION (channel concat stays NHWC)")
def concat(ctx: GraphConverter, node) -> None:
    names = [n for n in node.input if n]
    tensors = [ctx.values[n] for n in names if n in ctx.values]
    rank = tensors[0].rank
    axis = _axis(attrs(node)["axis"], rank)
    layout = "nhwc" if all(t.layout == "nhwc" for t in tensors) and rank == 4 else "plain"
    if axis == 0 and tensors[0].shape[0] == -1:
        raise OpError("concatenating along the batch dimension")
    ins = []
    for n in names:
        c = ctx.const(n)
        if c is not None:
            ins.append(_const_for(ctx, c, Value(0, (), tensors[0].dtype, layout), f"{n}_c"))
        else:
            ins.append(ctx.value(n, layout))
    shape = list(ins[0].shape)
    shape[axis] = sum(v.shape[axis] for v in ins)
    phys_axis = {0: 0, 1: 3, 2: 1, 3: 2}[axis] if layout == "nhwc" else axis
    out = ctx.new_value(node.output[0], tuple(shape), ins[0].dtype, layout)
    ctx.emit("CONCATENATION", [v.index for v in ins], [out.index],
             ctx.options("Concatenation", axis=phys_axis, fusedActivationFunction=0))


def _check_argmax(ctx, node):
    if attrs(node).get("select_last_index", 0):
        return "select_last_index=1"
    return None


@register("ArgMax", check=_check_argmax, doc="ARG_MAX (int64), keepdims via RESHAPE")
def argmax(ctx: GraphConverter, node) -> None:
    x = ctx.value(node.input[0], "plain")
    a = attrs(node)
    axis = _axis(a.get("axis", 0), x.rank)
    if axis == 0 and x.shape[0] == -1:
        raise OpError("argmax over the batch dimension")
    reduced = tuple(d for i, d in enumerate(x.shape) if i != axis)
    keep = bool(a.get("keepdims", 1))
    out_name = ctx.tmp(node.output[0]) if keep else node.output[0]
    r = ctx.new_value(out_name, reduced, np.int64)
    ctx.emit("ARG_MAX", [x.index, ctx.const_tensor(np.array([axis], np.int32), "axis")],
             [r.index], ctx.options("ArgMax", outputType=INT64))
    if keep:
        shape = list(x.shape)
        shape[axis] = 1
        out = ctx.new_value(node.output[0], tuple(shape), np.int64)
        ctx.reshape_op(r, out)


_REDUCE = {"ReduceMean": "MEAN", "ReduceSum": "SUM", "ReduceMax": "REDUCE_MAX",
           "ReduceMin": "REDUCE_MIN"}


@register(*_REDUCE, doc="MEAN / SUM / REDUCE_MAX / REDUCE_MIN")
def reduce(ctx: GraphConverter, node) -> None:
    x = ctx.value(node.input[0], "plain")
    axes = _axes(ctx, node)
    if axes is None:
        if attrs(node).get("noop_with_empty_axes", 0):
            ctx.alias(node.output[0], node.input[0])
            return
        axes = list(range(x.rank))
    axes = sorted(_axis(k, x.rank) for k in axes)
    if 0 in axes and x.shape[0] == -1:
        raise OpError("reducing over the batch dimension")
    keep = bool(attrs(node).get("keepdims", 1))
    shape = tuple((1 if i in axes else d) for i, d in enumerate(x.shape) if keep or i not in axes)
    out = ctx.new_value(node.output[0], shape, x.dtype)
    ctx.emit(_REDUCE[node.op_type], [x.index, ctx.const_tensor(np.array(axes, np.int32), "axes")],
             [out.index], ctx.options("Reducer", keepDims=keep))


@register("Gather", doc="GATHER with constant indices")
def gather(ctx: GraphConverter, node) -> None:
    idx = ctx.const(node.input[1])
    if idx is None:
        raise OpError("indices must be constants")
    x = ctx.value(node.input[0], "plain")
    axis = _axis(attrs(node).get("axis", 0), x.rank)
    if axis == 0 and x.shape[0] == -1:
        raise OpError("gathering along the batch dimension")
    idx = np.where(idx < 0, idx + x.shape[axis], idx).astype(np.int32)
    shape = x.shape[:axis] + idx.shape + x.shape[axis + 1:]
    out = ctx.new_value(node.output[0], shape, x.dtype)
    ctx.emit("GATHER", [x.index, ctx.const_tensor(idx, "indices")], [out.index],
             ctx.options("Gather", axis=axis, batchDims=0))


# ---- ai.onnx.ml: what skl2onnx emits for linear models, MLPs and scalers -----------------
@register("ArrayFeatureExtractor", doc="GATHER (class-label lookup or column selection)")
def array_feature_extractor(ctx: GraphConverter, node) -> None:
    data, idx_name = node.input[0], node.input[1]
    cdata, cidx = ctx.const(data), ctx.const(idx_name)
    if cdata is not None and cidx is None:
        # label lookup: classes[argmax]; the output is one value per row
        if cdata.ndim != 1:
            raise OpError("constant data must be 1-D")
        if cdata.dtype.kind not in "iuf":  # string class labels: left to postprocess.classes
            ctx.dropped[node.output[0]] = STRING_LABELS
            return
        iv = ctx.value(idx_name, "plain")
        flat = ctx.new_value(ctx.tmp(node.output[0]), (-1,), iv.dtype)
        ctx.reshape_op(iv, flat, (-1,))
        params = ctx.const_tensor(cdata.astype(np.int64 if cdata.dtype.kind in "iu"
                                               else np.float32), "classes")
        out = ctx.new_value(node.output[0], (-1,), np.int64 if cdata.dtype.kind in "iu"
                            else np.float32)
        ctx.emit("GATHER", [params, flat.index], [out.index], ctx.options("Gather", axis=0))
        return
    if cidx is not None and cdata is None:
        x = ctx.value(data, "plain")
        idx = cidx.reshape(-1).astype(np.int32)
        out = ctx.new_value(node.output[0], x.shape[:-1] + (len(idx),), x.dtype)
        ctx.emit("GATHER", [x.index, ctx.const_tensor(idx, "columns")], [out.index],
                 ctx.options("Gather", axis=x.rank - 1))
        return
    raise OpError("data and indices are both tensors")


@register("Scaler", doc="(x - offset) * scale as SUB + MUL")
def scaler(ctx: GraphConverter, node) -> None:
    a = attrs(node)
    x = ctx.value(node.input[0], "plain")
    offset = np.asarray(a.get("offset", [0.0]), np.float32)
    scale = np.asarray(a.get("scale", [1.0]), np.float32)
    cur = x
    if np.any(offset != 0):
        nxt = ctx.new_value(ctx.tmp(node.output[0]), x.shape, np.float32)
        ctx.emit("SUB", [cur.index, ctx.const_tensor(offset, "scaler_offset")], [nxt.index],
                 ctx.options("Sub", fusedActivationFunction=0))
        cur = nxt
    out = ctx.new_value(node.output[0], x.shape, np.float32)
    ctx.emit("MUL", [cur.index, ctx.const_tensor(scale, "scaler_scale")], [out.index],
             ctx.options("Mul", fusedActivationFunction=0))


def _check_normalizer(ctx, node):
    norm = attrs(node).get("norm", "MAX")
    return None if norm in ("MAX", "L1", "L2") else f"norm={norm}"


@register("Normalizer", check=_check_normalizer, doc="L2_NORMALIZATION, or L1/MAX with reductions")
def normalizer(ctx: GraphConverter, node) -> None:
    norm = attrs(node).get("norm", "MAX")
    x = ctx.value(node.input[0], "plain")
    if x.rank != 2:
        raise OpError(f"input of rank {x.rank}, expected 2")
    out = ctx.new_value(node.output[0], x.shape, np.float32)
    if norm == "L2":
        ctx.emit("L2_NORMALIZATION", [x.index], [out.index],
                 ctx.options("L2Norm", fusedActivationFunction=0))
        return
    axis = ctx.const_tensor(np.array([1], np.int32), "axes")
    src = x
    if norm == "L1":
        src = ctx.new_value(ctx.tmp(node.output[0]), x.shape, np.float32)
        ctx.emit("ABS", [x.index], [src.index])
    den = ctx.new_value(ctx.tmp(node.output[0]), (x.shape[0], 1), np.float32)
    ctx.emit("SUM" if norm == "L1" else "REDUCE_MAX", [src.index, axis], [den.index],
             ctx.options("Reducer", keepDims=True))
    if norm == "L1":  # an all-zero row stays zero, as in ONNX Runtime
        safe = ctx.new_value(ctx.tmp(node.output[0]), (x.shape[0], 1), np.float32)
        ctx.emit("MAXIMUM", [den.index, ctx.const_tensor(np.array([1e-30], np.float32), "tiny")],
                 [safe.index])
        den = safe
    ctx.emit("DIV", [x.index, den.index], [out.index], ctx.options("Div", fusedActivationFunction=0))


def _check_linear(ctx, node):
    a = attrs(node)
    pt = a.get("post_transform", "NONE")
    if pt not in ("NONE", "LOGISTIC", "SOFTMAX"):
        return f"post_transform={pt}"
    if node.op_type == "LinearRegressor" and pt != "NONE":
        return f"post_transform={pt}"
    return None


@register("LinearRegressor", check=_check_linear, doc="FULLY_CONNECTED")
def linear_regressor(ctx: GraphConverter, node) -> None:
    x = ctx.value(node.input[0], "plain")
    w, b = linear_weights(node, x.shape[-1])
    _fully_connected(ctx, x, w, b, node.output[0], fuse=False)


@register("LinearClassifier", check=_check_linear,
          doc="FULLY_CONNECTED + LOGISTIC/SOFTMAX; label = classes[ARG_MAX]")
def linear_classifier(ctx: GraphConverter, node) -> None:
    a = attrs(node)
    x = ctx.value(node.input[0], "plain")
    w, b = linear_weights(node, x.shape[-1])
    classes = a.get("classlabels_ints", a.get("classlabels_strings"))
    pt = a.get("post_transform", "NONE")
    label_name, score_name = node.output[0], node.output[1] if len(node.output) > 1 else ""
    raw = _fully_connected(ctx, x, w, b, ctx.tmp(f"{score_name or label_name}_raw"), fuse=False)
    n = x.shape[0]
    binary_one_row = w.shape[0] == 1 and len(classes) == 2
    if ctx.used(score_name):
        if binary_one_row:  # ONNX Runtime returns [1 - s, s] after the transform
            s = raw
            if pt == "LOGISTIC":
                s = ctx.new_value(ctx.tmp(score_name), (n, 1), np.float32)
                ctx.emit("LOGISTIC", [raw.index], [s.index])
            elif pt == "SOFTMAX":
                raise OpError("SOFTMAX on a single score column")
            neg = ctx.new_value(ctx.tmp(score_name), (n, 1), np.float32)
            ctx.emit("SUB", [ctx.const_tensor(np.ones(1, np.float32), "one"), s.index], [neg.index],
                     ctx.options("Sub", fusedActivationFunction=0))
            out = ctx.new_value(score_name, (n, 2), np.float32)
            ctx.emit("CONCATENATION", [neg.index, s.index], [out.index],
                     ctx.options("Concatenation", axis=1, fusedActivationFunction=0))
        elif pt == "NONE":
            ctx.values[score_name] = raw
        else:
            out = ctx.new_value(score_name, raw.shape, np.float32)
            op = "LOGISTIC" if pt == "LOGISTIC" else "SOFTMAX"
            ctx.emit(op, [raw.index], [out.index],
                     ctx.options("Softmax", beta=1.0) if op == "SOFTMAX" else None)
    if not ctx.used(label_name):
        return
    if "classlabels_strings" in a:
        ctx.dropped[label_name] = STRING_LABELS
        return
    if binary_one_row:
        pos = ctx.new_value(ctx.tmp(label_name), (n, 1), np.bool_)
        ctx.emit("GREATER", [raw.index, ctx.const_tensor(np.zeros(1, np.float32), "zero")],
                 [pos.index])
        as_int = ctx.new_value(ctx.tmp(label_name), (n, 1), np.int64)
        ctx.emit("CAST", [pos.index], [as_int.index], ctx.options("Cast", inDataType=6,
                                                                   outDataType=INT64))
        idx = ctx.new_value(ctx.tmp(label_name), (n,), np.int64)
        ctx.reshape_op(as_int, idx, (-1,))
    else:
        idx = ctx.new_value(ctx.tmp(label_name), (n,), np.int64)
        ctx.emit("ARG_MAX", [raw.index, ctx.const_tensor(np.array([1], np.int32), "axis")],
                 [idx.index], ctx.options("ArgMax", outputType=INT64))
    out = ctx.new_value(label_name, (n,), np.int64)
    ctx.emit("GATHER", [ctx.const_tensor(np.asarray(classes, np.int64), "classes"), idx.index],
             [out.index], ctx.options("Gather", axis=0))


def _check_slice(ctx, node):
    if not all(ctx.is_const_at_scan(n) for n in node.input[1:] if n):
        return "starts/ends/axes/steps must be constants"
    return None


@register("Slice", check=_check_slice, doc="STRIDED_SLICE (constant bounds)")
def slice_(ctx: GraphConverter, node) -> None:
    x = ctx.value(node.input[0], "plain")
    ins = list(node.input) + [""] * (5 - len(node.input))
    starts = [int(v) for v in ctx.const(ins[1]).reshape(-1)]
    ends = [int(v) for v in ctx.const(ins[2]).reshape(-1)]
    axes = [int(v) for v in ctx.const(ins[3]).reshape(-1)] if ins[3] else list(range(len(starts)))
    steps = [int(v) for v in ctx.const(ins[4]).reshape(-1)] if ins[4] else [1] * len(starts)
    begin, end, stride = [0] * x.rank, [0] * x.rank, [1] * x.rank
    full = set(range(x.rank))
    shape = list(x.shape)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = _axis(ax, x.rank)
        n = x.shape[ax]
        if n == -1:
            raise OpError("slicing the batch dimension")
        if st != 1:
            raise OpError("steps other than 1")
        s = min(max(s + n if s < 0 else s, 0), n)
        e = min(max(e + n if e < 0 else e, 0), n)
        begin[ax], end[ax] = s, e
        shape[ax] = max(e - s, 0)
        full.discard(ax)
    mask = sum(1 << d for d in full)
    out = ctx.new_value(node.output[0], tuple(shape), x.dtype)
    ctx.emit("STRIDED_SLICE", [x.index, ctx.const_tensor(np.array(begin, np.int32), "begin"),
                               ctx.const_tensor(np.array(end, np.int32), "end"),
                               ctx.const_tensor(np.array(stride, np.int32), "strides")],
             [out.index], ctx.options("StridedSlice", beginMask=mask, endMask=mask))
