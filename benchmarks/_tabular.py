"""The tabular benchmark model shared by benchmarks/batch.py and benchmarks/stream.py.

``small``: a 30-64-64-2 MLP, ``large``: a 30-256-256-256-2 MLP (StandardScaler
+ scikit-learn MLPClassifier) on the 30 breast-cancer features, exported with
skl2onnx into an unsigned bundle with the churn-style post-processing (threshold
0.5, risk levels 0.7 / 0.4).
Rows for the benchmarks are breast-cancer rows resampled with ±3 % jitter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def feature_names() -> list[str]:
    from sklearn.datasets import load_breast_cancer

    return [n.replace(" ", "_") for n in load_breast_cancer().feature_names]


HIDDEN = {"small": (64, 64), "large": (256, 256, 256)}


def build_bundle(out: Path, size: str = "small") -> Path:
    if (out / "manifest.json").exists():
        return out
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edge_runtime.bundle import write_bundle

    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    names = feature_names()
    est = make_pipeline(StandardScaler(), MLPClassifier(HIDDEN[size], max_iter=400, random_state=0))
    est.fit(x, data.target)
    onx = to_onnx(est, x[:1], options={id(est): {"zipmap": False}}, target_opset=17)
    proba = est.predict_proba(x[:8]).astype(np.float64)
    manifest = {
        "name": f"tabular-mlp-{size}",
        "version": "1.0.0",
        "format": "onnx",
        "model_file": "model.onnx",
        "task": "binary_classification",
        "inputs": {
            "kind": "features",
            "tensor": onx.graph.input[0].name,
            "features": [{"name": n, "dtype": "float32"} for n in names],
        },
        "outputs": [
            {"name": "label", "role": "label"},
            {"name": "probabilities", "role": "probabilities"},
        ],
        "postprocess": {
            "classes": ["no", "yes"],
            "positive_class": "yes",
            "threshold": 0.5,
            "risk_levels": [
                {"name": "high", "min": 0.7},
                {"name": "medium", "min": 0.4},
                {"name": "low", "min": 0.0},
            ],
        },
        "golden": [
            {
                "rows": [dict(zip(names, map(float, r))) for r in x[:8]],
                "expected_probability": proba[:, 1].tolist(),
                "atol": 1e-4,
            }
        ],
        "provenance": {"source": f"MLPClassifier{HIDDEN[size]}", "dataset": "load_breast_cancer"},
    }
    write_bundle(out, manifest, {"model.onnx": onx.SerializeToString()})
    return out


def sample_rows(n: int, seed: int = 0) -> np.ndarray:
    from sklearn.datasets import load_breast_cancer

    x = load_breast_cancer().data
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), n)
    return (x[idx] * rng.uniform(0.97, 1.03, size=(n, x.shape[1]))).astype(np.float32)
