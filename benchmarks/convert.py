"""Converter benchmark: INT8 vs FP32 speed and size, accuracy drop, TFLite agreement, conversion time.

Two models, trained here on ``load_digits`` (no download):

- ``cnn``: a digits CNN on 1×8×8 images (Conv 32 → Conv 64 → MaxPool → FC 256 → FC 10),
  trained with PyTorch when it is importable (exported with ``export_model`` from the module),
  else with numpy (im2col + Adam) and built as an ONNX graph with ``onnx.helper`` (exported
  with ``export_model`` from the ``ModelProto``);
- ``mlp``: a 256-1024-1024-10 MLP on the digits up-sampled to 16×16 = 256 features
  (PyTorch when importable, else scikit-learn's MLPClassifier);
- ``tiny``: a 5-64-64-2 scikit-learn MLP on five breast-cancer features, where INT8 is not
  expected to pay off (the tool must measure, not assume).

For each: export (FP32 ONNX), quantize dynamic and static INT8, convert to TFLite
(float and INT8 weights), then ``check_bundles`` on the held-out 20 % with labels.
The targets of issue 3 are printed next to the measured numbers.

    python benchmarks/convert.py [--threads 1] [--runs 300] [--batch-runs 100] [--repeat 5]
                                 [--json out.json] [--models cnn,mlp,tiny,heldout]

``heldout`` (issue 12): held-out max |Δ| per model family (RandomForest / ExtraTrees with
NaN, HistGradientBoosting with NaN, GradientBoostingRegressor) and the churn pipeline (text
categories by column name): the number the exporter recorded and an independent one. Every
variant of the other models also gets its recorded held-out max |Δ|.

PyTorch is optional (``pip install torch==2.13.0`` CPU); it is not a CI dependency.
``--no-torch`` uses the numpy/scikit-learn trainers even when torch is installed.
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
NO_TORCH = "--no-torch" in sys.argv
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from converters.check import CheckConfig, check_bundles
from converters.export import ExportConfig, export_model
from converters.quantize import QuantizeConfig, quantize_bundle
from edge_runtime.errors import EdgeError
from edge_runtime.signing import generate_keypair


def _torch():
    if NO_TORCH:
        return None
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


def _cols(a):
    """NHWC (N,8,8,C) → (N*64, 9*C) patches for a 3×3 conv with padding 1 (order kh, kw, C)."""
    n, h, w, c = a.shape
    p = np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = np.stack([p[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=3)
    return cols.reshape(n * h * w, 9 * c)

def _uncols(d, shape):
    n, h, w, c = shape
    d = d.reshape(n, h, w, 9, c)
    out = np.zeros((n, h + 2, w + 2, c), d.dtype)
    k = 0
    for i in range(3):
        for j in range(3):
            out[:, i:i + h, j:j + w, :] += d[:, :, :, k, :]
            k += 1
    return out[:, 1:-1, 1:-1, :]

def train_cnn_numpy(x, y, epochs=15, lr=1e-3, batch=64, seed=0, c1=32, c2=64, hid=256):
    """The same CNN as build_cnn(), trained with plain numpy (im2col + Adam): no torch needed."""
    rng = np.random.default_rng(seed)
    he = lambda fan_in, shape: (rng.normal(size=shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    P = {"w1": he(9, (9, c1)), "b1": np.zeros(c1, np.float32),
         "w2": he(9 * c1, (9 * c1, c2)), "b2": np.zeros(c2, np.float32),
         "w3": he(16 * c2, (16 * c2, hid)), "b3": np.zeros(hid, np.float32),
         "w4": he(hid, (hid, 10)), "b4": np.zeros(10, np.float32)}
    m = {k: np.zeros_like(v) for k, v in P.items()}
    v = {k: np.zeros_like(v) for k, v in P.items()}
    t = 0
    X = x.reshape(-1, 8, 8, 1).astype(np.float32)
    for _ in range(epochs):
        perm = rng.permutation(len(X))
        for s in range(0, len(X), batch):
            idx = perm[s:s + batch]
            xb, yb = X[idx], y[idx]
            n = len(xb)
            cols1 = _cols(xb)
            z1 = cols1 @ P["w1"] + P["b1"]
            a1 = np.maximum(z1, 0).reshape(n, 8, 8, c1)
            cols2 = _cols(a1)
            z2 = cols2 @ P["w2"] + P["b2"]
            a2 = np.maximum(z2, 0).reshape(n, 8, 8, c2)
            blocks = a2.reshape(n, 4, 2, 4, 2, c2)
            pool = blocks.max(axis=(2, 4))
            mask = blocks == pool[:, :, None, :, None, :]
            f = pool.transpose(0, 3, 1, 2).reshape(n, 16 * c2)
            z3 = f @ P["w3"] + P["b3"]
            h = np.maximum(z3, 0)
            z = h @ P["w4"] + P["b4"]
            z -= z.max(axis=1, keepdims=True)
            pr = np.exp(z)
            pr /= pr.sum(axis=1, keepdims=True)
            dz = pr
            dz[np.arange(n), yb] -= 1
            dz /= n
            g = {"w4": h.T @ dz, "b4": dz.sum(0)}
            dh = dz @ P["w4"].T * (z3 > 0)
            g["w3"], g["b3"] = f.T @ dh, dh.sum(0)
            df = (dh @ P["w3"].T).reshape(n, c2, 4, 4).transpose(0, 2, 3, 1)
            da2 = (mask * df[:, :, None, :, None, :]).reshape(n, 8, 8, c2)
            dz2 = da2.reshape(-1, c2) * (z2 > 0)
            g["w2"], g["b2"] = cols2.T @ dz2, dz2.sum(0)
            da1 = _uncols(dz2 @ P["w2"].T, (n, 8, 8, c1))
            dz1 = da1.reshape(-1, c1) * (z1 > 0)
            g["w1"], g["b1"] = cols1.T @ dz1, dz1.sum(0)
            t += 1
            for k in P:
                m[k] = 0.9 * m[k] + 0.1 * g[k]
                v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
                P[k] -= (lr * (m[k] / (1 - 0.9 ** t)) / (np.sqrt(v[k] / (1 - 0.999 ** t)) + 1e-8)).astype(np.float32)
    return P

def cnn_onnx(P):
    """The numpy-trained weights as an ONNX graph built with onnx.helper."""
    from onnx import TensorProto, helper, numpy_helper
    c1, c2 = P["w1"].shape[1], P["w2"].shape[1]
    W1 = P["w1"].reshape(3, 3, 1, c1).transpose(3, 2, 0, 1)
    W2 = P["w2"].reshape(3, 3, c1, c2).transpose(3, 2, 0, 1)
    inits = [numpy_helper.from_array(np.ascontiguousarray(a, np.float32), n) for n, a in
             [("w1", W1), ("b1", P["b1"]), ("w2", W2), ("b2", P["b2"]), ("w3", P["w3"]),
              ("b3", P["b3"]), ("w4", P["w4"]), ("b4", P["b4"])]]
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["z3"]),
             helper.make_node("Relu", ["z3"], ["h"]),
             helper.make_node("Gemm", ["h", "w4", "b4"], ["logits"])]
    g = helper.make_graph(nodes, "digits_cnn",
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 1, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


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
        xtr_, xte_ = xtr.reshape(-1, 1, 8, 8), xte.reshape(-1, 1, 8, 8)
        if torch is not None:
            model = train_torch(build_cnn(), xtr_, ytr, epochs=args.epochs)
            trainer = f"torch {torch.__version__}"
            cfg = ExportConfig(key=key, name="digits-cnn")
        else:  # numpy-trained, built with onnx.helper, exported as an ONNX file
            model = cnn_onnx(train_cnn_numpy(xtr, ytr, epochs=args.epochs))
            trainer = f"numpy {np.__version__} (onnx.helper graph)"
            cfg = ExportConfig(key=key, name="digits-cnn", task="multiclass",
                               output_role="logits")
        sample_train, sample_test = (xtr_, ytr), (xte_, yte)
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
            per_channel=mode == "static" and kind == "cnn"))
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

    # The machine may be shared: repeat the whole check and keep per-variant medians, plus the
    # range of the batch-64 speed-up over the repeats, so one noisy pass cannot decide a number.
    reports = []
    for _ in range(args.repeat):
        reports.append(check_bundles(list(bundles.values()), sample_test, CheckConfig(
            threads=args.threads, single_runs=args.runs, batch_runs=args.batch_runs,
            batch_size=64, pick=True, max_accuracy_drop=1.0, pick_by="batch")))
    report = reports[-1]
    by = dict(zip(bundles, report.variants))
    fp32 = by["fp32"]
    res = {"model": kind, "trainer": trainer, "train_seconds": round(train_s, 2),
           "test_rows": len(yte), "fp32_accuracy": fp32.accuracy, "repeats": args.repeat,
           "conversion_seconds": {k: round(v, 3) for k, v in times.items()},
           "variants": {}, "tflite_error": tflite_error, "pick": report.pick.chosen and
           Path(report.pick.chosen).name, "picks": [r.pick.chosen and Path(r.pick.chosen).name
                                                    for r in reports],
           "table": report.to_table()}

    def med(i: int, attr: str, q: str) -> float | None:
        vals = [getattr(getattr(r.variants[i], attr), q) for r in reports
                if getattr(r.variants[i], attr) is not None]
        return round(float(np.median(vals)), 4) if vals else None

    for i, (name, v) in enumerate(by.items()):
        ratios = [r.variants[0].batch.p50_ms / r.variants[i].batch.p50_ms for r in reports
                  if r.variants[i].batch is not None]
        b50 = med(i, "batch", "p50_ms")
        res["variants"][name] = {
            "size_bytes": v.size_bytes, "size_ratio_vs_fp32": round(fp32.size_bytes / v.size_bytes, 3),
            "accuracy": v.accuracy, "accuracy_drop_points": v.accuracy_drop,
            "label_agreement_vs_fp32": v.label_agreement, "max_abs_diff": v.max_abs_diff,
            "single_p50_ms": med(i, "single", "p50_ms"), "single_p99_ms": med(i, "single", "p99_ms"),
            "batch64_p50_ms": b50, "batch64_p99_ms": med(i, "batch", "p99_ms"),
            "speedup_batch64_vs_fp32": b50 and round(med(0, "batch", "p50_ms") / b50, 3),
            "speedup_range": ratios and [round(min(ratios), 3), round(max(ratios), 3)],
            "heldout_max_abs_diff": recorded_heldout(bundles[name]),
            "note": v.note}
    return res


def recorded_heldout(bundle) -> float | None:
    """Held-out max |Δ| the converter measured on this bundle vs its source (provenance)."""
    from edge_runtime.bundle import read_bundle

    par = read_bundle(bundle).manifest.provenance.get("parity") or {}
    if isinstance(par.get("all"), dict):  # format converters: golden + held-out-like rows
        return par["all"].get("max_abs_diff")
    return par.get("heldout_max_abs_diff", par.get("max_abs_diff"))


def read_bundle_provenance(bundle) -> dict:
    from edge_runtime.bundle import read_bundle

    return read_bundle(bundle).manifest.provenance


def heldout_families(work: Path, key) -> list[dict]:
    """Held-out max |Δ| per model family and the churn pipeline: the exporter's recorded number
    and an independent one (2,000 held-out-like rows, another seed, vs the source model)."""
    import warnings

    from sklearn.datasets import load_breast_cancer, load_diabetes
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        GradientBoostingRegressor,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )

    from converters import heldout
    from converters.sample import finalize, load_sample
    from edge_runtime.model import Model

    sys.path.insert(0, str(ROOT / "tests" / "converters"))
    from churn import FEATURES, churn_frame, churn_pipeline

    bc = load_breast_cancer(as_frame=True)
    cancer = bc.data.iloc[:, :12]
    rng = np.random.default_rng(0)
    nan = cancer.mask(rng.random(cancer.shape) < 0.1)
    diab = load_diabetes(as_frame=True)
    cases = [
        ("RandomForest", RandomForestClassifier(50, random_state=0), cancer, bc.target, None),
        ("RandomForest + NaN", RandomForestClassifier(50, random_state=0), nan, bc.target, None),
        ("ExtraTrees + NaN", ExtraTreesClassifier(50, random_state=0), nan, bc.target, None),
        ("HistGradientBoosting + NaN", HistGradientBoostingClassifier(max_iter=50), nan,
         bc.target, None),
        ("GradientBoostingRegressor", GradientBoostingRegressor(random_state=0), diab.data,
         diab.target, None),
    ]
    churn = churn_frame()
    for head in ("gboost", "lightgbm", "xgboost"):
        y = (churn["churn"] == "yes").astype(int) if head == "xgboost" else churn["churn"]
        cases.append((f"churn pipeline ({head})", churn_pipeline(head), churn[FEATURES], y,
                      "fitted"))
    out = []
    for name, model, x, y, fitted in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fitted is None:
                model.fit(x, y)
        row = {"model": name}
        try:
            b = export_model(model, x, work / f"h-{len(out)}", ExportConfig(key=key))
        except EdgeError as exc:  # a refusal is a result: print it
            row["refused"] = f"{type(exc).__name__}: {str(exc)[:160]}"
            out.append(row)
            continue
        row["recorded_heldout_max_abs_diff"] = recorded_heldout(b)
        if read_bundle_provenance(b).get("scalers"):
            row["model"] += " [float64 scalers]"
        smp = finalize(load_sample(x, feature_names=list(x.columns)))
        unseen = {n: True for n in smp.names if smp.dtypes.get(n) == "string"}
        xh = heldout.rows(heldout.columns_of(smp.x, smp.names, smp.dtypes, unseen), 2000,
                          seed=42)
        m = Model.load(b, warmup=False)
        s = m.score_array(m.codec.cast(xh))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fh = smp.frame(xh)
            if s.probabilities is not None:
                d = np.abs(s.probabilities - model.predict_proba(fh)).max()
                labels = np.array(m.classes, dtype=object)[s.label_index]
                row["label_disagreements"] = int((labels != np.asarray(model.predict(fh),
                                                                       dtype=object)).sum())
            else:
                want = model.predict(fh)
                d = (np.abs(s.value - want) / np.maximum(1, np.abs(want))).max()
        row["independent_heldout_max_abs_diff"] = float(f"{d:.3g}")
        row["rows"] = len(xh)
        out.append(row)
        m.close()
    return out


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
    p.add_argument("--models", default="cnn,mlp,tiny,heldout")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=300, help="single-row timed runs")
    p.add_argument("--batch-runs", type=int, default=100, help="batch-64 timed runs")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--repeat", type=int, default=5,
                   help="repeat the check; latencies are medians over the repeats")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--no-torch", action="store_true",
                   help="train without PyTorch even when installed (numpy CNN, scikit-learn MLP)")
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
        if "heldout" in args.models.split(","):
            fam = heldout_families(work, key)
            results.append({"model": "heldout", "families": fam})
            print("\n== held-out max |Δ| per family (probabilities; values relative) ==")
            for r in fam:
                print(f"  {r['model']:32s} " + (f"refused: {r['refused']}" if "refused" in r
                      else f"recorded {r['recorded_heldout_max_abs_diff']}  independent "
                      f"{r['independent_heldout_max_abs_diff']} on {r['rows']} rows  label "
                      f"disagreements {r.get('label_disagreements', '-')}"))
        for kind in [k for k in args.models.split(",") if k.strip() != "heldout"]:
            res = run_model(kind.strip(), work, key, args)
            results.append(res)
            print(f"\n== {kind} ==")
            if "skipped" in res:
                print("skipped:", res["skipped"])
                continue
            print(res["table"])
            print(f"medians over {res['repeats']} repeats (ms): variant  1-row p50/p99  "
                  "batch-64 p50/p99  speed × (range)")
            for name, v in res["variants"].items():
                print(f"  {name:12s} {v['single_p50_ms']}/{v['single_p99_ms']}  "
                      f"{v['batch64_p50_ms']}/{v['batch64_p99_ms']}  "
                      f"×{v['speedup_batch64_vs_fp32']} {v['speedup_range']}  "
                      f"held-out max |Δ| {v['heldout_max_abs_diff']}")
            print("picks over the repeats:", res["picks"])
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
