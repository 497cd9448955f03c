"""Shared fixtures: real models trained on scikit-learn's bundled datasets.

Service fixtures skip on a laptop without the service, but FAIL when
``EDGEFLEET_REQUIRE_SERVICES=1`` (set by ``.ci/run``), so CI never passes by
skipping.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

REQUIRE_SERVICES = os.environ.get("EDGEFLEET_REQUIRE_SERVICES") == "1"

SERVICES = {
    "mosquitto": ("127.0.0.1", 1883),
    "nats": ("127.0.0.1", 4222),
    "postgres": ("127.0.0.1", 5432),
}


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str) -> tuple[str, int]:
    host, port = SERVICES[name]
    if not port_open(host, port):
        msg = f"{name} is not reachable on {host}:{port}"
        if REQUIRE_SERVICES:
            pytest.fail(f"{msg} (EDGEFLEET_REQUIRE_SERVICES=1: required in CI)")
        pytest.skip(f"{msg}; start it to run this test")
    return host, port


@pytest.fixture
def mosquitto() -> tuple[str, int]:
    return require_service("mosquitto")


@pytest.fixture
def nats_server() -> tuple[str, int]:
    return require_service("nats")


@pytest.fixture
def postgres_url() -> str:
    require_service("postgres")
    return os.environ.get("EDGEFLEET_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def fresh_pg_url(postgres_url):
    """A fresh, empty PostgreSQL database for one test (dropped after), so tests never see
    each other's tables in the shared ``test`` database."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(postgres_url)
    name = f"edgefleet_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- keys and bundles ------------------------------------------------------------

@pytest.fixture(scope="session")
def keypair(tmp_path_factory) -> tuple[Path, Path]:
    from edge_runtime.signing import generate_keypair

    d = tmp_path_factory.mktemp("keys")
    return generate_keypair(d / "fleet.key", d / "fleet.pub")


@pytest.fixture(scope="session")
def cancer_data():
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    return data.data.astype(np.float32), data.target, names


def build_sklearn_bundle(out: Path, estimator, x: np.ndarray, names: list[str], *, key,
                         name: str = "cancer", version: str = "1.0.0",
                         classes=("benign_no", "malignant_no")) -> Path:
    """Export a fitted binary classifier with skl2onnx and write a signed bundle."""
    from skl2onnx import to_onnx

    onx = to_onnx(estimator, x[:1], options={id(estimator): {"zipmap": False}},
                  target_opset=17)
    # skl2onnx names its outputs label / probabilities.
    proba = estimator.predict_proba(x[:8]).astype(np.float64)
    from edge_runtime.bundle import write_bundle

    golden_rows = [dict(zip(names, map(float, r))) for r in x[:8]]
    manifest = {
        "name": name, "version": version, "format": "onnx", "model_file": "model.onnx",
        "task": "binary_classification",
        "inputs": {"kind": "features", "tensor": onx.graph.input[0].name,
                   "features": [{"name": n, "dtype": "float32"} for n in names]},
        "outputs": [{"name": "label", "role": "label"},
                    {"name": "probabilities", "role": "probabilities"}],
        "postprocess": {"classes": list(classes), "positive_class": classes[1], "threshold": 0.5,
                        "risk_levels": [{"name": "high", "min": 0.7}, {"name": "medium", "min": 0.4},
                                        {"name": "low", "min": 0.0}]},
        "golden": [{"rows": golden_rows, "expected_probability": proba[:, 1].tolist(), "atol": 1e-4}],
        "provenance": {"source": type(estimator).__name__, "dataset": "load_breast_cancer"},
    }
    write_bundle(out, manifest, {"model.onnx": onx.SerializeToString()}, key=key)
    return out


@pytest.fixture(scope="session")
def cancer_model(cancer_data):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, _ = cancer_data
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)


@pytest.fixture(scope="session")
def cancer_bundle(tmp_path_factory, cancer_data, cancer_model, keypair) -> Path:
    x, _, names = cancer_data
    out = tmp_path_factory.mktemp("bundles") / "cancer-1.0.0"
    return build_sklearn_bundle(out, cancer_model, x, names, key=keypair[0])
