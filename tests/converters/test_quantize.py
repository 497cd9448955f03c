# ruff: noqa: F811  (pytest fixtures imported from export_fixtures are parameters)
"""quantize_bundle: dynamic / static INT8 and FP16 copies that stay signed and answer alike."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from export_fixtures import cnn_bundle, digits_csv, digits_xy, keys, mlp_bundle, public_key, trained  # noqa: F401

from converters.export import ExportConfig, export_model
from converters.quantize import QuantizeConfig, fp16_convert, quantize_bundle
from edge_runtime.bundle import read_bundle, verify_bundle, write_bundle
from edge_runtime.errors import ValidationError
from edge_runtime.model import Model


@pytest.fixture(scope="module")
def fp32_scores(mlp_bundle):
    x, _ = digits_xy()
    return Model.load(mlp_bundle).score_array(x.astype(np.float32))


@pytest.mark.parametrize("mode", ["dynamic", "static", "fp16"])
def test_quantized_bundle_is_signed_and_agrees(mode, tmp_path, mlp_bundle, digits_csv, keys,
                                               public_key, fp32_scores):
    out = quantize_bundle(mlp_bundle, tmp_path / mode, QuantizeConfig(
        mode=mode, sample=digits_csv if mode == "static" else None, label_column="label",
        key=keys[0]))
    verify_bundle(out, public_key)
    src = read_bundle(mlp_bundle).manifest
    m = read_bundle(out).manifest
    assert m.version == f"1.0.0+{mode}" and m.name == src.name
    assert m.inputs == src.inputs and m.postprocess == src.postprocess
    q = m.provenance["quantization"]
    assert q["mode"] == mode
    assert m.provenance["source_bundle"] == {"name": src.name, "version": src.version,
                                             "sha256": src.digest}
    if mode == "dynamic":
        assert q["quantized_ops"].get("MatMulInteger", 0) >= 2
    elif mode == "static":
        assert q["quantized_ops"].get("QuantizeLinear", 0) >= 1
        assert q["pre_process"] in ("full", "skip_symbolic_shape")
        assert q["calibration_rows"] == 256
    else:
        graph = onnx.load(str(out / "model.onnx")).graph
        assert onnx.TensorProto.FLOAT16 in {t.data_type for t in graph.initializer}
        assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # smaller, and it answers like the FP32 bundle on the whole digits set
    size = lambda p: (p / "model.onnx").stat().st_size
    assert size(out) < size(mlp_bundle)
    model = Model.load(out)
    assert model.self_test() == 1
    x, y = digits_xy()
    s = model.score_array(x.astype(np.float32))
    assert np.mean(s.label_index == fp32_scores.label_index) >= 0.98
    diff = np.abs(s.probabilities - fp32_scores.probabilities).max(axis=1)
    if mode == "fp16":
        assert diff.max() < 0.005
    else:  # INT8 moves near-ties more; the bulk of rows stays close
        assert np.quantile(diff, 0.99) < 0.1
    assert np.mean(s.label_index == y) >= 0.95


def test_static_needs_a_sample_before_any_work(tmp_path, mlp_bundle, keys):
    with pytest.raises(ValidationError) as exc:
        quantize_bundle(mlp_bundle, tmp_path / "q", QuantizeConfig(mode="static", key=keys[0]))
    assert exc.value.field == "sample"
    assert not (tmp_path / "q").exists()


def test_bad_mode_and_missing_key(tmp_path, mlp_bundle, keys, monkeypatch):
    with pytest.raises(ValidationError, match="not one of dynamic, static, fp16"):
        quantize_bundle(mlp_bundle, tmp_path / "q", QuantizeConfig(mode="int4", key=keys[0]))
    monkeypatch.delenv("EDGE_CONVERT_KEY", raising=False)
    with pytest.raises(ValidationError, match="no signing key"):
        quantize_bundle(mlp_bundle, tmp_path / "q", QuantizeConfig(mode="dynamic"))
    assert not (tmp_path / "q").exists()


def test_tree_model_has_nothing_to_quantize(tmp_path, keys):
    model, x, y, names = trained("gboost")
    src = export_model(model, (x, y), tmp_path / "gb", ExportConfig(key=keys[0],
                                                                    feature_names=names))
    with pytest.raises(ValidationError, match="nothing to quantize"):
        quantize_bundle(src, tmp_path / "q", QuantizeConfig(mode="dynamic", key=keys[0]))
    assert not (tmp_path / "q").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gb"]


def test_quantized_bundle_cannot_be_quantized_again(tmp_path, mlp_bundle, keys):
    q = quantize_bundle(mlp_bundle, tmp_path / "q", QuantizeConfig(mode="dynamic", key=keys[0]))
    with pytest.raises(ValidationError, match="already quantized"):
        quantize_bundle(q, tmp_path / "qq", QuantizeConfig(mode="fp16", key=keys[0]))
    assert not (tmp_path / "qq").exists()


def test_only_onnx_bundles(tmp_path, mlp_bundle, keys):
    m = read_bundle(mlp_bundle).manifest
    draft = m.model_dump(mode="json", exclude_none=True)
    for k in ("signature", "files", "created_at"):
        draft.pop(k)
    draft.update(format="tflite", model_file="model.tflite")
    # a TFLite bundle (file content is irrelevant: the format is refused first)
    write_bundle(tmp_path / "lite", draft, {"model.tflite": b"TFL3"}, key=keys[0])
    with pytest.raises(ValidationError, match="ONNX bundles"):
        quantize_bundle(tmp_path / "lite", tmp_path / "q", QuantizeConfig(key=keys[0]))
    assert not (tmp_path / "q").exists()


def test_calibration_sample_must_match_the_contract(tmp_path, mlp_bundle, keys):
    from export_fixtures import write_csv

    x, y = digits_xy()
    bad = write_csv(tmp_path / "bad.csv", x[:, :10], [f"px{i}" for i in range(10)])
    with pytest.raises(ValidationError) as exc:
        quantize_bundle(mlp_bundle, tmp_path / "q",
                        QuantizeConfig(mode="static", sample=bad, key=keys[0]))
    assert exc.value.field == "sample.px10"
    assert not (tmp_path / "q").exists()


def test_tampered_source_bundle_is_refused(tmp_path, mlp_bundle, keys):
    import shutil

    from edge_runtime.errors import BundleError

    copy = tmp_path / "src"
    shutil.copytree(mlp_bundle, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-5] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        quantize_bundle(copy, tmp_path / "q", QuantizeConfig(key=keys[0]))
    assert not (tmp_path / "q").exists()


def test_fp16_converter_on_a_conv_graph():
    """The built-in fp16 pass on a small CNN made with onnx.helper keeps I/O float32."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    fc = numpy_helper.from_array(rng.normal(size=(64, 10)).astype(np.float32), "fc")
    shape = numpy_helper.from_array(np.array([-1, 64], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Reshape", ["p", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["z"]),
             helper.make_node("Softmax", ["z"], ["y"], axis=1)]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                       [None, 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])],
                          [w, b, fc, shape])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    half, n = fp16_convert(model)
    assert n == 6
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert {t.name: t.data_type for t in half.graph.initializer}["shape"] == TensorProto.INT64
    x = rng.normal(size=(5, 1, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(half.SerializeToString()).run(None, {"x": x})[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=5e-3)


def test_static_int8_on_a_tensor_cnn(tmp_path, cnn_bundle, keys, public_key):
    """Raw-tensor bundles: calibration on image arrays, then check measures both."""
    from converters.check import CheckConfig, check_bundles

    x, y = digits_xy()
    imgs = (x / 16.0).reshape(-1, 1, 8, 8)
    np.save(tmp_path / "images.npy", imgs[:300])
    q = quantize_bundle(cnn_bundle, tmp_path / "int8", QuantizeConfig(
        mode="static", sample=tmp_path / "images.npy", key=keys[0], per_channel=True))
    verify_bundle(q, public_key)
    assert read_bundle(q).manifest.inputs.kind == "tensors"
    assert Model.load(q).self_test() == 1
    r = check_bundles([cnn_bundle, q], (imgs, y), CheckConfig(single_runs=10, batch_runs=3))
    ref, int8 = r.variants
    assert ref.accuracy > 0.85 and int8.runnable
    assert int8.label_agreement >= 0.97 and int8.accuracy_drop <= 2
    assert int8.size_bytes < ref.size_bytes
    with pytest.raises(ValidationError, match="shape"):
        quantize_bundle(cnn_bundle, tmp_path / "bad", QuantizeConfig(
            mode="static", sample=x[:50], key=keys[0]))
    assert not (tmp_path / "bad").exists()
