"""Roles and API keys, Prometheus metrics, JSON logs with request ids, OpenAPI docs."""

from __future__ import annotations

import io
import json
import logging
import time

import httpx
import pytest

from cloud_hub.app import create_app
from tests.cloud_hub.hub_support import live_server, row_of

ADMIN, CLIENT, VIEWER = "admin-key-0123456789abcdef", "client-key-0123456789abcdef", "viewer-key-0123456789abcdef"


@pytest.fixture
def secured(make_hub, cancer_bundle):
    hub = make_hub(admin_keys=[ADMIN], client_keys=[CLIENT], viewer_keys=[VIEWER])
    hub.registry.push(cancer_bundle, aliases=["champion"])
    with live_server(create_app(hub)) as url:
        yield url, hub


def test_roles(secured, cancer_data, cancer_bundle, tmp_path):
    url, hub = secured
    row = row_of(cancer_data)

    def call(method, path, key=None, header="auth", **kw):
        headers = kw.pop("headers", {})
        if key and header == "auth":
            headers["Authorization"] = f"Bearer {key}"
        elif key:
            headers["X-API-Key"] = key
        with httpx.Client(base_url=url) as c:
            return c.request(method, path, headers=headers, **kw)

    r = call("POST", "/v1/models/cancer/predict", json=row)
    assert r.status_code == 401 and r.json()["code"] == "unauthorized" and "missing" in r.json()["error"]
    r = call("POST", "/v1/models/cancer/predict", "wrong-key-0123456789", json=row)
    assert r.status_code == 401 and "invalid" in r.json()["error"]
    r = call("POST", "/v1/models/cancer/predict", VIEWER, json=row)
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    assert call("POST", "/v1/models/cancer/predict", CLIENT, json=row).status_code == 200
    assert call("POST", "/v1/models/cancer/predict", ADMIN, header="x-api-key", json=row).status_code == 200
    assert call("POST", "/v2/models/cancer/infer", VIEWER, json={"inputs": []}).status_code == 403
    from edge_runtime.bundle import pack_bundle

    tar = pack_bundle(cancer_bundle, tmp_path / "b.tar").read_bytes()
    assert call("POST", "/v1/models", CLIENT, content=tar).status_code == 403
    assert call("PUT", "/v1/models/cancer/aliases/x", CLIENT, json={"version": "1.0.0"}).status_code == 403
    assert call("PUT", "/v1/models/cancer/aliases/x", ADMIN, json={"version": "1.0.0"}).status_code == 200
    assert call("GET", "/v1/models", VIEWER).status_code == 200
    assert call("GET", "/v1/models").status_code == 401
    assert call("GET", "/metrics").status_code == 401
    assert call("GET", "/metrics", VIEWER).status_code == 200
    # public: health probes, the hub public key, bundle downloads by digest (signed; devices verify)
    assert call("GET", "/v2/health/ready").status_code == 200
    assert call("GET", "/healthz").json()["database"] is True
    assert call("GET", "/v1/keys/hub.pub").content.startswith(b"-----BEGIN PUBLIC KEY")
    digest = hub.registry.resolve("cancer").digest
    assert call("GET", f"/v1/bundles/{digest}").status_code == 200


def test_placeholder_keys_refused_outside_dev(hub_settings):
    with pytest.raises(ValueError, match="placeholder"):
        hub_settings(admin_keys=["changeme"])
    assert hub_settings(admin_keys=["changeme"], dev=True).admin_keys == ["changeme"]


def test_metrics_and_request_logs(server, cancer_bundle, cancer_data, caplog):
    url, hub = server
    hub.registry.push(cancer_bundle, aliases=["champion"])
    buf = io.StringIO()
    hub.access_log.stream = buf
    with httpx.Client(base_url=url) as c:
        for _ in range(3):
            assert c.post("/v1/models/cancer/predict", json=row_of(cancer_data)).status_code == 200
        assert c.post("/v1/models/cancer/predict", json={"rows": []}).status_code == 422
        r = c.post("/v1/models/cancer/predict", json=row_of(cancer_data), headers={"X-Request-ID": "trace-42"})
        text = c.get("/metrics").text
    assert ('hub_predict_requests_total{endpoint="predict",group="",model="cancer",version="1.0.0"} 4.0'
            in text)
    assert 'hub_predict_errors_total{code="invalid_input",endpoint="predict",model="cancer"} 1.0' in text
    assert 'hub_predict_latency_seconds_bucket{endpoint="predict",group="",le="0.05",model="cancer",version="1.0.0"}' in text
    assert "hub_shadow_queue_depth" in text and "hub_shadow_dropped_total" in text
    assert 'hub_http_requests_total{method="POST",status="200"}' in text
    assert r.headers["x-request-id"] == "trace-42"
    time.sleep(0.5)  # lines are written in chunks (<= 0.25 s)
    hub.access_log.flush()
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert len(lines) >= 5
    traced = [rec for rec in lines if rec["request_id"] == "trace-42"]
    assert len(traced) == 1
    rec = traced[0]
    assert rec["status"] == 200 and rec["method"] == "POST" and rec["path"] == "/v1/models/cancer/predict"
    assert rec["logger"] == "cloud_hub.access" and rec["level"] == "info" and rec["duration_ms"] >= 0
    assert rec["ts"].endswith("Z")
    assert any(rec["status"] == 422 for rec in lines)


def test_json_formatter_carries_request_id():
    from cloud_hub.logs import JsonFormatter, request_id_var

    rec = logging.LogRecord("cloud_hub.x", logging.WARNING, __file__, 1, "model %s loaded", ("m",), None)
    rec.version = "1.0.0"
    tok = request_id_var.set("rid-1")
    try:
        out = json.loads(JsonFormatter().format(rec))
    finally:
        request_id_var.reset(tok)
    assert out["msg"] == "model m loaded" and out["request_id"] == "rid-1" and out["version"] == "1.0.0"
    assert out["level"] == "warning"


def test_openapi_describes_every_endpoint(hub):
    app = create_app(hub)
    from fastapi.testclient import TestClient

    spec = TestClient(app).get("/openapi.json").json()
    paths = spec["paths"]
    for p in ["/v1/models", "/v1/models/{ref}", "/v1/models/{ref}/predict", "/v1/models/{name}/versions",
              "/v1/models/{name}/aliases", "/v1/models/{name}/aliases/{alias}", "/v1/bundles/{digest}",
              "/v1/keys/hub.pub", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}",
              "/v2/models/{name}/versions/{version}", "/v2/models/{name}/ready",
              "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer", "/metrics"]:
        assert p in paths, p
    for p, ops in paths.items():
        for method, op in ops.items():
            assert op.get("summary"), f"{method.upper()} {p} has no summary"
    predict = paths["/v1/models/{ref}/predict"]["post"]
    assert "application/json" in predict["requestBody"]["content"]
    assert {"401", "404", "422", "413"} <= set(predict["responses"])
