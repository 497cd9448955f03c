"""Hub REST benchmark: our /predict and /v2 infer vs a plain FastAPI+onnxruntime
endpoint, MLServer and KServe — same ONNX model, same load generator, loopback.

    python benchmarks/hub_rest.py [--duration 2] [--rounds 8] [--concurrency 16 64] [--no-microbatch]
                                  [--model cancer|gbdt] [--workers 1] [--profile 8]
                                  [--benchvenv /work/benchvenv] [--json out.json]

The load generator is ``wrk`` (C, keep-alive connections, one connection per
unit of concurrency, latency percentiles from its HdrHistogram). Every server
runs as its own process on 127.0.0.1 and is checked for a correct answer
before the load. Rounds interleave the targets so background load on a shared
machine hits them alike; the table reports the median round per target and
concurrency. MLServer and KServe run from a separate virtualenv
(``--benchvenv``: ``pip install mlserver kserve onnxruntime``) because their
dependency pins clash with ours; targets whose environment is missing are
reported as skipped.

The model (``--model``): ``cancer`` = scikit-learn StandardScaler + LogisticRegression on
``load_breast_cancer`` (30 float features); ``gbdt`` = GradientBoostingClassifier (100
trees, depth 3) on its first 5 features (issue 17). Exported with skl2onnx; one row per
request. The hub runs with its defaults (metrics, access log, request ids, micro-batching)
and API keys on (every request sends ``Authorization: Bearer``). ``plain minimal`` is the
floor: ``{"features": [floats]}`` → ``session.run`` → probabilities, nothing else.

Besides req/s and latency, every run reports the server's CPU time per request (user +
system of the server's process group, read from /proc before and after the wrk run,
divided by the requests wrk completed): on a shared, busy machine this is far steadier
than req/s and is the primary figure. ``--profile S`` then runs the hub once more per
route under cProfile (``S`` seconds of wrk at c=16, one worker) and splits that CPU time
by stage (HTTP parse, auth, routing, contract, engine, post-processing, JSON, access log,
metrics, event loop/other): the profile's shares times the unprofiled CPU-µs/request.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
PEERS = HERE / "hub_rest_peers"
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


API_KEY = "bench-admin-key-0123456789"


def build_bundle(out: Path, model: str = "cancer") -> tuple[Path, list[str], np.ndarray]:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edge_runtime.bundle import write_bundle
    from edge_runtime.signing import generate_keypair

    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    names = [n.replace(" ", "_") for n in data.feature_names]
    if model == "gbdt":
        x, names = np.ascontiguousarray(x[:, :5]), names[:5]
        est = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0).fit(x, data.target)
    else:
        est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, data.target)
    onx = to_onnx(est, x[:1], options={id(est): {"zipmap": False}}, target_opset=17)
    key, _pub = generate_keypair(out / "keys" / "bench.key", out / "keys" / "bench.pub")
    proba = est.predict_proba(x[:8])[:, 1].tolist()
    manifest = {
        "name": model, "version": "1.0.0", "format": "onnx", "model_file": "model.onnx",
        "task": "binary_classification",
        "inputs": {"kind": "features", "tensor": onx.graph.input[0].name,
                   "features": [{"name": n, "dtype": "float32"} for n in names]},
        "outputs": [{"name": "label", "role": "label"}, {"name": "probabilities", "role": "probabilities"}],
        "postprocess": {"classes": ["malignant", "benign"], "positive_class": "benign", "threshold": 0.5,
                        "risk_levels": [{"name": "high", "min": 0.7}, {"name": "medium", "min": 0.4},
                                        {"name": "low", "min": 0.0}]},
        "golden": [{"rows": [dict(zip(names, map(float, r))) for r in x[:8]], "expected_probability": proba}],
    }
    bundle = write_bundle(out / "bundle", manifest, {"model.onnx": onx.SerializeToString()}, key=key)
    return bundle.root, names, x


@dataclass
class Target:
    name: str
    url: str
    body: bytes
    check: callable
    proc: subprocess.Popen | None = None
    log: Path | None = None
    pgid: int | None = None
    results: dict[int, list[dict]] = field(default_factory=dict)
    skipped: str | None = None


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group ``pgid`` (a server and
    its workers: each server starts in its own session)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(f[2]) == pgid:  # fields after ")": state ppid pgrp ... utime(11) stime(12)
            total += int(f[11]) + int(f[12])
    return total / tick


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"not ready after {timeout}s")


def start(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    fh = open(log, "wb")
    return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            cwd=cwd, start_new_session=True)


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its own workers (its own session)
        proc.wait(15)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def run_wrk(url: str, body: bytes, conns: int, duration: float, work: Path, pgid: int | None = None) -> dict:
    body_file = work / f"body-{abs(hash(body)) % 10**8}.json"
    body_file.write_bytes(body)
    script = work / f"post-{body_file.stem}.lua"
    script.write_text(
        'local f = io.open("%s", "rb")\nlocal body = f:read("*a")\nf:close()\n'
        'wrk.method = "POST"\nwrk.body = body\nwrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["Authorization"] = "Bearer %s"\n' % (body_file, API_KEY))
    cpu0 = group_cpu_s(pgid) if pgid else None
    load0 = os.getloadavg()[0]
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency", "--timeout", "5s",
                          "-s", str(script), url], capture_output=True, text=True, timeout=duration + 60, check=False).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = {}
    for p, v, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE):
        pct[int(p)] = float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    cpu_us = (group_cpu_s(pgid) - cpu0) * 1e6 / max(total, 1) if pgid else None
    return {"rps": rps, "cpu_us": cpu_us, "load1": round((load0 + os.getloadavg()[0]) / 2, 2), "p50_ms": pct.get(50), "p90_ms": pct.get(90), "p99_ms": pct.get(99),
            "requests": total, "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(0) if errors else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds (median reported)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--benchvenv", type=Path, default=Path("/work/benchvenv"),
                    help="virtualenv with mlserver, kserve, onnxruntime")
    ap.add_argument("--only", nargs="*", help="run only these targets")
    ap.add_argument("--no-microbatch", action="store_true",
                    help="also run our hub with HUB_MICROBATCH=0 (micro-batching is on by default)")
    ap.add_argument("--json", type=Path, help="write raw results here")
    ap.add_argument("--model", choices=["cancer", "gbdt"], default="cancer",
                    help="cancer: 30-feature logistic regression; gbdt: 5-feature GradientBoosting, 100 trees")
    ap.add_argument("--workers", type=int, default=1, help="worker processes of the hub and the plain minimal endpoint")
    ap.add_argument("--baseline", type=Path,
                    help="also run the hub from this code tree (e.g. git archive OLD | tar -x -C DIR) as 'hub-base'")
    ap.add_argument("--granian", action="store_true",
                    help="also run our hub's app under granian (pip install granian) as 'hub-granian'")
    ap.add_argument("--profile", type=float, default=0.0,
                    help="seconds of wrk (c=16) per route under cProfile for the per-stage CPU split (0: off)")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("hub_rest: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="hub-rest-"))
    targets: list[Target] = []
    try:
        bundle, names, x = build_bundle(work, args.model)
        mname = args.model
        row = dict(zip(names, map(float, x[0])))
        model_file = bundle / "model.onnx"
        from edge_runtime.model import Model

        want = Model.load(bundle).predict(row)[0]["probability"]
        v2_body = json.dumps({"inputs": [{"name": "X", "shape": [1, len(names)], "datatype": "FP32",
                                          "data": x[0].tolist()}],
                              "outputs": [{"name": "label"}, {"name": "probabilities"}]}).encode()

        def check_rows(r):
            return abs(r.json()["predictions"][0]["probability"] - want) < 1e-6

        def check_plain(r):
            return abs(r.json()["probability"] - want) < 1e-6

        def check_minimal(r):
            return abs(r.json()["probabilities"][1] - want) < 1e-6

        def check_v2(r):
            outs = {o["name"]: o for o in r.json()["outputs"]}
            return abs(outs["probabilities"]["data"][1] - want) < 1e-6

        py = sys.executable
        # ---- ours
        hub_variants = [("hub", {})]  # default settings
        if args.no_microbatch:
            hub_variants.append(("hub-nobatch", {"HUB_MICROBATCH": "0"}))
        if args.baseline:
            hub_variants.append(("hub-base", {"PYTHONPATH": str(args.baseline.resolve())}))
        if args.granian:
            hub_variants.append(("hub-granian", {}))
        for label, extra in hub_variants:
            env = {"HUB_DATA_DIR": str(work / f"{label}-data"), "HUB_TRUSTED_KEYS": json.dumps(
                [str(work / "keys" / "bench.pub")]), "PYTHONPATH": str(ROOT), "HUB_ADMIN_KEYS": json.dumps([API_KEY]), "HUB_CLIENT_KEYS": json.dumps(["bench-client-key-0123456789"]),
                **extra}
            cmd = [py, "-m", "cloud_hub.cli", "serve", "--workers", str(args.workers), "--port"]
            if label == "hub-granian":
                # the same app (the workers' factory) under granian; the data dir is prepared first,
                # as `cloud-hub serve --workers N` does, so the workers do not race to migrate it
                subprocess.run([py, "-c", "from cloud_hub.hub import Hub\nfrom cloud_hub.commands.serve import "
                                "load_settings\nHub(load_settings()).close()"],
                               env={**os.environ, **env}, check=True, capture_output=True, timeout=120)
                cmd = [py, "-m", "granian", "--interface", "asgi", "--factory", "--loop", "uvloop", "--no-ws",
                       "--log-level", "warning", "--workers", str(args.workers), "--host", "127.0.0.1",
                       "cloud_hub.commands.serve:app_factory", "--port"]
            for attempt in range(3):  # a free port can be taken between probe and bind
                port = free_port()
                proc = start(cmd + [str(port)], work / f"{label}.log", env,
                             cwd=args.baseline if label == "hub-base" else None)
                base = f"http://127.0.0.1:{port}"
                try:
                    wait_ready(base + "/v2/health/ready", proc)
                    break
                except RuntimeError as exc:
                    stop(proc)
                    tail = (work / f"{label}.log").read_text(errors="replace")[-2000:]
                    print(f"hub did not start ({exc}), attempt {attempt + 1}:\n{tail}", file=sys.stderr)
                    if attempt == 2:
                        raise
            tar = work / "bundle.tar"
            from edge_runtime.bundle import pack_bundle

            pack_bundle(bundle, tar)
            r = httpx.post(base + "/v1/models?alias=champion", content=tar.read_bytes(), timeout=60,
                           headers={"Authorization": f"Bearer {API_KEY}"})
            r.raise_for_status()
            if label == "hub" and (args.benchvenv / "bin" / "python").exists():
                chk = subprocess.run([str(args.benchvenv / "bin" / "python"), str(PEERS / "kserve_client_check.py"),
                                      base, mname], capture_output=True, text=True, timeout=120, check=False)
                print(f"KServe REST client against our /v2 routes: rc={chk.returncode} "
                      f"{(chk.stdout or chk.stderr).strip()[-600:]}", file=sys.stderr, flush=True)
            targets.append(Target(f"{label} /v1 predict", base + f"/v1/models/{mname}/predict",
                                  json.dumps({"rows": [row]}).encode(), check_rows, proc, work / f"{label}.log",
                                  pgid=proc.pid))
            targets.append(Target(f"{label} /v2 infer", base + f"/v2/models/{mname}/infer", v2_body, check_v2,
                                  None, work / f"{label}.log", pgid=proc.pid))
        # ---- minimal plain endpoint: list of floats -> session.run -> probabilities
        port = free_port()
        proc = start([py, str(PEERS / "plain_minimal.py"), str(model_file), str(port), str(args.workers)],
                     work / "minimal.log")
        targets.append(Target("plain minimal", f"http://127.0.0.1:{port}/predict",
                              json.dumps({"features": x[0].tolist()}).encode(), check_minimal, proc,
                              work / "minimal.log", pgid=proc.pid))
        try:
            wait_ready(f"http://127.0.0.1:{port}/docs", proc)
        except RuntimeError as exc:
            targets[-1].skipped = str(exc)
        # ---- plain FastAPI + onnxruntime (same interpreter and uvicorn as ours)
        port = free_port()
        (work / "features.json").write_text(json.dumps(names))
        proc = start([py, str(PEERS / "plain_fastapi.py"), str(model_file), str(work / "features.json"), str(port)],
                     work / "plain.log")
        targets.append(Target("plain FastAPI+ORT", f"http://127.0.0.1:{port}/predict", json.dumps(row).encode(),
                              check_plain, proc, work / "plain.log", pgid=proc.pid))
        if args.workers > 1:
            targets[-1].skipped = "one worker only"
        try:
            wait_ready(f"http://127.0.0.1:{port}/docs", proc)
        except RuntimeError as exc:
            targets[-1].skipped = str(exc)
        # ---- MLServer (default settings, then parallel_workers=0) and KServe
        venv_py = args.benchvenv / "bin" / "python"
        for label, pw in (("MLServer", None), ("MLServer parallel_workers=0", 0)):
            t = Target(label, "", v2_body, check_v2)
            targets.append(t)
            if not (args.benchvenv / "bin" / "mlserver").exists():
                t.skipped = f"mlserver not installed in {args.benchvenv}"
                continue
            port = free_port()
            d = work / f"mlserver-{pw}"
            d.mkdir()
            settings = {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port()}
            if pw is not None:
                settings["parallel_workers"] = pw
            (d / "settings.json").write_text(json.dumps(settings))
            (d / "model-settings.json").write_text(json.dumps({
                "name": mname, "implementation": "mlserver_runtime.OnnxRuntimeModel",
                "parameters": {"uri": str(model_file), "version": "1.0.0"}}))
            t.proc = start([str(args.benchvenv / "bin" / "mlserver"), "start", str(d)], work / f"mlserver-{pw}.log",
                           {"PYTHONPATH": str(PEERS)}, cwd=d)
            t.log = work / f"mlserver-{pw}.log"
            t.url = f"http://127.0.0.1:{port}/v2/models/{mname}/infer"
            t.pgid = t.proc.pid
            try:
                wait_ready(f"http://127.0.0.1:{port}/v2/models/{mname}/ready", t.proc)
            except RuntimeError as exc:
                t.skipped = f"did not start: {exc}"
        t = Target("KServe", "", v2_body, check_v2)
        targets.append(t)
        if venv_py.exists():
            port = free_port()
            t.proc = start([str(venv_py), str(PEERS / "kserve_server.py"), str(model_file), str(port), str(free_port()),
                            mname], work / "kserve.log")
            t.log = work / "kserve.log"
            t.url = f"http://127.0.0.1:{port}/v2/models/{mname}/infer"
            t.pgid = t.proc.pid
            try:
                wait_ready(f"http://127.0.0.1:{port}/v2/models/{mname}/ready", t.proc)
            except RuntimeError as exc:
                t.skipped = f"did not start: {exc}"
        else:
            t.skipped = f"no virtualenv at {args.benchvenv}"
        if args.only:
            for t in targets:
                if t.name not in args.only and not t.skipped:
                    t.skipped = "not selected"
        # ---- correctness check, warm-up
        for t in targets:
            if t.skipped:
                continue
            r = httpx.post(t.url, content=t.body, timeout=30, headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
            if r.status_code != 200 or not t.check(r):
                t.skipped = f"wrong answer: {r.status_code} {r.text[:200]}"
                continue
            run_wrk(t.url, t.body, 8, 1.0, work)
        # ---- interleaved rounds
        for rnd in range(args.rounds):
            for c in args.concurrency:
                for t in targets:
                    if t.skipped:
                        continue
                    res = run_wrk(t.url, t.body, c, args.duration, work, t.pgid)
                    t.results.setdefault(c, []).append(res)
                    print(f"round {rnd + 1} c={c:<3} {t.name:<30} {res['rps']:>8.0f} req/s  "
                          f"{res['cpu_us']:>6.0f} CPU-us/req  load {res['load1']:.1f}  p50 "
                          f"{res['p50_ms']:.2f} ms  p99 {res['p99_ms']:.2f} ms  non2xx {res['non2xx']}",
                          file=sys.stderr, flush=True)
        report(targets, args)
        if args.profile > 0:
            hub_t = [t for t in targets if t.name.startswith("hub ") and not t.skipped]
            prefix = hub_t[0].url.split("/v", 1)[0] if hub_t else ""
            profile_stages(args, work, work / "bundle.tar",
                           [(t.name, t.url[len(prefix):], t.body) for t in hub_t])
    finally:
        for t in targets:
            stop(t.proc)
        shutil.rmtree(work, ignore_errors=True)
    return 0


STAGES = ("HTTP parse + send", "auth", "routing + adapters", "contract", "engine", "post-processing", "JSON",
          "access log", "metrics", "event loop, socket I/O, other")


def _classify(fn: str, name: str) -> str | None:
    if "/cloud_hub/api/deps.py" in fn or (fn.endswith("/cloud_hub/api/predict.py") and name == "authorize"):
        return "auth"
    if "/cloud_hub/metrics.py" in fn or "/prometheus_client/" in fn:
        return "metrics"
    if "/cloud_hub/logs.py" in fn:
        return "access log"
    if "/edge_runtime/contract.py" in fn:
        return "contract"
    if "/edge_runtime/postprocess.py" in fn:
        return "post-processing"
    if "/onnxruntime/" in fn or "InferenceSession" in name or "/edge_runtime/engines" in fn:
        return "engine"
    if "/uvicorn/" in fn or "httptools" in fn or "/h11/" in fn or "/starlette/responses.py" in fn:
        return "HTTP parse + send"
    if "/cloud_hub/" in fn or "/edge_runtime/" in fn or "/starlette/" in fn or "/fastapi/" in fn:
        return "routing + adapters"
    if "orjson" in name or "/json/" in fn:
        return "JSON"
    return None


def stage_split(prof_file: Path) -> dict[str, float]:
    """Seconds of main-thread CPU per stage from a cProfile dump: a function's own time goes to
    its file's stage; library and built-in code (numpy, asyncio, orjson, ...) to its callers'
    stages, in proportion (orjson called by the access log counts as access log)."""
    import pstats

    st = pstats.Stats(str(prof_file)).stats
    memo: dict = {}

    def dist(func, depth=0) -> dict[str, float]:
        if func in memo:
            return memo[func]
        fn, _line, name = func
        stage = _classify(fn, name)
        if stage is not None and stage != "JSON":
            out = {stage: 1.0}
        else:
            callers = st.get(func, (0, 0, 0, 0, {}))[4]
            tot = sum(v[2] for v in callers.values()) if depth < 6 else 0
            out = {}
            if tot > 0:
                for c, v in callers.items():
                    for k, w in dist(c, depth + 1).items():
                        out[k] = out.get(k, 0.0) + w * v[2] / tot
            else:
                out = {"event loop, socket I/O, other": 1.0}
            if stage == "JSON":
                out = {k if k in ("access log", "metrics") else "JSON": w for k, w in out.items()}
        memo[func] = out
        return out

    split = dict.fromkeys(STAGES, 0.0)
    for func, (_cc, _nc, tt, _ct, _callers) in st.items():
        for k, w in dist(func).items():
            split[k] += tt * w
    return split


def thread_cpu_s(pid: int) -> tuple[float, float]:
    """(main thread, other threads) CPU seconds of one process."""
    tick = os.sysconf("SC_CLK_TCK")
    main = other = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(tid) == pid:
            main += int(f[11]) + int(f[12])
        else:
            other += int(f[11]) + int(f[12])
    return main / tick, other / tick


def profile_stages(args, work: Path, tar: Path, routes: list[tuple[str, str, bytes]]) -> dict:
    """Per route: unprofiled CPU-µs/request of the hub's main thread and of its other threads
    (engine calls moved off the event loop, ORT), then the main thread split by stage from a
    cProfile run of the same load. One worker, c=16."""
    py = sys.executable
    out = {}

    def hub(label: str, prof: Path | None):
        env = {**os.environ, "HUB_DATA_DIR": str(work / f"prof-{label}"), "PYTHONPATH": str(ROOT),
               "HUB_TRUSTED_KEYS": json.dumps([str(work / "keys" / "bench.pub")]),
               "HUB_ADMIN_KEYS": json.dumps([API_KEY]), "HUB_CLIENT_KEYS": json.dumps(["bench-client-key-0123456789"])}
        port = free_port()
        pre = [py, str(PEERS / "profiled_hub.py"), str(prof)] if prof else [py, "-m", "cloud_hub.cli"]
        proc = subprocess.Popen(pre + ["serve", "--port", str(port)], env=env,
                                stdout=open(work / f"prof-{label}.log", "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base + "/v2/health/ready", proc)
        httpx.post(base + "/v1/models?alias=champion", content=tar.read_bytes(), timeout=60,
                   headers={"Authorization": f"Bearer {API_KEY}"}).raise_for_status()
        return proc, base

    proc, base = hub("plain", None)
    try:
        for name, path, body in routes:
            run_wrk(base + path, body, 8, 1.0, work)
            m0, o0 = thread_cpu_s(proc.pid)
            res = run_wrk(base + path, body, 16, args.profile, work)
            m1, o1 = thread_cpu_s(proc.pid)
            n = max(res["requests"], 1)
            out[name] = {"main_us": (m1 - m0) * 1e6 / n, "other_us": (o1 - o0) * 1e6 / n, "rps": res["rps"],
                         "load1": res["load1"]}
    finally:
        stop(proc)
    for i, (name, path, body) in enumerate(routes):
        prof = work / f"route{i}.prof"
        proc, base = hub(f"prof{i}", prof)
        try:
            run_wrk(base + path, body, 8, 1.0, work)
            os.kill(proc.pid, signal.SIGUSR1)  # profile the load window only
            res = run_wrk(base + path, body, 16, args.profile, work)
            os.kill(proc.pid, signal.SIGUSR2)
            deadline = time.monotonic() + 30
            while not prof.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)
        finally:
            stop(proc)
        split = stage_split(prof)
        total = sum(split.values()) or 1.0
        o = out[name]
        o["stages_us"] = {k: v / total * o["main_us"] for k, v in split.items()}
        o["profiled_main_us"] = total * 1e6 / max(res["requests"], 1)
    print(f"\nCPU-µs per request by stage (one worker, c=16, {args.profile:g} s of wrk; the event-loop thread's "
          "unprofiled CPU split in the shares of a cProfile run of the same load; 'other threads' = engine calls "
          "moved off the event loop and ORT's own threads, unprofiled)")
    print("| stage | " + " | ".join(out) + " |")
    print("|---|" + "---|" * len(out))
    for k in STAGES:
        print(f"| {k} | " + " | ".join(f"{o['stages_us'][k]:.0f}" for o in out.values()) + " |")
    print("| other threads (engine) | " + " | ".join(f"{o['other_us']:.0f}" for o in out.values()) + " |")
    print("| **total** | " + " | ".join(f"**{o['main_us'] + o['other_us']:.0f}**" for o in out.values()) + " |")
    print("| profiled event-loop thread (cProfile overhead included) | " + " | ".join(
        f"{o['profiled_main_us']:.0f}" for o in out.values()) + " |")
    print("| req/s (unprofiled run) / load | " + " | ".join(f"{o['rps']:.0f} / {o['load1']:.1f}"
                                                          for o in out.values()) + " |")
    return out


def _median(rows: list[dict]) -> dict:
    rows = sorted(rows, key=lambda r: r["rps"])
    return rows[len(rows) // 2]


def report(targets: list[Target], args) -> None:
    import onnxruntime

    vers = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__}
    for mod in ("fastapi", "uvicorn"):
        vers[mod] = __import__(mod).__version__
    for pkg in ("mlserver", "kserve"):
        try:
            out = subprocess.run([str(args.benchvenv / "bin" / "python"), "-c",
                                  f"import importlib.metadata as m; print(m.version('{pkg}'))"],
                                 capture_output=True, text=True, timeout=30, check=False).stdout.strip()
            vers[pkg] = out or "missing"
        except (OSError, subprocess.TimeoutExpired):
            vers[pkg] = "missing"
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}; "
          f"{', '.join(f'{k} {v}' for k, v in vers.items())}; wrk, {args.duration:g}s x {args.rounds} "
          f"rounds (median), 1 row/request")
    cs = args.concurrency
    loads = [r["load1"] for t in targets if not t.skipped for c in cs for r in t.results[c]]
    if loads:
        print(f"load average (1 min) during the runs: min {min(loads):.1f}, median {statistics.median(loads):.1f}, "
              f"max {max(loads):.1f}; model {args.model}, {args.workers} worker(s)")
    head = "| target | " + " | ".join(f"c={c} req/s | c={c} CPU-µs/req | c={c} p50 ms | c={c} p99 ms"
                                     for c in cs) + " |"
    print(head)
    print("|" + "---|" * (1 + 4 * len(cs)))
    raw = {}
    for t in targets:
        if t.skipped:
            print(f"| {t.name} | skipped: {t.skipped} |")
            continue
        cells = []
        for c in cs:
            m = _median(t.results[c])
            cpu = statistics.median(r["cpu_us"] for r in t.results[c])
            cells += [f"{m['rps']:.0f}", f"{cpu:.0f}", f"{m['p50_ms']:.2f}", f"{m['p99_ms']:.2f}"]
            if any(r["non2xx"] for r in t.results[c]):
                cells[-4] += " (non-2xx!)"
        print(f"| {t.name} | " + " | ".join(cells) + " |")
        raw[t.name] = t.results
    # Ratios within each round (the targets of a round ran back to back), then the
    # median over rounds: steadier than a ratio of medians on a shared, noisy machine.
    ours = [t for t in targets if t.name.startswith("hub") and not t.skipped]
    peers = [t for t in targets if not t.name.startswith("hub") and not t.skipped]
    if ours and peers:
        print("\nthroughput ratio ours/peer, median over rounds of the per-round ratio")
        print("| ours | " + " | ".join(f"/{p.name} c={c}" for c in cs for p in peers) + " |")
        print("|" + "---|" * (1 + len(cs) * len(peers)))
        ratios = {}
        for o in ours:
            cells = []
            for c in cs:
                for p in peers:
                    r = statistics.median(a["rps"] / b["rps"] for a, b in zip(o.results[c], p.results[c]))
                    ratios[f"{o.name} / {p.name} c={c}"] = r
                    cells.append(f"{r:.2f}x")
            print(f"| {o.name} | " + " | ".join(cells) + " |")
        print("\nCPU-µs per request ours/peer (lower is better), median over rounds")
        for o in ours:
            print(f"| {o.name} | " + " | ".join(
                f"/{p.name} c={c}: {statistics.median(a['cpu_us'] / b['cpu_us'] for a, b in zip(o.results[c], p.results[c])):.2f}x"
                for c in cs for p in peers) + " |")
        print("\np99 at the highest concurrency, median over rounds: " + ", ".join(
            f"{t.name} {statistics.median(r['p99_ms'] for r in t.results[cs[-1]]):.1f} ms"
            for t in targets if not t.skipped))
    else:
        ratios = {}
    if args.json:
        args.json.write_text(json.dumps({"versions": vers, "results": raw, "ratios": ratios,
                                         "skipped": {t.name: t.skipped for t in targets if t.skipped}}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
