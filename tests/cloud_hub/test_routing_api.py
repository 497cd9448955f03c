# ruff: noqa: F811  (pytest fixtures imported from routing_support)
"""HTTP surface of champion/challenger and shadow: roles, bad input, and a hub restart (SQLite + PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.cloud_hub.routing_support import make_hub, rows_of, weak_bundle  # noqa: F401
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(180)

ADMIN, CLIENT, VIEWER = "admin-key-0123456789", "client-key-0123456789", "viewer-key-0123456789"
H_ADMIN, H_CLIENT, H_VIEWER = ({"Authorization": f"Bearer {k}"} for k in (ADMIN, CLIENT, VIEWER))


@pytest.fixture
def api(tmp_path, keypair, cancer_bundle, weak_bundle):
    from cloud_hub.app import create_app

    hub = make_hub(tmp_path / "hub", keypair, admin_keys=[ADMIN], client_keys=[CLIENT], viewer_keys=[VIEWER])
    hub.registry.push(cancer_bundle, aliases=["challenger"])
    hub.registry.push(weak_bundle, aliases=["champion"])
    with TestClient(create_app(hub)) as c:
        yield c, hub
    hub.close()


def test_split_feedback_evaluate_promote_over_http(api, cancer_data):
    c, _hub = api
    x, y, names = cancer_data
    assert c.put("/v1/models/cancer/split", json={"challenger_fraction": 0.5}, headers=H_CLIENT).status_code == 403
    assert c.put("/v1/models/cancer/split", json={"challenger_fraction": 0.5}).status_code == 401
    r = c.put("/v1/models/cancer/split", json={"challenger_fraction": 2}, headers=H_ADMIN)
    assert r.status_code == 422 and r.json()["field"] == "challenger_fraction"
    r = c.put("/v1/models/nope/split", json={"challenger_fraction": 0.5}, headers=H_ADMIN)
    assert r.status_code == 404 and "error" in r.json()
    r = c.put("/v1/models/cancer/split", json={"challenger_fraction": 0.5}, headers=H_ADMIN)
    assert r.status_code == 200, r.text
    split = r.json()
    assert split["entity_key"] == "customer_id" and split["salt"] == f"cancer:{split['split_id']}"
    groups = {}
    fb = []
    for i in range(len(x)):
        r = c.post("/v1/models/cancer/predict", json={"rows": rows_of(x[i:i + 1], names, [f"k{i}"])},
                   headers=H_CLIENT)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["group"] in ("champion", "challenger")
        assert body["model"]["version"] == {"champion": "0.9.0", "challenger": "1.0.0"}[body["group"]]
        groups[f"k{i}"] = body["group"]
        fb.append({"request_id": body["request_id"], "outcome": int(y[i])})
    assert 0.4 < list(groups.values()).count("challenger") / len(groups) < 0.6
    # a client reusing its X-Request-ID loses nothing: both answers are logged
    for _ in range(2):
        r = c.post("/v1/models/cancer/predict", json={"rows": rows_of(x[:1], names, ["dup"])},
                   headers={**H_CLIENT, "X-Request-ID": "same-id-1"})
        assert r.status_code == 200 and r.json()["request_id"] == "same-id-1"
    r = c.post("/v1/models/cancer/feedback", json={"feedback": fb}, headers=H_VIEWER)
    assert r.status_code == 403
    r = c.post("/v1/models/cancer/feedback", json={"feedback": [{"outcome": 1}]}, headers=H_CLIENT)
    assert r.status_code == 422 and r.json()["field"] == "feedback[0].request_id"
    r = c.post("/v1/models/cancer/feedback", json={"feedback": fb}, headers=H_CLIENT)
    assert r.json() == {"stored": len(fb), "matched": len(fb), "unmatched": 0}
    st = c.get("/v1/models/cancer/split/stats", headers=H_VIEWER).json()
    assert st["rows"] == len(x) + 2
    for bad, field in [({"decide_on": "nope"}, "decide_on"), ({"alpha": 2}, "alpha"),
                       ({"min_samples": 0}, "min_samples"), ({"bogus": 1}, "bogus")]:
        r = c.post("/v1/models/cancer/evaluate", json=bad, headers=H_VIEWER)
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    r = c.put("/v1/models/cancer/split", json={"challenger_fraction": 0.5, "evaluation": {"alpha": -1}},
              headers=H_ADMIN)
    assert r.status_code == 422 and r.json()["field"] == "evaluation.alpha"
    ev = c.post("/v1/models/cancer/evaluate", json={"decide_on": "auc"}, headers=H_VIEWER).json()
    assert ev["verdict"] == "PROMOTE", ev["reasons"]
    assert ev["tests"]["auc"]["test"] == "delong" and ev["tests"]["auc"]["p_value"] < 0.05
    assert c.post("/v1/models/cancer/promote", headers=H_CLIENT).status_code == 403
    r = c.post("/v1/models/cancer/promote", headers=H_ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["champion"] == "1.0.0" and r.json()["previous"] == "0.9.0"
    assert c.get("/v1/models/cancer/aliases", headers=H_VIEWER).json()["aliases"]["champion"] == "1.0.0"
    body = c.post("/v1/models/cancer/predict", json={"rows": rows_of(x[:1], names, ["k0"])},
                  headers=H_CLIENT).json()
    assert body["model"]["version"] == "1.0.0"  # split disabled after promotion: all to the champion
    text = c.get("/metrics", headers=H_ADMIN).text
    assert 'group="challenger"' in text
    r = c.delete("/v1/models/cancer/split/log", params={"before": "2999-01-01T00:00:00Z"}, headers=H_ADMIN)
    assert r.json()["deleted"] == {"predictions": len(x) + 2, "feedback": len(fb)}  # (split off after promotion)


def test_shadow_over_http(api, cancer_data):
    c, hub = api
    x, _, names = cancer_data
    r = c.post("/v1/models/cancer/shadows", json={"version": "1.0.0", "segments": ["mean_radius:15"]},
               headers=H_CLIENT)
    assert r.status_code == 403
    r = c.post("/v1/models/cancer/shadows", json={"version": "1.0.0", "sample_rate": 0}, headers=H_ADMIN)
    assert r.status_code == 422 and r.json()["field"] == "sample_rate"
    r = c.post("/v1/models/cancer/shadows", json={"version": "7.7.7"}, headers=H_ADMIN)
    assert r.status_code == 404
    r = c.post("/v1/models/cancer/shadows", json={"version": "1.0.0", "segments": ["mean_radius:15"]},
               headers=H_ADMIN)
    assert r.status_code == 201, r.text
    for i in range(0, 200, 2):
        assert c.post("/v1/models/cancer@champion/predict", json={"rows": rows_of(x[i:i + 2], names)},
                      headers=H_CLIENT).status_code == 200
    rep = c.get("/v1/models/cancer/shadow/report",
                params={"sla_ms": 1000, "max_decision_change": 0.5, "wait_s": 30}, headers=H_VIEWER).json()
    s = rep["shadows"][0]
    assert s["compared"] == 200 and s["shadow_version"] == "1.0.0" and s["primary_versions"] == ["0.9.0"]
    assert rep["verdict"] == s["verdict"] and s["ks_pvalue"] is not None
    assert {g["segment"] for g in s["segments"]} == {"mean_radius:15"}
    r = c.get("/v1/models/cancer/shadow/report", params={"max_decision_change": 3}, headers=H_VIEWER)
    assert r.status_code == 422
    st = c.get("/v1/shadow/status", headers=H_VIEWER).json()
    assert st["mirrored"] == 100 and st["dropped"] == 0
    assert "hub_shadow_queue_depth" in c.get("/metrics", headers=H_ADMIN).text
    page1 = c.get("/v1/models/cancer/shadow/records", params={"limit": 150}, headers=H_VIEWER).json()
    assert len(page1["records"]) == 150 and page1["next_after_id"] == page1["records"][-1]["id"]
    page2 = c.get("/v1/models/cancer/shadow/records", params={"limit": 150, "after_id": page1["next_after_id"]},
                  headers=H_VIEWER).json()
    assert len(page2["records"]) == 50 and page2["next_after_id"] is None
    assert {r["request_id"] for r in page1["records"] + page2["records"]} == {
        r["request_id"] for r in hub.shadow.records("cancer")}
    r = c.delete("/v1/models/cancer/shadow/records", params={"before": "2000-01-01T00:00:00Z"}, headers=H_ADMIN)
    assert r.json()["deleted"] == 0
    assert c.delete("/v1/models/cancer/shadow/records", params={"before": "x"}, headers=H_ADMIN).status_code == 422
    assert c.delete("/v1/models/cancer/shadow/records", params={"before": "2999-01-01T00:00:00Z"},
                    headers=H_VIEWER).status_code == 403
    r = c.delete("/v1/models/cancer/shadow/records", params={"before": "2999-01-01T00:00:00Z"}, headers=H_ADMIN)
    assert r.json()["deleted"] == 200
    assert c.get("/v1/models/cancer/shadow/report", headers=H_VIEWER).json()["shadows"][0]["compared"] == 0
    assert c.delete("/v1/models/cancer/shadows/1.0.0", headers=H_ADMIN).status_code == 204
    assert c.get("/v1/models/cancer/shadows", headers=H_VIEWER).json()["shadows"] == []


# ---- restart: a real server process, stopped and started again on the same database ------------------

SERVER = """
import sys, uvicorn
from cloud_hub.app import create_app
from cloud_hub.hub import Hub
from cloud_hub.settings import HubSettings
hub = Hub(HubSettings())
uvicorn.run(create_app(hub), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
hub.close()
"""


def _start(env, port):
    """Start a hub server process; its output goes to a file (a full pipe would block it).

    Retries on another free port if the chosen one was taken meanwhile (other test runs share
    the machine); returns the process, whose ``port`` attribute is the port it serves on.
    """
    for _attempt in range(5):
        try:
            return _start_once(env, port)
        except PortTaken:
            port = free_port()
    raise AssertionError("no free port for the hub")


class PortTaken(Exception):
    pass


def _start_once(env, port):
    log = open(os.path.join(env["HUB_DATA_DIR"] + ".log"), "ab")  # noqa: SIM115  (closed in _stop)
    p = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    p.log = log
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if p.poll() is not None:
            log.close()
            with open(log.name, "rb") as fh:
                out = fh.read().decode(errors="replace")
            if "address already in use" in out[-2000:]:
                with open(log.name, "wb"):
                    pass
                raise PortTaken(port)
            raise AssertionError(out[-3000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/splits", timeout=1).status_code == 200:
                p.port = port
                return p
        except httpx.HTTPError:
            time.sleep(0.2)
    _stop(p)
    raise AssertionError("hub did not start")


def _stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=10)
    p.log.close()


def _restart_roundtrip(tmp_path, keypair, cancer_bundle, weak_bundle, cancer_data, db_url):
    x, _, names = cancer_data
    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path / "hub"), "HUB_DEV": "1",
           "HUB_TRUSTED_KEYS": f'["{keypair[1]}"]'}
    if db_url:
        env["HUB_DATABASE_URL"] = db_url
    p = _start(env, free_port())
    port = p.port
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            for b, alias in ((cancer_bundle, "challenger"), (weak_bundle, "champion")):
                from edge_runtime.bundle import pack_bundle

                tar = tmp_path / f"{alias}.tar"
                pack_bundle(b, tar)
                r = c.post("/v1/models", content=tar.read_bytes(), params={"alias": alias},
                           headers={"content-type": "application/x-tar"})
                assert r.status_code in (200, 201), r.text
            split = c.put("/v1/models/cancer/split", json={"challenger_fraction": 0.3}).json()
            assert c.post("/v1/models/cancer/shadows", json={"version": "1.0.0"}).status_code == 201
            before = {}
            for i in range(40):
                body = c.post("/v1/models/cancer/predict",
                              json={"rows": rows_of(x[i:i + 1], names, [f"id{i}"])}).json()
                before[f"id{i}"] = body["group"]
            rep1 = c.get("/v1/models/cancer/shadow/report",
                         params={"sla_ms": 1000, "min_samples": 1, "wait_s": 30}).json()
        _stop(p)
        p = _start(env, port)
        url = f"http://127.0.0.1:{p.port}"  # same port unless it was taken meanwhile
        with httpx.Client(base_url=url, timeout=30) as c:
            after_split = c.get("/v1/models/cancer/split").json()
            assert after_split["split_id"] == split["split_id"]
            assert after_split["challenger_fraction"] == 0.3
            for i in range(40):
                body = c.post("/v1/models/cancer/predict",
                              json={"rows": rows_of(x[i:i + 1], names, [f"id{i}"])}).json()
                assert body["group"] == before[f"id{i}"]
            rep2 = c.get("/v1/models/cancer/shadow/report",
                         params={"sla_ms": 1000, "min_samples": 1, "wait_s": 30}).json()
            st = c.get("/v1/models/cancer/split/stats").json()
        shadowed_before = rep1["shadows"][0]["compared"]
        assert shadowed_before > 0
        # records from before the restart are still there, plus the new ones
        assert rep2["shadows"][0]["compared"] >= shadowed_before
        assert st["rows"] == 80
    finally:
        _stop(p)


def test_restart_sqlite(tmp_path, keypair, cancer_bundle, weak_bundle, cancer_data):
    _restart_roundtrip(tmp_path, keypair, cancer_bundle, weak_bundle, cancer_data, None)


def test_restart_postgres(tmp_path, keypair, cancer_bundle, weak_bundle, cancer_data, fresh_pg_url):
    _restart_roundtrip(tmp_path, keypair, cancer_bundle, weak_bundle, cancer_data, fresh_pg_url)


def _metric(text: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_failing_challenger_counted_per_group_over_http(api, cancer_data):
    """A challenger whose engine fails at run time on some inputs (rows with mean radius > 15):
    its failures reach the client as 500 engine_error, and are counted per group in Prometheus,
    the split stats (prediction log) and the evaluation; client 4xx errors are not."""
    c, hub = api
    x, y, names = cancer_data
    assert c.put("/v1/models/cancer/split", json={"challenger_fraction": 0.5}, headers=H_ADMIN).status_code == 200
    mv, model = hub.models.get("cancer@challenger")
    assert mv.version == "1.0.0"
    engine = model.engine
    real_run = engine._public_run

    def failing_run(feeds):  # fault injection on the loaded challenger only: ORT-style runtime failure
        if (next(iter(feeds.values()))[:, 0] > 15.0).any():
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code "
                               "returned while running MatMul node")
        return real_run(feeds)

    engine._run = engine._public_run = failing_run
    n = 300
    group_of = {f"k{i}": hub.routing.plan("cancer", 1, [f"k{i}"])[0].group for i in range(n)}
    failed = {"champion": 0, "challenger": 0}
    answered = {"champion": 0, "challenger": 0}
    fb = []
    for i in range(n):
        key = f"k{i}"
        r = c.post("/v1/models/cancer/predict", json={"rows": rows_of(x[i:i + 1], names, [key])},
                   headers=H_CLIENT)
        must_fail = group_of[key] == "challenger" and x[i, 0] > 15.0
        if must_fail:
            assert r.status_code == 500, r.text
            body = r.json()
            assert body["code"] == "engine_error" and "ONNX Runtime run failed" in body["error"]
            assert "Traceback" not in r.text
            failed[group_of[key]] += 1
        else:
            assert r.status_code == 200, r.text
            assert r.json()["group"] == group_of[key]
            answered[group_of[key]] += 1
            fb.append({"request_id": r.json()["request_id"], "outcome": int(y[i])})
    assert failed["challenger"] >= 20 and answered["challenger"] >= 20 and answered["champion"] >= 30
    # the caller's fault is not the model's: a row missing a feature routed to the challenger → 422
    ck = next(k for k, g in group_of.items() if g == "challenger")
    bad = rows_of(x[:1], names, [ck])
    del bad[0][names[3]]
    r = c.post("/v1/models/cancer/predict", json={"rows": bad}, headers=H_CLIENT)
    assert r.status_code == 422 and r.json()["field"], r.text
    # one request split between the groups, with a failing challenger row: the whole request fails,
    # only the challenger's rows are logged as errors (the client got no champion answer either)
    hk = next(k for k, g in group_of.items() if g == "champion")
    big = int(np.argmax(x[:, 0]))
    r = c.post("/v1/models/cancer/predict",
               json={"rows": rows_of(x[[0, big, big]], names, [hk, ck, ck])}, headers=H_CLIENT)
    assert r.status_code == 500 and r.json()["code"] == "engine_error"
    failed["challenger"] += 2

    text = c.get("/metrics", headers=H_ADMIN).text
    assert _metric(text, "hub_predict_model_errors_total", model="cancer", version="1.0.0",
                   group="challenger", endpoint="predict", code="engine_error") == failed["challenger"] - 1
    assert _metric(text, "hub_predict_model_errors_total", group="champion") == 0
    assert _metric(text, "hub_predict_model_errors_total", code="invalid_input") == 0
    assert _metric(text, "hub_predict_errors_total", model="cancer", code="invalid_input") == 1

    st = c.get("/v1/models/cancer/split/stats", headers=H_VIEWER).json()
    ch, cp = st["groups"]["challenger"], st["groups"]["champion"]
    assert ch["errors"] == failed["challenger"] and cp["errors"] == 0
    assert ch["requests"] == answered["challenger"] + failed["challenger"]
    assert cp["requests"] == answered["champion"]
    assert ch["error_rate"] == pytest.approx(failed["challenger"] / ch["requests"])
    assert cp["error_rate"] == 0.0
    assert ch["versions"]["1.0.0"]["errors"] == failed["challenger"]

    assert c.post("/v1/models/cancer/feedback", json={"feedback": fb}, headers=H_CLIENT).status_code == 200
    ev = c.post("/v1/models/cancer/evaluate", json={"decide_on": "auc", "min_samples": 10},
                headers=H_VIEWER).json()
    g = ev["groups"]
    assert g["challenger"]["errors"] == failed["challenger"] and g["champion"]["errors"] == 0
    assert g["challenger"]["error_rate"] == pytest.approx(
        failed["challenger"] / (answered["challenger"] + failed["challenger"]))
    assert g["champion"]["error_rate"] == 0.0
    t = ev["tests"]["error_rate"]
    assert t["difference"] > 0 and t["p_value"] < 0.05
    # the stronger model answers better (AUC) but fails often: never promoted
    assert ev["verdict"] == "KEEP_CHAMPION", ev
    assert any("fails significantly more often" in r for r in ev["reasons"]), ev["reasons"]
    r = c.post("/v1/models/cancer/promote", headers=H_ADMIN)
    assert r.status_code == 409 and r.json()["field"] == "verdict"
