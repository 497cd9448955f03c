"""Parity and speed check of bundle variants, and the pick (``edge-convert check``).

    check_bundles([fp32, int8, tflite, ...], sample, CheckConfig(...)) -> Report

For each variant, on the sample and on this machine, the report *measures*:
max absolute difference and label agreement against the reference (the
source model when one is given, else the first bundle), accuracy on the
labelled sample, file size, p50/p99 latency for one row and for a batch
(64 rows by default) with the profile's thread count. Nothing is assumed from
the variant's kind: INT8 is faster for big matrix products and slower for
tiny MLPs on the same CPU, and only a measurement tells which.

``pick`` chooses the fastest variant whose accuracy drop (points) stays within
``max_accuracy_drop``, among those in the profile's preferred format when any
qualifies and runs here. Core ML bundles cannot run on Linux: they are listed
as "not runnable on Linux" (numerical checks need macOS), never given numbers.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from converters.sample import Sample, finalize, load_sample
from edge_runtime.bundle import Bundle, read_bundle, verify_bundle
from edge_runtime.errors import EdgeError, ValidationError


@dataclass
class CheckConfig:
    """Options of ``edge-convert check``."""

    label_column: str | None = None
    source_model: Any = None  # the original model (object or joblib path) as the reference
    profile: str | None = None  # device profile: threads and budgets, preferred format
    threads: int | None = None  # default: the profile's threads, else 1
    single_runs: int = 200
    batch_size: int = 64
    batch_runs: int = 50
    parity_rows: int = 2000
    public_key: Any = None  # verify signatures with this key (else hashes only)
    pick: bool = False
    max_accuracy_drop: float = 0.5  # points (percent of rows), for pick
    pick_by: Literal["single", "batch"] = "single"  # which p50 decides "fastest"


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    runs: int


@dataclass
class VariantReport:
    path: str
    name: str
    version: str
    format: str
    sha256: str
    quantization: str  # fp32 | dynamic | static | fp16 | int8-weights | …
    size_bytes: int
    runnable: bool
    signature: str  # verified | unsigned | not checked (no public key) | bad: …
    note: str = ""
    golden: str | None = None  # "passed (n)" or "failed: …": the bundle's own self-test
    max_abs_diff: float | None = None
    label_agreement: float | None = None  # fraction of rows with the reference's decision
    accuracy: float | None = None  # on the labelled sample
    accuracy_drop: float | None = None  # points vs the reference (or % disagreement)
    single: Latency | None = None
    batch: Latency | None = None
    within_budget: bool | None = None  # the profile's latency and memory budgets
    not_a_variant: bool = False  # quantized, yet bit-for-bit the first bundle's answers

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version} ({self.format}/{self.quantization})"


@dataclass
class Pick:
    chosen: str | None  # path of the chosen bundle
    reason: str
    candidates: list[str] = field(default_factory=list)


@dataclass
class Report:
    reference: str
    sample: str
    rows: int
    labelled: bool
    threads: int
    batch_size: int
    machine: dict[str, Any]
    variants: list[VariantReport]
    profile: dict[str, Any] | None = None
    pick: Pick | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_table(self) -> str:
        return format_table(self)


# ---- entry point ----------------------------------------------------------------------

def check_bundles(bundles: Sequence[str | Path | Bundle], sample: Any,
                  config: CheckConfig | None = None) -> Report:
    cfg = config or CheckConfig()
    if not bundles:
        raise ValidationError("give at least one bundle to check", field="bundles")
    if cfg.batch_size < 1 or cfg.single_runs < 1 or cfg.batch_runs < 1:
        raise ValidationError("batch_size, single_runs and batch_runs must be at least 1",
                              field="runs")
    if cfg.max_accuracy_drop < 0:
        raise ValidationError("max_accuracy_drop must be >= 0", field="max_accuracy_drop")
    profile = None
    if cfg.profile:
        from edge_runtime.profile import load_profile

        profile = load_profile(cfg.profile)
    threads = cfg.threads or (profile.threads if profile else 1)
    opened = [b if isinstance(b, Bundle) else read_bundle(b) for b in bundles]
    pub = _public_key(cfg.public_key)
    first = opened[0].manifest
    if first.inputs.kind == "features":
        smp = finalize(load_sample(sample, label_column=cfg.label_column,
                                   feature_names=first.feature_names))
        smp = smp.recode(first.inputs.features)  # text: the bundle's category codes
    else:
        smp = load_sample(sample, label_column=cfg.label_column)
    smp = smp.head(cfg.parity_rows)
    ref_probs, ref_labels, ref_value, ref_name = None, None, None, str(_path(bundles[0]))
    if cfg.source_model is not None:
        ref_probs, ref_labels, ref_value, ref_name = _source_reference(cfg.source_model, smp, first)

    reports: list[VariantReport] = []
    outputs: list[tuple[np.ndarray | None, list[str] | None, np.ndarray | None]] = []
    for src, b in zip(bundles, opened):
        rep, out = _check_one(src, b, smp, cfg, threads, pub)
        reports.append(rep)
        outputs.append(out)
    # the reference: the source model, or the first bundle when it ran
    if ref_name == str(_path(bundles[0])):
        if not reports[0].runnable:
            raise ValidationError(f"the reference bundle {reports[0].label} cannot run here "
                                  f"({reports[0].note}); list a runnable bundle first",
                                  field="bundles")
        ref_probs, ref_labels, ref_value = outputs[0]
    warnings_: list[str] = []
    if smp.y is not None and first.task in ("binary_classification",
                                            "multiclass_classification"):
        classes = [str(c) for c in first.postprocess.classes] or None
        truth = sorted({str(_plain(v)) for v in smp.y[: len(smp)]})
        if classes is not None and not set(truth) <= set(classes):
            unknown = [t for t in truth if t not in classes]
            shown = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
            warnings_.append(f"label column values ({shown}) are not the model's classes "
                             f"({', '.join(classes[:10])}): accuracy is not shown")
            smp = Sample(smp.x, smp.names, None, smp.dtypes, smp.source)
    ref_acc = _accuracy(ref_labels, smp)
    for rep, (probs, labels, value) in zip(reports, outputs):
        if not rep.runnable:
            continue
        if value is not None and ref_value is not None:
            d = np.abs(value - ref_value)
            rep.max_abs_diff = float(d.max())
            within = float((d <= 1e-3 * np.maximum(1.0, np.abs(ref_value))).mean())
            rep.label_agreement = within
            rep.accuracy_drop = round((1 - within) * 100, 4)
            continue
        if probs is not None and ref_probs is not None and probs.shape == ref_probs.shape:
            rep.max_abs_diff = float(np.abs(probs - ref_probs).max())
        if labels is not None and ref_labels is not None:
            rep.label_agreement = float(np.mean([a == b for a, b in zip(labels, ref_labels)]))
        rep.accuracy = _accuracy(labels, smp)
        if rep.accuracy is not None and ref_acc is not None:
            rep.accuracy_drop = round((ref_acc - rep.accuracy) * 100, 4)
        elif rep.label_agreement is not None:
            rep.accuracy_drop = round((1 - rep.label_agreement) * 100, 4)
    # a quantized variant answering bit-for-bit like the first bundle changed nothing
    base = outputs[0]
    for rep, out in zip(reports[1:], outputs[1:]):
        if rep.runnable and reports[0].runnable and rep.quantization != "fp32" \
                and _same(out, base):
            rep.not_a_variant = True
            rep.note = (rep.note + "; " if rep.note else "") + (
                f"answers bit-for-bit like {Path(reports[0].path).name}: not a real "
                f"{rep.quantization} variant, never picked")
    if profile is not None:
        for rep in reports:
            if rep.runnable and rep.single is not None:
                rep.within_budget = (rep.single.p99_ms <= profile.latency_budget_ms
                                     and rep.size_bytes <= profile.memory_budget_mb * 2**20)
    report = Report(reference=ref_name, sample=Path(smp.source).name, rows=len(smp),
                    labelled=smp.y is not None, threads=threads, batch_size=cfg.batch_size,
                    machine=_machine(), variants=reports,
                    profile=profile.to_dict() if profile else None, warnings=warnings_)
    if cfg.pick:
        report.pick = pick_variant(reports, cfg, profile)
    return report


def pick_variant(reports: list[VariantReport], cfg: CheckConfig, profile=None) -> Pick:
    """The fastest variant within the accuracy tolerance (preferred format first)."""
    # a bundle failing its own golden vectors would never activate on a device
    ok = [r for r in reports if r.runnable and r.accuracy_drop is not None
          and r.accuracy_drop <= cfg.max_accuracy_drop and not r.not_a_variant
          and not (r.golden or "").startswith("failed")]
    if profile is not None:
        within = [r for r in ok if r.within_budget]
        over = [r for r in ok if not r.within_budget]
        ok = within
    else:
        over = []
    if not ok:
        why = (f"no runnable variant keeps the accuracy drop within {cfg.max_accuracy_drop} "
               "points")
        if over:
            why += f" and the {profile.name} latency/memory budgets"
        return Pick(None, why, [])
    pool, note = ok, ""
    if profile is not None:
        pref = [r for r in ok if r.format == profile.preferred_format]
        if pref:
            pool = pref
            note = f" among {profile.preferred_format} variants ({profile.name}'s preferred format)"
        else:
            note = (f"; no {profile.preferred_format} variant qualified here, so any format "
                    "was considered")
    key = (lambda r: r.single.p50_ms) if cfg.pick_by == "single" else (lambda r: r.batch.p50_ms)
    best = min(pool, key=key)
    lat = best.single if cfg.pick_by == "single" else best.batch
    what = "1-row" if cfg.pick_by == "single" else f"batch-{cfg.batch_size}"
    reason = (f"fastest {what} p50 ({lat.p50_ms:.3f} ms) with accuracy drop "
              f"{best.accuracy_drop:g} <= {cfg.max_accuracy_drop} points{note}")
    return Pick(best.path, reason, [r.path for r in pool])


# ---- one variant -----------------------------------------------------------------------

def _check_one(src, b: Bundle, smp: Sample, cfg: CheckConfig, threads: int, pub):
    from edge_runtime.engines import EngineOptions
    from edge_runtime.model import Model

    m = b.manifest
    size = sum(e.size for e in m.files.values())
    quant = _quantization(m)
    sig = _signature(b, pub)
    rep = VariantReport(path=str(_path(src)), name=m.name, version=m.version, format=m.format,
                        sha256=m.digest, quantization=quant, size_bytes=size, runnable=False,
                        signature=sig)
    none = (None, None, None)
    if sig.startswith("bad"):
        rep.note = sig
        return rep, none
    if m.format == "coreml":
        rep.note = ("not runnable on Linux: Core ML runs only on Apple platforms; numerical "
                    "checks need macOS")
        return rep, none
    try:
        model = Model.load(b, EngineOptions(intra_op_threads=threads, inter_op_threads=1),
                           warmup=False)
    except EdgeError as exc:
        rep.note = f"cannot load here: {exc.message}"
        return rep, none
    try:
        rep.golden = f"passed ({model.self_test()})"
    except EdgeError as exc:
        rep.golden = f"failed: {exc.message}"
    try:
        x = _input_for(model, smp)
        scores = _score_all(model, x)
        rep.runnable = True
        rep.single = _time(lambda i: _score(model, x[i % len(x): i % len(x) + 1]),
                           cfg.single_runs)
        bx = _batch(x, cfg.batch_size)
        rep.batch = _time(lambda i: _score(model, bx), cfg.batch_runs)
        labels = None
        if scores.label_index is not None:
            cl = model.classes
            labels = [str(cl[i]) if cl else str(i) for i in scores.label_index.tolist()]
        value = scores.value if scores.probabilities is None else None
        return rep, (scores.probabilities, labels, value)
    except EdgeError as exc:
        rep.runnable = False
        rep.note = f"failed on the sample: {exc.message}"
        return rep, none
    finally:
        model.close()


def _same(a, b) -> bool:
    """Both variants' (probabilities, labels, values) identical, bit for bit."""
    for x, y in zip(a, b):
        if (x is None) != (y is None):
            return False
        if x is not None and not np.array_equal(np.asarray(x), np.asarray(y)):
            return False
    return a[0] is not None or a[2] is not None


def _input_for(model, smp: Sample) -> np.ndarray:
    m = model.manifest
    if m.inputs.kind == "features":
        s = smp.select(m.feature_names)
        return s.x.astype(model.codec.dtype)
    spec = model.engine.inputs[0]
    return smp.x.astype(np.float32 if spec.dtype == "float32" else spec.dtype)


def _score(model, x: np.ndarray):
    """Vectorised scores for feature rows or for a raw-tensor model (e.g. a CNN)."""
    if model.codec is not None:
        return model.score_array(x)
    return model._scores(model.run_tensors({model.engine.inputs[0].name: x}))


def _score_all(model, x: np.ndarray):
    from edge_runtime.model import Scores

    parts = [_score(model, x[i:i + 256]) for i in range(0, len(x), 256)]
    if len(parts) == 1:
        return parts[0]

    def cat(attr):
        vals = [getattr(p, attr) for p in parts]
        return None if vals[0] is None else np.concatenate(vals)

    return Scores(cat("probability"), cat("label_index"), cat("probabilities"), cat("value"),
                  [np.concatenate([p.raw[k] for p in parts]) for k in range(len(parts[0].raw))])


def _batch(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) >= n:
        return x[:n]
    reps = -(-n // len(x))
    return np.concatenate([x] * reps)[:n]


def _time(fn, runs: int) -> Latency:
    for i in range(min(5, runs)):
        fn(i)
    t = np.empty(runs)
    clock = time.perf_counter_ns
    for i in range(runs):
        t0 = clock()
        fn(i)
        t[i] = clock() - t0
    t /= 1e6
    return Latency(round(float(np.percentile(t, 50)), 4), round(float(np.percentile(t, 99)), 4),
                   runs)


def _quantization(m) -> str:
    q = m.provenance.get("quantization")
    if isinstance(q, dict):
        return str(q.get("mode", "quantized"))
    if isinstance(q, str):  # the TFLite converter: "none" or "int8 weights (…)"
        if q in ("", "none"):
            return "fp32"
        return "int8-weights" if "int8" in q else q
    for key in ("int8", "weights_int8"):
        if m.provenance.get(key):
            return "int8-weights"
    return "fp32"


def _signature(b: Bundle, pub) -> str:
    try:
        verify_bundle(b, pub, require_signature=pub is not None)
    except EdgeError as exc:
        return f"bad: {exc.message}"
    if b.manifest.signature is None:
        return "unsigned"
    return "verified" if pub is not None else "signed (not verified: no public key given)"


def _public_key(key: Any):
    if key is None:
        return None
    from edge_runtime.signing import load_public_key

    return load_public_key(key)


def _path(src) -> Path:
    return src.root if isinstance(src, Bundle) else Path(src)


def _accuracy(labels: list[str] | None, smp: Sample) -> float | None:
    if labels is None or smp.y is None:
        return None
    truth = [str(_plain(v)) for v in smp.y[: len(labels)]]
    return float(np.mean([a == b for a, b in zip(labels, truth)]))


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _source_reference(source: Any, smp: Sample, m):
    """Reference answers from the original model on the rows the bundles see (float32, text
    as text): probabilities, and labels from the model's own predict()."""
    from sklearn.base import is_classifier

    from converters import columns
    from converters.export import _sklearn_reference, load_model

    model, name = load_model(source)
    x = smp.x.astype(np.float32).astype(np.float64)
    ref = _sklearn_reference(model, smp, is_classifier(model), columns.needs_columns(model, smp))(x)
    if m.task in ("regression", "anomaly") or "probabilities" not in ref:
        return None, None, ref.get("value"), name
    classes = list(m.postprocess.classes) or list(range(ref["probabilities"].shape[1]))
    labels = [str(classes[i]) if 0 <= i < len(classes) else "?" for i in ref["label"].tolist()]
    return ref["probabilities"], labels, None, name


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine() -> dict[str, Any]:
    import onnxruntime

    info = {"platform": platform.platform(), "processor": cpu_model(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__}
    from importlib.metadata import PackageNotFoundError, version

    try:
        info["ai_edge_litert"] = version("ai-edge-litert")
    except PackageNotFoundError:
        info["ai_edge_litert"] = None
    return info


# ---- terminal table -------------------------------------------------------------------

def format_table(r: Report) -> str:
    ref_size = next((v.size_bytes for v in r.variants), 0) or 1
    ref_batch = next((v.batch.p50_ms for v in r.variants if v.batch), None)
    head = ["bundle", "variant", "format", "quant", "size KB", "size ×", "max|Δ|", "agree %", "acc %",
            "drop pt", "1-row p50/p99 ms", f"b{r.batch_size} p50/p99 ms", "speed ×"]
    rows = []
    for v in r.variants:
        if not v.runnable:
            rows.append([Path(v.path).name, f"{v.name}:{v.version}", v.format, v.quantization,
                         f"{v.size_bytes / 1024:.1f}", f"{ref_size / max(v.size_bytes, 1):.2f}",
                         "-", "-", "-", "-", "-", "-", "-"])
            continue
        rows.append([
            Path(v.path).name, f"{v.name}:{v.version}", v.format, v.quantization, f"{v.size_bytes / 1024:.1f}",
            f"{ref_size / max(v.size_bytes, 1):.2f}",
            "-" if v.max_abs_diff is None else f"{v.max_abs_diff:.2g}",
            "-" if v.label_agreement is None else f"{v.label_agreement * 100:.2f}",
            "-" if v.accuracy is None else f"{v.accuracy * 100:.2f}",
            "-" if v.accuracy_drop is None else f"{v.accuracy_drop:+.2f}",
            f"{v.single.p50_ms:.3f}/{v.single.p99_ms:.3f}",
            f"{v.batch.p50_ms:.3f}/{v.batch.p99_ms:.3f}",
            "-" if not ref_batch else f"{ref_batch / v.batch.p50_ms:.2f}"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))
    cpus = r.machine.get("cpu_count") or 0
    over = f" (more than this machine's {cpus} cores)" if cpus and r.threads > cpus else ""
    out = [(f"reference: {r.reference}   sample: {r.sample} ({r.rows} rows"
            f"{', labelled' if r.labelled else ''})   threads: {r.threads}{over}   "
            f"machine: {r.machine.get('processor')} ×{cpus}"),
           line(head), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    notes = [f"  {v.name}:{v.version} ({v.format}): {v.note}" for v in r.variants if v.note]
    sigs = {v.signature for v in r.variants}
    out.append(f"signatures: {', '.join(sorted(sigs))}")
    bad_golden = [v for v in r.variants if v.golden and v.golden.startswith("failed")]
    out.append("golden vectors: " + ("all passed" if not bad_golden else "; ".join(
        f"{Path(v.path).name} {v.golden}" for v in bad_golden)))
    if notes:
        out.append("notes:")
        out += notes
    if r.profile:
        out.append(f"profile {r.profile['name']}: {r.profile['threads']} threads, 1-row p99 budget "
                   f"{r.profile['latency_budget_ms']} ms, memory {r.profile['memory_budget_mb']} MB, "
                   f"prefers {r.profile['preferred_format']}")
    for w in r.warnings:
        out.append(f"warning: {w}")
    if r.pick is not None:
        out.append(f"pick: {r.pick.chosen or 'none'} — {r.pick.reason}")
    out.append("speed × = reference batch p50 / variant batch p50; size × = reference size / size")
    return "\n".join(out)
