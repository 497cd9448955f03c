"""Edge runtime latency and memory, side by side with raw ONNX Runtime.

Builds a 5-64-64-2 MLP (scikit-learn MLPClassifier on five standardised
breast-cancer features, exported with skl2onnx) as a signed bundle, then in one run:

1. in-process: ``Model.predict(row)`` (named features → validation → engine →
   probability/label dicts) vs raw ``InferenceSession.run`` on the pre-built array,
   single row and batch, interleaved in blocks;
2. HTTP: the real daemon (``edge-runtime run --config device.toml``, a separate
   process serving the model store's active bundle) answering ``POST /predict`` on
   127.0.0.1 over one keep-alive connection (concurrency 1), with raw
   ``session.run`` timed again in the same run;
3. RSS of that daemon process with the one model loaded (after the HTTP run);
4. the same MLP converted to TFLite (``converters.tflite``): ``Model.predict`` vs a raw
   LiteRT interpreter (set_tensor / invoke / get_tensor).

    python benchmarks/edge_latency.py [--runs 20000] [--batch 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def build_bundle(out: Path, key: Path) -> Path:
    import onnxruntime
    import sklearn
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer
    from sklearn.neural_network import MLPClassifier

    from edge_runtime.bundle import write_bundle

    d = load_breast_cancer()
    x = d.data[:, :5]
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    names = [n.replace(" ", "_") + "_z" for n in d.feature_names[:5]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((64, 64), max_iter=300, random_state=0).fit(x, d.target)
    onx = to_onnx(mlp, x[:1], options={id(mlp): {"zipmap": False}}, target_opset=17)
    proba = mlp.predict_proba(x[:16])[:, 1]
    manifest = {
        "name": "mlp-5-64-64-2", "version": "1.0.0", "format": "onnx", "model_file": "model.onnx",
        "task": "binary_classification",
        "inputs": {"kind": "features", "tensor": onx.graph.input[0].name,
                   "features": [{"name": n} for n in names]},
        "outputs": [{"name": "label", "role": "label"},
                    {"name": "probabilities", "role": "probabilities"}],
        "postprocess": {"classes": ["benign", "malignant"], "positive_class": "malignant",
                        "risk_levels": [{"name": "high", "min": 0.7}, {"name": "medium", "min": 0.4},
                                        {"name": "low", "min": 0.0}]},
        "golden": [{"rows": [dict(zip(names, map(float, r))) for r in x[:16]],
                    "expected_probability": proba.tolist(), "atol": 1e-4}],
        "provenance": {"source": "MLPClassifier(64, 64)", "dataset": "load_breast_cancer[:, :5]",
                       "sklearn": sklearn.__version__, "onnxruntime": onnxruntime.__version__},
    }
    write_bundle(out, manifest, {"model.onnx": onx.SerializeToString()}, key=key)
    return out


def start_daemon(cfg: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line or "")
        if m:
            return proc, int(m.group(1))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"daemon did not start: {proc.stderr.read()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20000, help="single-row calls per in-process path")
    ap.add_argument("--http-runs", type=int, default=5000, help="single-row HTTP calls per trial")
    ap.add_argument("--trials", type=int, default=3, help="HTTP trials (the median p99 is kept)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--profile", default="x86-gateway")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import onnxruntime as ort
    import psutil

    from edge_runtime import Model, __version__
    from edge_runtime.bench import bench_model
    from edge_runtime.profile import load_profile
    from edge_runtime.signing import generate_keypair
    from edge_runtime.store import ModelStore

    tmp = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    key, pub = generate_keypair(tmp / "fleet.key", tmp / "fleet.pub")
    bundle = build_bundle(tmp / "mlp", key)
    profile = load_profile(args.profile)
    model = Model.load(bundle, profile.engine_options())

    in_process = bench_model(model, runs=args.runs, batch=args.batch)

    # the same MLP as a TFLite bundle (the project's ONNX → TFLite converter), vs a raw
    # LiteRT interpreter
    tflite = None
    try:
        from converters.tflite import onnx_to_tflite
        from converters.tflite.convert import TFLiteConfig

        tfl_bundle = onnx_to_tflite(bundle, tmp / "mlp-tflite", TFLiteConfig(key=key))
        tflite = bench_model(Model.load(tfl_bundle, profile.engine_options()),
                             runs=args.runs, batch=args.batch)
    except ImportError as exc:  # converters or ai-edge-litert not installed
        print(f"TFLite part skipped: {exc}", file=sys.stderr)

    # the real daemon, serving the store's active model
    with ModelStore(tmp / "store", profile, pub) as store:
        install = store.install(bundle).to_dict()
    cfg = tmp / "device.toml"
    cfg.write_text(f'[device]\nid = "bench"\nprofile = "{profile.name}"\n'
                   f'[store]\ndir = "store"\npublic_key = "{pub}"\n'
                   '[local_api]\nhost = "127.0.0.1"\nport = 0\n')
    proc, port = start_daemon(cfg)
    try:
        p = psutil.Process(proc.pid)
        rss_idle = p.memory_info().rss
        # several trials: on a shared machine one trial's p99 is mostly the neighbours
        trials = [bench_model(model, runs=args.http_runs, batch=args.batch,
                              http_url=f"http://127.0.0.1:{port}") for _ in range(args.trials)]
        p99s = [t["single_row"]["http_predict"]["p99_us"] for t in trials]
        http_res = trials[int(np.argsort(p99s)[len(p99s) // 2])]  # the median trial
        # HTTP single row vs raw run again, same run
        http_single = {k: v for k, v in http_res["single_row"].items()
                       if k in ("http_predict", "raw_session_run")}
        http_batch = {k: v for k, v in http_res["batch"].items()
                      if k in ("http_predict", "raw_session_run")}
        mem = p.memory_full_info()
        rss_after = mem.rss
        uss = getattr(mem, "uss", None)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_avg_1m": os.getloadavg()[0]},
        "versions": {"edge_runtime": __version__, "onnxruntime": ort.__version__,
                     "numpy": np.__version__},
        "profile": profile.name, "threads": profile.threads,
        "in_process": in_process,
        "tflite_in_process": tflite,
        "http": {"single_row": http_single, "batch": http_batch, "batch_size": args.batch,
                 "single_row_p99_us_per_trial": p99s,
                 "concurrency": 1, "keep_alive": True},
        "daemon_rss_mb": {"idle_after_start": round(rss_idle / 2**20, 1),
                          "after_http_run": round(rss_after / 2**20, 1),
                          "uss_after_http_run": round(uss / 2**20, 1) if uss else None},
        "store_install": {k: install[k] for k in ("p50_ms", "p99_ms", "rss_growth_mb", "duration_s")},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    s = in_process["single_row"]
    print(f"\nsingle row: raw session.run p50 {s['raw_session_run']['p50_us']} µs, "
          f"Model.predict p50 {s['in_process_predict']['p50_us']} µs "
          f"({in_process['ratio_single_p50']}×); HTTP p99 "
          f"{http_single['http_predict']['p99_us'] / 1000:.3f} ms; daemon RSS "
          f"{result['daemon_rss_mb']['after_http_run']} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
