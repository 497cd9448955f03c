"""Open Inference Protocol v2, tested with the real tritonclient[http] client."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from edge_runtime.model import Model

tritonhttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException


@pytest.fixture
def oip(server, cancer_bundle, cancer_bundle_v2):
    url, hub = server
    hub.registry.push(cancer_bundle, aliases=["champion"])
    hub.registry.push(cancer_bundle_v2, aliases=["challenger"])
    client = tritonhttp.InferenceServerClient(url.removeprefix("http://"), connection_timeout=10,
                                              network_timeout=30)
    yield client, url, hub
    client.close()


def _input(x, name="X", binary=True, dtype="FP32"):
    inp = tritonhttp.InferInput(name, list(x.shape), dtype)
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


def test_tritonclient_health_metadata_infer(oip, cancer_data, cancer_bundle):
    client, _, _ = oip
    x, _, _ = cancer_data
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert client.is_model_ready("cancer") and client.is_model_ready("cancer", "2.0.0")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("cancer")
    assert meta["name"] == "cancer" and meta["versions"] == ["1.0.0", "2.0.0"]
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 30]}]
    assert {"probability", "class", "risk_level", "probabilities"} <= {o["name"] for o in meta["outputs"]}
    assert client.get_model_metadata("cancer", "2.0.0")["versions"] == ["2.0.0"]
    want = Model.load(cancer_bundle).score_array(x[:16])
    for binary in (True, False):
        res = client.infer("cancer", [_input(x[:16], binary=binary)])  # all outputs, binary by default
        np.testing.assert_allclose(res.as_numpy("probability"), want.probability, atol=1e-9)
        assert res.as_numpy("probabilities").shape == (16, 2)
        classes = [c.decode() if isinstance(c, bytes) else c for c in res.as_numpy("class").tolist()]
        assert classes == [["benign_no", "malignant_no"][i] for i in want.label_index.tolist()]
        assert res.get_response()["model_version"] == "1.0.0"
    # JSON outputs, selected, on a pinned version and an alias
    outs = [tritonhttp.InferRequestedOutput("probability", binary_data=False)]
    res = client.infer("cancer", [_input(x[:4])], model_version="2.0.0", outputs=outs, request_id="r1")
    body = res.get_response()
    assert body["model_version"] == "2.0.0" and body["id"] == "r1"
    assert [o["name"] for o in body["outputs"]] == ["probability"]
    want2 = Model.load(oip[2].registry.artifact_path(oip[2].registry.resolve("cancer:2.0.0"))).score_array(x[:4])
    np.testing.assert_allclose(res.as_numpy("probability"), want2.probability, atol=1e-9)
    res = client.infer("cancer@challenger", [_input(x[:2])])
    assert res.get_response()["model_version"] == "2.0.0"


def test_tritonclient_errors(oip, cancer_data):
    client, _, hub = oip
    x, _, _ = cancer_data
    cases = [
        ([_input(x[:2].astype(np.float64), dtype="FP64")], "cancer", "", "datatype"),
        ([_input(x[:2, :10])], "cancer", "", "shape"),
        ([_input(x[:2], name="Y")], "cancer", "", "unknown input"),
        ([_input(x[:2])], "nope", "", "unknown model"),
        ([_input(x[:2])], "cancer", "7.7.7", "no version"),
    ]
    for inputs, model, version, msg in cases:
        with pytest.raises(InferenceServerException) as e:
            client.infer(model, inputs, model_version=version)
        assert msg in str(e.value)
        assert e.value.status() in ("400", "404")
    with pytest.raises(InferenceServerException):
        client.infer("cancer", [_input(x[:1])], outputs=[tritonhttp.InferRequestedOutput("nope")])
    assert client.infer("cancer", [_input(x[:1])]).as_numpy("probability").shape == (1,)
    assert hub.metrics.errors.labels("cancer", "oip", "invalid_tensor")._value.get() >= 3


def test_oip_json_by_hand(oip, cancer_data, cancer_bundle):
    _, url, _ = oip
    x, _, names = cancer_data
    want = Model.load(cancer_bundle).score_array(x[:3]).probability
    with httpx.Client(base_url=url) as http:
        # one tensor per feature (named like the features), nested data
        inputs = [{"name": n, "shape": [3, 1], "datatype": "FP64", "data": [[float(v)] for v in x[:3, i]]}
                  for i, n in enumerate(names)]
        r = http.post("/v2/models/cancer/infer", json={"inputs": inputs, "outputs": [{"name": "probability"}]})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["outputs"][0]["data"], want, atol=1e-6)
        bad = [
            (b"{oops", "body"),
            (b'{"inputs": []}', "inputs"),
            (b'{"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32"}]}', "inputs[0].data"),
            (b'{"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32", "data": [1, 2]}]}', "inputs[0].shape"),
            (b'{"inputs": [{"name": "X", "shape": [1, 2], "datatype": "COMPLEX", "data": [1, 2]}]}', "inputs[0].datatype"),
            (b'{"inputs": [{"name": "X", "shape": [-1, 2], "datatype": "FP32", "data": [1, 2]}]}', "inputs[0].shape"),
        ]
        for raw, field in bad:
            r = http.post("/v2/models/cancer/infer", content=raw, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (raw, r.text)
            assert r.json()["field"] == field and r.json()["error"], r.text
        # values the contract refuses: the same 422, code and field as /v1 (rows[i].feature)
        for value, why in [(None, "missing value (null/NaN)"), ("a", "expected a number, got str"),
                           (True, "expected a number, got bool"), (1e39, "1e+39 is not allowed")]:
            data = x[:2].astype(np.float64).tolist()
            data[1][3] = value
            r = http.post("/v2/models/cancer/infer", json={"inputs": [{"name": "X", "shape": [2, 30],
                                                                      "datatype": "FP32", "data": data}]})
            assert r.status_code == 422, r.text
            assert r.json()["field"] == f"rows[1].{names[3]}" and why in r.json()["error"], r.text
            assert r.json()["code"] == "invalid_input"
        r = http.post("/v2/models/cancer/infer", content=b'{"inputs": [{"name": "X", "shape": [1, 30], "datatype": "FP32", '
                      b'"parameters": {"binary_data_size": 120}}]}',
                      headers={"Inference-Header-Content-Length": "5"})
        assert r.status_code == 400
        assert http.get("/v2/models/nope").status_code == 404
        assert http.get("/v2/models/cancer/versions/9/ready").status_code == 404
        assert http.get("/v2/health/live").json() == {"live": True}


def test_oip_requests_mirror_to_the_shadow_with_their_rows(oip, cancer_data, cancer_bundle_v2):
    """OIP goes through PredictService like /v1: the shadow gets the request's real rows
    (binary and JSON tensors), every row gets a comparison record, no shadow errors."""
    client, url, hub = oip
    x, _, names = cancer_data
    hub.shadow.attach("cancer", "2.0.0", segments=["mean_radius:15"])
    res = client.infer("cancer@champion", [_input(x[:5])])  # binary tensors
    assert res.get_response()["model_version"] == "1.0.0"
    with httpx.Client(base_url=url) as http:
        r = http.post("/v2/models/cancer@champion/infer", json={"inputs": [
            {"name": n, "shape": [3], "datatype": "FP64", "data": x[5:8, i].astype(float).tolist()}
            for i, n in enumerate(names)]})
        assert r.status_code == 200, r.text
    assert hub.shadow.drain(60)
    recs = hub.shadow.records("cancer")
    assert len(recs) == 8 and hub.shadow.status()["shadow_errors"] == 0
    assert all(r["shadow_error"] is None and r["shadow_version"] == "2.0.0" for r in recs)
    want = Model.load(cancer_bundle_v2).predict([dict(zip(names, map(float, r))) for r in x[:8]])
    np.testing.assert_allclose([r["shadow_score"] for r in recs], [w["probability"] for w in want], atol=1e-6)
    assert [r["row"] for r in recs] == [0, 1, 2, 3, 4, 0, 1, 2]
    radius = x[:8, names.index("mean_radius")]
    assert [r["segment"]["mean_radius:15"] for r in recs] == ["<15" if v < 15 else ">=15" for v in radius]
    m = hub.metrics
    assert m.requests.labels("cancer", "1.0.0", "", "oip")._value.get() == 2
    assert m.rows.labels("cancer", "1.0.0", "", "oip")._value.get() == 8
    text = m.render()[0].decode()
    assert not [ln for ln in text.splitlines() if ln.startswith("hub_shadow_errors_total{") and
                not ln.endswith(" 0.0")]
