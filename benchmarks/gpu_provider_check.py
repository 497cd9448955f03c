"""Does the hub run models on ONNX Runtime's CUDA provider when onnxruntime-gpu is installed?

Optional check for a machine with an NVIDIA GPU (nothing in the product needs one):

    pip install onnxruntime-gpu   # instead of onnxruntime
    python benchmarks/gpu_provider_check.py

It trains a small model on scikit-learn's breast-cancer data, pushes it to a hub in a
temporary directory (default settings: HUB_ONNX_PROVIDERS = CUDA first, then CPU),
predicts through the hub's own model cache and prints the providers the loaded session
uses, plus CPU-vs-hub answers for the same rows. Exit code 0 when CUDA is in use and the
answers agree, 1 when the session fell back to the CPU, 2 when the answers differ.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def main() -> int:
    import onnxruntime as ort
    from sklearn.datasets import load_breast_cancer
    from sklearn.neural_network import MLPClassifier

    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings
    from converters.export import ExportConfig, export_model
    from edge_runtime.model import Model
    from edge_runtime.signing import generate_keypair

    data = load_breast_cancer()
    x, y = data.data.astype(np.float32), data.target
    names = [n.replace(" ", "_") for n in data.feature_names]
    clf = MLPClassifier((64, 64), max_iter=300, random_state=0).fit(x, y)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        key, pub = generate_keypair(d / "k.key")
        bundle = export_model(clf, (x, y), d / "bundle",
                              ExportConfig(key=key, name="gpu-check", version="1", feature_names=names))
        hub = Hub(HubSettings(data_dir=d / "hub", trusted_keys=[pub], dev=True))
        try:
            hub.registry.push(bundle)
            _, model = hub.models.get("gpu-check:1")
            rows = [dict(zip(names, map(float, r))) for r in x[:64]]
            got = [p["probability"] for p in model.predict(rows)]
            want = [p["probability"] for p in Model.load(bundle).predict(rows)]  # CPU default
            info = {"available_providers": ort.get_available_providers(),
                    "session_providers": model.engine.describe().get("providers"),
                    "max_abs_diff_vs_cpu": float(np.max(np.abs(np.array(got) - np.array(want))))}
        finally:
            hub.close()
    print(json.dumps(info, indent=2))
    if info["max_abs_diff_vs_cpu"] > 1e-3:
        return 2
    return 0 if "CUDAExecutionProvider" in (info["session_providers"] or []) else 1


if __name__ == "__main__":
    sys.exit(main())
