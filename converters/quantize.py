"""Quantize an ONNX bundle (``edge-convert quantize``), with ``onnxruntime.quantization`` only.

    quantize_bundle(src, out, QuantizeConfig(mode="dynamic" | "static" | "fp16", sample=...))

- ``dynamic``: INT8 weights, activations quantized at run time (MatMulInteger /
  DynamicQuantizeLinear). No sample needed.
- ``static``: INT8 QDQ graph; activations calibrated on the sample after
  ``quant_pre_process`` (shape inference + graph optimisation).
- ``fp16``: float16 weights and arithmetic for the standard-domain float ops;
  inputs and outputs stay float32 so the contract does not change. Uses
  onnxconverter-common when it is installed, otherwise the small converter in
  this module (Cast nodes at the fp16 region's borders).

The output is a new signed bundle: same contract and post-processing, golden
vectors re-computed with the quantized graph (same rows), and provenance that
records the source bundle (name, version, sha256), the mode and the ops that
were quantized. Whether the result is *worth it* is for ``edge-convert check``
to measure: INT8 can be slower than FP32 for tiny models.
"""

from __future__ import annotations

import contextlib
import enum
import threading
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converters.export import check_out_dir, resolve_key, self_test_or_remove
from converters.sample import Sample, finalize, load_sample
from edge_runtime.bundle import Bundle, read_bundle, verify_bundle, write_bundle
from edge_runtime.errors import BundleError, EdgeError, EngineError, ValidationError


class QuantMode(str, enum.Enum):
    DYNAMIC = "dynamic"
    STATIC = "static"
    FP16 = "fp16"


INT8_OPS = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QuantizeLinear",
            "DequantizeLinear", "QLinearMatMul", "QLinearConv", "DynamicQuantizeMatMul",
            "QGemm", "QAttention", "MatMulIntegerToFloat"}


@dataclass
class QuantizeConfig:
    """Options of ``edge-convert quantize``."""

    mode: QuantMode | str = QuantMode.DYNAMIC
    sample: Any = None  # path / DataFrame / array: calibration data (required for static)
    key: Any = None  # signing key; default $EDGE_CONVERT_KEY
    version: str | None = None  # default: "<source version>+<mode>"
    name: str | None = None  # default: the source bundle's name
    per_channel: bool = False  # static/dynamic: per-channel weight scales
    reduce_range: bool = False  # 7-bit weights (older x86 without VNNI saturate otherwise)
    calibration_rows: int = 256
    calibrate_method: str = "minmax"  # minmax | entropy | percentile
    label_column: str | None = None  # ignored column in the calibration sample
    overwrite: bool = False
    # max |Δ| (values: relative) vs the source on golden + held-out-like rows; None: the
    # mode's declared tolerance (DEFAULT_TOLERANCE)
    tolerance: float | None = None
    min_label_agreement: float | None = None  # None: the mode's MIN_AGREEMENT
    parity_rows: int = 512


#: what each variant declares it may differ from its FP32 source by (probabilities / values)
DEFAULT_TOLERANCE = {"dynamic": 0.5, "static": 0.5, "fp16": 1e-2}
#: ... and the share of rows it must decide like its source (INT8 moves probabilities a lot
#: on rows near a boundary; what it must not do is change many decisions)
MIN_AGREEMENT = {"dynamic": 0.95, "static": 0.95, "fp16": 0.99}


def _mode(value: Any) -> QuantMode:
    try:
        return QuantMode(value.value if isinstance(value, QuantMode) else str(value))
    except ValueError as exc:
        raise ValidationError(f"mode {value!r} is not one of dynamic, static, fp16",
                              field="mode") from exc


def quantize_bundle(src: str | Path | Bundle, out: str | Path,
                    config: QuantizeConfig | None = None) -> Path:
    """Write a quantized copy of the ONNX bundle ``src`` at ``out``; return ``out``."""
    cfg = config or QuantizeConfig()
    mode = _mode(cfg.mode)
    # -- every refusal happens before any work ------------------------------------------
    if mode == QuantMode.STATIC and cfg.sample is None:
        raise ValidationError("static INT8 quantization needs a calibration sample (--sample)",
                              field="sample")
    if cfg.calibrate_method not in ("minmax", "entropy", "percentile"):
        raise ValidationError(f"calibrate_method {cfg.calibrate_method!r} is not one of minmax, "
                              "entropy, percentile", field="calibrate_method")
    key = resolve_key(cfg.key)
    bundle = src if isinstance(src, Bundle) else read_bundle(src)
    verify_bundle(bundle, require_signature=False)
    m = bundle.manifest
    if m.format != "onnx":
        raise ValidationError(f"quantize works on ONNX bundles; {m.name} is a {m.format} bundle "
                              "(for TFLite INT8 use `edge-convert tflite --int8`)", field="bundle")
    if m.provenance.get("quantization"):
        raise ValidationError(f"bundle {m.name}:{m.version} is already quantized "
                              f"({m.provenance['quantization'].get('mode')}); quantize the FP32 "
                              "bundle instead", field="bundle")
    out = check_out_dir(out, cfg.overwrite)
    if Path(out).resolve() == bundle.root.resolve():
        raise ValidationError("--out must differ from the source bundle", field="out")
    version = cfg.version or f"{m.version}+{mode.value}"
    _check_quantizable(bundle, mode)
    smp = None
    if cfg.sample is not None:
        smp = _calibration_sample(cfg.sample, m, cfg.label_column)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        tmpd = Path(tmp)
        fp32 = bundle.model_path
        dst = tmpd / "model.onnx"
        info: dict[str, Any] = {"mode": mode.value}
        try:
            if mode == QuantMode.DYNAMIC:
                _dynamic(fp32, dst, cfg, tmpd, info)
            elif mode == QuantMode.STATIC:
                _static(fp32, dst, cfg, smp, m, tmpd, info)
            else:
                _fp16(fp32, dst, info)
        except EdgeError:
            raise
        except Exception as exc:  # onnxruntime.quantization raises plain exceptions
            if cfg.per_channel:
                raise EngineError(f"{mode.value} per-channel quantization of {m.name} failed in "
                                  f"onnxruntime ({str(exc).splitlines()[0][:200]}); retry "
                                  "without --per-channel", field="per_channel") from exc
            raise EngineError(f"{mode.value} quantization of {m.name} failed: "
                              f"{ort_failure(exc)}", field="mode") from exc
        qmodel = onnx.load(str(dst))
        ops = Counter(n.op_type for n in qmodel.graph.node)
        info["quantized_ops"] = {k: v for k, v in sorted(ops.items())
                                 if k in INT8_OPS or (mode == QuantMode.FP16 and k == "Cast")}
        changed, total = _changed_weights(onnx.load(str(fp32)), qmodel, mode)
        info["quantized_weights"] = f"{changed} of {total}"
        if changed == 0:
            what = "float16" if mode == QuantMode.FP16 else "int8"
            raise ValidationError(
                f"nothing to quantize in {m.name}: 0 of {total} weights became {what} (tree "
                "ensembles and ai.onnx.ml ops stay float32 in onnxruntime); a variant identical "
                "to its source is not written", field="bundle")
        info["seconds"] = round(time.perf_counter() - t0, 3)
        info["onnxruntime"] = _ort_version()
        manifest = _manifest(bundle, dst, version, cfg, info, mode)
        # measured on the bundle being written, against its source: golden + held-out rows
        staged = write_bundle(tmpd / "staged", manifest, {m.model_file: dst}, key=key)
        parity = _measure(bundle, staged, cfg, mode, m.name, smp)
        manifest["provenance"]["parity"] = parity
        info["parity"] = parity
        write_bundle(out, manifest, {m.model_file: dst}, key=key)
    self_test_or_remove(Path(out), "the quantized bundle failed its self-test")
    return Path(out)


def _sample_parity(src: Bundle, dst: Bundle, x: np.ndarray) -> dict[str, Any]:
    from converters.parity import _main_output, _stats
    from edge_runtime.model import Model

    ms, md = Model.load(src, warmup=False), Model.load(dst, warmup=False)
    try:
        if ms.codec is not None:
            xx = x.astype(ms.codec.dtype)
            sa, sb = ms.score_array(xx), md.score_array(xx)
        else:
            feeds = {ms.engine.inputs[0].name: x.astype(np.float32)}
            sa, sb = ms._scores(ms.engine.run(feeds)), md._scores(md.engine.run(feeds))
        return _stats([_main_output(sa)], [_main_output(sb)], [ms.decision(sa)],
                      [md.decision(sb)])
    finally:
        ms.close()
        md.close()


def ort_failure(exc: BaseException) -> str:
    """An ONNX Runtime error as one line that names the op (its messages bury it)."""
    import re

    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    m = re.search(r"implementation for (\w+)\((\d+)\) node with name '([^']*)'", text)
    if m:
        return (f"no CPU kernel for op {m.group(1)} (opset {m.group(2)}, node "
                f"{m.group(3)!r}) with these input types")
    m = re.search(r"Optype \((\w+)\) bound to different types \(([^)]*\)) and ([^)]*\)) "
                  r"in node \(([^)]*)\)", text)
    if m:
        return (f"op {m.group(1)} (node {m.group(4)!r}) mixes {m.group(2)} and {m.group(3)} "
                "inputs")
    m = re.search(r"[Nn]ode \(([^)]*)\) Op \((\w+)\)[^:]*:?\s*(.*)", text)
    if m:
        return f"op {m.group(2)} (node {m.group(1)!r}) failed: {m.group(3).splitlines()[0][:200]}"
    return text.splitlines()[0][:300]


def _changed_weights(src: onnx.ModelProto, dst: onnx.ModelProto, mode: QuantMode
                     ) -> tuple[int, int]:
    """(weights that became int8 / float16, float weights of MatMul/Gemm/Conv/… in the source)."""
    g = src.graph
    inits = {t.name: t for t in g.initializer if t.data_type == TensorProto.FLOAT}
    weights = {i for n in g.node if n.domain in ("", "ai.onnx") and n.op_type in WEIGHT_OPS
               for i in n.input if i in inits}
    if mode == QuantMode.FP16:
        want = {TensorProto.FLOAT16}
        compute = FP16_OPS - {"Identity", "Flatten", "Reshape", "Concat", "Transpose", "Squeeze",
                              "Unsqueeze"}
        total = max(len(weights), sum(1 for n in g.node if n.domain in ("", "ai.onnx")
                                      and n.op_type in compute))
        half_nodes = 0
        for n in dst.graph.node:
            if n.domain in ("", "ai.onnx") and n.op_type in compute and any(
                    i.endswith("__fp16") for i in n.input):
                half_nodes += 1
        halves = sum(1 for t in dst.graph.initializer if t.data_type in want)
        return (half_nodes if half_nodes else min(halves, len(weights))), total
    want = {TensorProto.INT8, TensorProto.UINT8}
    q = sum(1 for t in dst.graph.initializer if t.data_type in want and t.dims
            and int(np.prod(t.dims)) > 1)
    return min(q, len(weights)), len(weights)


def _measure(src: Bundle, staged: Bundle, cfg: QuantizeConfig, mode: QuantMode,
             name: str, smp: Sample | None = None) -> dict[str, Any]:
    from converters.parity import compare_bundles

    tol = cfg.tolerance if cfg.tolerance is not None else DEFAULT_TOLERANCE[mode.value]
    try:
        par = compare_bundles(src, staged, rows=cfg.parity_rows)
    except EdgeError as exc:
        raise EngineError(f"the {mode.value} model of {name} does not run in ONNX Runtime: "
                          f"{ort_failure(exc)}; nothing written", field="mode") from exc
    allp = par["all"]
    res = {"rows": allp["rows"], "max_abs_diff": round(allp["max_abs_diff"], 9),
           "max_rel_diff": round(allp["max_rel_diff"], 9),
           "label_agreement": allp["label_agreement"],
           "golden_max_abs_diff": round(par["golden"]["max_abs_diff"], 9), "tolerance": tol}
    judged = allp
    where = "golden + held-out"
    if smp is not None and (mode == QuantMode.STATIC or smp.is_tensor):
        # static INT8 clips activations to the ranges calibrated on the sample: held-out rows
        # mixing features independently leave them; it is judged on the calibration sample's
        # rows (held-out numbers recorded beside, as heldout_*)
        samp = _sample_parity(src, staged, smp.x[: cfg.parity_rows])
        res.update(heldout_max_abs_diff=res.pop("max_abs_diff"),
                   heldout_label_agreement=res.pop("label_agreement"),
                   rows=samp["rows"], max_abs_diff=round(samp["max_abs_diff"], 9),
                   max_rel_diff=round(samp["max_rel_diff"], 9),
                   label_agreement=samp["label_agreement"], judged_on="sample")
        judged = allp = samp
        where = "calibration sample"
    elif src.manifest.inputs.kind == "tensors":
        where = "golden + random-tensor"
    if judged["max_abs_diff"] == 0.0:
        raise ValidationError(f"the {mode.value} variant of {name} answers bit-for-bit like its "
                              f"source on {allp['rows']} rows: nothing was quantized, not "
                              "written", field="bundle")
    agree = cfg.min_label_agreement if cfg.min_label_agreement is not None \
        else MIN_AGREEMENT[mode.value]
    res["min_label_agreement"] = agree
    if not allp["max_rel_diff"] <= tol or allp["label_agreement"] < agree:
        from converters.parity import describe_worst

        worst = describe_worst(par) if allp is par["all"] else ""
        raise EngineError(f"the {mode.value} variant of {name} differs from its source by max "
                          f"|Δ| {allp['max_abs_diff']:.3g}{worst} on {allp['rows']} {where} "
                          f"rows, label agreement {allp['label_agreement']:.4f}: its tolerance is "
                          f"|Δ| <= {tol:g} and agreement >= {agree:g}; nothing written (pass "
                          "--tolerance / --min-agreement to accept)",
                          field="tolerance", parity=res)
    return res


WEIGHT_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "LSTM", "GRU", "Attention"}


def _check_quantizable(bundle: Bundle, mode: QuantMode) -> None:
    """Refuse early when onnxruntime has nothing it could quantize in this graph."""
    try:
        model = onnx.load(str(bundle.model_path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise BundleError(f"{bundle.manifest.model_file} is not a valid ONNX model: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}",
                          field="model_file") from exc
    ops = {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}
    want = FP16_OPS if mode == QuantMode.FP16 else WEIGHT_OPS
    if not ops & want:
        raise ValidationError(
            f"nothing to quantize in {bundle.manifest.name}: it has no MatMul/Gemm/Conv in the "
            "standard ONNX domain (tree ensembles and ai.onnx.ml linear models cannot be "
            "quantized by onnxruntime)", field="bundle")


# ---- modes ------------------------------------------------------------------------------

_CWD_LOCK = threading.Lock()


def _pre_process(src: Path, tmpd: Path, info: dict) -> Path:
    """``quant_pre_process``: shape inference + graph optimisation before quantizing."""
    from onnxruntime.quantization import quant_pre_process

    pre = tmpd / "pre.onnx"
    try:
        # onnxruntime's symbolic shape inference drops "sym_shape_infer_temp.onnx" into the
        # current directory when it gives up: run it from our temp dir so nothing leaks.
        with _CWD_LOCK, contextlib.chdir(tmpd):
            quant_pre_process(str(src.resolve()), str(pre.resolve()))
        info["pre_process"] = "full"
    except Exception:
        # ai.onnx.ml ops defeat symbolic shape inference; the ONNX one still runs
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        info["pre_process"] = "skip_symbolic_shape"
        _annotate_types(pre)
    return pre


# ai.onnx.ml ops whose (float) outputs ONNX shape inference leaves untyped
_ML_FLOAT_OUT = {"Scaler", "Normalizer", "Imputer", "FeatureVectorizer", "LinearRegressor",
                 "Binarizer"}


def _annotate_types(path: Path) -> None:
    """Give the quantizer a type for every float tensor (it skips untyped ones)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    known = {v.name for v in list(g.value_info) + list(g.input) + list(g.output)}
    known |= {t.name for t in g.initializer}
    added = True
    while added:  # propagate through ops the ONNX inference could not type
        added = False
        for n in g.node:
            if n.domain == "ai.onnx.ml" and n.op_type in _ML_FLOAT_OUT:
                for o in n.output:
                    if o and o not in known:
                        g.value_info.append(helper.make_tensor_value_info(o, TensorProto.FLOAT,
                                                                          None))
                        known.add(o)
                        added = True
        if added:
            model = onnx.shape_inference.infer_shapes(model)
            g = model.graph
            known = {v.name for v in list(g.value_info) + list(g.input) + list(g.output)}
            known |= {t.name for t in g.initializer}
            added = False
    onnx.save(model, str(path))


def _dynamic(src: Path, dst: Path, cfg: QuantizeConfig, tmpd: Path, info: dict) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre = _pre_process(src, tmpd, info)
    # DefaultTensorType: ai.onnx.ml ops (Scaler, …) leave some types unknown to the quantizer
    quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8,
                     per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})
    info.update(weight_type="int8", per_channel=cfg.per_channel, reduce_range=cfg.reduce_range)


def _reader(name: str, x: np.ndarray, batch: int = 16):
    """A CalibrationDataReader over the sample, in small batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = (
                {name: x[i:i + batch]} for i in range(0, len(x), batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    return Reader()


# Softmax/Sigmoid heads stay float: 8-bit probabilities would cost 1/256 of resolution.
STATIC_OPS = ["Conv", "MatMul", "Gemm", "Add", "Mul", "Relu", "Clip", "MaxPool", "AveragePool",
              "GlobalAveragePool", "Reshape", "Flatten", "Concat", "Transpose", "Squeeze",
              "Unsqueeze"]


def _static(src: Path, dst: Path, cfg: QuantizeConfig, smp: Sample, m, tmpd: Path,
            info: dict) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    pre = _pre_process(src, tmpd, info)
    name = m.inputs.tensor if m.inputs.kind == "features" else m.inputs.tensors[0].name
    x = smp.x[: cfg.calibration_rows].astype(np.float32)
    reader = _reader(name, x)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibrate_method]
    quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=STATIC_OPS,
                    per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=method,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                   "DefaultTensorType": TensorProto.FLOAT})
    info.update(format="QDQ", activation_type="uint8", weight_type="int8",
                per_channel=cfg.per_channel, calibration_rows=len(x),
                calibrate_method=cfg.calibrate_method)


def _calibration_sample(source: Any, m, label_column: str | None) -> Sample:
    if m.inputs.kind == "features":
        smp = load_sample(source, label_column=label_column, feature_names=m.feature_names)
        return finalize(smp).recode(m.inputs.features)  # text: the bundle's category codes
    smp = load_sample(source, label_column=label_column)
    want = m.inputs.tensors[0].shape[1:]
    got = list(smp.x.shape[1:])
    if want and any(w is not None and w != g for w, g in zip(want, got)) or (
            want and len(want) != len(got)):
        raise ValidationError(f"calibration sample has shape {got} per item, the model expects "
                              f"{want}", field="sample")
    return smp


# ---- fp16 ---------------------------------------------------------------------------------

# Standard-domain ops that ONNX Runtime's CPU provider runs in float16.
FP16_OPS = {"MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid",
            "Tanh", "Softmax", "Conv", "MaxPool", "AveragePool", "GlobalAveragePool",
            "GlobalMaxPool", "Flatten", "Reshape", "Concat", "Transpose", "Identity",
            "BatchNormalization", "Squeeze", "Unsqueeze", "Neg", "Abs", "Exp", "Log", "Sqrt",
            "Clip", "Erf", "Pow"}


def _fp16(src: Path, dst: Path, info: dict) -> None:
    model = onnx.load(str(src))
    try:
        from onnxconverter_common import float16  # type: ignore[import-not-found]

        converted = float16.convert_float_to_float16(model, keep_io_types=True)
        info["fp16_converter"] = "onnxconverter-common"
    except ImportError:
        converted, n = fp16_convert(model)
        info["fp16_converter"] = "edgefleet (Cast at region borders)"
        info["fp16_nodes"] = n
        if n == 0:
            raise ValidationError("nothing to convert to fp16: the model has no float MatMul/"
                                  "Gemm/Conv/… in the standard ONNX domain", field="bundle")
    onnx.save(converted, str(dst))


def fp16_convert(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Run the standard float ops in float16; graph inputs/outputs stay float32.

    Each float32 tensor used by an fp16 node gets one fp16 twin (a converted
    initializer or a Cast node); each fp16 result that an fp32 consumer or a
    graph output needs is cast back once.
    """
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    types: dict[str, int] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    inits = {t.name: t for t in g.initializer}
    for t in g.initializer:
        types[t.name] = t.data_type
    is_f32 = lambda name: types.get(name) == TensorProto.FLOAT

    def fp16_node(node) -> bool:
        if node.domain not in ("", "ai.onnx") or node.op_type not in FP16_OPS:
            return False
        if any(i and i not in types for i in node.input):
            # an input whose type shape inference could not tell (an ai.onnx.ml op's output):
            # a Concat/Add of it with a float16 twin would bind one type to two — stay float32
            return False
        return any(is_f32(i) for i in node.input if i) or any(is_f32(o) for o in node.output)

    nodes = []
    for n in g.node:  # own copies: clearing g.node below must not empty them
        c = onnx.NodeProto()
        c.CopyFrom(n)
        nodes.append(c)
    half = {id(n) for n in nodes if fp16_node(n)}
    need32: set[str] = {o.name for o in g.output}
    for n in nodes:
        if id(n) not in half:
            need32.update(i for i in n.input if i)
    twin: dict[str, str] = {}
    new_nodes, new_inits = [], []
    init_users: Counter = Counter()
    for n in nodes:
        for i in n.input:
            if i in inits:
                init_users[i] += 1 if (id(n) in half and is_f32(i)) else 1000
    for n in nodes:
        if id(n) not in half:
            new_nodes.append(n)
            continue
        for k, i in enumerate(n.input):
            if not i or not is_f32(i):
                continue
            if i not in twin:
                t16 = f"{i}__fp16"
                if i in inits:
                    arr = numpy_helper.to_array(inits[i]).astype(np.float16)
                    new_inits.append(numpy_helper.from_array(arr, t16))
                else:
                    new_nodes.append(helper.make_node("Cast", [i], [t16], to=TensorProto.FLOAT16,
                                                      name=f"{t16}_cast"))
                twin[i] = t16
            n.input[k] = twin[i]
        new_nodes.append(n)
        for k, o in enumerate(n.output):
            if not is_f32(o):
                continue
            t16 = f"{o}__fp16"
            n.output[k] = t16
            twin[o] = t16
            if o in need32:
                new_nodes.append(helper.make_node("Cast", [t16], [o], to=TensorProto.FLOAT,
                                                  name=f"{o}_cast32"))
    keep = [t for t in g.initializer if init_users[t.name] >= 1000 or t.name not in init_users]
    del g.node[:]
    g.node.extend(new_nodes)
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    del g.value_info[:]  # stale types; ORT re-infers
    onnx.checker.check_model(model)
    return model, len(half)


# ---- the new bundle -------------------------------------------------------------------

def _manifest(bundle: Bundle, model_path: Path, version: str, cfg: QuantizeConfig, info: dict,
              mode: QuantMode) -> dict[str, Any]:
    import onnxruntime as ort

    m = bundle.manifest
    data = m.model_dump(mode="json", exclude_none=True)
    for k in ("signature", "files", "created_at"):
        data.pop(k, None)
    data["version"] = version
    if cfg.name:
        data["name"] = cfg.name
    try:
        sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/…
        raise EngineError(f"the {mode.value} model of {m.name} does not load in ONNX Runtime: "
                          f"{ort_failure(exc)}; nothing written", field="mode") from exc
    src_sess = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
    golden, worst = [], 0.0
    for g in m.golden:
        gd = g.model_dump(mode="json", exclude_none=True)
        feeds = _golden_feeds(m, g, sess)
        if feeds is None:
            golden.append(gd)
            continue
        new = _expected(m, sess, feeds)
        old = _expected(m, src_sess, feeds)
        for key, vals in new.items():
            gd[key] = vals
            if key != "expected_label":
                worst = max(worst, float(np.max(np.abs(np.subtract(vals, old[key])))))
        gd["atol"] = max(g.atol, 5e-4)
        golden.append(gd)
    info["golden_max_abs_diff_vs_source"] = round(worst, 6)
    prov = dict(m.provenance)
    prov.pop("parity", None)  # the source's export parity is not this variant's
    prov["quantization"] = info
    prov["source_bundle"] = {"name": m.name, "version": m.version, "sha256": m.digest}
    data["provenance"] = prov
    data["golden"] = golden
    return data


def _golden_feeds(m, g, sess) -> dict[str, np.ndarray] | None:
    if g.rows is not None and m.inputs.kind == "features":
        from edge_runtime.contract import FeatureContract

        # the contract turns text into category codes and true/false into 1/0
        x = FeatureContract(m.inputs).encode(g.rows).astype(np.float32)
        return {m.inputs.tensor: x}
    if g.tensors is not None:
        return {k: np.asarray(v, dtype=np.float32) for k, v in g.tensors.items()}
    return None


def _expected(m, sess, feeds) -> dict[str, list]:
    """Golden expectations computed exactly as edge_runtime.Model post-processes."""
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, feeds)))
    roles = {o.role: o.name for o in m.outputs}
    pp = m.postprocess
    res: dict[str, list] = {}
    if "probabilities" in roles or "logits" in roles:
        if "probabilities" in roles:
            p = np.asarray(outs[roles["probabilities"]], dtype=np.float64)
        else:
            z = np.asarray(outs[roles["logits"]], dtype=np.float64)
            z = z - z.max(axis=1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        if p.ndim == 1 or p.shape[1] == 1:
            p1 = p.reshape(-1)
            p = np.stack([1 - p1, p1], axis=1)
        classes = list(pp.classes)
        if m.task == "binary_classification":
            pos = classes.index(pp.positive_class) if classes and pp.positive_class is not None else 1
            prob = p[:, pos]
            idx = np.where(prob >= pp.threshold, pos, 1 - pos)
        else:
            idx = p.argmax(axis=1)
            prob = p[np.arange(len(p)), idx]
        res["expected_probability"] = prob.tolist()
        res["expected_label"] = [classes[i] if classes else int(i) for i in idx]
    elif "value" in roles:
        v = np.asarray(outs[roles["value"]], dtype=np.float64)
        res["expected_value"] = v.reshape(len(v), -1)[:, 0].tolist()
    return res


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
