"""A managed stream worker in the hub (REST), and the same answers as the hub's /predict route."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.stream.conftest import messages, nats_publish, nats_read_all, wait_until

pytestmark = pytest.mark.services


def test_managed_worker_matches_hub_predict_and_survives_restart(
    tmp_path, keypair, cancer_bundle, cancer_data, nats_names
):
    from cloud_hub.app import create_app
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings

    n = nats_names
    settings = HubSettings(data_dir=tmp_path / "hub", trusted_keys=[keypair[1]])
    hub = Hub(settings)
    hub.registry.push(cancer_bundle)
    nats = "nats://127.0.0.1:4222/"
    body = {
        "name": "scorer",
        "model": "cancer",
        "source": nats + n["in"] + "?ack_wait=2",
        "sink": nats + n["out"],
        "dead_letter": nats + n["dlq"],
        "batch_size": 32,
    }
    x, _, names = cancer_data
    try:
        with TestClient(create_app(hub)) as client:
            r = client.post("/v1/streams", json=body)
            assert r.status_code == 201, r.text
            sid = r.json()["id"]
            assert r.json()["status"] == "running"
            assert client.post("/v1/streams", json=body).status_code == 409
            bad = dict(body, name="other", source="amqp://x/y")
            r = client.post("/v1/streams", json=bad)
            assert r.status_code == 422 and r.json()["field"] == "source"
            nats_publish(n["in"], messages(cancer_data, 100, bad={7: "json"}))
            wait_until(lambda: len(nats_read_all(n["s_out"])) >= 99, 30, "managed outputs")
            outs = {o["key"]: o for o in map(json.loads, nats_read_all(n["s_out"]))}
            rows = [{k: float(v) for k, v in zip(names, x[i])} for i in range(100) if i != 7]
            pred = client.post("/v1/models/cancer/predict", json={"rows": rows})
            assert pred.status_code == 200, pred.text
            for i, p in zip([i for i in range(100) if i != 7], pred.json()["predictions"]):
                o = outs[f"k{i}"]
                assert o["probability"] == pytest.approx(p["probability"], abs=1e-9)
                assert o["label"] == p["label"] and o["risk_level"] == p["risk_level"]
            st = client.get(f"/v1/streams/{sid}").json()
            assert st["stats"]["published"] == 99 and st["stats"]["dead_lettered"] == 1
        hub.close()  # the worker stops; its desired state stays "running"
        hub = Hub(settings)
        with TestClient(create_app(hub)) as client:  # app start restores the worker
            assert client.get(f"/v1/streams/{sid}").json()["status"] == "running"
            nats_publish(n["in"], messages(cancer_data, 50, start=100))
            wait_until(lambda: len(nats_read_all(n["s_out"])) >= 149, 30, "outputs after restart")
            assert client.post(f"/v1/streams/{sid}/stop").json()["status"] == "stopped"
            assert client.delete(f"/v1/streams/{sid}").status_code == 204
            assert client.get(f"/v1/streams/{sid}").status_code == 404
    finally:
        hub.close()
