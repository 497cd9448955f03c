"""ONNX Runtime and LiteRT engines behind one interface; TFLite answers like ONNX.

The ``.tflite`` files are produced by the project's own ONNX → TFLite converter
(``converters.tflite.onnx_to_tflite``) from ONNX bundles trained here.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime import Model
from edge_runtime.bundle import write_bundle
from edge_runtime.engines import EngineOptions, engine_class
from edge_runtime.errors import BundleError, EngineError, ValidationError
from edge_runtime.profile import load_profile


@pytest.fixture(scope="module")
def cancer_tflite(tmp_path_factory, cancer_bundle, keypair):
    from converters.tflite import onnx_to_tflite
    from converters.tflite.convert import TFLiteConfig

    out = tmp_path_factory.mktemp("tfl") / "cancer-tflite"
    return onnx_to_tflite(cancer_bundle, out, TFLiteConfig(key=keypair[0]))


@pytest.fixture(scope="module")
def mlp_bundles(tmp_path_factory, keypair):
    """A 5-64-64-2 MLP on five breast-cancer features, as ONNX and as TFLite."""
    import warnings

    from sklearn.datasets import load_breast_cancer
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from converters.tflite import onnx_to_tflite
    from converters.tflite.convert import TFLiteConfig
    from tests.conftest import build_sklearn_bundle

    d = load_breast_cancer()
    x = d.data[:, :5].astype(np.float32)
    names = [n.replace(" ", "_") for n in d.feature_names[:5]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = make_pipeline(StandardScaler(), MLPClassifier((64, 64), max_iter=200,
                                                            random_state=0)).fit(x, d.target)
    root = tmp_path_factory.mktemp("mlp")
    onnx_b = build_sklearn_bundle(root / "mlp-onnx", est, x, names, key=keypair[0], name="mlp")
    tfl_b = onnx_to_tflite(onnx_b, root / "mlp-tflite", TFLiteConfig(key=keypair[0]))
    return onnx_b, tfl_b, x, names, est


def test_onnx_batch_is_one_vectorised_call_matching_sklearn(cancer_bundle, cancer_data, cancer_model):
    x, _, names = cancer_data
    model = Model.load(cancer_bundle)
    rows = [dict(zip(names, map(float, r))) for r in x]
    calls = []
    run = model.engine.run
    model.engine.run = lambda feeds: calls.append(len(next(iter(feeds.values())))) or run(feeds)
    out = model.predict(rows)
    assert calls == [len(x)]
    np.testing.assert_allclose([o["probability"] for o in out], cancer_model.predict_proba(x)[:, 1],
                               atol=1e-5)
    s = model.score_array(x)
    assert s.probabilities.shape == (len(x), 2) and s.label_index.shape == (len(x),)
    assert model.to_rows(s) == out


def test_onnx_thread_settings_come_from_the_profile(cancer_bundle):
    model = Model.load(cancer_bundle, load_profile("rpi4").engine_options())
    so = model.engine.session.get_session_options()
    assert so.intra_op_num_threads == 4 and so.inter_op_num_threads == 1
    assert model.describe()["engine"]["providers"] == ["CPUExecutionProvider"]


def test_raw_tensors_path(cancer_bundle, cancer_data):
    x, _, _ = cancer_data
    model = Model.load(cancer_bundle)
    label, probs = model.run_tensors({"X": x[:3].tolist()})
    assert probs.shape == (3, 2) and label.shape == (3,)
    with pytest.raises(ValidationError, match=r"tensors.X: expected rank 2"):
        model.run_tensors({"X": x[0].tolist()})
    with pytest.raises(ValidationError, match="missing tensor X"):
        model.run_tensors({})


def test_unloadable_model_file_is_an_engine_error(tmp_path, cancer_bundle):
    from edge_runtime.bundle import read_bundle

    m = read_bundle(cancer_bundle).manifest.model_dump(mode="json", exclude_none=True)
    for fmt, fname in (("onnx", "model.onnx"), ("tflite", "model.tflite")):
        fields = {**m, "format": fmt, "model_file": fname}
        fields.pop("files"), fields.pop("signature", None)
        b = write_bundle(tmp_path / fmt, fields, {fname: b"not a model at all"})
        with pytest.raises(EngineError, match="cannot load model"):
            Model.load(b)


def test_unknown_format_and_coreml(tmp_path):
    with pytest.raises(BundleError, match="Core ML bundles cannot run on this platform") as ei:
        engine_class("coreml")
    assert ei.value.field == "format"
    with pytest.raises(BundleError, match="no engine for format 'pmml'") as ei:
        engine_class("pmml")
    assert ei.value.field == "format"
    assert engine_class("onnx").format == "onnx" and engine_class("tflite").format == "tflite"


def test_tflite_engine_without_any_runtime_is_a_clear_error(monkeypatch, cancer_tflite):
    """ai_edge_litert, then tflite_runtime, then tensorflow.lite; none → one clear EngineError."""
    import sys

    from edge_runtime.engines.tflite import load_interpreter_class

    for mod in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime",
                "tflite_runtime.interpreter", "tensorflow"):
        monkeypatch.setitem(sys.modules, mod, None)  # import → ImportError
    with pytest.raises(EngineError, match=r"no TFLite runtime installed: pip install 'edgefleet\[tflite\]'"):
        load_interpreter_class()
    with pytest.raises(EngineError, match="no TFLite runtime installed"):
        Model.load(cancer_tflite)


def test_tflite_engine_matches_onnx_on_the_whole_dataset(cancer_bundle, cancer_tflite, cancer_data):
    x, _, names = cancer_data
    onnx_m = Model.load(cancer_bundle)
    tfl_m = Model.load(cancer_tflite)
    assert tfl_m.manifest.format == "tflite" and tfl_m.engine.format == "tflite"
    assert tfl_m.self_test() == 1
    rows = [dict(zip(names, map(float, r))) for r in x]
    a, b = onnx_m.predict(rows), tfl_m.predict(rows)
    np.testing.assert_allclose([r["probability"] for r in b], [r["probability"] for r in a],
                               atol=1e-4)
    assert [r["label"] for r in a] == [r["label"] for r in b]
    # single rows and odd batch sizes (the interpreter is resized per batch size)
    for n in (1, 7, 1, 64):
        got = tfl_m.predict(rows[:n])
        np.testing.assert_allclose([r["probability"] for r in got],
                                   [r["probability"] for r in a[:n]], atol=1e-4)
    assert tfl_m.predict(rows[3]) == tfl_m.to_rows(tfl_m.score_array(tfl_m.codec.encode([rows[3]])))


def test_tflite_mlp_parity_and_threads(mlp_bundles):
    onnx_b, tfl_b, x, _names, est = mlp_bundles
    onnx_m = Model.load(onnx_b)
    tfl_m = Model.load(tfl_b, EngineOptions(intra_op_threads=2))
    assert tfl_m.engine.threads == 2
    assert Model.load(tfl_b, load_profile("tiny-arm").engine_options()).engine.threads == 1
    s_onnx, s_tfl = onnx_m.score_array(x), tfl_m.score_array(x)
    np.testing.assert_allclose(s_tfl.probability, s_onnx.probability, atol=1e-4)
    np.testing.assert_allclose(s_onnx.probability, est.predict_proba(x)[:, 1], atol=1e-4)
    assert (s_tfl.label_index == s_onnx.label_index).mean() == 1.0


def test_tflite_bundle_installs_in_the_store(store, cancer_tflite, rows):
    report = store.install(cancer_tflite)
    assert report.switched and store.model("active").manifest.format == "tflite"
    assert len(store.model("active").predict(rows)) == 5


class _NoPrivateSession:
    """An ``InferenceSession`` as a future onnxruntime might ship it: no ``_sess``."""

    @staticmethod
    def make(base):
        class Session(base):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                self._impl = self.__dict__.pop("_sess")

            def run(self, output_names, input_feed, run_options=None):
                return self._impl.run(output_names, input_feed, run_options)

        return Session


class _ChangedPrivateSession:
    """``_sess`` still there, but its ``run`` takes other arguments than today's."""

    @staticmethod
    def make(base):
        class Changed:
            def __init__(self, impl):
                self._impl = impl

            def run(self, request):  # a different signature: the old call raises TypeError
                return self._impl.run(*request)

        class Session(base):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                self._sess = Changed(self._sess)

            def run(self, output_names, input_feed, run_options=None):
                return self._sess.run((output_names, input_feed, run_options))

        return Session


@pytest.mark.parametrize("variant", [_NoPrivateSession, _ChangedPrivateSession])
def test_onnx_engine_falls_back_to_the_public_run(variant, monkeypatch, cancer_bundle,
                                                  cancer_data, cancer_model):
    import onnxruntime as ort

    x, _, names = cancer_data
    want = cancer_model.predict_proba(x[:20])[:, 1]
    monkeypatch.setattr(ort, "InferenceSession", variant.make(ort.InferenceSession))
    model = Model.load(cancer_bundle)  # warm-up runs go through the fallback too
    assert model.engine.fast_path is False
    rows = [dict(zip(names, map(float, r))) for r in x[:20]]
    np.testing.assert_allclose([p["probability"] for p in model.predict(rows)], want, atol=1e-5)
    assert model.predict(rows[0])[0]["probability"] == pytest.approx(want[0], abs=1e-5)
    assert model.self_test() == 1
    # a bad feed is still an EngineError carrying onnxruntime's own message
    with pytest.raises(EngineError, match="ONNX Runtime run failed"):
        model.engine.run({"X": np.zeros((2, 3), np.float32)})


def test_onnx_engine_uses_the_direct_call_on_cpu(cancer_bundle):
    model = Model.load(cancer_bundle)
    assert model.engine.fast_path is True
    with pytest.raises(EngineError, match="ONNX Runtime run failed"):
        model.engine.run({"X": np.zeros((2, 3), np.float32)})
    assert model.engine.fast_path is True  # a bad feed does not switch paths


def test_tflite_keeps_an_interpreter_per_recent_batch_size(cancer_tflite, cancer_bundle,
                                                           cancer_data):
    """Mixed single-row / batch traffic: right answers for every size, a bounded number of
    interpreters, and a size seen before is served without resizing again."""
    x, _, _ = cancer_data
    tfl = Model.load(cancer_tflite, warmup=False)
    want = Model.load(cancer_bundle).score_array(x).probability
    eng = tfl.engine
    sizes = [1, 64, 1, 7, 64, 3, 5, 11, 1, 64, 2]
    for n in sizes:
        np.testing.assert_allclose(tfl.score_array(x[:n]).probability, want[:n], atol=1e-4)
        assert len(eng._sizes) <= eng.max_sizes and next(reversed(eng._sizes)) == n
    assert set(eng._sizes) == {11, 1, 64, 2}  # the four most recent sizes
    kept = eng._sizes[64]
    tfl.score_array(x[:64])
    assert eng._sizes[64] is kept and kept.batch == 64  # reused as is
    tfl.close()
    assert not eng._sizes
    np.testing.assert_allclose(tfl.score_array(x[:3]).probability, want[:3], atol=1e-4)
