"""Hostile input answers 4xx naming the field, never 5xx — on SQLite and PostgreSQL
(issue 13: NUL bytes, column lengths, integer ranges, desired-state bodies, unknown
names, gzip-compressed OIP requests)."""

from __future__ import annotations

import gzip

import pytest
from fastapi.testclient import TestClient

from tests.cloud_hub.hub_support import row_of


def _pg_database(postgres_url: str):
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(postgres_url)
    name = f"edgefleet_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return base.set(database=name).render_as_string(hide_password=False), drop


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def client(request, tmp_path_factory, keypair, cancer_bundle, cancer_bundle_v2):
    """One hub per backend for the whole module (each test only reads or refuses)."""
    from cloud_hub.app import create_app
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings
    from tests.conftest import require_service

    url, drop = None, None
    if request.param == "postgresql":
        import os

        require_service("postgres")
        url, drop = _pg_database(os.environ.get("EDGEFLEET_TEST_PG_URL",
                                                "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    hub = Hub(HubSettings(data_dir=tmp_path_factory.mktemp("hub"), trusted_keys=[keypair[1]], database_url=url))
    try:
        hub.registry.push(cancer_bundle, aliases=["champion"])
        hub.registry.push(cancer_bundle_v2, aliases=["challenger"])
        hub.fleet.register_device("d1", {"region": "eu"}, "rpi4")
        with TestClient(create_app(hub), raise_server_exceptions=False) as c:
            c.hub = hub
            yield c
    finally:
        hub.close()
        if drop is not None:
            drop()


@pytest.mark.parametrize("path,field", [
    ("/v1/rollouts?status=%00", "status"), ("/v1/jobs?status=%00", "status"),
    ("/v1/fleet/stats?model=%00", "model"), ("/v1/devices/a%00", "path"),
    ("/ui/data/timeseries?model=%00", "model"), ("/v1/models/cancer/shadow/report?shadow=%00", "shadow"),
    ("/v1/models/cancer/shadow/records?shadow=a%00b", "shadow"),
])
def test_nul_in_path_or_query_is_422(client, path, field):
    r = client.get(path)
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_nul_in_json_bodies_is_422(client):
    r = client.post("/v1/devices", json={"id": "d2", "profile": "rpi\u0000"})
    assert r.status_code == 422 and r.json()["field"] == "profile", r.text
    r = client.post("/v1/models/cancer/feedback", json={"feedback": [{"entity_key": "a\u0000", "outcome": 1}]})
    assert r.status_code == 422 and r.json()["field"] == "feedback[0].entity_key", r.text
    r = client.post("/v1/devices", content=b'{"id": "d3", "tags": {"k\\u0000": "v"}}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "tags.k", r.text


@pytest.mark.parametrize("item,field", [
    ({"request_id": "r", "row": 4294967296, "outcome": 1}, "feedback[0].row"),
    ({"entity_key": "k" * 300, "outcome": 1}, "feedback[0].entity_key"),
    ({"entity_key": "k", "outcome": "o" * 101}, "feedback[0].outcome"),
    ({"entity_key": 10**300, "outcome": 1}, "feedback[0].entity_key"),
])
def test_feedback_limits_are_422(client, item, field):
    r = client.post("/v1/models/cancer/feedback", json={"feedback": [item]})
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_integer_range_on_shadow_records(client):
    r = client.get("/v1/models/cancer/shadow/records?after_id=2147483648")
    assert r.status_code == 422 and r.json()["field"] == "query.after_id" or r.json()["field"] == "after_id", r.text


def test_unknown_or_bad_model_name_on_split_is_404(client):
    for name in ("x" * 250, "nosuch", "a%01b"):
        r = client.put(f"/v1/models/{name}/split", json={"challenger_fraction": 0.1})
        assert r.status_code == 404, (name, r.text)
    assert client.put("/v1/models/cancer/split", json={"challenger_fraction": 0.5}).status_code == 200


@pytest.mark.parametrize("body,field", [
    ({"id": "doc1", "bundles": {"active": []}}, "bundles.active"),
    ({"id": "doc1", "bundles": {"active": "x"}}, "bundles.active"),
    ({"id": "doc1", "bundles": {"active": {"name": "x"}}}, "bundles.active"),
    ({"id": "doc1", "bundles": {"backup": None}}, "bundles.backup"),
    ({"id": "d" * 200, "bundles": {}}, "id"),
])
def test_desired_bodies_are_validated(client, body, field):
    r = client.put("/v1/devices/d1/desired", json=body)
    assert r.status_code == 422 and r.json()["field"].startswith(field), r.text


@pytest.mark.parametrize("path", ["/v1/models/nosuch/shadows", "/v1/models/nosuch/shadow/records",
                                  "/v1/models/nosuch/split/stats", "/v1/models/nosuch/shadow/report",
                                  "/v1/models/%2E%2E/versions", "/v1/models/nosuch/aliases/history"])
def test_unknown_model_names_are_404(client, path):
    assert client.get(path).status_code == 404


def test_desired_for_an_unknown_device_is_404(client):
    r = client.put("/v1/devices/nobody/desired", json={"id": "doc1", "bundles": {}})
    assert r.status_code == 404, r.text
    assert client.get("/v1/devices/nobody").status_code == 404  # and no device was created


def test_long_entity_key_under_a_split_is_refused_not_dropped(client, cancer_data):
    assert client.put("/v1/models/cancer/split", json={"challenger_fraction": 0.5}).status_code == 200
    row = row_of(cancer_data) | {"customer_id": "c" * 201}
    r = client.post("/v1/models/cancer/predict", json={"rows": [row]})
    assert r.status_code == 422 and "customer_id" in r.json()["field"], r.text
    ok = row_of(cancer_data) | {"customer_id": "c" * 200}
    r = client.post("/v1/models/cancer/predict", json={"rows": [ok]}, headers={"X-Request-ID": "r" * 128})
    assert r.status_code == 200, r.text
    client.hub.routing.log_writer.flush()
    assert client.hub.routing.log_writer.failed == 0


def _oip(cancer_data):
    x, _, names = cancer_data
    return {"inputs": [{"name": "X", "shape": [2, len(names)], "datatype": "FP32",
                        "data": [float(v) for v in x[:2].ravel()]}]}


def test_gzip_oip_request_is_accepted_and_bounded(client, cancer_data):
    import json

    body = json.dumps(_oip(cancer_data)).encode()
    plain = client.post("/v2/models/cancer/infer", content=body, headers={"Content-Type": "application/json"})
    assert plain.status_code == 200, plain.text
    r = client.post("/v2/models/cancer/infer", content=gzip.compress(body),
                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == plain.json()["outputs"]
    bomb = gzip.compress(b" " * (client.hub.settings.max_body_bytes + 10))
    r = client.post("/v2/models/cancer/infer", content=bomb,
                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 413, r.text
    r = client.post("/v2/models/cancer/infer", content=b"not gzip",
                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 400 and r.json()["field"] == "Content-Encoding"
    r = client.post("/v1/devices", content=b"x", headers={"Content-Encoding": "br"})
    assert r.status_code == 415


@pytest.mark.parametrize("shape", [[4294967296, 4294967296], [2**62, 4], [2**31, 0], [1] * 40])
def test_oip_shape_products_are_checked(client, shape):
    body = {"inputs": [{"name": "X", "shape": shape, "datatype": "FP32", "data": [0.0] * 30}]}
    r = client.post("/v2/models/cancer/infer", json=body)
    assert r.status_code == 400 and r.json()["field"] == "inputs[0].shape", r.text


@pytest.mark.parametrize("name", [["probabilities"], {"a": 1}, 3])
def test_oip_output_name_must_be_a_string(client, cancer_data, name):
    body = _oip(cancer_data) | {"outputs": [{"name": name}]}
    r = client.post("/v2/models/cancer/infer", json=body)
    assert r.status_code == 400 and r.json()["field"] == "outputs[0].name", r.text
