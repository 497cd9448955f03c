"""Rollout benchmarks.

1. ``live``: N simulated devices (real daemons, one process) against a hub running in its own
   process (HTTP + ingest + rollout controller). Measures the time from ``rollout start`` to every
   device verified-running the candidate (canary 1,5,25,50,100 %, time-compressed stages), then
   rolls out a bad model (errors injected on devices running it) and measures the time from the
   gate failure (the rollback decision) to every device back on the champion. Hub CPU and RSS are
   sampled from the hub process with psutil.

       python benchmarks/rollout.py live --devices 1000 [--mqtt-url mqtt://127.0.0.1:1883]

2. ``tick``: the controller's decision loop for a 10,000-device cohort with *simulated stored
   telemetry* (device rows and telemetry windows written straight into the fleet tables, no
   live clients): time of one tick (cohort evaluation + stage assignment + gate evaluation from
   the stored windows).

       python benchmarks/rollout.py tick --devices 10000 --windows 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _machine() -> dict:
    import psutil

    return {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
            "mem_gb": round(psutil.virtual_memory().total / 2**30, 1), "load1": os.getloadavg()[0]}


# ---- tick benchmark ---------------------------------------------------------------------------
def bench_tick(n: int, windows: int, ticks: int) -> dict:
    from cloud_hub.demo.models import build_bundle
    from cloud_hub.demo.runtime import LocalHub
    from cloud_hub.fleet import tables as FT
    from edge_runtime.signing import generate_keypair
    from edge_runtime.sketch import Histogram, Sketch

    work = Path(tempfile.mkdtemp(prefix="bench-tick-"))
    key, pub = generate_keypair(work / "k.key", work / "k.pub")
    champ = build_bundle("champion", "1.0.0", work / "c1", key)
    cand = build_bundle("challenger", "2.0.0", work / "c2", key)
    hub = LocalHub(work / "hub", trusted_keys=[pub], controller=False)
    from cloud_hub.app import create_app  # noqa: F401  (no HTTP server needed: Hub only)
    from cloud_hub.hub import Hub
    from cloud_hub.rollouts.service import rollout_service
    from cloud_hub.settings import HubSettings

    h = Hub(HubSettings(data_dir=work / "hub", dev=True, trusted_keys=[pub]))
    reg = h.registry
    mv1 = reg.push(champ, aliases=["champion"])
    mv2 = reg.push(cand)
    rnd = random.Random(1)
    now = time.time()
    dev_rows, state_rows, slot_rows = [], [], []
    for i in range(n):
        did = f"dev-{i:05d}"
        dev_rows.append({"id": did, "tags": {"region": ("eu", "us", "apac")[i % 3]}, "profile": "rpi4",
                         "registered": True, "created_at": now})
        state_rows.append({"device_id": did, "online": True, "last_seen": now, "last_window_at": now,
                           "state": {"device_id": did, "online": True, "bundles": [
                               {"slot": "active", "name": mv1.name, "version": "1.0.0", "sha256": mv1.digest}]},
                           "dropped_windows": 0})
    FT.devices.metadata  # noqa: B018
    with h.engine.begin() as conn:
        conn.execute(FT.devices.insert(), dev_rows)
        conn.execute(FT.device_state.insert(), state_rows)
    svc = rollout_service(h)
    plan = {"stages": [50, 100], "defaults": {"min_duration": "1h", "min_samples": 100, "timeout": "2h"}}
    t0 = time.perf_counter()
    r = svc.start(f"{mv2.name}:2.0.0", "region in (eu,us,apac)", plan)
    first_tick = time.perf_counter() - t0  # includes assigning 50 % and writing their desired state
    members = {m.device_id for m in svc._members(r["id"]).values()} if False else set(svc._members(r["id"]))
    # simulated stored telemetry: `windows` windows per device since the stage started
    with h.engine.connect() as conn:
        from sqlalchemy import select

        from cloud_hub.rollouts import tables as RT

        started = conn.execute(select(RT.rollouts.c.stage_started_at)).scalar()
    seq = 0
    for w in range(windows):
        batch = []
        for i in range(n):
            did = f"dev-{i:05d}"
            version, sha = ("2.0.0", mv2.digest) if did in members else ("1.0.0", mv1.digest)
            sk = Sketch()
            for _ in range(20):
                sk.add(rnd.lognormvariate(-5.5, 0.4))
            hist = Histogram.unit(20)
            for _ in range(20):
                hist.add(rnd.betavariate(2, 5))
            batch.append({"device_id": did, "seq": seq + w, "start": started + w, "end": started + w + 1,
                          "slot": "active", "name": mv1.name, "version": version, "sha256": sha,
                          "requests": 20, "errors": 0, "latency": sk.to_dict(), "scores": hist.to_dict(),
                          "decisions": {"0": 14, "1": 6}, "compared": 0, "decision_changed": 0,
                          "divergence": {}, "dropped": 0})
        with h.engine.begin() as conn:
            conn.execute(FT.slot_stats.insert(), batch)
        # the devices now report the candidate as running
    with h.engine.begin() as conn:
        for did in members:
            conn.execute(FT.device_state.update().where(FT.device_state.c.device_id == did).values(
                state={"device_id": did, "online": True, "bundles": [
                    {"slot": "active", "name": mv2.name, "version": "2.0.0", "sha256": mv2.digest}]},
                last_seen=time.time() + 3600))
        conn.execute(FT.device_state.update().values(last_seen=time.time() + 3600))
    times = []
    for _ in range(ticks):
        t = time.perf_counter()
        out = svc.tick_one(r["id"], now=time.time())
        times.append(time.perf_counter() - t)
    st = svc.status(r["id"])
    h.close()
    return {"devices": n, "stage_devices": len(members), "windows_per_device": windows,
            "slot_rows": n * windows, "first_tick_s": round(first_tick, 3),
            "tick_s": {"min": round(min(times), 3), "median": round(sorted(times)[len(times) // 2], 3),
                       "max": round(max(times), 3)},
            "decision": out.get("decision"), "gates": {g["name"]: g["status"] for g in st["gates"]},
            "candidate_requests": st["candidate_stats"]["requests"]}


# ---- live benchmark ---------------------------------------------------------------------------
def hub_main(args) -> int:
    from cloud_hub.demo.runtime import LocalHub

    hub = LocalHub(args.data_dir, mqtt_url=args.mqtt_url, trusted_keys=[args.trusted], tick_s=1.0,
                   silent_after_s=60, port=args.port, mqtt_prefix=args.prefix)
    hub.start()
    print("READY", hub.hub_public_key, hub.hub.fleet.mqtt_url, flush=True)
    hub.serve_until_terminated()


def bench_live(n: int, mqtt_url: str | None, stage_s: float) -> dict:
    import httpx
    import psutil

    from cloud_hub.demo.models import build_bundle
    from cloud_hub.demo.runtime import free_port, wait_for
    from devices.simulator import Fleet
    from edge_runtime.signing import generate_keypair

    work = Path(tempfile.mkdtemp(prefix="bench-live-"))
    key, pub = generate_keypair(work / "k.key", work / "k.pub")
    b = {k: build_bundle(k, v, work / k, key) for k, v in (("champion", "1.0.0"), ("challenger", "2.0.0"),
                                                            ("bad", "3.0.0"))}
    port = free_port()
    prefix = f"bench{os.getpid()}/v1"
    cmd = [sys.executable, __file__, "hub", "--data-dir", str(work / "hub"), "--port", str(port),
           "--prefix", prefix, "--trusted", str(pub)] + (["--mqtt-url", mqtt_url] if mqtt_url else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    _, hub_pub, broker = line.split()
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, timeout=60)
    for k in ("champion", "challenger", "bad"):
        import io
        import tarfile

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for f in sorted(b[k].iterdir()):
                tar.add(f, arcname=f.name)
        r = http.post("/v1/models", content=buf.getvalue(), headers={"content-type": "application/x-tar"},
                      params={"alias": "champion"} if k == "champion" else None)
        r.raise_for_status()
    ps = psutil.Process(proc.pid)
    samples: list[tuple[float, float, int]] = []
    stop = threading.Event()

    def sampler():
        ps.cpu_percent()
        while not stop.wait(1.0):
            samples.append((time.time(), ps.cpu_percent(), ps.memory_info().rss))

    threading.Thread(target=sampler, daemon=True).start()
    fleet = Fleet(n, hub_url=url, mqtt_url=broker, prefix=prefix, bundle=b["champion"],
                  public_keys=[pub, hub_pub], interval_s=2.0, request_rate=0.5, batch=8,
                  profiles=("tiny-arm",), start_concurrency=16)
    out: dict = {"devices": n}
    try:
        t = time.time()
        fleet.start(timeout=600)
        wait_for(lambda: sum(d["online"] for d in http.get("/v1/devices").json()["devices"]) >= n, 600, 1,
                 what="all devices online")
        out["boot_s"] = round(time.time() - t, 1)
        plan = {"stages": [1, 5, 25, 50, 100], "defaults": {"min_duration": f"{stage_s}s", "min_samples": 100,
                                                           "timeout": "600s"},
                "gates": {"silent_after_s": 60, "install_timeout_s": 300, "max_unknown_fraction": 0.05}}
        t0 = time.time()
        rid = http.post("/v1/rollouts", json={"model": "cancer-risk:2.0.0", "plan": plan}).json()["id"]
        st = wait_for(lambda: (lambda s: s["status"] != "running" and s)(http.get(f"/v1/rollouts/{rid}").json()),
                      1800, 1, what="rollout 1")
        ev = http.get(f"/v1/rollouts/{rid}/events").json()["events"]
        last_adv = max(e["ts"] for e in ev if e["kind"] == "advanced")
        wait_for(lambda: all((d.get("bundles") or [{}])[0].get("version") == "2.0.0"
                             for d in http.get("/v1/devices").json()["devices"]), 600, 1, what="all on 2.0.0")
        out["rollout_status"] = st["status"]
        out["start_to_100pct_verified_s"] = round(time.time() - t0, 1)
        out["stage_min_duration_s"] = stage_s
        out["last_stage_start_to_all_verified_s"] = round(time.time() - last_adv, 1)
        bad = http.get("/v1/models/cancer-risk:3.0.0").json()
        fleet.inject("errors", rate=0.3, sha256=bad.get("digest") or bad.get("sha256"))
        plan2 = {**plan, "stages": [100]}
        rid2 = http.post("/v1/rollouts", json={"model": "cancer-risk:3.0.0", "plan": plan2}).json()["id"]
        st2 = wait_for(lambda: (lambda s: s["status"] not in ("running",) and s)(
            http.get(f"/v1/rollouts/{rid2}").json()), 1800, 1, what="rollout 2")
        ev2 = http.get(f"/v1/rollouts/{rid2}/events").json()["events"]
        t_fail = next(e["ts"] for e in ev2 if e["kind"] == "rollback")
        wait_for(lambda: all((d.get("bundles") or [{}])[0].get("version") == "2.0.0"
                             for d in http.get("/v1/devices").json()["devices"]), 600, 1, what="all back")
        out["bad_status"] = st2["status"]
        out["bad_reason"] = st2["reason"]
        out["gate_failure_to_all_on_champion_s"] = round(time.time() - t_fail, 1)
    finally:
        stop.set()
        fleet.stop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    if samples:
        out["hub_cpu_percent"] = {"mean": round(sum(s[1] for s in samples) / len(samples), 1),
                                  "max": round(max(s[1] for s in samples), 1)}
        out["hub_rss_mb"] = {"max": round(max(s[2] for s in samples) / 2**20, 1)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tick")
    t.add_argument("--devices", type=int, default=10_000)
    t.add_argument("--windows", type=int, default=3)
    t.add_argument("--ticks", type=int, default=5)
    lv = sub.add_parser("live")
    lv.add_argument("--devices", type=int, default=1000)
    lv.add_argument("--mqtt-url")
    lv.add_argument("--stage-seconds", type=float, default=5.0)
    hb = sub.add_parser("hub")
    for a in ("--data-dir", "--port", "--prefix", "--trusted", "--mqtt-url"):
        hb.add_argument(a)
    args = p.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    if args.cmd == "hub":
        args.port = int(args.port)
        return hub_main(args)
    res = bench_tick(args.devices, args.windows, args.ticks) if args.cmd == "tick" else \
        bench_live(args.devices, args.mqtt_url, args.stage_seconds)
    print(json.dumps({"machine": _machine(), "command": " ".join(sys.argv), "result": res}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
