"""Converter benchmark: INT8 vs FP32 speed and size, accuracy drop, TFLite agreement, conversion time.

Two models, trained here on ``load_digits`` (no download):

- ``cnn``: a digits CNN on 1×8×8 images (Conv 32 → Conv 64 → MaxPool → FC 256 → FC 10),
  trained with PyTorch when it is importable, exported with ``export_model``;
- ``mlp``: a 256-1024-1024-10 MLP on the digits up-sampled to 16×16 = 256 features
  (PyTorch when importable, else scikit-learn's MLPClassifier);
- ``tiny``: a 5-64-64-2 scikit-learn MLP on five breast-cancer features, where INT8 is not
  expected to pay off (the tool must measure, not assume).

For each: export (FP32 ONNX), quantize dynamic and static INT8, convert to TFLite
(float and INT8 weights), then ``check_bundles`` on the held-out 20 % with labels.
The targets of issue 3 are printed next to the measured numbers.

    python benchmarks/convert.py [--threads 1] [--runs 300] [--batch-runs 100] [--json out.json]

PyTorch is optional (``pip install torch==2.13.0`` CPU); it is not a CI dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from converters.check import CheckConfig, check_bundles
from converters.export import ExportConfig, export_model
from converters.quantize import QuantizeConfig, quantize_bundle
from edge_runtime.signing import generate_keypair


def _torch():
    try:
        import torch

        return torch
    except ImportError:
        return None


def digits_split(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


def upsample16(x: np.ndarray) -> np.ndarray:
    """8×8 → 16×16 (bilinear-ish: nearest then a 2×2 box blur), flattened to 256."""
    img = x.reshape(-1, 8, 8)
    up = np.kron(img, np.ones((1, 2, 2), dtype=np.float32))
    pad = np.pad(up, ((0, 0), (0, 1), (0, 1)), mode="edge")
    blur = (pad[:, :-1, :-1] + pad[:, 1:, :-1] + pad[:, :-1, 1:] + pad[:, 1:, 1:]) / 4
    return blur.reshape(-1, 256).astype(np.float32)


def train_torch(net, x, y, epochs: int, lr: float = 1e-3, batch: int = 64, seed: int = 0):
    torch = _torch()
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return net.eval()


def build_cnn():
    torch = _torch()
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, 10))


def build_mlp():
    torch = _torch()
    nn = torch.nn
    return nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 10))


def run_model(kind: str, work: Path, key: Path, args) -> dict:
    xtr, xte, ytr, yte = digits_split()
    torch = _torch()
    t0 = time.perf_counter()
    if kind == "cnn":
        if torch is None:
            return {"model": "cnn", "skipped": "PyTorch is not installed (pip install torch)"}
        xtr_, xte_ = xtr.reshape(-1, 1, 8, 8), xte.reshape(-1, 1, 8, 8)
        model = train_torch(build_cnn(), xtr_, ytr, epochs=args.epochs)
        trainer = f"torch {torch.__version__}"
        sample_train, sample_test = (xtr_, ytr), (xte_, yte)
        cfg = ExportConfig(key=key, name="digits-cnn")
    elif kind == "tiny":  # the 5-64-64-2 MLP where INT8 is not expected to pay off
        from sklearn.datasets import load_breast_cancer
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        xb, yb = load_breast_cancer(return_X_y=True)
        xb = xb[:, :5].astype(np.float32)
        xtr_, xte_, ytr, yte = train_test_split(xb, yb, test_size=0.2, random_state=0,
                                                stratify=yb)
        model = make_pipeline(StandardScaler(), MLPClassifier((64, 64), max_iter=500,
                                                              random_state=0)).fit(xtr_, ytr)
        import sklearn

        trainer = f"scikit-learn {sklearn.__version__}"
        sample_train, sample_test = (xtr_, ytr), (xte_, yte)
        cfg = ExportConfig(key=key, name="cancer-mlp-tiny",
                           feature_names=[f"f{i}" for i in range(5)])
    else:
        xtr_, xte_ = upsample16(xtr), upsample16(xte)
        names = [f"p{i}" for i in range(256)]
        if torch is not None:
            model = train_torch(build_mlp(), xtr_, ytr, epochs=args.epochs)
            trainer = f"torch {torch.__version__}"
        else:
            from sklearn.neural_network import MLPClassifier

            model = MLPClassifier((1024, 1024), max_iter=30, random_state=0).fit(xtr_, ytr)
            import sklearn

            trainer = f"scikit-learn {sklearn.__version__}"
        sample_train, sample_test = (xtr_, ytr), (xte_, yte)
        cfg = ExportConfig(key=key, name="digits-mlp-1024", feature_names=names)
    train_s = time.perf_counter() - t0

    times, bundles = {}, {}
    t = time.perf_counter()
    bundles["fp32"] = export_model(model, sample_train, work / f"{kind}-fp32", cfg)
    times["export"] = time.perf_counter() - t
    for mode in ("dynamic", "static"):
        t = time.perf_counter()
        bundles[mode] = quantize_bundle(bundles["fp32"], work / f"{kind}-{mode}", QuantizeConfig(
            mode=mode, sample=sample_train if mode == "static" else None, key=key,
            per_channel=mode == "static"))
        times[f"quantize_{mode}"] = time.perf_counter() - t
    tflite_error = None
    try:
        from converters.tflite import TFLiteConfig, onnx_to_tflite

        for name, int8 in (("tflite", False), ("tflite_int8", True)):
            t = time.perf_counter()
            bundles[name] = onnx_to_tflite(bundles["fp32"], work / f"{kind}-{name}",
                                           TFLiteConfig(key=key, int8_weights=int8))
            times[name] = time.perf_counter() - t
    except Exception as exc:  # report, don't hide: the numbers below say what ran
        tflite_error = f"{type(exc).__name__}: {exc}"

    report = check_bundles(list(bundles.values()), sample_test, CheckConfig(
        threads=args.threads, single_runs=args.runs, batch_runs=args.batch_runs, batch_size=64,
        pick=True, max_accuracy_drop=1.0, pick_by="batch"))
    by = dict(zip(bundles, report.variants))
    fp32 = by["fp32"]
    res = {"model": kind, "trainer": trainer, "train_seconds": round(train_s, 2),
           "test_rows": len(yte), "fp32_accuracy": fp32.accuracy,
           "conversion_seconds": {k: round(v, 3) for k, v in times.items()},
           "variants": {}, "tflite_error": tflite_error, "pick": report.pick.chosen and
           Path(report.pick.chosen).name, "table": report.to_table()}
    for name, v in by.items():
        res["variants"][name] = {
            "size_bytes": v.size_bytes, "size_ratio_vs_fp32": round(fp32.size_bytes / v.size_bytes, 3),
            "accuracy": v.accuracy, "accuracy_drop_points": v.accuracy_drop,
            "label_agreement_vs_fp32": v.label_agreement, "max_abs_diff": v.max_abs_diff,
            "single_p50_ms": v.single and v.single.p50_ms, "single_p99_ms": v.single and v.single.p99_ms,
            "batch64_p50_ms": v.batch and v.batch.p50_ms, "batch64_p99_ms": v.batch and v.batch.p99_ms,
            "speedup_batch64_vs_fp32": v.batch and round(fp32.batch.p50_ms / v.batch.p50_ms, 3),
            "note": v.note}
    return res


def targets(res: dict) -> list[str]:
    """The issue's targets, checked against what was measured."""
    out = []
    v = res.get("variants", {})
    for mode in ("dynamic", "static"):
        if mode not in v:
            continue
        q = v[mode]
        if res["model"] == "tiny":  # no target: shows where INT8 does not pay off
            out.append(f"tiny INT8 {mode}: speed ×{q['speedup_batch64_vs_fp32']}, size "
                       f"×{q['size_ratio_vs_fp32']}, accuracy drop {q['accuracy_drop_points']} pt "
                       "(no target; measured, not assumed)")
            continue
        out.append(f"{res['model']} INT8 {mode}: speed ×{q['speedup_batch64_vs_fp32']} "
                   f"(target ≥ 2: {'met' if q['speedup_batch64_vs_fp32'] >= 2 else 'NOT met'}), "
                   f"size ×{q['size_ratio_vs_fp32']} (target ≥ 3.5: "
                   f"{'met' if q['size_ratio_vs_fp32'] >= 3.5 else 'NOT met'}), accuracy drop "
                   f"{q['accuracy_drop_points']} pt (target ≤ 1: "
                   f"{'met' if q['accuracy_drop_points'] <= 1 else 'NOT met'})")
    for name in ("tflite", "tflite_int8"):
        if name in v and v[name]["label_agreement_vs_fp32"] is not None:
            a = v[name]["label_agreement_vs_fp32"] * 100
            out.append(f"{res['model']} {name}: label agreement with ONNX {a:.2f}% "
                       f"(target ≥ 99.5: {'met' if a >= 99.5 else 'NOT met'})")
    slow = {k: s for k, s in res.get("conversion_seconds", {}).items() if s >= 30}
    total = sum(res.get("conversion_seconds", {}).values())
    out.append(f"{res['model']} conversion: {total:.2f} s for all variants "
               f"(target < 30 s each: {'met' if not slow else 'NOT met: ' + str(slow)})")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="cnn,mlp,tiny")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=300, help="single-row timed runs")
    p.add_argument("--batch-runs", type=int, default=100, help="batch-64 timed runs")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    import onnxruntime

    torch = _torch()
    from converters.check import cpu_model

    meta = {"machine": platform.platform(), "processor": cpu_model(), "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__ if torch else None, "threads": args.threads,
            "command": "python benchmarks/convert.py " + " ".join(argv or sys.argv[1:])}
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as d:
        work = Path(d)
        key, _ = generate_keypair(work / "bench.key")
        for kind in args.models.split(","):
            res = run_model(kind.strip(), work, key, args)
            results.append(res)
            print(f"\n== {kind} ==")
            if "skipped" in res:
                print("skipped:", res["skipped"])
                continue
            print(res["table"])
            print("conversion seconds:", res["conversion_seconds"])
            if res["tflite_error"]:
                print("tflite:", res["tflite_error"])
            for line in targets(res):
                print("  " + line)
    print("\n" + json.dumps(meta))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2,
                                              default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
