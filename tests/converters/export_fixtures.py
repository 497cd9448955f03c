"""Real models trained on scikit-learn's bundled data, shared by the export/quantize/check/CLI tests.

Training is cached per process (``lru_cache``) so every test module that
imports these fixtures reuses the same fitted models.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import pytest


@functools.cache
def cancer_frame():
    from sklearn.datasets import load_breast_cancer

    df = load_breast_cancer(as_frame=True).frame
    df.columns = [c.replace(" ", "_") for c in df.columns]
    return df


@functools.cache
def digits_xy():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x.astype(np.float64), y


@functools.cache
def trained(kind: str):
    """A fitted model by name: (model, X, y, feature names)."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    df = cancer_frame()
    xc, yc = df.drop(columns="target"), df["target"].to_numpy()
    xd, yd = digits_xy()
    dnames = [f"px{i}" for i in range(64)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "logreg":  # fitted on a DataFrame: has feature_names_in_
            m = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(xc, yc)
            return m, xc.to_numpy(), yc, list(xc.columns)
        if kind == "gboost":
            m = GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0)
            return m.fit(xc.to_numpy(), yc), xc.to_numpy(), yc, list(xc.columns)
        if kind == "mlp":
            m = make_pipeline(StandardScaler(),
                              MLPClassifier((32,), max_iter=300, random_state=0))
            return m.fit(xd, yd), xd, yd, dnames
        if kind == "lightgbm":
            import lightgbm

            m = lightgbm.LGBMClassifier(n_estimators=15, num_leaves=7, verbose=-1, random_state=0)
            return m.fit(xc.to_numpy(), yc), xc.to_numpy(), yc, list(xc.columns)
        if kind == "xgboost":
            import xgboost

            m = xgboost.XGBClassifier(n_estimators=10, max_depth=3, random_state=0)
            return m.fit(xd, yd), xd, yd, dnames
        if kind == "ridge":  # regression: mean radius from the other features
            x = xc.drop(columns="mean_radius")
            y = xc["mean_radius"].to_numpy()
            m = make_pipeline(StandardScaler(), Ridge()).fit(x.to_numpy(), y)
            return m, x.to_numpy(), y, list(x.columns)
        if kind == "weak":  # a deliberately poor digits model (few rows, few iterations)
            m = LogisticRegression(max_iter=5).fit(xd[:60], yd[:60])
            return m, xd, yd, dnames
    raise KeyError(kind)


def write_csv(path: Path, x: np.ndarray, names: list[str], y=None, label: str = "label") -> Path:
    import pyarrow as pa
    from pyarrow import csv

    cols = {n: x[:, i] for i, n in enumerate(names)}
    if y is not None:
        cols[label] = y
    csv.write_csv(pa.table(cols), path)
    return path


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    from edge_runtime.signing import generate_keypair

    d = tmp_path_factory.mktemp("convert-keys")
    return generate_keypair(d / "convert.key", d / "convert.pub")


@pytest.fixture(scope="session")
def public_key(keys):
    from edge_runtime.signing import load_public_key

    return load_public_key(keys[1])


@pytest.fixture(scope="session")
def mlp_bundle(tmp_path_factory, keys) -> Path:
    """The digits MLP exported once (FP32 source for quantize/check tests)."""
    from converters.export import ExportConfig, export_model

    m, x, y, names = trained("mlp")
    out = tmp_path_factory.mktemp("mlp") / "digits-mlp"
    return export_model(m, (x, y), out, ExportConfig(key=keys[0], name="digits-mlp",
                                                     feature_names=[f"px{i}" for i in range(64)]))


@pytest.fixture(scope="session")
def digits_csv(tmp_path_factory) -> Path:
    x, y = digits_xy()
    return write_csv(tmp_path_factory.mktemp("data") / "digits.csv", x,
                     [f"px{i}" for i in range(64)], y)


@pytest.fixture(scope="session")
def cnn_bundle(tmp_path_factory, keys) -> Path:
    """A digits CNN on 1×8×8 tensors built with onnx.helper (no torch needed): fixed random
    3×3 conv filters + ReLU + 2×2 max-pool, and a softmax head over a ridge classifier trained
    on those features with scikit-learn (closed form: fast on a busy CI machine). A raw-tensor bundle, for the tensor paths of quantize and check."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.linear_model import RidgeClassifier

    from edge_runtime.bundle import write_bundle

    x, y = digits_xy()
    imgs = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 1, 3, 3)).astype(np.float32)
    b = np.zeros(8, np.float32)
    conv = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Reshape", ["p", "shape"], ["features"])],
        "features", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 1, 8, 8])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 128])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(np.array([-1, 128], np.int64), "shape")])
    feat_model = helper.make_model(conv, opset_imports=[helper.make_opsetid("", 17)])
    feats = ort.InferenceSession(feat_model.SerializeToString()).run(None, {"image": imgs})[0]
    head = RidgeClassifier(alpha=1.0).fit(feats, y)
    temperature = 10.0  # ridge scores live in about [-1, 1]: sharpen the softmax
    g = conv
    g.output.pop()
    g.node.extend([helper.make_node("MatMul", ["features", "fc_w"], ["z0"]),
                   helper.make_node("Add", ["z0", "fc_b"], ["logits"]),
                   helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)])
    g.initializer.extend([
        numpy_helper.from_array((head.coef_.T * temperature).astype(np.float32), "fc_w"),
        numpy_helper.from_array((head.intercept_ * temperature).astype(np.float32), "fc_b")])
    g.output.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10]))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    probs = ort.InferenceSession(model.SerializeToString()).run(None, {"image": imgs[:6]})[0]
    manifest = {
        "name": "digits-cnn", "version": "1.0.0", "format": "onnx", "model_file": "model.onnx",
        "task": "multiclass_classification",
        "inputs": {"kind": "tensors", "tensors": [{"name": "image", "dtype": "float32",
                                                   "shape": [None, 1, 8, 8]}]},
        "outputs": [{"name": "probabilities", "role": "probabilities"}],
        "postprocess": {"classes": list(range(10))},
        "golden": [{"tensors": {"image": imgs[:6].tolist()},
                    "expected_probability": probs.max(axis=1).tolist(),
                    "expected_label": probs.argmax(axis=1).tolist()}],
    }
    out = tmp_path_factory.mktemp("cnn") / "digits-cnn"
    write_bundle(out, manifest, {"model.onnx": model.SerializeToString()}, key=keys[0])
    return out
