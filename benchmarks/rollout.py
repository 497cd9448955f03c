"""Rollout benchmarks.

1. ``live``: N simulated devices (real daemons, one process) against a hub running in its own
   process (HTTP + ingest + rollout controller). Measures the time from ``rollout start`` to every
   device verified-running the candidate (canary 1,5,25,50,100 %, time-compressed stages), then
   rolls out a bad model (errors injected on devices running it) and measures the time from the
   gate failure (the rollback decision) to every device back on the champion. Hub CPU and RSS are
   sampled from the hub process with psutil.

       python benchmarks/rollout.py live --devices 1000 [--mqtt-url URL | --own-mosquitto]

   ``--own-mosquitto`` starts a private Mosquitto (persistence on, ``max_queued_messages``
   raised, as ``cloud-hub fleet acl`` writes it) on a free port, stopped by PID at the end. The
   run counts every window: a seq between a device's first and last that is neither stored at
   the hub nor still in the device's outbox is *lost*. The rollback is broken down per device
   from the hub's event table: gate failure → desired received on the device (fan-out) → model
   back (apply) → the event stored at the hub (report), and on the wire (an MQTT monitor: when
   each desired document and each state report naming the champion passed the broker).

   For 1,000 devices on a small host (issue 14)::

       python benchmarks/rollout.py live --devices 1000 --own-mosquitto --procs 4 --shadow 10 \
           --request-rate 0.5 --interval 10 --install-jitter 15 --max-error-rate 0.01 --sim-dir /dev/shm

   ``--procs``: simulator processes (one GIL each); ``--install-jitter``: the devices'
   ``[hub] install_jitter_s``; ``--sim-dir``: where the devices' disks live (a real fleet's devices
   do not share one disk). The bad model is rolled out to every device first and its errors start
   once every device runs it (``--rollback-when-first-seen``: from the start), so the rollback
   moves the whole fleet.

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
def bench_tick(n: int, windows: int, ticks: int, legacy: bool = False, profile: str | None = None) -> dict:
    from cloud_hub.demo.models import build_bundle
    from cloud_hub.demo.runtime import LocalHub
    from cloud_hub.fleet import tables as FT
    from cloud_hub.fleet.validate import slot_problem
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
            # the ingest checks each window before storing it and marks its rows validated;
            # --legacy stores them unmarked, like rows written before that check existed
            if "validated" in FT.slot_stats.c:  # (absent before the column: to compare with old code)
                batch[-1]["validated"] = not legacy and slot_problem(batch[-1]) is None
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
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
    import gc

    gc_acc = {"s": 0.0, "full": 0, "t0": 0.0}

    def _gc(phase, info):  # time in the cyclic GC, and full (generation 2) collections, per tick
        if phase == "start":
            gc_acc["t0"] = time.perf_counter()
        else:
            gc_acc["s"] += time.perf_counter() - gc_acc["t0"]
            gc_acc["full"] += info["generation"] == 2

    gc.callbacks.append(_gc)
    gc_each = []
    for i in range(ticks):
        g0 = dict(gc_acc)
        t = time.perf_counter()
        if prof is not None and i == ticks - 1:  # the last tick only (steady: nothing new to fold in)
            prof.enable()
        out = svc.tick_one(r["id"], now=time.time())
        if prof is not None and i == ticks - 1:
            prof.disable()
        times.append(time.perf_counter() - t)
        gc_each.append({"gc_s": round(gc_acc["s"] - g0["s"], 3), "full_gc": gc_acc["full"] - g0["full"]})
    gc.callbacks.remove(_gc)
    if prof is not None:
        import io
        import pstats

        prof.dump_stats(profile)
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(35)
        print(buf.getvalue(), file=sys.stderr)
    st = svc.status(r["id"])
    h.close()
    return {"devices": n, "stage_devices": len(members), "windows_per_device": windows,
            "slot_rows": n * windows, "first_tick_s": round(first_tick, 3),
            "tick_s": {"min": round(min(times), 3), "median": round(sorted(times)[len(times) // 2], 3),
                       "max": round(max(times), 3), "each": [round(x, 3) for x in times]},
            "gc_per_tick": gc_each,
            "legacy_rows": legacy,
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


class _PrivateMosquitto:
    def __init__(self, work: Path) -> None:
        from cloud_hub.demo.runtime import free_port

        self.port = free_port()
        store = work / "mosq"
        store.mkdir(exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence true",
                 f"persistence_location {store}/", "autosave_interval 5", "max_queued_messages 200000",
                 "max_inflight_messages 100"]
        if os.geteuid() == 0:
            lines.append("user root")
        (work / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(work / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def _pct(values: list[float]) -> dict:
    if not values:
        return {}
    v = sorted(values)
    return {"p50": round(v[len(v) // 2], 2), "p90": round(v[int(len(v) * 0.9)], 2), "max": round(v[-1], 2),
            "n": len(v)}


def _rollback_breakdown(db: Path, rid: str, t_fail: float) -> dict:
    """Per device, from the hub's stored events of the rollback's desired documents."""
    import sqlite3

    with sqlite3.connect(db, timeout=30) as c:
        rows = c.execute("SELECT device_id, step, ts, received_at FROM fleet_events WHERE rollout_id=? "
                         "AND ts >= ?", (rid, t_fail - 1)).fetchall()
        desired_at = [r[0] for r in c.execute("SELECT updated_at FROM fleet_desired WHERE rollout_id=? "
                                              "AND updated_at >= ?", (rid, t_fail - 1))]
    first: dict[tuple[str, str], tuple[float, float]] = {}
    for dev, step, ts, rec in rows:
        if (dev, step) not in first or ts < first[(dev, step)][0]:
            first[(dev, step)] = (ts, rec)
    devs = {d for d, _ in first}
    fan, apply_, report, total = [], [], [], []
    for d in devs:
        got = first.get((d, "received"))
        done = first.get((d, "rolled_back")) or first.get((d, "active"))
        if got:
            fan.append(got[0] - t_fail)
        if got and done:
            apply_.append(done[0] - got[0])
        if done:
            report.append(done[1] - done[0])
            total.append(done[1] - t_fail)
    return {"devices_with_events": len(devs),
            "devices_rolled_back": sum(1 for d in devs if (d, "rolled_back") in first),
            "devices_downloading": sum(1 for d in devs if (d, "downloading") in first),
            "desired_written_s": round(max(desired_at) - t_fail, 2) if desired_at else None,
            "fan_out_s": _pct(fan), "apply_s": _pct(apply_), "report_s": _pct(report),
            "gate_failure_to_event_stored_s": _pct(total),
            "steps": sorted({s for _, s in first})}


def _count_windows(db: Path, seqs: dict[str, dict]) -> dict:
    """Every seq a device produced is stored at the hub or still in the device's outbox.

    ``seqs`` (``Fleet.outbox_seqs``) is read *before* the hub's table: a seq in a device's
    ``[first, last]`` that was not in its outbox then had been acknowledged, i.e. committed at the
    hub, so it must be in the table read after; one missing from both is lost."""
    import sqlite3

    stored: dict[str, set[int]] = {}
    with sqlite3.connect(db, timeout=30) as c:
        for dev, seq in c.execute("SELECT device_id, seq FROM fleet_windows"):
            stored.setdefault(dev, set()).add(seq)
    lost = produced = unsent = gaps_dev = dropped = 0
    examples: dict[str, list[int]] = {}
    for dev, s in seqs.items():
        first, last, pending = s["first"], s["last"], set(s["pending"])
        have = stored.get(dev, set())
        missing = [q for q in range(first, last + 1) if q not in have and q not in pending]
        produced += max(0, last - first + 1)
        unsent += len(pending)
        lost += len(missing)
        dropped += s.get("dropped", 0)
        if missing:
            gaps_dev += 1
            if len(examples) < 5:
                examples[dev] = missing[:10]
    return {"devices_counted": len(seqs), "windows_produced": produced,
            "stored_at_hub": sum(len(stored.get(d, ())) for d in seqs), "still_in_outboxes": unsent,
            "lost": lost, "devices_with_lost_windows": gaps_dev, "dropped_by_full_outboxes": dropped,
            **({"lost_examples": examples} if examples else {})}


class _Monitor:
    """An MQTT client next to the hub: when each device's desired document and each state report
    (with the version it runs) passed through the broker — the rollback's fan-out and report legs
    measured on the wire, independent of the hub's tables."""

    def __init__(self, url: str, prefix: str) -> None:
        import paho.mqtt.client as mqtt

        from edge_runtime.mqtt import MqttConfig

        cfg = MqttConfig(url=url)
        self.seen: list[tuple[float, str, str, str | None]] = []  # (ts, device, kind, active version)
        self._c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                              client_id=f"bench-monitor-{os.getpid()}")
        self._c.on_message = self._on_message
        self._c.connect(cfg.host, cfg.port)
        self._c.subscribe([(f"{prefix}/devices/+/desired", 0), (f"{prefix}/devices/+/state", 0)])
        self._c.loop_start()

    def _on_message(self, _c, _u, msg) -> None:
        now = time.time()
        parts = msg.topic.split("/")
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if parts[-1] == "desired":
            ver = ((body.get("bundles") or {}).get("active") or {}).get("version")
        else:
            if not body.get("online"):
                return
            ver = next((b.get("version") for b in body.get("bundles") or [] if b.get("slot") == "active"), None)
        self.seen.append((now, parts[-2], parts[-1], ver))

    def stop(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()

    def legs(self, t_fail: float, version: str, devices: set[str]) -> dict:
        first: dict[tuple[str, str], float] = {}
        for ts, dev, kind, ver in list(self.seen):
            if ts >= t_fail - 0.5 and ver == version and dev in devices and (dev, kind) not in first:
                first[(dev, kind)] = ts
        desired = [first[(d, "desired")] - t_fail for d in devices if (d, "desired") in first]
        state = [first[(d, "state")] - t_fail for d in devices if (d, "state") in first]
        return {"desired_at_broker_s": _pct(desired), "champion_state_at_broker_s": _pct(state)}


def _versions(http) -> dict[str, str | None]:
    """device id → version of its active bundle, as the hub sees it (its stored state documents)."""
    out = {}
    for d in http.get("/v1/devices").json()["devices"]:
        act = [b for b in (d.get("bundles") or []) if b.get("slot", "active") == "active"]
        out[d["id"]] = act[0].get("version") if act else None
    return out


def _stage_times(ev: list[dict], t0: float) -> list[dict]:
    marks = sorted((e["ts"], e["message"].split(":")[0]) for e in ev if e["kind"] in ("advanced", "completed"))
    out, prev = [], t0
    for ts, what in marks:
        out.append({"stage": what, "s": round(ts - prev, 1)})
        prev = ts
    return out


def bench_live(n: int, mqtt_url: str | None, stage_s: float, own_mosquitto: bool = False,
               stages: tuple[float, ...] = (1, 5, 25, 50, 100), *, procs: int = 1, request_rate: float = 0.5,
               batch: int = 8, interval_s: float = 2.0, install_jitter_s: float | None = None,
               shadow_percent: float | None = None, min_latency_samples: int = 100,
               max_error_rate: float = 0.2, rollback_from_all: bool = True, poll_s: float = 0.5,
               sim_dir: str | None = None, reconcile_concurrency: int = 2) -> dict:
    import httpx
    import psutil

    from cloud_hub.demo.models import build_bundle
    from cloud_hub.demo.runtime import free_port, wait_for
    from devices.simulator import Fleet, ProcessFleet
    from edge_runtime.signing import generate_keypair

    work = Path(tempfile.mkdtemp(prefix="bench-live-"))
    broker_proc = _PrivateMosquitto(work) if own_mosquitto else None
    if broker_proc is not None:
        mqtt_url = broker_proc.url
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
    http = httpx.Client(base_url=url, timeout=120)
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
    samples: list[tuple[float, float, int, float, float]] = []  # ts, hub cpu, hub rss, sim cpu, load1
    sims: list = []
    stop = threading.Event()

    def sampler():
        ps.cpu_percent()
        while not stop.wait(1.0):
            try:
                sim = sum(p.cpu_percent() for p in sims)
                samples.append((time.time(), ps.cpu_percent(), ps.memory_info().rss, sim, os.getloadavg()[0]))
            except psutil.Error:
                pass

    fleet_dir = tempfile.mkdtemp(prefix="bench-live-devices-", dir=sim_dir)
    kw = dict(hub_url=url, mqtt_url=broker, prefix=prefix, bundle=b["champion"], public_keys=[pub, hub_pub],
              interval_s=interval_s, request_rate=request_rate, batch=batch, profiles=("tiny-arm",),
              start_concurrency=16, install_jitter_s=install_jitter_s, reconcile_concurrency=reconcile_concurrency,
              workdir=fleet_dir)
    fleet = ProcessFleet(n, procs=procs, **kw) if procs > 1 else Fleet(n, **kw)
    sims.extend(psutil.Process(p) for p in (fleet.pids if procs > 1 else [os.getpid()]))
    for p in sims:
        p.cpu_percent()
    threading.Thread(target=sampler, daemon=True).start()
    out: dict = {"devices": n, "simulator_processes": procs,
                 "broker": "private mosquitto (persistence, max_queued_messages 200000)"
                 if broker_proc else (mqtt_url or "embedded amqtt"), "load_avg_start": list(os.getloadavg()),
                 "traffic": {"calls_per_s_per_device": request_rate, "rows_per_call": batch,
                             "window_s": interval_s, "install_jitter_s": install_jitter_s},
                 "device_dirs": sim_dir or tempfile.gettempdir(), "reconcile_concurrency_per_process": reconcile_concurrency}
    phase: dict[str, float] = {}

    def mark(name: str) -> None:
        phase[name] = time.time()

    try:
        t = time.time()
        fleet.start(timeout=600)
        wait_for(lambda: sum(d["online"] for d in http.get("/v1/devices").json()["devices"]) >= n, 600, 1,
                 what="all devices online")
        out["boot_s"] = round(time.time() - t, 1)
        # a loaded hub may lag behind the boot: start once its ingest has caught up
        wait_for(lambda: http.get("/v1/fleet/ingest").json().get("backlog", 0) == 0, 600, 1, what="ingest caught up")
        out["boot_and_ingest_caught_up_s"] = round(time.time() - t, 1)
        mark("booted")
        gates = {"silent_after_s": 300, "install_timeout_s": 300, "max_unknown_fraction": 0.05,
                 "max_error_rate": max_error_rate, "min_latency_samples": min_latency_samples,
                 # on a saturated machine a few self-tests miss the profile's latency budget
                 "max_failed_fraction": 0.05}
        plan: dict = {"stages": list(stages), "defaults": {"min_duration": f"{stage_s}s", "min_samples": 100,
                                                           "timeout": "900s"}, "gates": gates}
        if shadow_percent:
            plan["shadow"] = {"percent": shadow_percent}
        out["plan"] = plan
        champ_ver = "1.0.0"
        if stages:  # rollout 1: the good candidate through every stage (skipped with --stages none)
            t0 = time.time()
            rid = http.post("/v1/rollouts", json={"model": "cancer-risk:2.0.0", "plan": plan}).json()["id"]
            st = wait_for(lambda: (lambda s: s["status"] != "running" and s)(http.get(f"/v1/rollouts/{rid}").json()),
                          3600, 1, what="rollout 1")
            ev = http.get(f"/v1/rollouts/{rid}/events").json()["events"]
            out["stages"] = _stage_times(ev, t0)
            if st["status"] != "completed":
                raise RuntimeError(f"rollout 1 ended {st['status']}: {st.get('reason')}; events: "
                                   + "; ".join(f"{e['kind']}: {e['message'][:200]}" for e in ev[-8:]))
            last_adv = max(e["ts"] for e in ev if e["kind"] in ("advanced", "completed"))
            out["rollout_status"] = st["status"]
            out["start_to_completed_s"] = round(last_adv - t0, 1)
            try:  # the plan tolerates max_failed_fraction: name the devices that did not converge
                wait_for(lambda: all(v == "2.0.0" for v in _versions(http).values()), 300, 1, what="all on 2.0.0")
            except TimeoutError:
                out["not_on_candidate"] = {d: v for d, v in _versions(http).items() if v != "2.0.0"}
            out["start_to_100pct_verified_s"] = round(time.time() - t0, 1)
            out["stage_min_duration_s"] = stage_s
            out["last_stage_start_to_all_verified_s"] = round(time.time() - last_adv, 1)
            champ_ver = "2.0.0"
            mark("rollout_1_done")
        monitor = _Monitor(broker, prefix)
        bad = http.get("/v1/models/cancer-risk:3.0.0").json()
        bad_sha = bad.get("digest") or bad.get("sha256")
        # the bad model: one 100 % stage. With rollback_from_all, every device installs it before
        # the injected errors start (the stage cannot pass meanwhile: its minimum duration is an
        # hour), so the rollback moves the whole fleet — the worst case, not the devices that
        # happened to have installed it when the error gate fired.
        stage2 = {"percent": 100, "min_duration": "1h", "timeout": "2h"} if rollback_from_all else 100
        plan2 = {**{k: v for k, v in plan.items() if k != "shadow"}, "stages": [stage2]}
        if not rollback_from_all:
            fleet.inject("errors", rate=0.3, sha256=bad_sha)
        t_bad = time.time()
        rid2 = http.post("/v1/rollouts", json={"model": "cancer-risk:3.0.0", "plan": plan2}).json()["id"]
        if rollback_from_all:  # every device runs it, or refused it (counted; the plan tolerates 5 %)
            def settled() -> dict | None:
                s = http.get(f"/v1/rollouts/{rid2}").json()
                c = s["devices"]
                return s if s["status"] != "running" or c["verified"] + c["failed"] >= c["stage"] else None

            s2 = wait_for(settled, 900, 1, what="all on the bad model")
            out["bad_model_installed_s"] = round(time.time() - t_bad, 1)
            out["bad_model_devices"] = {k: s2["devices"][k] for k in ("stage", "verified", "failed", "unknown")}
            fleet.inject("errors", rate=0.3, sha256=bad_sha)
        st2 = wait_for(lambda: (lambda s: s["status"] not in ("running",) and s)(
            http.get(f"/v1/rollouts/{rid2}").json()), 1800, 0.2, what="rollout 2")
        ev2 = http.get(f"/v1/rollouts/{rid2}/events").json()["events"]
        t_fail = next((e["ts"] for e in ev2 if e["kind"] == "rollback"), None)
        if t_fail is None:
            raise RuntimeError(f"the bad model's rollout ended {st2['status']}: {st2.get('reason')}; events: "
                               + "; ".join(f"{e['kind']}: {e['message'][:300]}" for e in ev2[-6:]))
        # devices that never ran the champion (their install of it was refused in rollout 1) are
        # not part of "back on the champion": for them the rollback is a first install (named)
        never = set(out.get("not_on_candidate", {}))
        wait_for(lambda: all(v == champ_ver for d, v in _versions(http).items() if d not in never), 600, poll_s,
                 what="all back")
        out["bad_status"] = st2["status"]
        out["bad_reason"] = st2["reason"]
        out["gate_failure_to_all_on_champion_s"] = round(time.time() - t_fail, 1)
        out["all_on_champion_poll_s"] = poll_s
        if never:
            out["devices_never_on_champion"] = len(never)
        mark("rolled_back")
        time.sleep(3)  # the last state reports and events reach the hub's tables
        out["rollback_breakdown"] = _rollback_breakdown(work / "hub" / "hub.db", rid2, t_fail)
        moved = {d for d, v in _versions(http).items() if d not in never}
        out["rollback_breakdown"]["on_the_wire"] = monitor.legs(t_fail, champ_ver, moved)
        monitor.stop()
        out["rollback_events"] = [{"ts": round(e["ts"] - t_fail, 2), "kind": e["kind"], "message": e["message"][:160]}
                                  for e in ev2 if e["ts"] >= t_fail - 1]
        # let the outboxes drain, then account for every window
        t_drain = time.time()
        wait_for(lambda: fleet.stats()["buffered_windows"] <= 2 * n, 300, 2, what="outboxes drained")
        out["drain_s"] = round(time.time() - t_drain, 1)
        out["windows"] = _count_windows(work / "hub" / "hub.db", fleet.outbox_seqs())
        out["load_avg_end"] = list(os.getloadavg())
    except Exception as exc:  # report what was measured up to the failure
        out["error"] = f"{type(exc).__name__}: {exc}"[:3000]
        out["load_avg_at_error"] = list(os.getloadavg())
        try:
            out["windows_at_error"] = _count_windows(work / "hub" / "hub.db", fleet.outbox_seqs())
        except Exception as exc2:  # noqa: BLE001
            out["windows_at_error"] = f"not counted: {type(exc2).__name__}: {exc2}"[:300]
    finally:
        stop.set()
        fleet.stop()
        import shutil

        shutil.rmtree(fleet_dir, ignore_errors=True)  # (on /dev/shm it is memory)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if broker_proc is not None:
            broker_proc.stop()
    if samples:
        def summary(rows: list) -> dict:
            return {"hub_cpu_percent": {"mean": round(sum(s[1] for s in rows) / len(rows), 1),
                                        "max": round(max(s[1] for s in rows), 1)},
                    "hub_rss_mb_max": round(max(s[2] for s in rows) / 2**20, 1),
                    "simulator_cpu_percent": {"mean": round(sum(s[3] for s in rows) / len(rows), 1),
                                              "max": round(max(s[3] for s in rows), 1)},
                    "load1": {"min": round(min(s[4] for s in rows), 1), "max": round(max(s[4] for s in rows), 1)}}

        out["resources"] = summary(samples)
        out["hub_rss_mb"] = {"max": out["resources"]["hub_rss_mb_max"]}
        bounds = [("boot", 0.0, phase.get("booted")), ("rollout_1", phase.get("booted"), phase.get("rollout_1_done")),
                  ("bad_model_and_rollback", phase.get("rollout_1_done", phase.get("booted")),
                   phase.get("rolled_back"))]
        out["resources_by_phase"] = {name: summary(rows) for name, lo, hi in bounds
                                     if lo is not None and hi is not None
                                     and (rows := [s for s in samples if lo <= s[0] <= hi])}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tick")
    t.add_argument("--devices", type=int, default=10_000)
    t.add_argument("--windows", type=int, default=3)
    t.add_argument("--ticks", type=int, default=5)
    t.add_argument("--legacy", action="store_true",
                   help="store the windows as not validated at ingest (rows from before the check)")
    t.add_argument("--profile", metavar="FILE",
                   help="cProfile the last tick into FILE (pstats) and print its top functions on stderr")
    lv = sub.add_parser("live")
    lv.add_argument("--devices", type=int, default=1000)
    lv.add_argument("--mqtt-url")
    lv.add_argument("--own-mosquitto", action="store_true", help="start a private Mosquitto for the run")
    lv.add_argument("--stages", default="1,5,25,50,100",
                    help="canary percentages of the first rollout; 'none': only the bad model's rollback")
    lv.add_argument("--stage-seconds", type=float, default=5.0)
    lv.add_argument("--procs", type=int, default=0,
                    help="simulator processes (devices i %% N in process i); 0: one per 250 devices")
    lv.add_argument("--request-rate", type=float, default=0.5, help="predict calls per second per device")
    lv.add_argument("--batch", type=int, default=8, help="rows per predict call")
    lv.add_argument("--interval", type=float, default=2.0, help="seconds per telemetry window")
    lv.add_argument("--install-jitter", type=float, default=None,
                    help="the devices' [hub] install_jitter_s (default: the daemon's)")
    lv.add_argument("--shadow", type=float, default=None, metavar="PERCENT",
                    help="start rollout 1 with a shadow stage on this share of the fleet")
    lv.add_argument("--min-latency-samples", type=int, default=100)
    lv.add_argument("--max-error-rate", type=float, default=0.2)
    lv.add_argument("--rollback-when-first-seen", action="store_true",
                    help="inject the bad model's errors from the start (the gate fires while most devices "
                         "are still installing it) instead of once every device runs it")
    lv.add_argument("--poll", type=float, default=0.5, help="seconds between the all-back-on-champion polls")
    lv.add_argument("--sim-dir", help="directory for the simulated devices' disks (stores, journals, outboxes); "
                    "e.g. /dev/shm: a real fleet's devices do not share one disk (default: the temp dir)")
    lv.add_argument("--reconcile-concurrency", type=int, default=2,
                    help="devices per simulator process applying a desired document at a time")
    hb = sub.add_parser("hub")
    for a in ("--data-dir", "--port", "--prefix", "--trusted", "--mqtt-url"):
        hb.add_argument(a)
    args = p.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    if args.cmd == "hub":
        args.port = int(args.port)
        return hub_main(args)
    res = bench_tick(args.devices, args.windows, args.ticks, args.legacy, args.profile) if args.cmd == "tick" else \
        bench_live(args.devices, args.mqtt_url, args.stage_seconds, args.own_mosquitto,
                   () if args.stages == "none" else tuple(float(x) for x in args.stages.split(",")),
                   procs=args.procs or max(1, -(-args.devices // 250)), request_rate=args.request_rate,
                   batch=args.batch, interval_s=args.interval, install_jitter_s=args.install_jitter,
                   shadow_percent=args.shadow, min_latency_samples=args.min_latency_samples,
                   max_error_rate=args.max_error_rate, rollback_from_all=not args.rollback_when_first_seen,
                   poll_s=args.poll, sim_dir=args.sim_dir, reconcile_concurrency=args.reconcile_concurrency)
    print(json.dumps({"machine": _machine(), "command": " ".join(sys.argv), "result": res}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
