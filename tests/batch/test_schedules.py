"""Scheduled batch jobs: REST, firings create normal jobs with the version resolved at firing
time, catch-up policies, pause/resume/run-now, exactly one job per firing across replicas.

Firings are driven by ``ScheduleService.tick(now=...)`` with explicit times (no waiting for a
real 06:00); the jobs they create run for real in the hub's job service.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
from zoneinfo import ZoneInfo

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from tests.batch.conftest import make_table
from tests.conftest import build_sklearn_bundle


def _hub(tmp_path, keypair, bundles, db_url=None):
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings

    hub = Hub(
        HubSettings(data_dir=tmp_path / "hub", trusted_keys=[keypair[1]], database_url=db_url)
    )
    for b in bundles:
        try:
            hub.registry.push(b)
        except Exception as exc:  # another replica pushed it already (shared database)
            if "exists" not in str(exc):
                raise
    return hub


def _wait_job(hub, job_id, timeout=60):
    from cloud_hub.batch.service import JobService

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = JobService.of(hub).get(job_id)
        if job["status"] in ("succeeded", "failed", "cancelled", "interrupted"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


@pytest.fixture(scope="module")
def cancer_v2(tmp_path_factory, cancer_data, keypair):
    from sklearn.ensemble import RandomForestClassifier

    x, y, names = cancer_data
    model = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(x, y)
    out = tmp_path_factory.mktemp("bundles") / "cancer-1.1.0"
    return build_sklearn_bundle(out, model, x, names, key=keypair[0], version="1.1.0")


@pytest.fixture
def small_input(tmp_path, cancer_data):
    path = tmp_path / "in.parquet"
    pq.write_table(make_table(cancer_data, 300), path)
    return path


def _parse(t: str) -> dt.datetime:
    return dt.datetime.fromisoformat(t)


def test_schedule_rest_firings_alias_resolved_at_firing(
    tmp_path, keypair, cancer_bundle, cancer_v2, small_input
):
    from cloud_hub.app import create_app
    from cloud_hub.batch.schedule import ScheduleService

    hub = _hub(tmp_path, keypair, [cancer_bundle, cancer_v2])
    hub.registry.set_alias("cancer", "champion", "1.0.0")
    # the app's scheduler thread ticks once at start, then not again during the test: the
    # firings below come from tick(now=...) alone
    hub.service("schedules", lambda h: ScheduleService(h, tick_s=3600))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    body = {
        "name": "nightly-churn",
        "cron": "0 6 * * *",
        "timezone": "Europe/Paris",
        "model": "cancer@champion",
        "input": str(small_input),
        "output": str(out_dir / "scored-{date}.parquet"),
        "id_columns": ["customer_id"],
    }
    try:
        with TestClient(create_app(hub)) as client:
            r = client.post("/v1/schedules", json=body)
            assert r.status_code == 201, r.text
            s = r.json()
            first = _parse(s["next_fire_at"])
            paris = first.astimezone(ZoneInfo("Europe/Paris"))
            assert (paris.hour, paris.minute) == (6, 0) and first > dt.datetime.now(dt.UTC)
            assert s["catch_up"] == "run_once" and s["firings"] == []

            hostile = [
                ({"cron": "0 6 * *"}, 422, "cron"),
                ({"cron": "0 25 * * *"}, 422, "cron"),
                ({"timezone": "Mars/Olympus"}, 422, "timezone"),
                ({"cron": "0 * * * *"}, 422, "output"),  # hourly into one file per day
                ({"output": str(out_dir / "scored.parquet")}, 422, "output"),
                ({"output": str(out_dir / "s-{when}.parquet")}, 422, "output"),
                ({"output": str(tmp_path / "nowhere" / "s-{date}.parquet")}, 422, "output"),
                ({"model": "nosuch@champion"}, 404, None),
                ({"model": "cancer@nosuch"}, 404, None),
                ({"catch_up": "always"}, 422, "catch_up"),
                ({"name": "bad name"}, 422, "name"),
                ({}, 409, "name"),
            ]
            for change, status, field in hostile:
                r = client.post("/v1/schedules", json={**body, **change})
                assert r.status_code == status, (change, r.text)
                if field:
                    assert r.json()["field"].endswith(field), (change, r.json())

            svc = ScheduleService.of(hub)
            # the first firing: the alias names 1.0.0 → the job is pinned to 1.0.0
            made = svc.tick(now=first + dt.timedelta(seconds=2))
            assert len(made) == 1 and made[0]["status"] == "submitted", made
            assert made[0]["model_version"] == "1.0.0"
            job = _wait_job(hub, made[0]["job_id"])
            assert job["status"] == "succeeded" and job["model_version"] == "1.0.0"
            date1 = paris.strftime("%Y-%m-%d")
            assert job["output"] == str(out_dir / f"scored-{date1}.parquet")
            assert pq.read_table(job["output"]).num_rows == 300
            assert svc.tick(now=first + dt.timedelta(seconds=3)) == []  # fired once only

            # the alias moves: the next firing resolves it again
            hub.registry.set_alias("cancer", "champion", "1.1.0")
            second = _parse(client.get("/v1/schedules/nightly-churn").json()["next_fire_at"])
            assert second - first == dt.timedelta(days=1)
            made = svc.tick(now=second + dt.timedelta(seconds=1))
            assert [m["model_version"] for m in made] == ["1.1.0"]
            job2 = _wait_job(hub, made[0]["job_id"])
            assert job2["status"] == "succeeded" and job2["model_version"] == "1.1.0"
            assert job2["model"] == "cancer:1.1.0"

            shown = client.get("/v1/schedules/nightly-churn").json()
            assert [f["model_version"] for f in shown["firings"]] == ["1.1.0", "1.0.0"]
            assert [f["job_status"] for f in shown["firings"]] == ["succeeded", "succeeded"]
            assert shown["last_fire_at"] == second.isoformat()
            listed = client.get("/v1/schedules").json()["schedules"]
            assert [x["name"] for x in listed] == ["nightly-churn"]

            # paused: nothing fires; resumed: from the next firing after now (no catch-up)
            third = _parse(shown["next_fire_at"])
            assert client.post("/v1/schedules/nightly-churn/pause").json()["paused"] is True
            assert svc.tick(now=third + dt.timedelta(seconds=1)) == []
            resumed = client.post(f"/v1/schedules/{s['id']}/resume").json()
            assert resumed["paused"] is False
            assert _parse(resumed["next_fire_at"]) > dt.datetime.now(dt.UTC)

            # run now: a job today; the same day's output exists already → a recorded failure. The
            # firings above wrote the outputs of the next two 06:00 (Paris) dates, and "today" in
            # Paris may be one of them (e.g. 00:19 Paris after a run at 23:19 UTC): start from an
            # empty output folder so the first run-now never meets a firing's file
            for p in out_dir.iterdir():
                p.unlink()
            r = client.post("/v1/schedules/nightly-churn/run")
            assert r.status_code == 202 and r.json()["status"] == "submitted", r.text
            _wait_job(hub, r.json()["job_id"])
            r = client.post("/v1/schedules/nightly-churn/run")
            assert r.json()["status"] == "failed" and r.json()["error_code"] == "conflict"
            assert "already exists" in r.json()["error"]

            assert client.delete("/v1/schedules/nightly-churn").status_code == 204
            r = client.get("/v1/schedules/nightly-churn")
            assert r.status_code == 404 and r.json()["field"] == "schedule_id"
    finally:
        hub.close()


def test_missed_firings_run_once_or_skip(tmp_path, keypair, cancer_bundle, small_input):
    from cloud_hub.batch.schedule import ScheduleService

    hub = _hub(tmp_path, keypair, [cancer_bundle])
    try:
        svc = ScheduleService.of(hub)
        common = {
            "cron": "0 * * * *",
            "model": "cancer",
            "input": str(small_input),
        }
        a = svc.create(name="once", output=str(tmp_path / "a-{datetime}.jsonl"), **common)
        b = svc.create(
            name="skip", output=str(tmp_path / "b-{datetime}.jsonl"), catch_up="skip", **common
        )
        first = _parse(a["next_fire_at"])
        # the hub was down for five firings; it comes back 10 minutes after the fifth
        now = first + dt.timedelta(hours=4, minutes=10)
        made = svc.tick(now=now)
        assert [(m["schedule"], m["fire_at"]) for m in made] == [
            ("once", (first + dt.timedelta(hours=4)).isoformat())
        ]
        job = _wait_job(hub, made[0]["job_id"])
        assert job["status"] == "succeeded"
        once = svc.get("once")["firings"]
        assert {(f["kind"], f["status"], f["skipped"]) for f in once} == {
            ("catch_up", "submitted", None),
            ("cron", "skipped", 4),
        }
        skip = svc.get(b["id"])["firings"]
        assert [(f["status"], f["skipped"]) for f in skip] == [("skipped", 5)]
        for s in (svc.get("once"), svc.get("skip")):  # both continue at the next hour
            assert _parse(s["next_fire_at"]) == first + dt.timedelta(hours=5)
        # on time again: both fire normally
        made = svc.tick(now=first + dt.timedelta(hours=5, seconds=30))
        assert sorted(m["schedule"] for m in made) == ["once", "skip"]
        for m in made:
            assert _wait_job(hub, m["job_id"])["status"] == "succeeded"
    finally:
        hub.close()


def test_long_outage_runs_the_latest_missed_firing(tmp_path, keypair, cancer_bundle, small_input):
    """More missed firings than are counted one by one: the latest one still runs."""
    from cloud_hub.batch.schedule import MAX_COUNTED, ScheduleService

    hub = _hub(tmp_path, keypair, [cancer_bundle])
    try:
        svc = ScheduleService.of(hub)
        s = svc.create(
            name="five",
            cron="*/5 * * * *",
            model="cancer",
            input=str(small_input),
            output=str(tmp_path / "f-{datetime}.jsonl"),
        )
        first = _parse(s["next_fire_at"])
        latest = first + dt.timedelta(days=40)  # 11,521 firings; the latest is 3 minutes late
        made = svc.tick(now=latest + dt.timedelta(minutes=3))
        assert [(m["fire_at"], m["status"]) for m in made] == [(latest.isoformat(), "submitted")]
        assert _wait_job(hub, made[0]["job_id"])["status"] == "succeeded"
        skipped = [f for f in svc.get("five")["firings"] if f["status"] == "skipped"]
        assert len(skipped) == 1 and skipped[0]["skipped"] >= MAX_COUNTED
        assert "+ firing(s) missed" in skipped[0]["error"]
        assert _parse(svc.get("five")["next_fire_at"]) == latest + dt.timedelta(minutes=5)
    finally:
        hub.close()


@pytest.mark.services
def test_one_job_per_firing_across_replicas(
    tmp_path, keypair, cancer_bundle, small_input, fresh_pg_url
):
    """Two hub replicas on one PostgreSQL database tick at the same moments."""
    from sqlalchemy import func, select

    from cloud_hub.batch.schedule import ScheduleService
    from cloud_hub.batch.schedule_tables import batch_schedule_firings
    from cloud_hub.batch.tables import batch_jobs

    a = _hub(tmp_path, keypair, [cancer_bundle], fresh_pg_url)
    b = _hub(tmp_path, keypair, [cancer_bundle], fresh_pg_url)
    try:
        sa, sb = ScheduleService.of(a), ScheduleService.of(b)
        s = sa.create(
            name="every-minute",
            cron="* * * * *",
            model="cancer",
            input=str(small_input),
            output=str(tmp_path / "m-{datetime}.jsonl"),
        )
        first = _parse(s["next_fire_at"])
        made: list[dict] = []
        for k in range(4):
            now = first + dt.timedelta(minutes=k, seconds=1)
            barrier = threading.Barrier(2)

            def tick(svc, now=now, barrier=barrier):
                barrier.wait()
                made.extend(svc.tick(now=now))

            threads = [threading.Thread(target=tick, args=(svc,)) for svc in (sa, sb)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        assert len(made) == 4 and all(m["status"] == "submitted" for m in made), made
        assert len({m["fire_at"] for m in made}) == 4
        with a.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(batch_jobs)).scalar() == 4
            per_time = conn.execute(
                select(batch_schedule_firings.c.fire_at, func.count()).group_by(
                    batch_schedule_firings.c.fire_at
                )
            ).all()
        assert len(per_time) == 4 and all(n == 1 for _, n in per_time)
        for m in made:
            assert _wait_job(a, m["job_id"])["status"] == "succeeded"
    finally:
        a.close()
        b.close()


def test_schedule_cli_help_and_unreachable_hub(tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "cloud_hub.cli", "batch", "schedule", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    r = cli("--help")
    assert r.returncode == 0
    for action in ("create", "list", "show", "pause", "resume", "run-now", "delete"):
        assert action in r.stdout
    r = cli(
        "create",
        "--name",
        "n",
        "--cron",
        "0 6 * * *",
        "--model",
        "m",
        "--input",
        "i.parquet",
        "--output",
        "o-{date}.parquet",
        "--hub",
        "http://127.0.0.1:9",
    )
    assert r.returncode != 0 and "cannot reach the hub" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0


def test_schedule_cli_against_a_live_hub(tmp_path, keypair, cancer_bundle, small_input, capsys):
    import json

    from cloud_hub.app import create_app
    from cloud_hub.batch.schedule import ScheduleService
    from cloud_hub.cli import main
    from tests.cloud_hub.hub_support import live_server

    hub = _hub(tmp_path, keypair, [cancer_bundle])
    hub.service("schedules", lambda h: ScheduleService(h, tick_s=3600))
    try:
        with live_server(create_app(hub)) as url:

            def run(*args: str) -> tuple[int, list[dict], str]:
                code = main(["batch", "schedule", *args, "--hub", url])
                out, err = capsys.readouterr()
                return code, [json.loads(x) for x in out.splitlines() if x.strip()], err

            code, out, _ = run(
                "create", "--name", "nightly", "--cron", "@daily", "--timezone", "Europe/Paris",
                "--model", "cancer", "--input", str(small_input),
                "--output", str(tmp_path / "s-{date}.jsonl"), "--id-column", "customer_id",
                "--catch-up", "skip",
            )  # fmt: skip
            assert code == 0 and out[0]["catch_up"] == "skip"
            assert out[0]["id_columns"] == ["customer_id"]
            code, out, _ = run("list")
            assert code == 0 and [s["name"] for s in out] == ["nightly"]
            assert run("pause", "nightly")[1][0]["paused"] is True
            assert run("resume", "nightly")[1][0]["paused"] is False
            code, out, _ = run("run-now", "nightly")
            assert code == 0 and out[0]["status"] == "submitted"
            _wait_job(hub, out[0]["job_id"])
            code, out, err = run("run-now", "nightly")  # the day's output exists now
            assert code == 1 and out[0]["error_code"] == "conflict"
            shown = run("show", "nightly")[1][0]
            assert [f["status"] for f in shown["firings"]] == ["failed", "submitted"]
            assert run("delete", "nightly")[0] == 0
            code, _, err = run("show", "nightly")
            lines = [x for x in err.splitlines() if x.startswith("cloud-hub: error:")]
            assert code == 1 and len(lines) == 1 and "unknown schedule nightly" in lines[0]
            code, _, err = run(
                "create", "--name", "x", "--cron", "61 * * * *", "--model", "cancer",
                "--input", "i", "--output", "o-{datetime}.jsonl",
            )  # fmt: skip
            assert code == 1 and "minute value 61" in err
    finally:
        hub.close()
