"""Models of the demo, trained here on scikit-learn's bundled breast-cancer data (no download).

* champion   — logistic regression (C=1), the model the fleet runs at the start;
* challenger — a more regularised logistic regression (C=0.3): agrees with the champion on
  almost every decision, so it passes shadow and canary and gets promoted;
* bad        — a model whose fault shows only on the devices (the simulator injects errors or
  latency whenever a device runs it), so the canary gates must catch it;
* inverted   — trained on flipped labels: a genuinely wrong model whose decisions diverge from
  the champion's (caught by the shadow stage's decision-change / divergence gates).

Each is converted and signed by ``converters.export.export_model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def dataset() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    return data.data.astype(np.float32), data.target, names


def train(kind: str, x: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    c = {"champion": 1.0, "challenger": 0.3, "bad": 2.0, "inverted": 1.0}[kind]
    target = 1 - y if kind == "inverted" else y
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(x, target)


def build_bundle(kind: str, version: str, out_dir: Path, key: Path, *, name: str = "cancer-risk") -> Path:
    """Train ``kind`` and export it as a signed ONNX bundle ``name:version`` at ``out_dir``."""
    import pyarrow as pa  # the sample carries the feature names

    from converters.export import ExportConfig, export_model

    x, y, names = dataset()
    model = train(kind, x, y)
    sample = pa.table({n: x[:, i] for i, n in enumerate(names)})
    cfg = ExportConfig(key=key, name=name, version=version, class_names=["benign", "malignant"],
                       description=f"demo {kind}", overwrite=True,
                       provenance={"dataset": "sklearn.load_breast_cancer", "demo_role": kind},
                       min_label_agreement=0.99)
    return export_model(model, sample, out_dir, cfg)


def rows(n: int | None = None) -> list[dict[str, float]]:
    x, _, names = dataset()
    x = x if n is None else x[:n]
    return [dict(zip(names, map(float, r))) for r in x]
