"""ONNX → TFLite: real models trained on load_breast_cancer / load_digits, converted
without TensorFlow, run in LiteRT through the edge runtime and compared with ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

import format_fixtures as ff

from converters.onnx_source import ConversionError, UnsupportedOpsError
from converters.tflite import TFLiteConfig, onnx_to_tflite, supported_ops
from edge_runtime.bundle import read_bundle, verify_bundle
from edge_runtime.errors import BundleError
from edge_runtime.model import Model
from edge_runtime.signing import load_public_key


@pytest.fixture(scope="module")
def src_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("src")


@pytest.fixture(scope="module")
def bundles(src_dir, keypair):
    """Source ONNX bundles by kind, built lazily and cached for the module."""
    cache: dict[str, object] = {}

    def get(kind: str):
        if kind not in cache:
            if kind.startswith("cnn"):
                x, y, names = ff.digits()
                onx = ff.train_cnn_head(ff.cnn_model(features=kind == "cnn"), x, y) \
                    if kind == "cnn" else _cnn_tensor_model(x, y)
                tensor = None if kind == "cnn" else {"name": "X", "dtype": "float32",
                                                     "shape": [None, 1, 8, 8]}
                xg = x[:16] if kind == "cnn" else (x[:16] / 16.0).reshape(-1, 1, 8, 8)
                cache[kind] = ff.write_onnx_bundle(
                    src_dir / kind, onx, name=kind, task="multiclass_classification", names=names,
                    x_golden=xg, key=keypair[0], input_tensor=tensor,
                    outputs=[{"name": "probabilities", "role": "probabilities"}])
            else:
                cache[kind] = ff.sklearn_bundle(src_dir / kind, kind, keypair[0])
        return cache[kind]
    return get


def _cnn_tensor_model(x, y):
    """The CNN with a raw NCHW tensor input (pixels already scaled to [0, 1])."""
    from onnx import numpy_helper

    onx = ff.train_cnn_head(ff.cnn_model(features=True), x, y)
    feats = ff.cnn_model(features=False)
    trained = {i.name: i for i in onx.graph.initializer}
    for init in feats.graph.initializer:
        if init.name in ("fc_w", "fc_b"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(trained[init.name]),
                                                  init.name))
    return feats


def _scores(model: Model, x: np.ndarray):
    if model.codec is not None:
        return model.score_array(x)
    return model._scores(model.engine.run({model.engine.input_names[0]: x}))


@pytest.mark.parametrize("kind", ["logreg", "mlp", "logreg_digits", "mlp_digits"])
def test_sklearn_classifiers_match_onnx(kind, bundles, tmp_path, keypair):
    src = bundles(kind)
    out = onnx_to_tflite(src, tmp_path / "tfl", TFLiteConfig(key=keypair[0]))
    assert out == tmp_path / "tfl"
    report = verify_bundle(out, load_public_key(keypair[1]))
    assert report.signed
    s_model, t_model = Model.load(src), Model.load(out)
    assert t_model.manifest.format == "tflite" and t_model.engine.format == "tflite"
    assert t_model.manifest.inputs == s_model.manifest.inputs  # the named-feature contract
    assert t_model.manifest.postprocess == s_model.manifest.postprocess
    assert t_model.self_test() == 1
    prov = t_model.manifest.provenance
    assert prov["converter"] == "edgefleet.converters.tflite"
    assert prov["source"]["sha256"] == s_model.digest
    assert prov["parity"]["all"]["rows"] >= 256 and prov["parity"]["all"]["max_abs_diff"] < 1e-4

    x = ff.estimator(kind)[1]
    sa, sb = s_model.score_array(x), t_model.score_array(x)
    assert np.mean(sa.label_index == sb.label_index) >= 0.995
    assert np.abs(sa.probabilities - sb.probabilities).max() < 1e-4
    # the label output of the ONNX graph is reproduced too (ARG_MAX → GATHER classes)
    lab_s = s_model.engine.run({"X": x})[0]
    lab_t = t_model.engine.run({"X": x})[t_model.engine.output_names.index("label")]
    assert np.array_equal(lab_s.reshape(-1), lab_t.reshape(-1))
    names = t_model.codec.names
    rows = [dict(zip(names, map(float, r))) for r in x[:5]]
    assert [r["label"] for r in t_model.predict(rows)] == [r["label"] for r in s_model.predict(rows)]


def test_regression_values_match(bundles, tmp_path, keypair):
    src = bundles("linreg")
    out = onnx_to_tflite(src, tmp_path / "tfl", TFLiteConfig(key=keypair[0]))
    x = ff.estimator("linreg")[1]
    a = Model.load(src).score_array(x).value
    b = Model.load(out).score_array(x).value
    assert np.allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["cnn", "cnn_tensor"])
def test_digits_cnn_matches_onnx(kind, bundles, tmp_path, keypair):
    src = bundles(kind)
    out = onnx_to_tflite(src, tmp_path / "tfl", TFLiteConfig(key=keypair[0]))
    s_model, t_model = Model.load(src), Model.load(out)
    x, y, _ = ff.digits()
    if kind == "cnn_tensor":
        x = (x / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
        assert t_model.engine.inputs[0].shape == [None, 1, 8, 8]  # NCHW contract kept
    sa, sb = _scores(s_model, x), _scores(t_model, x)
    assert np.mean(sa.label_index == y) > 0.85  # a real digits classifier
    assert np.mean(sa.label_index == sb.label_index) >= 0.995
    assert np.abs(sa.probabilities - sb.probabilities).max() < 1e-4
    ops = t_model.manifest.provenance["tflite_ops"]
    assert ops["CONV_2D"] == 3 and ops["MAX_POOL_2D"] == 1 and ops["AVERAGE_POOL_2D"] == 1
    assert "RELU" not in ops  # Relu fused into CONV_2D
    # NCHW→NHWC once at the input, back only where element order matters (the two Flattens)
    assert ops["TRANSPOSE"] == 3


def test_int8_weights_smaller_and_agree(bundles, tmp_path, keypair):
    src = bundles("mlp_digits")
    fp = onnx_to_tflite(src, tmp_path / "fp32", TFLiteConfig(key=keypair[0]))
    q = onnx_to_tflite(src, tmp_path / "int8",
                       TFLiteConfig(key=keypair[0], int8_weights=True, int8_min_elements=0))
    fp_size = (fp / "model.tflite").stat().st_size
    q_size = (q / "model.tflite").stat().st_size
    assert q_size < 0.5 * fp_size
    mq = Model.load(q)
    prov = mq.manifest.provenance
    assert prov["quantization"].startswith("int8 weights") and prov["quantized_weights"] == 3
    kinds = {d["dtype"] for d in mq.engine._interp.get_tensor_details()}
    assert np.int8 in kinds
    x, y, _ = ff.digits()
    sa, sb = Model.load(src).score_array(x), mq.score_array(x)
    assert np.mean(sa.label_index == sb.label_index) >= 0.99
    assert abs(np.mean(sa.label_index == y) - np.mean(sb.label_index == y)) <= 0.01
    assert mq.self_test() == 1


def test_int8_parity_gate_refuses_then_accepts(bundles, tmp_path, keypair):
    src = bundles("cnn")
    with pytest.raises(ConversionError, match="disagrees with the source"):
        onnx_to_tflite(src, tmp_path / "q", TFLiteConfig(key=keypair[0], int8_weights=True,
                                                         int8_min_elements=0, atol=1e-3))
    assert not (tmp_path / "q").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging leftovers
    out = onnx_to_tflite(src, tmp_path / "q", TFLiteConfig(key=keypair[0], int8_weights=True,
                                                           int8_min_elements=0, atol=0.5))
    x, _, _ = ff.digits()
    agree = np.mean(Model.load(src).score_array(x).label_index
                    == Model.load(out).score_array(x).label_index)
    assert agree >= 0.9


def test_dynamic_batch_sizes(bundles, tmp_path, keypair):
    out = onnx_to_tflite(bundles("mlp"), tmp_path / "tfl", TFLiteConfig(key=keypair[0]))
    m = Model.load(out)
    x = ff.estimator("mlp")[1]
    full = m.score_array(x[:64]).probability
    for n in (1, 7, 64, 3):
        assert np.allclose(m.score_array(x[:n]).probability, full[:n], atol=1e-6)


def test_unsupported_ops_listed_all_and_nothing_written(bundles, src_dir, tmp_path, keypair):
    from onnx import TensorProto, helper

    # gradient boosting → TreeEnsembleClassifier: no TFLite builtin
    gb = ff.sklearn_bundle(src_dir / "gboost", "gboost", keypair[0])
    with pytest.raises(UnsupportedOpsError, match="TreeEnsembleClassifier"):
        onnx_to_tflite(gb, tmp_path / "gb", TFLiteConfig(key=keypair[0]))
    assert not (tmp_path / "gb").exists()

    # a graph with several unsupported ops: every one is named in one error
    nodes = [helper.make_node("Einsum", ["X", "X"], ["e"], equation="ij,ij->ij"),
             helper.make_node("Relu", ["e"], ["r"]),
             helper.make_node("Erf", ["r"], ["f"]),
             helper.make_node("Reshape", ["f", "shp"], ["f4"]),
             helper.make_node("Conv", ["f4", "w"], ["c"]),
             helper.make_node("Flatten", ["c"], ["c2"]),
             helper.make_node("Softmax", ["c2"], ["probabilities"])]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 1, 1, 1], [1.0, 2.0]),
             helper.make_tensor("shp", TensorProto.INT64, [5], [-1, 1, 2, 2, 1])]
    g = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                                      [None, 4])],
                          [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                                         [None, None])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    # Build the bundle without running ONNX Runtime on it (golden left empty).
    from edge_runtime.bundle import write_bundle

    bad = write_bundle(src_dir / "bad", {
        "name": "bad", "version": "1", "format": "onnx", "model_file": "model.onnx",
        "task": "raw", "inputs": {"kind": "features", "tensor": "X",
                                  "features": [{"name": f"f{i}"} for i in range(4)]},
        "outputs": [{"name": "probabilities", "role": "raw"}]},
        {"model.onnx": model.SerializeToString()}, key=keypair[0]).root
    with pytest.raises(UnsupportedOpsError) as err:
        onnx_to_tflite(bad, tmp_path / "bad", TFLiteConfig(key=keypair[0]))
    msg = str(err.value)
    for needle in ("Einsum", "Erf", "Conv (3-D convolution"):
        assert needle in msg, msg
    assert err.value.to_dict()["code"] == "unsupported_ops"
    assert len(err.value.problems) == 3
    assert not (tmp_path / "bad").exists()


def test_corrupt_onnx_is_a_clear_error(src_dir, tmp_path, keypair):
    from edge_runtime.bundle import write_bundle

    bad = write_bundle(src_dir / "corrupt", {
        "name": "corrupt", "version": "1", "format": "onnx", "model_file": "model.onnx",
        "task": "raw", "inputs": {"kind": "features", "tensor": "X",
                                  "features": [{"name": "a"}]}},
        {"model.onnx": b"\x08\x07this is not a protobuf\xff\xff"}, key=keypair[0]).root
    with pytest.raises(ConversionError, match="not a valid ONNX model") as err:
        onnx_to_tflite(bad, tmp_path / "out", TFLiteConfig(key=keypair[0]))
    assert err.value.field == "model_file"
    assert not (tmp_path / "out").exists()


def test_key_required_and_env_key(bundles, tmp_path, keypair, monkeypatch):
    monkeypatch.delenv("EDGE_CONVERT_KEY", raising=False)
    with pytest.raises(ConversionError, match="no signing key") as err:
        onnx_to_tflite(bundles("logreg"), tmp_path / "a", TFLiteConfig())
    assert err.value.field == "key" and not (tmp_path / "a").exists()
    with pytest.raises(ConversionError, match="not found"):
        onnx_to_tflite(bundles("logreg"), tmp_path / "a", TFLiteConfig(key=tmp_path / "nokey"))
    monkeypatch.setenv("EDGE_CONVERT_KEY", str(keypair[0]))
    out = onnx_to_tflite(bundles("logreg"), tmp_path / "a")
    verify_bundle(out, load_public_key(keypair[1]))


def test_bad_source_and_out_dir(bundles, tmp_path, keypair):
    import shutil

    src = bundles("logreg")
    tfl = onnx_to_tflite(src, tmp_path / "tfl", TFLiteConfig(key=keypair[0]))
    with pytest.raises(ConversionError, match="format is 'tflite'"):
        onnx_to_tflite(tfl, tmp_path / "again", TFLiteConfig(key=keypair[0]))
    # a tampered source is refused by the bundle verifier
    bad = tmp_path / "tampered"
    shutil.copytree(src, bad)
    with open(bad / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="size"):
        onnx_to_tflite(bad, tmp_path / "x", TFLiteConfig(key=keypair[0]))
    # out_dir: an existing bundle is replaced, an unrelated non-empty directory is not
    again = onnx_to_tflite(src, tfl, TFLiteConfig(key=keypair[0]))
    assert read_bundle(again).manifest.format == "tflite"
    other = tmp_path / "docs"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ConversionError, match="not a bundle"):
        onnx_to_tflite(src, other, TFLiteConfig(key=keypair[0]))
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConversionError, match="source bundle itself"):
        onnx_to_tflite(src, src, TFLiteConfig(key=keypair[0]))
    with pytest.raises(ConversionError, match="fallback"):
        onnx_to_tflite(src, tmp_path / "y", TFLiteConfig(key=keypair[0], fallback="magic"))


def test_registry_covers_the_issue_op_set():
    ops = supported_ops()
    for op in ("Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "Softmax",
               "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape",
               "Concat", "Identity", "Cast", "LinearClassifier", "Normalizer", "Scaler",
               "ArrayFeatureExtractor", "ArgMax"):
        assert op in ops, op
    assert all(isinstance(doc, str) and doc for doc in ops.values())  # each names its TFLite op


def test_cli_tflite_and_coreml_options(bundles, src_dir, tmp_path, keypair, capsys, monkeypatch):
    from converters.cli import main

    monkeypatch.setenv("EDGE_CONVERT_KEY", str(keypair[0]))
    src = bundles("mlp_digits")
    assert main(["tflite", str(src), "--out", str(tmp_path / "q"), "--int8",
                 "--int8-min-elements", "0", "--atol", "0.5", "--version", "1.0.0-int8"]) == 0
    m = read_bundle(tmp_path / "q").manifest
    assert m.version == "1.0.0-int8" and m.provenance["quantized_weights"] == 3
    # unsupported ops: one line on stderr naming the op, exit 1, nothing written
    gb = ff.sklearn_bundle(src_dir / "gboost-cli", "gboost", keypair[0])
    capsys.readouterr()
    assert main(["tflite", str(gb), "--out", str(tmp_path / "gb")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TreeEnsembleClassifier" in err and "field model" in err
    assert not (tmp_path / "gb").exists()
    pytest.importorskip("coremltools")
    assert main(["coreml", str(src), "--out", str(tmp_path / "cm"), "--precision", "float16",
                 "--max-batch", "64"]) == 0
    out = capsys.readouterr().out
    assert "macOS" in out
    prov = read_bundle(tmp_path / "cm").manifest.provenance
    assert prov["compute_precision"] == "float16" and prov["max_batch"] == 64


def test_string_class_labels_leave_the_label_to_postprocess(src_dir, tmp_path, keypair):
    import warnings

    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    x, y, names = ff.cancer()
    ys = np.array(["benign", "malignant"])[y]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MLPClassifier((8,), max_iter=300, random_state=0).fit(x, ys)
        onx = to_onnx(est, x[:1], options={id(est): {"zipmap": False}}, target_opset=17)
    src = ff.write_onnx_bundle(src_dir / "strings", onx, name="strings",
                               task="binary_classification", names=names, x_golden=x[:16],
                               key=keypair[0], classes=["benign", "malignant"])
    out = onnx_to_tflite(src, tmp_path / "tfl", TFLiteConfig(key=keypair[0]))
    m = Model.load(out)
    assert [o.name for o in m.manifest.outputs] == ["probabilities"]
    assert "label" in m.manifest.provenance["dropped_outputs"]
    s_model = Model.load(src)
    rows = [dict(zip(names, map(float, r))) for r in x[:20]]
    assert [r["label"] for r in m.predict(rows)] == [r["label"] for r in s_model.predict(rows)]
    assert {r["label"] for r in m.predict(rows)} <= {"benign", "malignant"}


def test_parity_stats_do_not_let_nan_pass():
    """The gate compares max_rel_diff > atol: a NaN there would compare False and pass."""
    from converters.parity import _stats

    src = np.array([[0.2, 0.8], [0.6, 0.4]])
    bad = src.copy()
    bad[1, 0] = np.nan
    d = np.array([1, 0])
    s = _stats([src], [bad], [d], [d])
    assert s["max_abs_diff"] == float("inf") and s["max_rel_diff"] == float("inf")
    ok = _stats([src], [src + 1e-7], [d], [d])
    assert ok["rows"] == 2 and 0 < ok["max_rel_diff"] < 1e-6 and ok["label_agreement"] == 1.0
    big = _stats([np.array([[1000.0]])], [np.array([[1000.5]])], [], [])
    assert big["max_abs_diff"] == 0.5 and big["max_rel_diff"] == pytest.approx(5e-4)


def test_parity_gate_always_checks_some_rows(bundles, tmp_path, keypair):
    """A source without golden vectors: INT8 is checked on the synthetic rows, and with
    parity_rows=0 there is nothing to compare, which is refused rather than passed."""
    import json
    import shutil

    from edge_runtime.bundle import sign_bundle

    src = tmp_path / "nogolden"
    shutil.copytree(bundles("mlp_digits"), src)
    m = json.loads((src / "manifest.json").read_text())
    m["golden"] = []
    (src / "manifest.json").write_text(json.dumps(m))
    sign_bundle(src, keypair[0])
    with pytest.raises(ConversionError, match="nothing to check parity on") as err:
        onnx_to_tflite(src, tmp_path / "none", TFLiteConfig(key=keypair[0], parity_rows=0))
    assert err.value.field == "parity_rows" and not (tmp_path / "none").exists()
    # INT8 without golden rows: judged on the 256 synthetic rows (it used to pass on 0 rows)
    with pytest.raises(ConversionError, match="disagrees with the source.* on 256 rows"):
        onnx_to_tflite(src, tmp_path / "q", TFLiteConfig(key=keypair[0], int8_weights=True,
                                                         int8_min_elements=0))
    out = onnx_to_tflite(src, tmp_path / "q", TFLiteConfig(key=keypair[0], int8_weights=True,
                                                           int8_min_elements=0, atol=0.8))
    parity = read_bundle(out).manifest.provenance["parity"]
    assert parity["golden"]["rows"] == 0 and parity["all"]["rows"] == 256


def test_sgd_log_loss_multiclass_head(bundles, tmp_path, keypair):
    """skl2onnx's one-vs-rest head for SGDClassifier(log_loss) on digits normalises with
    Cast(bool) → Not → Cast: converted (LOGICAL_NOT) and equal to ONNX Runtime."""
    import onnx

    src = bundles("sgd_digits")
    assert "Not" in {n.op_type for n in onnx.load(str(read_bundle(src).model_path)).graph.node}
    out = onnx_to_tflite(src, tmp_path / "tfl", TFLiteConfig(key=keypair[0]))
    t_model, s_model = Model.load(out), Model.load(src)
    assert t_model.manifest.provenance["tflite_ops"]["LOGICAL_NOT"] == 1
    x, y, _ = ff.digits()
    sa, sb = s_model.score_array(x), t_model.score_array(x)
    assert np.mean(sa.label_index == y) > 0.9
    assert np.array_equal(sa.label_index, sb.label_index)
    assert np.abs(sa.probabilities - sb.probabilities).max() < 1e-5
