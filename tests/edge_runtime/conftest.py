"""Fixtures for the edge runtime: a second bundle version, an unsigned one, a store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import build_sklearn_bundle
from tests.edge_runtime.disk import small_disk  # noqa: F401 - a fixture (a real small tmpfs)


@pytest.fixture(scope="session")
def cancer_bundle_v2(tmp_path_factory, cancer_data, keypair) -> Path:
    """Same contract as ``cancer_bundle``, a different model (stronger regularisation)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, names = cancer_data
    est = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=500)).fit(x, y)
    out = tmp_path_factory.mktemp("bundles") / "cancer-2.0.0"
    return build_sklearn_bundle(out, est, x, names, key=keypair[0], version="2.0.0")


@pytest.fixture(scope="session")
def other_keypair(tmp_path_factory):
    from edge_runtime.signing import generate_keypair

    d = tmp_path_factory.mktemp("otherkeys")
    return generate_keypair(d / "other.key", d / "other.pub")


@pytest.fixture
def rows(cancer_data):
    x, _, names = cancer_data
    return [dict(zip(names, map(float, r))) for r in x[:5]]


@pytest.fixture
def store(tmp_path, keypair):
    from edge_runtime.store import ModelStore

    s = ModelStore(tmp_path / "store", "x86-gateway", [keypair[1]], latency_runs=20)
    yield s
    s.close()
