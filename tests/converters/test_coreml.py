"""ONNX → Core ML mlprogram. Core ML cannot run on Linux: these tests check the package
spec structurally (program type, inputs, flexible batch, outputs, op graph), the MIL
translation numerically through coremltools' own value inference, and the bundle contract."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("coremltools")

import format_fixtures as ff

from converters.coreml import (
    MODEL_FILE,
    NUMERICAL_NOTE,
    CoreMLConfig,
    import_coremltools,
    onnx_to_coreml,
    supported_ops,
)
from converters.onnx_source import ConversionError, UnsupportedOpsError
from edge_runtime.bundle import read_bundle, verify_bundle
from edge_runtime.errors import BundleError
from edge_runtime.model import Model
from edge_runtime.signing import load_public_key


@pytest.fixture(scope="module")
def src(tmp_path_factory, keypair):
    root = tmp_path_factory.mktemp("cm-src")
    cache: dict[str, object] = {}

    def get(kind: str):
        if kind not in cache:
            if kind == "cnn":
                x, y, names = ff.digits()
                onx = ff.train_cnn_head(ff.cnn_model(), x, y)
                cache[kind] = ff.write_onnx_bundle(
                    root / kind, onx, name="cnn", task="multiclass_classification", names=names,
                    x_golden=x[:8], key=keypair[0],
                    outputs=[{"name": "probabilities", "role": "probabilities"}])
            else:
                cache[kind] = ff.sklearn_bundle(root / kind, kind, keypair[0])
        return cache[kind]
    return get


def _spec(bundle_dir):
    ct = import_coremltools()
    return ct.utils.load_spec(str(bundle_dir / "model.mlpackage"))


def _ops(spec) -> list[str]:
    fn = spec.mlProgram.functions["main"]
    return [op.type for op in fn.block_specializations[fn.opset].operations]


@pytest.mark.parametrize("kind,features,n_out,must_have", [
    ("logreg", 30, 2, {"linear", "sigmoid", "sub", "mul"}),
    ("mlp", 30, 2, {"linear", "relu", "sigmoid", "concat"}),
    ("logreg_digits", 64, 10, {"linear", "softmax", "reduce_l1_norm"}),
    ("mlp_digits", 64, 10, {"linear", "relu", "softmax"}),
])
def test_sklearn_models_spec_and_bundle(kind, features, n_out, must_have, src, tmp_path, keypair):
    source = src(kind)
    out = onnx_to_coreml(source, tmp_path / "cm", CoreMLConfig(key=keypair[0], max_batch=512))
    report = verify_bundle(out, load_public_key(keypair[1]))
    assert report.signed
    b = read_bundle(out)
    m, sm = b.manifest, read_bundle(source).manifest
    assert m.format == "coreml" and m.model_file == MODEL_FILE
    assert {"model.mlpackage/Data/com.apple.CoreML/model.mlmodel",
            "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin"} <= set(m.files)
    assert m.inputs == sm.inputs and m.postprocess == sm.postprocess
    assert m.golden == sm.golden  # numbers cannot be recomputed here: the source's stay
    assert [o.name for o in m.outputs] == ["probabilities"]  # label output left out
    prov = m.provenance
    assert prov["source"]["sha256"] == sm.digest
    assert prov["numerical_check"]["status"] == "not run"
    assert "macOS" in prov["numerical_check"]["reason"] and "macOS" in NUMERICAL_NOTE
    mil = prov["mil_value_check"]
    assert mil["status"] == "passed" and mil["rows"] == 16 and mil["max_abs_diff"] < 1e-5

    spec = _spec(out)
    assert spec.WhichOneof("Type") == "mlProgram"
    (inp,) = spec.description.input
    assert inp.name == "X"
    arr = inp.type.multiArrayType
    assert list(arr.shape)[1:] == [features] and arr.dataType == arr.FLOAT32
    assert arr.shapeRange.sizeRanges[0].lowerBound == 1
    assert arr.shapeRange.sizeRanges[0].upperBound == 512
    assert [o.name for o in spec.description.output] == ["probabilities"]
    assert must_have <= set(_ops(spec))
    # the engine refuses Core ML on Linux with a clear error, not a crash
    with pytest.raises(BundleError, match="macOS"):
        Model.load(out)


def test_mil_numbers_match_onnx_beyond_golden(src, tmp_path, keypair):
    """The same value-inference check on 200 real rows, outside the converter."""
    import onnx
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, types

    from converters.coreml import MilGraph

    source = read_bundle(src("mlp_digits"))
    model = onnx.load(str(source.model_path))
    x = ff.digits()[0][:200]
    want = Model.load(source).engine.run({"X": x})[1]
    g = MilGraph(model, ["probabilities"], mb, types)
    with Function({}, import_coremltools().target.iOS15):
        (out,) = g.build({"X": mb.const(val=x)})
        np.testing.assert_allclose(out.val, want, atol=1e-5)


def test_cnn_spec_keeps_nchw_and_conv_graph(src, tmp_path, keypair):
    out = onnx_to_coreml(src("cnn"), tmp_path / "cm", CoreMLConfig(key=keypair[0]))
    spec = _spec(out)
    ops = _ops(spec)
    assert ops.count("conv") == 3 and "max_pool" in ops and "avg_pool" in ops
    assert "reduce_mean" in ops and "softmax" in ops and "linear" in ops
    prov = read_bundle(out).manifest.provenance
    assert prov["coreml_ops"]["conv"] == 3
    assert prov["mil_value_check"]["status"] == "not computable"
    assert "conv" in prov["mil_value_check"]["reason"]


def test_float16_precision_loosens_golden_atol(src, tmp_path, keypair):
    out = onnx_to_coreml(src("logreg"), tmp_path / "cm16",
                         CoreMLConfig(key=keypair[0], compute_precision="float16"))
    m = read_bundle(out).manifest
    assert m.provenance["compute_precision"] == "float16"
    assert all(g.atol >= 1e-2 for g in m.golden)


def test_bad_config_and_inputs(src, tmp_path, keypair, monkeypatch):
    with pytest.raises(ConversionError, match="compute_precision"):
        onnx_to_coreml(src("logreg"), tmp_path / "a", CoreMLConfig(key=keypair[0],
                                                                   compute_precision="int4"))
    with pytest.raises(ConversionError, match="minimum_deployment_target"):
        onnx_to_coreml(src("logreg"), tmp_path / "a", CoreMLConfig(
            key=keypair[0], minimum_deployment_target="iOS11"))
    monkeypatch.delenv("EDGE_CONVERT_KEY", raising=False)
    with pytest.raises(ConversionError, match="no signing key"):
        onnx_to_coreml(src("logreg"), tmp_path / "a", CoreMLConfig())
    assert not (tmp_path / "a").exists()


def test_unsupported_ops_listed_and_nothing_written(src, tmp_path, keypair):
    gb = ff.sklearn_bundle(tmp_path / "gb-src", "gboost", keypair[0])
    with pytest.raises(UnsupportedOpsError, match="TreeEnsembleClassifier") as err:
        onnx_to_coreml(gb, tmp_path / "gb", CoreMLConfig(key=keypair[0]))
    assert err.value.to_dict()["code"] == "unsupported_ops"
    assert not (tmp_path / "gb").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gb-src"]


def test_corrupt_onnx(tmp_path, keypair):
    from edge_runtime.bundle import write_bundle

    bad = write_bundle(tmp_path / "corrupt", {
        "name": "corrupt", "version": "1", "format": "onnx", "model_file": "model.onnx",
        "task": "raw", "inputs": {"kind": "features", "tensor": "X",
                                  "features": [{"name": "a"}]}},
        {"model.onnx": b"garbage, not protobuf"}, key=keypair[0]).root
    with pytest.raises(ConversionError, match="not a valid ONNX model"):
        onnx_to_coreml(bad, tmp_path / "out", CoreMLConfig(key=keypair[0]))
    assert not (tmp_path / "out").exists()


def test_registry_covers_the_issue_op_set():
    ops = supported_ops()
    for op in ("Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "Softmax",
               "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape",
               "Concat", "Identity", "Cast", "LinearClassifier", "Normalizer", "Scaler", "Not"):
        assert op in ops, op


def test_exporter_shape_chain_and_batch_arithmetic(tmp_path):
    """Shape → Gather → Unsqueeze → Concat → Reshape folds to a batch-keeping reshape;
    arithmetic on the batch size is refused with a clear error."""
    from test_tflite_ops import _torch_style_flatten

    from converters.coreml import CoreMLConfig, build_program

    _, mlmodel, _ = build_program(_torch_style_flatten(), ["Y"], CoreMLConfig())
    ops = _ops(mlmodel.get_spec())
    assert "conv" in ops and "reshape" in ops and "shape" not in ops
    with pytest.raises(UnsupportedOpsError, match="shape arithmetic on the batch"):
        build_program(_torch_style_flatten("Mul"), ["Y"], CoreMLConfig())


def test_constant_attribute_nodes_and_linear_regressor_values(tmp_path):
    """``Constant`` nodes with value_floats/value_ints (not only a ``value`` tensor) and the
    ``ai.onnx.ml`` LinearRegressor translate with ONNX Runtime's numbers (MIL value inference)."""
    import onnxruntime as ort
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, types
    from onnx import TensorProto, helper

    from converters.coreml import MilGraph, build_program

    nodes = [helper.make_node("Constant", [], ["c"], value_floats=[0.5, -1.0, 2.0, 0.25]),
             helper.make_node("Constant", [], ["shp"], value_ints=[-1, 4]),
             helper.make_node("Mul", ["X", "c"], ["m"]),
             helper.make_node("Reshape", ["m", "shp"], ["r"]),
             helper.make_node("LinearRegressor", ["r"], ["Y"], domain="ai.onnx.ml",
                              coefficients=[0.1, 0.2, -0.3, 0.4, 1.0, 0.0, 0.5, -1.0],
                              intercepts=[0.5, -2.0], targets=2)]
    g = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                                    [None, 4])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 2])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    x = np.random.default_rng(3).normal(size=(7, 4)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    build_program(model, ["Y"], CoreMLConfig())  # a full program builds (no crash on Constant)
    mg = MilGraph(model, ["Y"], mb, types)
    with Function({}, import_coremltools().target.iOS15):
        (out,) = mg.build({"X": mb.const(val=x)})
        np.testing.assert_allclose(out.val, want, rtol=1e-5, atol=1e-5)


def test_max_abs_diff_does_not_let_nan_pass():
    from converters.parity import max_abs_diff

    a = np.array([[0.1, 0.9], [0.4, 0.6]])
    assert max_abs_diff(a, a + 1e-6) == pytest.approx(1e-6)
    assert max_abs_diff(np.where(a > 0.5, np.nan, a), a) == float("inf")  # NaN on one side
    assert max_abs_diff(np.full(3, np.nan), np.full(3, np.nan)) == 0.0  # both NaN: agree
    assert max_abs_diff(np.ones((2, 3)), np.ones((2, 2))) == float("inf")  # shapes differ
    assert max_abs_diff(np.ones((4, 1)), np.ones(4)[:, None]) == 0.0
    assert max_abs_diff(np.array([np.inf, 1.0]), np.array([np.inf, 1.0])) == 0.0
    assert max_abs_diff(np.array([np.inf]), np.array([1.0])) == float("inf")


def test_sgd_ovr_head_with_logical_not(src, tmp_path, keypair):
    out = onnx_to_coreml(src("sgd_digits"), tmp_path / "cm", CoreMLConfig(key=keypair[0]))
    m = read_bundle(out).manifest
    assert "logical_not" in _ops(_spec(out))
    mil = m.provenance["mil_value_check"]
    assert mil["status"] == "passed" and mil["max_abs_diff"] < 1e-5


# Element-wise/tabular graphs of the TFLite op tests, checked here through MIL value
# inference (convolutions and pooling have none); includes Clip (Relu6), Reciprocal and
# HardSwish, which used to crash or differ from ONNX Runtime.
_VALUE_CASES = ["Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Exp", "Floor", "Ceil", "Sin", "Cos",
                "HardSwish", "Log", "Sqrt", "Reciprocal", "Elu", "LeakyRelu", "Clip06", "ClipAny",
                "AddRow", "SubLeft", "MulCol", "DivRow", "AddSelf", "MaxConst", "MinConst",
                "PowConst", "ConstantNode", "Softmax", "LogSoftmax", "GemmTransB",
                "MatMulAddRelu", "ConcatConst", "Unsqueeze", "ReduceMean", "ReduceSum",
                "ReduceMax", "ReduceMin", "GatherCols", "Scaler", "NormalizerL1", "NormalizerL2",
                "NormalizerMAX", "LinearRegressor", "CastNotCast", "Flatten4D", "Transpose",
                "SliceCh", "GlobalMax", "GlobalAvg", "Squeeze"]


@pytest.mark.parametrize("case", _VALUE_CASES)
def test_op_values_match_onnxruntime(case):
    import onnxruntime as ort
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, types
    from onnx import helper
    from test_tflite_ops import CASES, _model

    from converters.coreml import MilGraph, build_program, validate_spec

    nodes, x, inits = CASES[case]
    model = _model(nodes, [None] + list(x.shape[1:]), None, inits.items())
    if any(n.domain == "ai.onnx.ml" for n in nodes):
        model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 1))
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    _, mlmodel, expected = build_program(model, ["Y"], CoreMLConfig())
    validate_spec(mlmodel.get_spec(), model, ["Y"], expected, CoreMLConfig())
    g = MilGraph(model, ["Y"], mb, types)
    with Function({}, import_coremltools().target.iOS15), np.errstate(over="ignore"):
        (out,) = g.build({"X": mb.const(val=x)})
        got = out.val
    if got is None:
        pytest.skip(f"{case}: no MIL value inference for its ops")
    np.testing.assert_allclose(np.asarray(got, np.float64), want.astype(np.float64),
                               rtol=1e-5, atol=1e-5)
