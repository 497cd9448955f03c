"""Real models for the TFLite / Core ML converter tests, trained on scikit-learn's data.

Bundles are written through ``build_bundle`` (skl2onnx with ``zipmap=False``,
golden rows from the data) and cached per process, so the TFLite and Core ML
test modules share one training run per model.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np


@functools.cache
def cancer():
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return d.data.astype(np.float32), d.target, [n.replace(" ", "_") for n in d.feature_names]


@functools.cache
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), d.target, [f"px{i}" for i in range(64)]


@functools.cache
def estimator(kind: str):
    """(fitted estimator, x, y, feature names, task) by name."""
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, Normalizer, StandardScaler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "logreg":
            x, y, names = cancer()
            m = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
            return m.fit(x, y), x, y, names, "binary_classification"
        if kind == "mlp":
            x, y, names = cancer()
            m = make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=400, random_state=0))
            return m.fit(x, y), x, y, names, "binary_classification"
        if kind == "logreg_digits":
            x, y, names = digits()
            m = make_pipeline(Normalizer(), MinMaxScaler(), LogisticRegression(max_iter=300))
            return m.fit(x, y), x, y, names, "multiclass_classification"
        if kind == "mlp_digits":
            x, y, names = digits()
            m = make_pipeline(StandardScaler(),
                              MLPClassifier((64, 32), max_iter=200, random_state=0))
            return m.fit(x, y), x, y, names, "multiclass_classification"
        if kind == "sgd_digits":  # skl2onnx's OvR head: Cast(bool) → Not → Cast
            from sklearn.linear_model import SGDClassifier

            x, y, names = digits()
            m = make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", random_state=0))
            return m.fit(x, y), x, y, names, "multiclass_classification"
        if kind == "linreg":
            x, y, names = cancer()
            return LinearRegression().fit(x[:, :10], x[:, 10]), x[:, :10], x[:, 10], \
                names[:10], "regression"
        if kind == "gboost":
            from sklearn.ensemble import GradientBoostingClassifier

            x, y, names = cancer()
            m = GradientBoostingClassifier(n_estimators=5, max_depth=2, random_state=0)
            return m.fit(x, y), x, y, names, "binary_classification"
    raise KeyError(kind)


def write_onnx_bundle(out: Path, onx, *, name: str, task: str, names: list[str] | None,
                      x_golden: np.ndarray, key, classes=None, outputs=None,
                      input_tensor: dict | None = None, expected: dict | None = None) -> Path:
    """A signed ONNX bundle around ``onx`` with golden vectors computed by ONNX Runtime."""
    import onnxruntime as ort

    from edge_runtime.bundle import write_bundle

    sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    in_name = onx.graph.input[0].name
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {in_name: x_golden})))
    outputs = outputs or [{"name": "label", "role": "label"},
                          {"name": "probabilities", "role": "probabilities"}]
    golden: dict = {"atol": 1e-4}
    if input_tensor is None:
        inputs = {"kind": "features", "tensor": in_name,
                  "features": [{"name": n, "dtype": "float32"} for n in names]}
        golden["rows"] = [dict(zip(names, map(float, r))) for r in x_golden]
    else:
        inputs = {"kind": "tensors", "tensors": [input_tensor]}
        golden["tensors"] = {in_name: x_golden.tolist()}
    post: dict = {}
    if task == "binary_classification":
        probs = got["probabilities"]
        golden["expected_probability"] = probs[:, 1].astype(float).tolist()
        post = {"classes": list(classes or [0, 1]), "positive_class": (classes or [0, 1])[1]}
    elif task == "multiclass_classification":
        probs = got["probabilities"]
        golden["expected_probability"] = probs.max(axis=1).astype(float).tolist()
        golden["expected_label"] = [(classes or list(range(probs.shape[1])))[i]
                                    for i in probs.argmax(axis=1)]
        post = {"classes": list(classes or range(probs.shape[1]))}
    elif task == "regression":
        golden["expected_value"] = got[outputs[0]["name"]].reshape(-1).astype(float).tolist()
    manifest = {"name": name, "version": "1.0.0", "format": "onnx", "model_file": "model.onnx",
                "task": task, "inputs": inputs, "outputs": outputs, "postprocess": post,
                "golden": [golden], "provenance": {"source": "tests/converters", **(expected or {})}}
    write_bundle(out, manifest, {"model.onnx": onx.SerializeToString()}, key=key)
    return out


def sklearn_bundle(out: Path, kind: str, key) -> Path:
    from skl2onnx import to_onnx

    m, x, _y, names, task = estimator(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = to_onnx(m, x[:1], options={id(m): {"zipmap": False}} if task != "regression" else None,
                      target_opset={"": 17, "ai.onnx.ml": 3})
    outputs = None
    if task == "regression":
        outputs = [{"name": onx.graph.output[0].name, "role": "value"}]
    return write_onnx_bundle(out, onx, name=kind.replace("_", "-"), task=task, names=names,
                             x_golden=x[:16], key=key, outputs=outputs)


def cnn_model(seed: int = 0, *, features: bool = True, pads=(1, 1, 1, 1)):
    """A small digits CNN (Conv→Relu→MaxPool→Conv→Relu→AvgPool→Flatten→Gemm→Softmax)
    with random weights, built with onnx.helper (torch is not installed here).

    ``features=True`` takes the 64 named pixels and reshapes them to 1×8×8 inside
    the graph, so the bundle keeps a named-feature contract.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.normal(0, scale, shape)).astype(np.float32), name)

    inits = [init("w1", 8, 1, 3, 3), init("b1", 8, scale=0.1), init("w2", 16, 8, 3, 3, scale=0.15),
             init("b2", 16, scale=0.1), init("wd", 16, 8, 1, 1, scale=0.2),
             init("bn_s", 16, scale=0.1), init("bn_b", 16, scale=0.1), init("bn_m", 16, scale=0.1),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float32), "bn_v"),
             init("fc_w", 10, 128, scale=0.1), init("fc_b", 10, scale=0.1),
             numpy_helper.from_array(np.array([-1, 1, 8, 8], np.int64), "img_shape"),
             numpy_helper.from_array(np.array([1 / 16.0], np.float32), "px_scale")]
    nodes = []
    src = "X"
    if features:
        nodes += [helper.make_node("Mul", ["X", "px_scale"], ["xs"]),
                  helper.make_node("Reshape", ["xs", "img_shape"], ["img"])]
        src = "img"
    nodes += [
        helper.make_node("Conv", [src, "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=list(pads)),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r2"]),
        helper.make_node("Conv", ["p1", "wd"], ["cd"], kernel_shape=[1, 1]),
        helper.make_node("Concat", ["r2", "cd"], ["cat"], axis=1),
        helper.make_node("AveragePool", ["cat"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["cat"], ["gap"]),
        helper.make_node("Flatten", ["p2"], ["flat"], axis=1),
        helper.make_node("Flatten", ["gap"], ["gflat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits0"], transB=1),
        helper.make_node("Slice", ["gflat", "s0", "s10", "s1"], ["g10"]),
        helper.make_node("Add", ["logits0", "g10"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    inits += [numpy_helper.from_array(np.array([v], np.int64), n)
              for n, v in (("s0", 0), ("s10", 10), ("s1", 1))]
    in_shape = [None, 64] if features else [None, 1, 8, 8]
    graph = helper.make_graph(nodes, "digits_cnn",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                                             [None, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def train_cnn_head(onx, x: np.ndarray, y: np.ndarray):
    """Fit the CNN's dense head on its own conv features (least squares on one-hot), so the
    model is a real digits classifier rather than random weights."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    probe = onnx.ModelProto()
    probe.CopyFrom(onx)
    del probe.graph.output[:]
    probe.graph.output.extend([onnx.helper.make_tensor_value_info("flat", onnx.TensorProto.FLOAT,
                                                                  None)])
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feats = sess.run(None, {"X": x})[0].astype(np.float64)
    a = np.hstack([feats, np.ones((len(feats), 1))])
    onehot = np.eye(10)[y] * 8.0 - 4.0
    sol, *_ = np.linalg.lstsq(a.T @ a + 1e-2 * np.eye(a.shape[1]), a.T @ onehot, rcond=None)
    w, b = sol[:-1].T.astype(np.float32), sol[-1].astype(np.float32)
    for init in onx.graph.initializer:
        if init.name == "fc_w":
            init.CopyFrom(numpy_helper.from_array(w, "fc_w"))
        elif init.name == "fc_b":
            init.CopyFrom(numpy_helper.from_array(b, "fc_b"))
    return onx
