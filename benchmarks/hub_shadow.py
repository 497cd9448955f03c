"""Shadow overhead: primary p99 of ``POST /v1/models/{name}/predict`` with a shadow attached vs without.

One real hub process (``cloud-hub serve``, SQLite) on loopback; one asyncio load
generator (httpx, keep-alive) at fixed concurrency sending single-row requests.
Phases alternate ``off`` / ``on`` (shadow attached: every request mirrored to a
second logistic-regression version) for several rounds, so machine noise hits
both alike; the verdict uses the median of the per-round p99s.

    /work/venv/bin/python benchmarks/hub_shadow.py --requests 3000 --concurrency 16 --rounds 3

Target (issue 4): primary p99 with a shadow ≤ 1.1 × without.

``--mode inprocess`` measures the critical path without HTTP or a load
generator competing for the CPU: ``PredictService.predict`` called in a loop in
one process (the hub's own data plane, observers included), alternating blocks
with and without the shadow attached; the shadow worker thread runs meanwhile.

    /work/venv/bin/python benchmarks/hub_shadow.py --mode inprocess --requests 5000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_bundles(out: Path) -> tuple[Path, Path, list[dict]]:
    import pandas as pd
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from converters.export import ExportConfig, export_model
    from edge_runtime.signing import generate_keypair

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    df = pd.DataFrame(data.data.astype(np.float32), columns=names)
    key, pub = generate_keypair(out / "k.key", out / "k.pub")
    bundles = []
    for version, c in (("1.0.0", 1.0), ("1.1.0", 0.05)):
        est = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500)).fit(df, data.target)
        bundles.append(export_model(est, df.head(64), out / f"b-{version}",
                                    ExportConfig(key=key, name="cancer", version=version)))
    rows = [{k: float(v) for k, v in r.items()} for r in df.to_dict("records")]
    return bundles[0], bundles[1], rows, pub


async def load(url: str, rows: list[dict], n: int, concurrency: int) -> dict:
    lat: list[float] = []
    errors = 0
    it = iter(range(n))

    async with httpx.AsyncClient(base_url=url, timeout=30,
                                 limits=httpx.Limits(max_connections=concurrency)) as c:
        async def worker():
            nonlocal errors
            for i in it:
                body = {"rows": [rows[i % len(rows)]]}
                t0 = time.perf_counter()
                r = await c.post("/v1/models/cancer/predict", json=body)
                lat.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {"requests": n, "errors": errors, "rps": n / wall, "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def run_inprocess(args, tmp: Path, b1: Path, b2: Path, rows: list[dict], pub: Path) -> dict:
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings

    hub = Hub(HubSettings(data_dir=tmp / "hub-inproc", dev=True, trusted_keys=[pub],
                          shadow_executor=args.executor))
    try:
        hub.registry.push(b1, aliases=["champion"])
        hub.registry.push(b2)

        async def block(n: int) -> list[float]:
            lat = []
            for i in range(n):
                body = {"rows": [rows[i % len(rows)]]}
                t0 = time.perf_counter()
                await hub.inference.predict_body("cancer", body)
                lat.append(time.perf_counter() - t0)
            return lat

        asyncio.run(block(500))
        phases = []
        for rnd in range(args.rounds):
            for mode in ("off", "on"):
                if mode == "on":
                    hub.shadow.attach("cancer", "1.1.0")
                else:
                    for t in hub.shadow.targets("cancer"):
                        hub.shadow.detach("cancer", t.version)
                hub.shadow.drain(60)
                a = np.array(asyncio.run(block(args.requests))) * 1e6
                res = {"mode": mode, "round": rnd, "requests": args.requests, "p50_us": float(np.percentile(a, 50)),
                       "p99_us": float(np.percentile(a, 99)), "mean_us": float(a.mean()),
                       "shadow_status": hub.shadow.status()}
                phases.append(res)
                print(json.dumps(res))
        hub.shadow.drain(60)
        compared = len(hub.shadow.records("cancer"))
    finally:
        hub.close()
    off = [p["p99_us"] for p in phases if p["mode"] == "off"]
    on = [p["p99_us"] for p in phases if p["mode"] == "on"]
    return {"mode": "inprocess", "executor": args.executor, "requests_per_phase": args.requests, "rounds": args.rounds,
            "p99_off_us": off, "p99_on_us": on,
            "median_p99_off_us": statistics.median(off), "median_p99_on_us": statistics.median(on),
            "median_p50_off_us": statistics.median(p["p50_us"] for p in phases if p["mode"] == "off"),
            "median_p50_on_us": statistics.median(p["p50_us"] for p in phases if p["mode"] == "on"),
            "ratio": statistics.median(on) / statistics.median(off), "target": 1.1,
            "met": statistics.median(on) / statistics.median(off) <= 1.1,
            "shadow_dropped_total": phases[-1]["shadow_status"]["dropped"], "shadow_compared": compared}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000, help="requests per phase")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="off/on phase pairs")
    ap.add_argument("--mode", choices=["http", "inprocess"], default="http")
    ap.add_argument("--executor", choices=["thread", "process"], default="thread",
                    help="where the shadow runs (HUB_SHADOW_EXECUTOR)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="hub-shadow-bench-"))
    b1, b2, rows, pub = build_bundles(tmp)
    import onnxruntime

    machine = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpu",
               "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
               "loadavg_start": os.getloadavg()}
    if args.mode == "inprocess":
        summary = {**machine, **run_inprocess(args, tmp, b1, b2, rows, pub), "loadavg_end": os.getloadavg()}
        print(json.dumps(summary, indent=2))
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
        return 0
    port = free_port()
    env = {**os.environ, "HUB_DATA_DIR": str(tmp / "hub"), "HUB_DEV": "1", "HUB_TRUSTED_KEYS": json.dumps([str(pub)]),
           "HUB_PORT": str(port), "HUB_SHADOW_EXECUTOR": args.executor}
    server = subprocess.Popen([sys.executable, "-m", "cloud_hub.cli", "serve", "--log-level", "warning"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/v2/health/ready", timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=60) as c:
            from edge_runtime.bundle import pack_bundle

            for b, alias in ((b1, "champion"), (b2, None)):
                tar = tmp / (b.name + ".tar")
                pack_bundle(b, tar)
                r = c.post("/v1/models", content=tar.read_bytes(), params={"alias": alias} if alias else None,
                           headers={"content-type": "application/x-tar"})
                r.raise_for_status()
        asyncio.run(load(url, rows, 500, args.concurrency))  # warm-up (model load, connections)
        phases = []
        for rnd in range(args.rounds):
            for mode in ("off", "on"):
                with httpx.Client(base_url=url, timeout=60) as c:
                    if mode == "on":
                        c.post("/v1/models/cancer/shadows", json={"version": "1.1.0"}).raise_for_status()
                    else:
                        c.request("DELETE", "/v1/models/cancer/shadows/1.1.0")
                time.sleep(1.2)  # shadow config cache TTL
                res = asyncio.run(load(url, rows, args.requests, args.concurrency))
                with httpx.Client(base_url=url, timeout=60) as c:
                    res["shadow_status"] = c.get("/v1/shadow/status").json()
                res.update(mode=mode, round=rnd)
                phases.append(res)
                print(json.dumps(res))
        with httpx.Client(base_url=url, timeout=60) as c:
            c.post("/v1/models/cancer/shadows", json={"version": "1.1.0"})
            rep = c.get("/v1/models/cancer/shadow/report", params={"sla_ms": 50, "wait_s": 30}).json()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    off = [p["p99_ms"] for p in phases if p["mode"] == "off"]
    on = [p["p99_ms"] for p in phases if p["mode"] == "on"]
    ratio = statistics.median(on) / statistics.median(off)
    summary = {
        **machine, "loadavg_end": os.getloadavg(), "mode": "http", "executor": args.executor,
        "concurrency": args.concurrency, "requests_per_phase": args.requests,
        "rounds": args.rounds,
        "p99_off_ms": off, "p99_on_ms": on, "median_p99_off_ms": statistics.median(off),
        "median_p99_on_ms": statistics.median(on), "ratio": ratio, "target": 1.1, "met": ratio <= 1.1,
        "rps_off": statistics.median(p["rps"] for p in phases if p["mode"] == "off"),
        "rps_on": statistics.median(p["rps"] for p in phases if p["mode"] == "on"),
        "shadow_dropped_total": phases[-1]["shadow_status"]["dropped"],
        "shadow_compared": rep["shadows"][0]["compared"] if rep.get("shadows") else 0,
        "shadow_report_verdict": rep.get("verdict"),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "phases": phases}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
