"""Fixtures for hub tests: a Hub on a temp data dir, a real uvicorn server on a free
port, and a fresh PostgreSQL database per test (dropped afterwards)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.cloud_hub.hub_support import live_server


@pytest.fixture
def hub_settings(tmp_path, keypair):
    from cloud_hub.settings import HubSettings

    def make(**kw):
        kw.setdefault("data_dir", tmp_path / "hub")
        kw.setdefault("trusted_keys", [keypair[1]])
        return HubSettings(**kw)

    return make


@pytest.fixture
def make_hub(hub_settings):
    from cloud_hub.hub import Hub

    hubs = []

    def make(settings=None, **kw):
        hub = Hub(settings or hub_settings(**kw))
        hubs.append(hub)
        return hub

    yield make
    for h in hubs:
        h.close()


@pytest.fixture
def hub(make_hub):
    return make_hub()


@pytest.fixture
def server(hub):
    """A real HTTP server for ``hub``: yields (base_url, hub)."""
    from cloud_hub.app import create_app

    with live_server(create_app(hub)) as url:
        yield url, hub


@pytest.fixture
def http(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c



@pytest.fixture(scope="session")
def cancer_bundle_v2(tmp_path_factory, cancer_data, keypair) -> Path:
    """A second version (different model, same contract) of the cancer bundle."""
    from sklearn.ensemble import RandomForestClassifier

    from tests.conftest import build_sklearn_bundle

    x, y, names = cancer_data
    rf = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(x, y)
    out = tmp_path_factory.mktemp("bundles") / "cancer-2.0.0"
    return build_sklearn_bundle(out, rf, x, names, key=keypair[0], version="2.0.0")

