"""Fixtures and helpers of the champion/challenger and shadow tests (hub-routing).

Two real bundles of one model name on breast_cancer: ``cancer:1.0.0`` (the shared
logistic regression, strong) and ``cancer:0.9.0`` (a depth-1 decision stump
trained on 60 rows, weak). A ``slow`` bundle is a real ONNX graph with many
1024x1024 matrix products, used as a deliberately slow shadow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import build_sklearn_bundle


@pytest.fixture(scope="session")
def weak_bundle(tmp_path_factory, cancer_data, keypair) -> Path:
    from sklearn.tree import DecisionTreeClassifier

    x, y, names = cancer_data
    est = DecisionTreeClassifier(max_depth=1, random_state=0).fit(x[:60], y[:60])
    out = tmp_path_factory.mktemp("bundles") / "cancer-0.9.0"
    return build_sklearn_bundle(out, est, x, names, key=keypair[0], version="0.9.0")


@pytest.fixture(scope="session")
def slow_bundle(tmp_path_factory, cancer_data, keypair) -> Path:
    """A real, deliberately slow model of the same contract: 30 → 1024, then 40 × (1024×1024 + tanh)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edge_runtime.bundle import write_bundle

    x, _, names = cancer_data
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((30, 1024)) / 300).astype(np.float32)
    w = (rng.standard_normal((1024, 1024)) / 32).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["h0"])]
    k = 40
    for i in range(k):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
    nodes += [helper.make_node("ReduceMean", [f"h{k}"], ["s"], axes=[1], keepdims=1),
              helper.make_node("Sigmoid", ["s"], ["p1"]),
              helper.make_node("Sub", ["one", "p1"], ["p0"]),
              helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1)]
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 30])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.ones((1, 1), np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    blob = model.SerializeToString()
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    proba = sess.run(None, {"input": x[:4]})[0].astype(np.float64)
    manifest = {
        "name": "cancer", "version": "3.0.0-slow", "format": "onnx", "model_file": "model.onnx",
        "task": "binary_classification",
        "inputs": {"kind": "features", "tensor": "input",
                   "features": [{"name": n, "dtype": "float32"} for n in names]},
        "outputs": [{"name": "probabilities", "role": "probabilities"}],
        "postprocess": {"classes": ["benign_no", "malignant_no"], "positive_class": "malignant_no",
                        "threshold": 0.5,
                        "risk_levels": [{"name": "high", "min": 0.7}, {"name": "medium", "min": 0.4},
                                        {"name": "low", "min": 0.0}]},
        "golden": [{"rows": [dict(zip(names, map(float, r))) for r in x[:4]],
                    "expected_probability": proba[:, 1].tolist(), "atol": 1e-4}],
        "provenance": {"source": "onnx.helper", "purpose": "deliberately slow shadow"},
    }
    out = tmp_path_factory.mktemp("bundles") / "cancer-slow"
    write_bundle(out, manifest, {"model.onnx": blob}, key=keypair[0])
    return out


def make_hub(data_dir: Path, keypair, db_url: str | None = None, **settings):
    from cloud_hub.hub import Hub
    from cloud_hub.routing.attach import attach
    from cloud_hub.settings import HubSettings

    s = HubSettings(data_dir=data_dir, database_url=db_url, dev=True,
                    trusted_keys=[keypair[1]], **settings)
    hub = Hub(s)
    attach(hub)
    return hub


def rows_of(x: np.ndarray, names: list[str], ids=None, key: str = "customer_id") -> list[dict]:
    rows = [dict(zip(names, map(float, r))) for r in x]
    if ids is not None:
        for r, i in zip(rows, ids):
            r[key] = i
    return rows

