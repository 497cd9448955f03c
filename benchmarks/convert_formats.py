"""TFLite / Core ML converter benchmark: conversion time, parity with ONNX, size, latency.

Models, trained here on scikit-learn's data (no download, no PyTorch needed):

- ``cnn``: digits CNN on 1×8×8 images, Conv(32)→Relu→Conv(64)→Relu→MaxPool→Flatten(1024)
  →Gemm(256)→Relu→Gemm(10)→Softmax, built with ``onnx.helper``. The conv filters are
  fixed random features; the dense head (1024-256-10) is trained with scikit-learn's
  MLPClassifier on those features, so the network is a real digits classifier;
- ``mlp``: a 256-1024-1024-10 MLPClassifier on the digits up-sampled to 16×16;
- ``logreg``: StandardScaler + LogisticRegression on breast cancer (30 features).

For each: ONNX bundle → TFLite (float), TFLite (INT8 weights), Core ML; parity of the
TFLite variants with ONNX Runtime on the held-out 20 % (label agreement, max |Δp|,
accuracy), file sizes, and p50/p99 latency of one row and a batch of 64 through
``edge_runtime.Model`` (same post-processing as on devices).

    python benchmarks/convert_formats.py [--models cnn,mlp,logreg] [--threads 1] [--runs 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from converters.coreml import CoreMLConfig, onnx_to_coreml
from converters.tflite import TFLiteConfig, onnx_to_tflite
from edge_runtime.bundle import write_bundle
from edge_runtime.engines import EngineOptions
from edge_runtime.model import Model
from edge_runtime.signing import generate_keypair


def _split(x, y, seed=0):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


def _bundle(out: Path, onx, names, x_golden, task, classes, key) -> Path:
    import onnxruntime as ort

    sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    probs = sess.run(["probabilities"], {onx.graph.input[0].name: x_golden})[0]
    golden = {"rows": [dict(zip(names, map(float, r))) for r in x_golden], "atol": 1e-4}
    if task == "binary_classification":
        golden["expected_probability"] = probs[:, 1].astype(float).tolist()
        post = {"classes": classes, "positive_class": classes[1]}
    else:
        golden["expected_probability"] = probs.max(axis=1).astype(float).tolist()
        post = {"classes": classes}
    outs = [{"name": o.name, "role": "probabilities" if o.name == "probabilities" else "label"}
            for o in onx.graph.output]
    write_bundle(out, {"name": out.name, "version": "1.0.0", "format": "onnx",
                       "model_file": "model.onnx", "task": task,
                       "inputs": {"kind": "features", "tensor": onx.graph.input[0].name,
                                  "features": [{"name": n} for n in names]},
                       "outputs": outs, "postprocess": post, "golden": [golden],
                       "provenance": {"source": "benchmarks/convert_formats.py"}},
                 {"model.onnx": onx.SerializeToString()}, key=key)
    return out


def cnn_model(x_tr, y_tr, seed=0):
    """Digits CNN as ONNX; random conv features, dense head trained by scikit-learn."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.6, (32, 1, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.1, (64, 32, 3, 3)).astype(np.float32)
    b1, b2 = np.zeros(32, np.float32), np.zeros(64, np.float32)
    conv_nodes = [
        helper.make_node("Reshape", ["X", "img_shape"], ["img"]),
        helper.make_node("Conv", ["img", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["flat"], axis=1),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in
             (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2),
              ("img_shape", np.array([-1, 1, 8, 8], np.int64)))]
    inp = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 64])

    def model(nodes, out, extra=()):
        g = helper.make_graph(nodes, "digits_cnn", [inp],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [None, None])],
                              inits + list(extra))
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m

    feats_sess = ort.InferenceSession(model(conv_nodes, "flat").SerializeToString(),
                                      providers=["CPUExecutionProvider"])
    feats = feats_sess.run(None, {"X": x_tr})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head = MLPClassifier((256,), max_iter=60, random_state=seed).fit(feats, y_tr)
    (wa, wb), (ba, bb) = head.coefs_, head.intercepts_
    dense = [helper.make_node("Gemm", ["flat", "fc1_w", "fc1_b"], ["h"]),
             helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("Gemm", ["hr", "fc2_w", "fc2_b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    extra = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in
             (("fc1_w", wa), ("fc1_b", ba), ("fc2_w", wb), ("fc2_b", bb))]
    m = model(conv_nodes + dense, "probabilities", extra)
    onnx.checker.check_model(m)
    return m


def build(kind: str, work: Path, key):
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer, load_digits

    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        d = load_breast_cancer()
        x, y = d.data.astype(np.float32), d.target
        xtr, xte, ytr, yte = _split(x, y)
        t = time.perf_counter()
        m = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(xtr, ytr)
        train_s = time.perf_counter() - t
        onx = to_onnx(m, xtr[:1], options={id(m): {"zipmap": False}}, target_opset=17)
        names = [n.replace(" ", "_") for n in d.feature_names]
        return (_bundle(work / kind, onx, names, xte[:16], "binary_classification", [0, 1], key),
                xte, yte, train_s)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    if kind == "mlp":
        from scipy.ndimage import zoom
        from sklearn.neural_network import MLPClassifier

        x = np.stack([zoom(img.reshape(8, 8), 2, order=1).reshape(-1) for img in x]).astype(
            np.float32)
        xtr, xte, ytr, yte = _split(x, y)
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = MLPClassifier((1024, 1024), max_iter=25, random_state=0).fit(xtr, ytr)
        train_s = time.perf_counter() - t
        onx = to_onnx(m, xtr[:1], options={id(m): {"zipmap": False}}, target_opset=17)
        names = [f"px{i}" for i in range(256)]
    elif kind == "cnn":
        xtr, xte, ytr, yte = _split(x, y)
        t = time.perf_counter()
        onx = cnn_model(xtr, ytr)
        train_s = time.perf_counter() - t
        names = [f"px{i}" for i in range(64)]
    else:
        raise SystemExit(f"unknown model {kind!r}")
    return (_bundle(work / kind, onx, names, xte[:16], "multiclass_classification",
                    list(range(10)), key), xte, yte, train_s)


def latency(model: Model, x: np.ndarray, runs: int, batch: int) -> dict[str, float]:
    xb = x[:batch] if len(x) >= batch else np.resize(x, (batch, x.shape[1]))
    for _ in range(5):
        model.score_array(xb)
    t = np.empty(runs)
    for i in range(runs):
        row = xb[i % len(xb): i % len(xb) + 1] if batch == 1 else xb
        t0 = time.perf_counter()
        model.score_array(row)
        t[i] = time.perf_counter() - t0
    return {"p50_ms": round(float(np.percentile(t, 50) * 1e3), 4),
            "p99_ms": round(float(np.percentile(t, 99) * 1e3), 4)}


def run(kind: str, work: Path, key, args) -> dict:
    src, xte, yte, train_s = build(kind, work, key)
    variants = {"onnx": src}
    conv_s = {}
    for name, cfg in (("tflite", TFLiteConfig(key=key)),
                      ("tflite_int8", TFLiteConfig(key=key, int8_weights=True, atol=args.int8_atol))):
        t = time.perf_counter()
        variants[name] = onnx_to_tflite(src, work / f"{kind}-{name}", cfg)
        conv_s[name] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    cm = onnx_to_coreml(src, work / f"{kind}-coreml", CoreMLConfig(key=key))
    conv_s["coreml"] = round(time.perf_counter() - t, 3)
    opts = EngineOptions(intra_op_threads=args.threads, inter_op_threads=1, warmup_runs=0)
    ref = Model.load(src, opts)
    rs = ref.score_array(xte)
    out = {"model": kind, "train_seconds": round(train_s, 2), "test_rows": len(yte),
           "conversion_seconds": conv_s, "variants": {}}
    for name, path in variants.items():
        m = ref if name == "onnx" else Model.load(path, opts)
        s = m.score_array(xte)
        size = sum(e.size for e in m.manifest.files.values())
        out["variants"][name] = {
            "size_bytes": size,
            "accuracy": round(float(np.mean(s.label_index == yte)), 4),
            "label_agreement_vs_onnx": round(float(np.mean(s.label_index == rs.label_index)), 4),
            "max_abs_diff_prob": float(np.abs(s.probabilities - rs.probabilities).max()),
            "single": latency(m, xte, args.runs, 1),
            "batch64": latency(m, xte, args.batch_runs, 64)}
        if name != "onnx":
            out["variants"][name]["tflite_ops"] = m.manifest.provenance["tflite_ops"]
    cmm = __import__("edge_runtime.bundle", fromlist=["read_bundle"]).read_bundle(cm).manifest
    out["coreml"] = {"size_bytes": sum(e.size for e in cmm.files.values()),
                     "ops": cmm.provenance["coreml_ops"],
                     "mil_value_check": cmm.provenance["mil_value_check"],
                     "numerical_check": cmm.provenance["numerical_check"]["status"]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="cnn,mlp,logreg")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=300, help="single-row timed runs")
    p.add_argument("--batch-runs", type=int, default=100, help="batch-64 timed runs")
    p.add_argument("--int8-atol", type=float, default=0.5,
                   help="parity gate for the INT8-weights variant (probabilities)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    import ai_edge_litert
    import onnxruntime

    from converters.coreml import import_coremltools

    coremltools = import_coremltools()

    meta = {"machine": platform.platform(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "ai_edge_litert": getattr(ai_edge_litert, "__version__", None),
            "coremltools": coremltools.__version__, "threads": args.threads,
            "command": "python benchmarks/convert_formats.py " + " ".join(argv or sys.argv[1:])}
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as d:
        work = Path(d)
        key, _ = generate_keypair(work / "bench.key")
        for kind in args.models.split(","):
            res = run(kind.strip(), work, key, args)
            results.append(res)
            print(f"\n== {kind} (trained in {res['train_seconds']} s, {res['test_rows']} test rows)")
            print(f"conversion seconds: {res['conversion_seconds']}")
            print(f"{'variant':<12} {'size KB':>9} {'acc':>7} {'agree':>7} {'max|Δp|':>9} "
                  f"{'1-row p50/p99 ms':>18} {'b64 p50/p99 ms':>16}")
            for name, v in res["variants"].items():
                print(f"{name:<12} {v['size_bytes'] / 1024:>9.1f} {v['accuracy']:>7.4f} "
                      f"{v['label_agreement_vs_onnx']:>7.4f} {v['max_abs_diff_prob']:>9.2e} "
                      f"{v['single']['p50_ms']:>8.3f}/{v['single']['p99_ms']:<9.3f} "
                      f"{v['batch64']['p50_ms']:>7.3f}/{v['batch64']['p99_ms']:<8.3f}")
            print(f"coreml: {res['coreml']}")
    print("\n" + json.dumps(meta))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
