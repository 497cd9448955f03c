"""Registry + /predict over a real HTTP server on a free port."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import httpx
import numpy as np
import pytest

from edge_runtime.bundle import pack_bundle, read_bundle, verify_bundle
from edge_runtime.model import Model
from edge_runtime.signing import load_public_key
from tests.cloud_hub.hub_support import live_server, row_of


def _tar(bundle_dir, tmp_path, name="b.tar"):
    return pack_bundle(bundle_dir, tmp_path / name).read_bytes()


def _push(http, data, **params):
    return http.post("/v1/models", content=data, params=params, headers={"Content-Type": "application/x-tar"})


def test_registry_over_http(http, server, cancer_bundle, cancer_bundle_v2, tmp_path):
    r = _push(http, _tar(cancer_bundle, tmp_path), alias="champion")
    assert r.status_code == 201, r.text
    v1 = r.json()
    assert v1["version"] == "1.0.0" and v1["aliases"] == ["champion"] and v1["sha256"] == read_bundle(cancer_bundle).digest
    assert _push(http, _tar(cancer_bundle, tmp_path)).status_code == 200  # same bundle again
    # multipart upload of the second version
    files = {"bundle": ("v2.tar", _tar(cancer_bundle_v2, tmp_path, "v2.tar"), "application/x-tar")}
    r = http.post("/v1/models", files=files)
    assert r.status_code == 201, r.text
    assert http.get("/v1/models").json()["models"] == [
        {"name": "cancer", "aliases": {"champion": "1.0.0"}, "versions": ["1.0.0", "2.0.0"], "latest_version": "2.0.0"}]
    got = http.get("/v1/models/cancer@champion").json()
    assert got["version"] == "1.0.0" and got["manifest"]["name"] == "cancer"
    assert got["download_url"].endswith("/v1/bundles/" + got["sha256"])
    assert [v["version"] for v in http.get("/v1/models/cancer/versions").json()["versions"]] == ["1.0.0", "2.0.0"]
    assert http.put("/v1/models/cancer/aliases/challenger", json={"version": "2.0.0"}).json()["aliases"] == {
        "champion": "1.0.0", "challenger": "2.0.0"}
    r = http.post("/v1/models/cancer/aliases", json={"aliases": {"champion": "2.0.0", "challenger": None},
                                                     "reason": "promotion"})
    assert r.json()["aliases"] == {"champion": "2.0.0"}
    hist = http.get("/v1/models/cancer/aliases/history").json()["history"]
    assert hist[0]["reason"] == "promotion"
    assert http.delete("/v1/models/cancer/aliases/champion").json()["aliases"] == {}
    assert http.delete("/v1/models/cancer/aliases/champion").status_code == 404
    # devices: download by digest, verify with the hub key from /v1/keys/hub.pub
    pub = load_public_key(http.get("/v1/keys/hub.pub").content)
    r = http.get(f"/v1/bundles/{v1['sha256']}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    (tmp_path / "dl.tar").write_bytes(r.content)
    b = read_bundle(tmp_path / "dl.tar")
    assert b.digest == v1["sha256"]
    verify_bundle(b, pub)
    assert http.get("/v1/models/cancer:2.0.0/bundle").status_code == 200
    assert http.get("/v1/bundles/" + "0" * 64).status_code == 404
    assert http.get("/v1/bundles/nothex").status_code == 422
    assert http.delete("/v1/models/cancer/versions/1.0.0").status_code == 204
    assert [v["version"] for v in http.get("/v1/models/cancer/versions").json()["versions"]] == ["2.0.0"]


def test_predict_over_http(http, server, cancer_bundle, cancer_data):
    _, hub = server
    hub.registry.push(cancer_bundle, aliases=["champion"])
    rows = [row_of(cancer_data, i) for i in range(5)]
    local = Model.load(cancer_bundle).predict(rows)
    r = http.post("/v1/models/cancer/predict", json={"rows": rows}, headers={"X-Request-ID": "req-123"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["x-request-id"] == "req-123" and body["request_id"] == "req-123"
    assert body["model"] == {"name": "cancer", "version": "1.0.0", "sha256": read_bundle(cancer_bundle).digest}
    assert body["timestamp"].endswith("+00:00")
    for got, want in zip(body["predictions"], local):
        assert got["label"] == want["label"] and got["risk_level"] == want["risk_level"]
        assert got["probability"] == pytest.approx(want["probability"], abs=1e-9)
    # one row object; entity key passed through, not a feature
    r = http.post("/v1/models/cancer@champion/predict?entity_key=customer_id", json={**rows[0], "customer_id": "C-7"})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["customer_id"] == "C-7"
    r = http.post("/v1/models/cancer:1.0.0/predict",
                  json={"rows": [{**rows[1], "cid": 11}, rows[2]], "entity_key": "cid"})
    preds = r.json()["predictions"]
    assert preds[0]["cid"] == 11 and "cid" not in preds[1]
    assert len(r.headers["x-request-id"]) == 24 and r.headers["x-request-id"] == r.json()["request_id"]


BAD = [
    (b"{not json", 422, "body"),
    (b"", 422, "body"),
    (b"[1, 2]", 422, "body"),
    (json.dumps({"rows": []}).encode(), 422, "rows"),
    (json.dumps({"rows": "x"}).encode(), 422, "rows"),
    (json.dumps({"rows": [{}], "extra": 1}).encode(), 422, "extra"),
]


def test_predict_bad_input(http, server, cancer_bundle, cancer_data):
    _, hub = server
    hub.registry.push(cancer_bundle, aliases=["champion"])
    for raw, status, field in BAD:
        r = http.post("/v1/models/cancer/predict", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == status, (raw, r.text)
        assert r.json()["field"] == field and r.json()["error"]
    row = row_of(cancer_data)
    missing = dict(row)
    missing.pop("mean_radius")
    r = http.post("/v1/models/cancer/predict", json={"rows": [row, missing]})
    assert r.status_code == 422 and r.json()["field"] == "rows[1].mean_radius"
    r = http.post("/v1/models/cancer/predict", json={"rows": [{**row, "mean_area": "big"}]})
    assert r.status_code == 422 and r.json()["field"] == "rows[0].mean_area" and "number" in r.json()["error"]
    r = http.post("/v1/models/cancer/predict", json={"rows": [{**row, "mean_area": None}]})
    assert r.status_code == 422 and r.json()["field"] == "rows[0].mean_area"
    r = http.post("/v1/models/cancer/predict", json={**row, "customer_id": "x"})
    assert r.status_code == 422 and r.json()["field"] == "rows[0].customer_id"
    for ref, field in (("nope", "model"), ("cancer@staging", "alias"), ("cancer:9", "version")):
        r = http.post(f"/v1/models/{ref}/predict", json=row)
        assert r.status_code == 404 and r.json()["field"] == field, r.text
    r = http.post("/v1/models/bad%20name/predict", json=row)
    assert r.status_code == 422 and r.json()["field"] == "model"
    assert http.get("/v1/nothing").json()["error"]
    assert http.delete("/v1/models/cancer/predict").status_code == 405
    # still serving after all that
    assert http.post("/v1/models/cancer/predict", json=row).status_code == 200


def test_bad_uploads_store_nothing(server, cancer_bundle, tmp_path, make_hub):
    url, hub = server
    http = httpx.Client(base_url=url, timeout=30)
    assert _push(http, _tar(cancer_bundle, tmp_path)).status_code == 201
    before = [v.digest for v in hub.registry.list()]
    # unsigned
    unsigned = tmp_path / "unsigned"
    shutil.copytree(cancer_bundle, unsigned)
    m = json.loads((unsigned / "manifest.json").read_text())
    m.pop("signature")
    m["version"] = "1.0.1"
    (unsigned / "manifest.json").write_text(json.dumps(m))
    r = _push(http, _tar(unsigned, tmp_path, "u.tar"))
    assert r.status_code == 400 and r.json()["field"] == "signature"
    # tampered model file
    tampered = tmp_path / "tampered"
    shutil.copytree(cancer_bundle, tampered)
    with open(tampered / "model.onnx", "ab") as fh:
        fh.write(b"x")
    r = _push(http, _tar(tampered, tmp_path, "t.tar"))
    assert r.status_code == 400 and r.json()["field"].startswith("files.model.onnx")
    # garbage, empty, tar without manifest, path traversal member
    assert _push(http, b"garbage" * 100).status_code == 400
    assert _push(http, b"").status_code == 422
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 3
        t.addfile(info, io.BytesIO(b"abc"))
    r = _push(http, buf.getvalue())
    assert r.status_code == 400 and "traceback" not in r.text.lower()
    r = http.post("/v1/models", files={"other": ("x", b"abc")}, data={"bundle": "notafile"})
    assert r.status_code in (400, 422)
    assert [v.digest for v in hub.registry.list()] == before
    assert list(hub.workdir.path.iterdir()) == []  # no temp files left behind
    http.close()


def test_size_limits(make_hub, cancer_bundle, cancer_data, tmp_path):
    from cloud_hub.app import create_app

    hub = make_hub(max_body_bytes=2048, max_upload_bytes=4096)
    hub.registry.push(cancer_bundle)
    with live_server(create_app(hub)) as url, httpx.Client(base_url=url, timeout=30) as http:
        big = {"rows": [row_of(cancer_data)] * 20}
        r = http.post("/v1/models/cancer/predict", json=big)
        assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
        # chunked body without Content-Length is counted too

        def gen():
            for _ in range(10):
                yield b" " * 1000

        r = http.post("/v1/models/cancer/predict", content=gen(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        r = _push(http, _tar(cancer_bundle, tmp_path))  # 30 kB > 4 kB upload limit
        assert r.status_code == 413
        assert http.post("/v1/models/cancer/predict", json=row_of(cancer_data)).status_code == 200
    assert len(hub.registry.list()) == 1


def test_microbatching_gives_same_answers(make_hub, cancer_bundle, cancer_data):
    import asyncio

    from cloud_hub.app import create_app

    hub = make_hub(microbatch=True, microbatch_max_wait_ms=5.0)
    hub.registry.push(cancer_bundle)
    rows = [row_of(cancer_data, i) for i in range(40)]
    want = Model.load(cancer_bundle).predict(rows)

    async def fire(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            rs = await asyncio.gather(*[c.post("/v1/models/cancer/predict", json=r) for r in rows])
            return [r.json()["predictions"][0] for r in rs]

    with live_server(create_app(hub)) as url:
        got = asyncio.run(fire(url))
    for g, w in zip(got, want):
        # float32 results move by ~1e-7 with the batch size the engine saw
        assert g["probability"] == pytest.approx(w["probability"], abs=1e-6) and g["label"] == w["label"]
    samples = [s for m in hub.metrics.microbatch_size.collect() for s in m.samples]
    rows_batched = sum(s.value for s in samples if s.name.endswith("_sum"))
    batches = sum(s.value for s in samples if s.name.endswith("_count"))
    # the first request of a loop turn goes straight to the engine, the concurrent ones share calls;
    # how many arrive together depends on the machine's load (merging itself: test_inference.py)
    assert rows_batched <= 40 and batches <= rows_batched
    assert np.isfinite(rows_batched)
