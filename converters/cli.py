"""``edge-convert``: trained model → verified, optimised, signed bundles.

    edge-convert keygen --out fleet.key [--public-out fleet.pub] [--force]
    edge-convert export MODEL --sample DATA --out DIR [--name N] [--version V] [--key KEY]
    edge-convert quantize BUNDLE --out DIR [--mode dynamic|static|fp16] [--sample DATA]
    edge-convert tflite BUNDLE --out DIR [--int8]
    edge-convert coreml BUNDLE --out DIR
    edge-convert check BUNDLE... --sample DATA [--json] [--pick --profile P --max-accuracy-drop X]

The CLI only parses and prints (library first: ``converters.export``,
``quantize``, ``check``, ``tflite``, ``coreml``). Errors are one line on
stderr and a non-zero exit: 1 for a refused input or a failed conversion, 2
for bad usage, 3 when ``--pick`` finds no variant within tolerance.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_runtime import keygen
from edge_runtime.errors import UnavailableError, run_cli

PROG = "edge-convert"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Turn trained models into signed, verified edge bundles "
        "(ONNX, INT8, FP16, TFLite, Core ML) and measure which variant to ship.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    key_help = "ed25519 private key file (default: $EDGE_CONVERT_KEY)"

    keygen.register(sub)  # the same command as edge-runtime keygen

    e = sub.add_parser("export", help="export a trained model to a signed ONNX bundle",
                       description="Export a scikit-learn / LightGBM / XGBoost model (joblib or "
                       "pickle file), a PyTorch module (.pt, needs torch) or an ONNX file to a "
                       "signed ONNX bundle. The sample fills in the input contract and the golden vectors; "
                       "the conversion is refused if it does not answer like the model.")
    e.add_argument("model", help="model file (.joblib, .pkl, .pt, or an .onnx file to wrap)")
    e.add_argument("--output-role", choices=["logits", "probabilities"], default="logits",
                   help="torch/ONNX classifiers: what the output columns hold (default logits)")
    e.add_argument("--sample", required=True, help="sample data: .csv, .parquet or .npy/.npz")
    e.add_argument("--out", required=True, help="bundle directory to create")
    e.add_argument("--name", help="bundle name (default: the model file name)")
    e.add_argument("--version", default="1.0.0", help="bundle version (default 1.0.0)")
    e.add_argument("--key", help=key_help)
    e.add_argument("--label-column", help="sample column holding the labels (not a feature)")
    e.add_argument("--task", choices=["binary", "multiclass", "regression"],
                   help="check the task (inferred from the model; required for torch regressors)")
    e.add_argument("--class-names", help="comma-separated names for the model's classes, in order")
    e.add_argument("--positive-class", help="binary: the positive class (default: the second)")
    e.add_argument("--threshold", type=float, default=0.5, help="binary decision threshold")
    e.add_argument("--no-risk-levels", action="store_true",
                   help="binary: do not add risk levels (high ≥ 0.7, medium ≥ 0.4, low)")
    e.add_argument("--golden-rows", type=int, default=8, help="golden vectors to draw (default 8)")
    e.add_argument("--ranges", action="store_true",
                   help="record the sample's min/max per feature; devices then reject rows "
                   "outside them")
    e.add_argument("--tolerance", type=float, default=1e-4,
                   help="max |Δ| per output vs the model on sample + held-out rows (default "
                   "1e-4; values relative to max(1, |value|))")
    e.add_argument("--heldout-rows", type=int, default=1000,
                   help="held-out-like rows checked besides the sample (default 1000)")
    e.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    e.set_defaults(func=cmd_export)

    q = sub.add_parser("quantize", help="INT8 (dynamic or static QDQ) or FP16 copy of a bundle",
                       description="Quantize an ONNX bundle with onnxruntime.quantization: "
                       "dynamic INT8, static INT8 (QDQ, calibrated on --sample after "
                       "quant_pre_process) or fp16. Writes a new signed bundle; run "
                       "`edge-convert check` to measure whether it is worth it.")
    q.add_argument("bundle", help="source ONNX bundle (directory or .tar)")
    q.add_argument("--out", required=True, help="bundle directory to create")
    q.add_argument("--mode", choices=["dynamic", "static", "fp16"], default="dynamic")
    q.add_argument("--sample", help="calibration data (required for --mode static)")
    q.add_argument("--label-column", help="sample column to ignore (labels)")
    q.add_argument("--key", help=key_help)
    q.add_argument("--version", help="version of the new bundle (default: SOURCE+MODE)")
    q.add_argument("--per-channel", action="store_true", help="per-channel weight scales")
    q.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights (for x86 CPUs without VNNI)")
    q.add_argument("--calibration-rows", type=int, default=256)
    q.add_argument("--tolerance", type=float,
                   help="max |Δ| vs the source (default: INT8 0.5, fp16 0.01)")
    q.add_argument("--min-agreement", type=float,
                   help="share of rows decided like the source (default: INT8 0.95, fp16 0.99)")
    q.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    q.set_defaults(func=cmd_quantize)

    t = sub.add_parser("tflite", help="convert an ONNX bundle to TFLite (no TensorFlow needed)",
                       description="Convert an ONNX bundle to a .tflite bundle written with "
                       "LiteRT's schema. Unsupported ops are listed in the error.")
    t.add_argument("bundle", help="source ONNX bundle")
    t.add_argument("--out", required=True, help="bundle directory to create")
    t.add_argument("--int8", action="store_true",
                   help="INT8 weights (dynamic range, per-channel scales)")
    t.add_argument("--int8-min-elements", type=int,
                   help="weights smaller than this stay float32 (default 1024, as TensorFlow)")
    t.add_argument("--atol", type=float,
                   help="max |diff| vs the source accepted (default 1e-4; 0.1 with --int8)")
    t.add_argument("--version", help="version of the new bundle (default: the source's)")
    t.add_argument("--key", help=key_help)
    t.add_argument("--public-key", help="verify the source bundle's signature with this key")
    t.set_defaults(func=cmd_tflite)

    c = sub.add_parser("coreml", help="convert an ONNX bundle to Core ML (.mlpackage)",
                       description="Convert an ONNX bundle to a Core ML mlprogram. Core ML "
                       "cannot run on Linux: the spec is validated here, numerical checks "
                       "need macOS.")
    c.add_argument("bundle", help="source ONNX bundle")
    c.add_argument("--out", required=True, help="bundle directory to create")
    c.add_argument("--precision", choices=["float32", "float16"],
                   help="compute precision of the program (default float32)")
    c.add_argument("--max-batch", type=int, help="upper bound of the flexible batch (4096)")
    c.add_argument("--version", help="version of the new bundle (default: the source's)")
    c.add_argument("--key", help=key_help)
    c.add_argument("--public-key", help="verify the source bundle's signature with this key")
    c.set_defaults(func=cmd_coreml)

    ch = sub.add_parser("check", help="measure parity, accuracy, size and latency of variants",
                        description="For each bundle: max |diff| and label agreement vs the "
                        "reference (the first bundle, or --model), accuracy on the labelled "
                        "sample, size, p50/p99 latency for 1 row and a batch. --pick chooses "
                        "the fastest variant within --max-accuracy-drop points.")
    ch.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundles; the first is the reference")
    ch.add_argument("--sample", required=True, help="sample data: .csv, .parquet or .npy/.npz")
    ch.add_argument("--label-column", help="sample column with labels (enables accuracy)")
    ch.add_argument("--model", help="original model file to use as the reference")
    ch.add_argument("--json", action="store_true", help="print the report as JSON")
    ch.add_argument("--pick", action="store_true", help="choose the variant to ship")
    ch.add_argument("--profile", help="device profile (threads, budgets, preferred format)")
    ch.add_argument("--max-accuracy-drop", type=float, default=0.5,
                    help="tolerated accuracy drop in points for --pick (default 0.5)")
    ch.add_argument("--pick-by", choices=["single", "batch"], default="single",
                    help="which latency decides 'fastest' (default: single-row p50)")
    ch.add_argument("--threads", type=int, help="engine threads (default: the profile's, else 1)")
    ch.add_argument("--runs", type=int, default=200, help="single-row timed runs (default 200)")
    ch.add_argument("--batch-size", type=int, default=64)
    ch.add_argument("--batch-runs", type=int, default=50)
    ch.add_argument("--public-key", help="verify signatures with this public key")
    ch.set_defaults(func=cmd_check)
    return p


# ---- commands -----------------------------------------------------------------------

def cmd_export(args) -> int:
    from converters.export import DEFAULT_RISK_LEVELS, ExportConfig, export_model

    classes = [c.strip() for c in args.class_names.split(",")] if args.class_names else None
    cfg = ExportConfig(key=args.key, name=args.name, version=args.version,
                       label_column=args.label_column, task=args.task, class_names=classes,
                       positive_class=_maybe_int(args.positive_class), threshold=args.threshold,
                       risk_levels=None if args.no_risk_levels else DEFAULT_RISK_LEVELS,
                       golden_rows=args.golden_rows, record_ranges=args.ranges,
                       output_role=args.output_role, parity_tolerance=args.tolerance,
                       heldout_rows=args.heldout_rows, overwrite=args.force)
    out = export_model(args.model, args.sample, args.out, cfg)
    _print_bundle(out)
    return 0


def cmd_quantize(args) -> int:
    from converters.quantize import QuantizeConfig, quantize_bundle

    cfg = QuantizeConfig(mode=args.mode, sample=args.sample, key=args.key, version=args.version,
                         per_channel=args.per_channel, reduce_range=args.reduce_range,
                         calibration_rows=args.calibration_rows, label_column=args.label_column,
                         tolerance=args.tolerance, min_label_agreement=args.min_agreement,
                         overwrite=args.force)
    out = quantize_bundle(args.bundle, args.out, cfg)
    _print_bundle(out)
    return 0


def cmd_tflite(args) -> int:
    fn = _lazy("converters.tflite", "onnx_to_tflite", "TFLite")
    out = fn(args.bundle, args.out, _config_for(fn, key=args.key, int8_weights=args.int8,
                                                public_key=args.public_key, atol=args.atol,
                                                int8_min_elements=args.int8_min_elements,
                                                version=args.version))
    _print_bundle(out)
    return 0


def cmd_coreml(args) -> int:
    fn = _lazy("converters.coreml", "onnx_to_coreml", "Core ML")
    out = fn(args.bundle, args.out, _config_for(fn, key=args.key, public_key=args.public_key,
                                                compute_precision=args.precision,
                                                max_batch=args.max_batch, version=args.version))
    _print_bundle(out)
    print("note: Core ML cannot run on Linux; the spec was validated here, numerical checks "
          "need macOS")
    return 0


def cmd_check(args) -> int:
    from converters.check import CheckConfig, check_bundles

    cfg = CheckConfig(label_column=args.label_column, source_model=args.model,
                      profile=args.profile, threads=args.threads, single_runs=args.runs,
                      batch_size=args.batch_size, batch_runs=args.batch_runs,
                      public_key=args.public_key, pick=args.pick,
                      max_accuracy_drop=args.max_accuracy_drop, pick_by=args.pick_by)
    report = check_bundles(args.bundles, args.sample, cfg)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report.to_table())
    if args.pick and report.pick is not None and report.pick.chosen is None:
        print(f"{PROG}: no variant picked: {report.pick.reason}", file=sys.stderr)
        return 3
    return 0


# ---- helpers --------------------------------------------------------------------------

def _lazy(module: str, func: str, what: str):
    """Import the format converter only when its command runs (optional dependencies)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise UnavailableError(f"the {what} converter is not available: {exc}",
                               field="format") from exc
    fn = getattr(mod, func, None)
    if fn is None:
        raise UnavailableError(f"the {what} converter is not available ({module}.{func} is "
                               "missing)", field="format")
    return fn


def _config_for(fn, **values: Any) -> Any:
    """Build the converter's typed config from the options it declares."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    cls = hints.get("config")
    args = typing.get_args(cls)
    if args:  # Optional[Config]
        cls = next((a for a in args if a is not type(None)), None)
    if cls is None:
        return None
    if dataclasses.is_dataclass(cls):
        names = {f.name for f in dataclasses.fields(cls)}
    else:
        names = set(getattr(cls, "model_fields", {}) or {})
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})


def _maybe_int(v: str | None) -> Any:
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        return v


def _print_bundle(path: Path) -> None:
    from edge_runtime.bundle import read_bundle

    m = read_bundle(path).manifest
    size = sum(e.size for e in m.files.values())
    print(f"wrote {path}: {m.name}:{m.version} format={m.format} task={m.task} "
          f"size={size} bytes sha256={m.digest}")
    par = m.provenance.get("parity")
    if isinstance(par, dict) and isinstance(par.get("all"), dict):  # the format converters
        par = par["all"]
    if isinstance(par, dict) and {"rows", "max_abs_diff"} <= set(par):
        extra = (f", label agreement {par['label_agreement'] * 100:.2f}%"
                 if "label_agreement" in par else "")
        sets = par.get("rows_by_set")
        what = (" + ".join(f"{v} {k}" for k, v in sets.items()) if isinstance(sets, dict)
                else f"{par['rows']} golden + held-out")
        held = (f" (held-out max |diff| {par['heldout_max_abs_diff']:.3g})"
                if "heldout_max_abs_diff" in par else "")
        print(f"parity of this bundle vs its source on {what} rows: max |diff| "
              f"{par['max_abs_diff']:.3g}{held}{extra}")
    q = m.provenance.get("quantization")
    if isinstance(q, dict):
        print(f"quantization: {q.get('mode')} ops={q.get('quantized_ops')}")
    elif isinstance(q, str) and q != "none":
        print(f"quantization: {q}")


def _quiet_onnxruntime() -> None:
    """onnxruntime's C++ warnings (e.g. unused initializers after quantization) are noise
    on a CLI's stderr, where errors must stay one line."""
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
    except ImportError:  # pragma: no cover
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_onnxruntime()
    return run_cli(PROG, lambda: args.func(args))  # never a traceback (EDGEFLEET_DEBUG=1 shows it)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
