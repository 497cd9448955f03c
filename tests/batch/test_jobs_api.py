"""REST job API on SQLite and PostgreSQL job stores: submit, progress, result, cancel, errors."""

from __future__ import annotations

import time

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from tests.batch.conftest import make_table


def _hub(tmp_path, keypair, cancer_bundle, db_url=None):
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings

    hub = Hub(
        HubSettings(data_dir=tmp_path / "hub", trusted_keys=[keypair[1]], database_url=db_url)
    )
    hub.registry.push(cancer_bundle)
    return hub


def _wait(client, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled", "interrupted"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def _exercise(hub, tmp_path, bad_rows_files, cancer_data):
    from cloud_hub.app import create_app

    _, paths, _ = bad_rows_files
    with TestClient(create_app(hub)) as client:
        out = tmp_path / "scored.parquet"
        r = client.post(
            "/v1/jobs",
            json={
                "model": "cancer",
                "input": str(paths["csv"]),
                "output": str(out),
                "id_columns": ["customer_id"],
                "batch_size": 200,
            },
        )
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["status"] in ("queued", "running", "succeeded")
        assert job["model_version"] == "1.0.0"
        job = _wait(client, job["id"])
        assert job["status"] == "succeeded", job
        assert (job["rows_done"], job["rows_out"], job["rows_rejected"]) == (1500, 1498, 2)
        assert job["progress"] == 1.0
        assert job["result"] == {"output": str(out), "rejects": job["rejects"]}
        table = pq.read_table(out)
        assert table.num_rows == 1498
        # Same answers as the hub's online route for the same rows.
        src = pq.read_table(paths["parquet"]).slice(0, 10).to_pylist()  # rows 0..9 are clean
        feats = [{k: v for k, v in r.items() if k not in ("customer_id", "segment")} for r in src]
        pred = client.post("/v1/models/cancer/predict", json={"rows": feats})
        assert pred.status_code == 200, pred.text
        got = table.slice(0, 10).to_pylist()
        for g, p in zip(got, pred.json()["predictions"]):
            assert g["score"] == pytest.approx(p["probability"], abs=1e-6)
            assert (g["label"], g["risk_level"]) == (p["label"], p["risk_level"])
        assert [j["id"] for j in client.get("/v1/jobs").json()["jobs"]] == [job["id"]]

        # A bigger job, cancelled while it runs: no output file, partial parts removed.
        big = tmp_path / "big.parquet"
        pq.write_table(make_table(cancer_data, 200_000, seed=1), big, row_group_size=20_000)
        out2 = tmp_path / "big-out.parquet"
        job2 = client.post(
            "/v1/jobs",
            json={
                "model": "cancer:1.0.0",
                "input": str(big),
                "output": str(out2),
                "batch_size": 500,
                "workers": 1,
            },
        ).json()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            cur = client.get(f"/v1/jobs/{job2['id']}").json()
            if cur["rows_done"] > 0 or cur["status"] != "queued" and cur["status"] != "running":
                break
            time.sleep(0.02)
        assert cur["rows_total"] == 200_000 and 0 < cur["progress"] < 1
        r = client.post(f"/v1/jobs/{job2['id']}/cancel")
        assert r.status_code == 200 and r.json()["cancel_requested"]
        job2 = _wait(client, job2["id"])
        assert job2["status"] == "cancelled" and job2["result"] is None
        assert not out2.exists() and not (tmp_path / ".big-out.parquet.partial").exists()
        assert client.post(f"/v1/jobs/{job2['id']}/cancel").status_code == 409

        # Errors: JSON body naming the field.
        r = client.get("/v1/jobs/nope")
        assert r.status_code == 404 and r.json()["field"] == "job_id"
        r = client.post(
            "/v1/jobs", json={"model": "cancer", "input": str(paths["csv"]), "output": str(out)}
        )
        assert r.status_code == 409 and r.json()["field"] == "output"
        r = client.post(
            "/v1/jobs",
            json={
                "model": "cancer",
                "input": str(tmp_path / "x.csv"),
                "output": str(tmp_path / "y.csv"),
            },
        )
        assert r.status_code == 422 and r.json()["field"] == "input"
        r = client.post(
            "/v1/jobs",
            json={"model": "nope", "input": str(paths["csv"]), "output": str(tmp_path / "y.csv")},
        )
        assert r.status_code == 404 and r.json()["field"] == "model"
        r = client.post(
            "/v1/jobs",
            json={
                "model": "cancer",
                "input": str(paths["csv"]),
                "output": str(tmp_path / "y.csv"),
                "batch_size": 0,
            },
        )
        assert r.status_code == 422 and r.json()["field"] == "batch_size"


def test_jobs_api_sqlite(tmp_path, keypair, cancer_bundle, bad_rows_files, cancer_data):
    hub = _hub(tmp_path, keypair, cancer_bundle)
    try:
        _exercise(hub, tmp_path, bad_rows_files, cancer_data)
    finally:
        hub.close()


@pytest.mark.services
def test_jobs_api_postgres(tmp_path, keypair, cancer_bundle, bad_rows_files, cancer_data, fresh_pg_url):
    hub = _hub(tmp_path, keypair, cancer_bundle, fresh_pg_url)
    try:
        _exercise(hub, tmp_path, bad_rows_files, cancer_data)
    finally:
        hub.close()


def test_interrupted_job_resumes_after_hub_restart(tmp_path, keypair, cancer_bundle, cancer_data):
    from cloud_hub.app import create_app

    big = tmp_path / "big.parquet"
    pq.write_table(make_table(cancer_data, 100_000, seed=2), big, row_group_size=20_000)
    out = tmp_path / "o.parquet"
    hub = _hub(tmp_path, keypair, cancer_bundle)
    with TestClient(create_app(hub)) as client:
        job = client.post(
            "/v1/jobs",
            json={
                "model": "cancer",
                "input": str(big),
                "output": str(out),
                "batch_size": 500,
                "workers": 1,
                "scoring_date": "2026-01-01",
            },
        ).json()
        deadline = time.monotonic() + 30
        while client.get(f"/v1/jobs/{job['id']}").json()["rows_done"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    hub.close()  # stops the job, keeps its checkpoint
    from cloud_hub.hub import Hub

    hub2 = Hub(hub.settings)
    try:
        with TestClient(create_app(hub2)) as client:
            cur = client.get(f"/v1/jobs/{job['id']}").json()
            assert cur["status"] == "interrupted" and not out.exists()
            r = client.post(f"/v1/jobs/{job['id']}/resume")
            assert r.status_code == 200, r.text
            done = _wait(client, job["id"])
            assert done["status"] == "succeeded" and done["resumed_from_batch"] > 0
            assert done["rows_out"] == 100_000
        assert pq.read_table(out).column("row_number").to_pylist() == list(range(100_000))
    finally:
        hub2.close()
