"""Latency measurement of a bundle, side by side with raw ONNX Runtime.

Used by ``edge-runtime bench`` and ``benchmarks/edge_latency.py``. Paths
measured on the same model in the same process, interleaved in blocks so a
noisy neighbour hurts every path alike:

- ``raw``: ``onnxruntime.InferenceSession.run`` on a pre-encoded array (ONNX), or a plain
  LiteRT interpreter's set_tensor/invoke/get_tensor (TFLite);
- ``in_process``: ``Model.predict(rows)`` — named-feature mapping, validation,
  engine, post-processing to result dicts;
- ``http``: ``POST /predict`` to a local API on 127.0.0.1 over one keep-alive
  connection (concurrency 1).
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_runtime.model import Model

Call = Callable[[], Any]


def summarize(seconds: np.ndarray) -> dict[str, float]:
    us = np.asarray(seconds) * 1e6
    return {"n": int(us.size), "p50_us": round(float(np.percentile(us, 50)), 2),
            "p90_us": round(float(np.percentile(us, 90)), 2),
            "p99_us": round(float(np.percentile(us, 99)), 2),
            "mean_us": round(float(us.mean()), 2)}


def interleaved(calls: dict[str, Call], runs: int, *, warmup: int = 200,
                blocks: int = 20) -> dict[str, dict[str, float]]:
    """Time each call ``runs`` times, alternating between calls every ``runs/blocks``."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    per_block = max(1, runs // blocks)
    samples: dict[str, list[float]] = {k: [] for k in calls}
    clock = time.perf_counter
    for _ in range(blocks):
        for name, fn in calls.items():
            out = samples[name]
            for _ in range(per_block):
                t = clock()
                fn()
                out.append(clock() - t)
    return {k: summarize(np.array(v)) for k, v in samples.items()}


def sample_rows(model: Model, n: int) -> list[dict[str, Any]]:
    """Valid rows for ``model``: its golden rows, repeated to ``n``."""
    golden = [r for g in model.manifest.golden if g.rows for r in g.rows]
    if not golden:
        mid = [0.0 if f.min is None else f.min for f in model.manifest.inputs.features]
        golden = [dict(zip(model.codec.names, mid))]
    return [dict(golden[i % len(golden)]) for i in range(n)]


def raw_session(model: Model):
    """A plain ``InferenceSession`` on the same file with the same thread settings."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = model.engine.session.get_session_options().intra_op_num_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model.bundle.model_path), so, providers=["CPUExecutionProvider"])


def raw_tflite_call(model: Model, x) -> Call:
    """A plain LiteRT interpreter sized for ``x``: set_tensor, invoke, get_tensor(s)."""
    from edge_runtime.engines.tflite import load_interpreter_class

    threads = getattr(model.engine, "threads", 1)
    interp = load_interpreter_class()(model_path=str(model.bundle.model_path), num_threads=threads)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], list(x.shape))
    interp.allocate_tensors()
    idx = inp["index"]
    outs = [d["index"] for d in interp.get_output_details()]

    def call():
        interp.set_tensor(idx, x)
        interp.invoke()
        return [interp.get_tensor(o) for o in outs]

    return call


def sample_tensors(model: Model, n: int) -> dict[str, np.ndarray]:
    """Valid raw-tensor inputs for ``model``: its golden tensors, tiled to ``n`` along the batch."""
    specs = model.contract.tensors
    golden = next((g.tensors for g in model.manifest.golden if g.tensors), None)
    out = {}
    for spec in specs:
        if golden and spec.name in golden:
            arr = np.asarray(golden[spec.name], dtype=spec.dtype)
        else:  # no golden: zeros of the declared shape (free dimensions as 1)
            arr = np.zeros([1] + [d or 1 for d in spec.shape[1:]], dtype=spec.dtype)
        reps = -(-n // len(arr))
        out[spec.name] = np.ascontiguousarray(np.concatenate([arr] * reps)[:n])
    return out


def bench_model(model: Model, *, runs: int = 5000, batch: int = 64,
                http_url: str | None = None) -> dict[str, Any]:
    """Single-row and batch latency of the in-process path (and raw ORT / HTTP when given).

    Named-feature bundles time ``Model.predict(rows)``; raw-tensor bundles (e.g. an NCHW
    image model) time ``Model.run_tensors``.
    """
    batch = max(1, batch)
    single: dict[str, Call] = {}
    batched: dict[str, Call] = {}
    if model.codec is not None:
        rows = sample_rows(model, batch)
        row = rows[0]
        x1 = {model._feed_name: model.codec.encode([row])}
        xb = {model._feed_name: model.codec.encode(rows[:batch])}
        single["in_process_predict"] = lambda: model.predict(row)
        batched["in_process_predict"] = lambda: model.predict(rows[:batch])
        body_one, body_many = {"rows": [row]}, {"rows": rows[:batch]}
        width: Any = model.codec.n
    else:
        xb = sample_tensors(model, batch)
        x1 = {k: v[:1] for k, v in xb.items()}
        single["in_process_predict"] = lambda: model.run_tensors(x1)
        batched["in_process_predict"] = lambda: model.run_tensors(xb)
        body_one = {"tensors": {k: v.tolist() for k, v in x1.items()}}
        body_many = {"tensors": {k: v.tolist() for k, v in xb.items()}}
        width = {s.name: s.shape for s in model.contract.tensors}
    if model.manifest.format == "onnx":
        sess = raw_session(model)
        single["raw_session_run"] = lambda: sess.run(None, x1)
        batched["raw_session_run"] = lambda: sess.run(None, xb)
    elif model.manifest.format == "tflite" and len(x1) == 1:
        single["raw_interpreter_invoke"] = raw_tflite_call(model, next(iter(x1.values())))
        batched["raw_interpreter_invoke"] = raw_tflite_call(model, next(iter(xb.values())))
    # raw first in each table: the reference the ratio is taken against
    single = dict(sorted(single.items(), key=lambda kv: not kv[0].startswith("raw")))
    batched = dict(sorted(batched.items(), key=lambda kv: not kv[0].startswith("raw")))
    http_runs = runs
    conn = None
    if http_url:
        host, port = http_url.replace("http://", "").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        one = json.dumps(body_one)
        many = json.dumps(body_many)
        hdr = {"Content-Type": "application/json"}

        def post(body: str) -> None:
            conn.request("POST", "/predict", body, hdr)
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")

        single["http_predict"] = lambda: post(one)
        batched["http_predict"] = lambda: post(many)
    out: dict[str, Any] = {"model": {"name": model.name, "version": model.version,
                                     "sha256": model.digest, "format": model.manifest.format,
                                     "features": width},
                           "runs": runs, "batch_size": batch}
    fast = {k: v for k, v in single.items() if k != "http_predict"}
    out["single_row"] = interleaved(fast, runs)
    out["batch"] = interleaved({k: v for k, v in batched.items() if k != "http_predict"},
                               max(200, runs // 10))
    if conn is not None:
        h1 = interleaved({"http_predict": single["http_predict"]}, http_runs, warmup=100)
        hb = interleaved({"http_predict": batched["http_predict"]}, max(200, http_runs // 4),
                         warmup=50)
        out["single_row"].update(h1)
        out["batch"].update(hb)
        conn.close()
    raw_name = next((k for k in ("raw_session_run", "raw_interpreter_invoke")
                     if k in out["single_row"]), None)
    if raw_name:
        ip = out["single_row"]["in_process_predict"]
        out["ratio_single_p50"] = round(ip["p50_us"] / out["single_row"][raw_name]["p50_us"], 3)
        out["ratio_batch_p50"] = round(out["batch"]["in_process_predict"]["p50_us"]
                                       / out["batch"][raw_name]["p50_us"], 3)
    return out


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'path':<22}{'rows':>6}{'p50 µs':>11}{'p99 µs':>11}{'mean µs':>11}"]
    for section, n in (("single_row", 1), ("batch", result["batch_size"])):
        for name, s in result[section].items():
            lines.append(f"{name:<22}{n:>6}{s['p50_us']:>11.2f}{s['p99_us']:>11.2f}"
                         f"{s['mean_us']:>11.2f}")
    if "ratio_single_p50" in result:
        lines.append(f"in-process / raw engine call (p50): single {result['ratio_single_p50']}×, "
                     f"batch {result['ratio_batch_p50']}×")
    return "\n".join(lines)
