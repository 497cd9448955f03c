"""Output roles → probabilities: logits (one column: sigmoid; several: softmax), values."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edge_runtime import Model
from edge_runtime.bundle import write_bundle


def _linear_bundle(tmp_path, key, weights: np.ndarray, *, role: str, task: str, out_shape):
    """X @ w as the model, its output "Y" with the given role; out_shape [None] reshapes
    the product to a 1-D vector (one logit per row)."""
    n_in, n_out = weights.shape
    nodes = [helper.make_node("MatMul", ["X", "w"], ["Y0" if out_shape == [None] else "Y"])]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [n_in, n_out], weights.ravel().tolist())]
    if out_shape == [None]:
        nodes.append(helper.make_node("Reshape", ["Y0", "s"], ["Y"]))
        inits.append(helper.make_tensor("s", TensorProto.INT64, [1], [-1]))
    g = helper.make_graph(nodes, "lin",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, n_in])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out_shape)], inits)
    onx = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onx.ir_version = 8
    return write_bundle(tmp_path / f"{role}-{n_out}-{len(out_shape)}", {
        "name": "lin", "version": "1", "format": "onnx", "model_file": "model.onnx",
        "task": task, "outputs": [{"name": "Y", "role": role}],
        "inputs": {"kind": "features", "tensor": "X",
                   "features": [{"name": f"f{i}"} for i in range(n_in)]}},
        {"model.onnx": onx.SerializeToString()}, key=key).root


X = np.array([[0.0, 5.0], [5.0, 0.0], [0.0, 0.0], [400.0, 0.0], [0.0, 400.0]], np.float32)
ROWS = [{"f0": float(a), "f1": float(b)} for a, b in X]


@pytest.mark.parametrize("out_shape", [[None, 1], [None]])
def test_single_logit_is_a_sigmoid(tmp_path, keypair, out_shape):
    w = np.array([[1.0], [-1.0]], np.float32)
    m = Model.load(_linear_bundle(tmp_path, keypair[0], w, role="logits",
                                  task="binary_classification", out_shape=out_shape))
    z = (X @ w).ravel().astype(np.float64)
    want = 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
    got = m.predict(ROWS)
    np.testing.assert_allclose([r["probability"] for r in got], want, atol=1e-12)
    assert [r["label"] for r in got] == [0, 1, 1, 1, 0]  # threshold 0.5 on p(class 1)
    assert m.predict(ROWS[0])[0]["probability"] == pytest.approx(want[0])


def test_several_logits_are_a_softmax(tmp_path, keypair):
    w = np.array([[1.0, 0.0, -1.0], [0.0, 1.0, 2.0]], np.float32)
    m = Model.load(_linear_bundle(tmp_path, keypair[0], w, role="logits",
                                  task="multiclass_classification", out_shape=[None, 3]))
    z = (X @ w).astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    s = m.score_array(X)
    np.testing.assert_allclose(s.probabilities, p, atol=1e-12)
    assert s.label_index.tolist() == p.argmax(axis=1).tolist()
    assert np.all(np.isfinite(s.probabilities))  # 400-sized logits do not overflow
