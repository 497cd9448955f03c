"""A stream on ``name@alias`` follows the alias: no restart, each output names its version."""

from __future__ import annotations

import json

import pytest

from tests.stream.conftest import messages, nats_publish, nats_read_all, wait_until, worker_cmd

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def cancer_bundle_v2(tmp_path_factory, cancer_data, keypair):
    from sklearn.linear_model import LogisticRegression

    from tests.conftest import build_sklearn_bundle

    x, y, names = cancer_data
    lr = LogisticRegression(C=0.001, max_iter=500).fit(x, y)  # a different model, same contract
    out = tmp_path_factory.mktemp("bundles") / "cancer-2.0.0"
    return build_sklearn_bundle(out, lr, x, names, key=keypair[0], version="2.0.0")


def _outputs(stream: str) -> list[dict]:
    return [json.loads(m) for m in nats_read_all(stream)]


def _versions(outs: list[dict], keys: set[str]) -> set[str]:
    return {o["model"]["version"] for o in outs if o["key"] in keys}


def test_managed_stream_follows_an_alias_move(
    tmp_path, keypair, cancer_bundle, cancer_bundle_v2, cancer_data, nats_names
):
    from fastapi.testclient import TestClient

    from cloud_hub.app import create_app
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings

    n = nats_names
    hub = Hub(HubSettings(data_dir=tmp_path / "hub", trusted_keys=[keypair[1]]))
    try:
        v1 = hub.registry.push(cancer_bundle, aliases=["champion"])
        v2 = hub.registry.push(cancer_bundle_v2)
        nats = "nats://127.0.0.1:4222/"
        body = {"name": "follower", "model": "cancer@champion", "source": nats + n["in"],
                "sink": nats + n["out"], "dead_letter": nats + n["dlq"], "batch_size": 16}
        with TestClient(create_app(hub)) as client:
            r = client.post("/v1/streams", json=body)
            assert r.status_code == 201, r.text
            sid = r.json()["id"]
            nats_publish(n["in"], messages(cancer_data, 40))
            wait_until(lambda: len(nats_read_all(n["s_out"])) >= 40, 30, "outputs before the move")
            first = {f"k{i}" for i in range(40)}
            assert _versions(_outputs(n["s_out"]), first) == {v1.version}

            r = client.put("/v1/models/cancer/aliases/champion", json={"version": v2.version})
            assert r.status_code == 200, r.text
            nats_publish(n["in"], messages(cancer_data, 40, start=40))
            wait_until(lambda: len(nats_read_all(n["s_out"])) >= 80, 30, "outputs after the move")
            outs = _outputs(n["s_out"])
            after = {f"k{i}" for i in range(40, 80)}
            assert _versions(outs, after) == {v2.version}  # every message after the move
            assert {o["model"]["sha256"] for o in outs if o["key"] in after} == {v2.digest}
            # the two versions answer differently on these rows: the outputs really come from v2
            by_key = {o["key"]: o for o in outs}
            assert any(by_key[f"k{i}"]["probability"] != by_key[f"k{i + 40}"]["probability"]
                       for i in range(40))
            st = client.get(f"/v1/streams/{sid}").json()  # the same worker, never restarted
            assert st["status"] == "running" and st["stats"]["published"] == 80
            assert st["stats"]["errors"] == 0
    finally:
        hub.close()


def test_cli_stream_follows_an_alias_move(
    tmp_path, keypair, cancer_bundle, cancer_bundle_v2, cancer_data, nats_names, workers
):
    """``cloud-hub stream --model cancer@champion`` in its own process sees a move made by
    another process within the model cache's resolve TTL (1 s); no restart."""
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings

    n = nats_names
    data_dir = tmp_path / "hub"
    hub = Hub(HubSettings(data_dir=data_dir, trusted_keys=[keypair[1]]))
    try:
        v1 = hub.registry.push(cancer_bundle, aliases=["champion"])
        v2 = hub.registry.push(cancer_bundle_v2)
        nats = "nats://127.0.0.1:4222/"
        cmd = worker_cmd("cancer@champion", nats + n["in"], nats + n["out"], nats + n["dlq"],
                         "--batch-size", "8")
        w = workers(cmd, env={"HUB_DATA_DIR": str(data_dir)})
        w.wait_ready()
        nats_publish(n["in"], messages(cancer_data, 10))
        wait_until(lambda: len(nats_read_all(n["s_out"])) >= 10, 30, "outputs before the move")
        assert _versions(_outputs(n["s_out"]), {f"k{i}" for i in range(10)}) == {v1.version}

        hub.registry.set_alias("cancer", "champion", v2.version)
        sent = [10]

        def moved() -> bool:  # one message at a time until the worker's cache expires
            nats_publish(n["in"], messages(cancer_data, 1, start=sent[0]))
            sent[0] += 1
            wait_until(lambda: len(nats_read_all(n["s_out"])) >= sent[0], 30, "an output")
            return v2.version in _versions(_outputs(n["s_out"]), {f"k{sent[0] - 1}"})

        wait_until(moved, 30, "the worker to follow the alias")
        start = sent[0]
        nats_publish(n["in"], messages(cancer_data, 20, start=start))
        wait_until(lambda: len(nats_read_all(n["s_out"])) >= start + 20, 30, "outputs after")
        keys = {f"k{i}" for i in range(start, start + 20)}
        assert _versions(_outputs(n["s_out"]), keys) == {v2.version}
        assert w.proc.poll() is None  # the same process throughout
    finally:
        hub.close()

