"""Local API throughput under wrk: the real daemon (``edge-runtime run``), one code tree vs another.

Builds the 5-64-64-2 MLP bundle of ``edge_latency.py``, installs it into a store, then
for each code tree given with ``--code`` (a directory holding an ``edge_runtime``
package, e.g. ``git archive HEAD~3 | tar -x -C /tmp/before``; ``.`` is this checkout)
starts the daemon from that tree and runs ``wrk`` POSTing one row per request at each
concurrency. Trees are run back to back, interleaved round by round, so a busy shared
machine hurts both alike; the load average is printed next to every figure, with the
daemon's CPU time per request (user + system), which a busy machine disturbs far less
than requests/s.

    python benchmarks/local_api_load.py --code /tmp/before --code . [--duration 5]
        [--connections 1,16] [--rounds 3] [--plain] [--json out.json]

``--plain`` adds, interleaved the same way, the endpoint a device owner writes by hand
(``benchmarks/local_api_peers/plain_device.py``: the standard library's HTTP server and ONNX
Runtime, the same body and model, no checks) — the floor the daemon is compared with.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edge_latency import build_bundle

_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '%s'
"""


PLAIN = "plain (http.server + ORT)"
FEATURES = ["mean_radius_z", "mean_texture_z", "mean_perimeter_z", "mean_area_z", "mean_smoothness_z"]


def start_plain(model: Path) -> tuple[subprocess.Popen, int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve().parent / "local_api_peers" / "plain_device.py"),
         str(model), str(port), *FEATURES],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if "listening" not in line:
        proc.kill()
        raise SystemExit(f"plain endpoint did not start: {line}{proc.stderr.read()}")
    return proc, port


def start(code: Path, cfg: Path) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=str(code.resolve()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime.cli", "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(code.resolve()),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line or "")
        if m:
            return proc, int(m.group(1))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"daemon from {code} did not start: {proc.stderr.read()}")


def wrk(port: int, script: Path, conns: int, duration: float) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t",
            "1",
            "-c",
            str(conns),
            "-d",
            f"{duration:g}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/predict",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=duration + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return {
        "req_s": rps,
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "non_2xx": int(errs.group(1)) if errs else 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--code",
        action="append",
        required=True,
        type=Path,
        help="a directory holding the edge_runtime package to run (repeatable)",
    )
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--connections", default="1,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--profile",
        default="x86-gateway",
        help="device profile (tiny-arm: 1 intra-op thread, so no ONNX Runtime pool "
        "thread spinning between requests inflates the daemon's CPU time)",
    )
    ap.add_argument("--workers", type=int, default=None,
                    help="[local_api] workers of the daemon (default: the daemon's own default)")
    ap.add_argument("--json")
    ap.add_argument("--plain", action="store_true", help="also run the hand-written endpoint (see above)")
    args = ap.parse_args()

    import psutil

    from edge_runtime.signing import generate_keypair
    from edge_runtime.store import ModelStore

    tmp = Path(tempfile.mkdtemp(prefix="edge-load-"))
    key, pub = generate_keypair(tmp / "fleet.key", tmp / "fleet.pub")
    bundle = build_bundle(tmp / "mlp", key)
    with ModelStore(tmp / "store", args.profile, pub, latency_runs=20) as store:
        store.install(bundle)
    cfg = tmp / "device.toml"
    cfg.write_text(
        f'[device]\nid = "bench"\nprofile = "{args.profile}"\n'
        f'[store]\ndir = "{tmp / "store"}"\npublic_key = "{pub}"\n'
        '[local_api]\nhost = "127.0.0.1"\nport = 0\n'
        + (f"workers = {args.workers}\n" if args.workers else "")
    )
    row = json.dumps({"rows": [{f: 0.1 * i for i, f in enumerate(FEATURES)}]})
    script = tmp / "post.lua"
    script.write_text(_LUA % row)
    conns = [int(c) for c in args.connections.split(",")]
    targets: list = list(args.code) + ([PLAIN] if args.plain else [])
    results: dict[str, dict[int, list[dict[str, float]]]] = {
        str(c): {n: [] for n in conns} for c in targets
    }
    for r in range(args.rounds):
        for code in targets:
            proc, port = start_plain(bundle / "model.onnx") if code == PLAIN else start(code, cfg)
            ps = psutil.Process(proc.pid)
            try:
                for n in conns:
                    c0 = sum(ps.cpu_times()[:2])
                    res = wrk(port, script, n, args.duration)
                    cpu = sum(ps.cpu_times()[:2]) - c0
                    # CPU time the daemon spent per request: far less sensitive to a busy
                    # machine than requests/s (which also counts time waiting for a core)
                    res["daemon_cpu_us_per_req"] = round(
                        cpu / max(1.0, res["req_s"] * args.duration) * 1e6, 1
                    )
                    res["load_avg_1m"] = round(os.getloadavg()[0], 2)
                    results[str(code)][n].append(res)
                    print(f"round {r + 1} {code} c={n}: {res}", file=sys.stderr)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    summary = {}
    for code, by_n in results.items():
        summary[code] = {}
        for n, runs in by_n.items():
            rps = sorted(x["req_s"] for x in runs)
            p99 = sorted(x["p99_ms"] for x in runs)
            cpu = sorted(x["daemon_cpu_us_per_req"] for x in runs)
            summary[code][f"c{n}"] = {
                "median_req_s": rps[len(rps) // 2],
                "median_p99_ms": p99[len(p99) // 2],
                "median_daemon_cpu_us_per_req": cpu[len(cpu) // 2],
                "runs": runs,
            }
    text = json.dumps(
        {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "profile": args.profile,
            "duration_s": args.duration,
            "summary": summary,
        },
        indent=2,
    )
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
