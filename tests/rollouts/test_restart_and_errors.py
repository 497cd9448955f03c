"""A hub killed with SIGKILL mid-stage resumes; bad input gets clear errors (API + CLI); the demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cloud_hub.demo.runtime import free_port, wait_for

HERE = Path(__file__).parent


def _start_hub(data_dir, port, mosquitto, prefix, keypair, push=()):
    cmd = [sys.executable, str(HERE / "hub_process.py"), "--data-dir", str(data_dir), "--port", str(port),
           "--mqtt-url", f"mqtt://{mosquitto[0]}:{mosquitto[1]}", "--prefix", prefix,
           "--trusted", str(keypair[1]), "--push", *map(str, push)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not line.startswith("READY"):
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError("hub process exited")
    return proc, Path(line.split()[1])


STAGE_TIMEOUT_S = 180


@pytest.mark.services
@pytest.mark.slow
@pytest.mark.timeout(2 * STAGE_TIMEOUT_S + 180)
def test_hub_killed_mid_stage_resumes(tmp_path, mosquitto, keypair, demo_bundles, prefix):
    from devices.simulator import Fleet

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc, hub_pub = _start_hub(tmp_path / "hub", port, mosquitto, prefix, keypair,
                               push=[demo_bundles["champion"], demo_bundles["challenger"]])
    procs = [proc]
    fleet = Fleet(6, hub_url=url, mqtt_url=f"mqtt://{mosquitto[0]}:{mosquitto[1]}", prefix=prefix,
                  bundle=demo_bundles["champion"], public_keys=[keypair[1], hub_pub], interval_s=0.5,
                  request_rate=4, batch=8, profiles=("tiny-arm",))
    try:
        fleet.start(timeout=60)
        http = httpx.Client(base_url=url, timeout=10)
        wait_for(lambda: sum(d["online"] for d in http.get("/v1/devices").json()["devices"]) >= 6
                 if http.get("/v1/devices").status_code == 200 else False, 30, what="devices online")
        plan = {"stages": [50, 100], "defaults": {"min_duration": "8s", "min_samples": 150,
                                                  "timeout": f"{STAGE_TIMEOUT_S}s"},
                "gates": {"silent_after_s": 8, "min_latency_samples": 600}}
        r = http.post("/v1/rollouts", json={"model": "cancer-risk:2.0.0", "cohort": "*", "plan": plan})
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        wait_for(lambda: http.get(f"/v1/rollouts/{rid}").json()["devices"]["verified"] >= 1, 30,
                 what="stage devices verified")
        before = http.get(f"/v1/rollouts/{rid}").json()
        assert before["status"] == "running" and before["stage"]["name"] == "canary-50%"
        os.kill(proc.pid, signal.SIGKILL)  # mid-stage, no goodbye
        proc.wait(10)
        proc2, _ = _start_hub(tmp_path / "hub", port, mosquitto, prefix, keypair)
        procs.append(proc2)
        after = http.get(f"/v1/rollouts/{rid}").json()
        assert after["stage"]["name"] == "canary-50%"
        assert after["stage"]["started_at"] == before["stage"]["started_at"]  # same stage clock
        # each stage ends (advanced, or paused at its timeout) within STAGE_TIMEOUT_S, plus tick
        # slack: at 600 latency samples per stage the two stages need ~75 s of traffic on a quiet
        # machine, several times that on a saturated one (where a 90 s timeout paused it in CI)
        final = wait_for(lambda: (lambda s: s["status"] in ("completed", "rolled_back", "paused") and s)(
            http.get(f"/v1/rollouts/{rid}").json()), 2 * STAGE_TIMEOUT_S + 30, 0.5,
            what="rollout to finish after restart")
        events = http.get(f"/v1/rollouts/{rid}/events").json()["events"]
        assert final["status"] == "completed", (final["reason"], [(e["kind"], e["message"]) for e in events])
        kinds = [e["kind"] for e in events]
        assert kinds.count("advanced") == 1 and kinds.count("completed") == 1
    finally:
        fleet.stop()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()


@pytest.mark.services
def test_bad_input_gets_clear_errors(hub, fleet_factory, tmp_path, capsys):
    from cloud_hub.cli import main

    fleet_factory(2, request_rate=0.5)
    http = httpx.Client(base_url=hub.url, timeout=10)
    cases = [
        ({"model": "nope:1.0", "cohort": "*"}, 404, "model"),
        ({"model": "cancer-risk:9.9.9", "cohort": "*"}, 404, "model"),
        ({"model": "cancer-risk", "cohort": "*"}, 422, "model"),
        ({"model": "cancer-risk:2.0.0", "cohort": "region=mars"}, 422, "cohort"),
        ({"model": "cancer-risk:2.0.0", "cohort": "region="}, 422, "cohort"),
        ({"model": "cancer-risk:2.0.0", "plan": {"stages": [50, 10]}}, 422, "plan"),
        ({"model": "cancer-risk:2.0.0", "plan": {"gates": {"max_p99_ms": -1}}}, 422, "gates.max_p99_ms"),
        ({"model": "cancer-risk:1.0.0"}, 409, "model"),
    ]
    for body, status, field in cases:
        r = http.post("/v1/rollouts", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["field"] == field and r.json()["error"], r.json()
    assert http.get("/v1/rollouts/ro-missing").status_code == 404
    assert hub.rollouts.list() == []  # nothing stored by the refused starts

    bad_plan = tmp_path / "plan.yaml"
    bad_plan.write_text("stages: [5, 1]\n")
    for argv, needle in (
        (["rollout", "start", "--model", "cancer-risk:2.0.0", "--plan", str(bad_plan)], "plan.yaml"),
        (["rollout", "start", "--model", "cancer-risk:2.0.0", "--plan", str(tmp_path / "none.yaml")],
         "does not exist"),
        (["rollout", "start", "--model", "ghost:1.0", "--url", hub.url], "unknown model"),
        (["rollout", "start", "--model", "cancer-risk:2.0.0", "--cohort", "region=mars", "--url", hub.url],
         "matches none"),
        (["rollout", "status", "ro-missing", "--url", hub.url], "unknown rollout"),
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("cloud-hub: error:") and needle in err[0], err

    # the happy path through the CLI: start, status, pause, resume, list, abort
    assert main(["rollout", "start", "--model", "cancer-risk:2.0.0", "--stages", "50,100", "--min-duration",
                 "1h", "--id", "ro-cli", "--url", hub.url]) == 0
    assert "ro-cli started" in capsys.readouterr().out
    assert main(["rollout", "status", "ro-cli", "--url", hub.url]) == 0
    out = capsys.readouterr().out
    assert "canary-50%" in out and "gates" in out and "next" in out
    assert main(["rollout", "pause", "ro-cli", "--reason", "lunch", "--url", hub.url]) == 0
    assert "paused" in capsys.readouterr().out
    assert main(["rollout", "pause", "ro-cli", "--url", hub.url]) == 1  # 409: already paused
    capsys.readouterr()
    assert main(["rollout", "resume", "ro-cli", "--url", hub.url]) == 0
    assert main(["rollout", "list", "--url", hub.url]) == 0
    assert "ro-cli" in capsys.readouterr().out
    assert main(["rollout", "abort", "ro-cli", "--url", hub.url]) == 0
    assert main(["rollout", "events", "ro-cli", "--url", hub.url]) == 0
    out = capsys.readouterr().out
    assert "paused" in out and "resumed" in out and "aborted" in out


def test_cli_help():
    for argv in (["rollout", "--help"], ["rollout", "start", "--help"], ["demo", "--help"]):
        r = subprocess.run([sys.executable, "-m", "cloud_hub.cli", *argv], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and "usage:" in r.stdout


@pytest.mark.slow
def test_demo_runs_with_a_small_fleet(tmp_path):
    """The main job, exactly as a user runs it (embedded broker, no services)."""
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "cloud_hub.cli", "demo", "--devices", "8", "--out", str(out),
                        "--stage-seconds", "2", "--profiles", "tiny-arm"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "DEMO OK" in r.stdout
    html = (out / "report.html").read_text()
    assert html.count("<svg") >= 4 and "rolled back automatically" in html and "promoted to @champion" in html
    assert "<script" not in html and "<link" not in html  # self-contained: no JS, no external CSS
    assert "cdn" not in html.lower()
