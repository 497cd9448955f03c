"""``onnx_to_tflite``: an ONNX bundle → a signed TFLite bundle, checked against the source.

Steps (nothing is written at ``out_dir`` unless all pass):
1. check the config and the signing key; read the source bundle, check its
   file hashes (and signature when a public key is given), parse the ONNX model;
2. scan the graph and refuse with *every* unsupported op listed;
3. write the flatbuffer (``converters.tflite.graph`` + ``ops``), load it in LiteRT;
4. run source (ONNX Runtime) and converted (LiteRT) models on the golden rows
   plus a seeded synthetic batch, compare probabilities/values and labels;
5. recompute the golden expectations with the converted model, write the
   bundle atomically and signed, and verify it with the edge runtime's verifier.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.onnx_source import (
    ConversionError,
    UnsupportedOpsError,
    carried_manifest,
    check_out_dir,
    load_source,
    publish,
    resolve_key,
    staging_dir,
)
from edge_runtime.bundle import Bundle, write_bundle

MODEL_FILE = "model.tflite"


@dataclass(frozen=True)
class TFLiteConfig:
    """Options of ``onnx_to_tflite`` (checked before any work)."""

    key: Any = None
    """ed25519 private key (path or key object); None → ``$EDGE_CONVERT_KEY``."""
    int8_weights: bool = False
    """Dynamic-range INT8: FullyConnected/Conv weights stored int8 with per-channel scales."""
    int8_min_elements: int = 1024
    """Weights smaller than this stay float32 (as TensorFlow's converter does)."""
    per_channel: bool = True
    """Per-output-channel weight scales (False: one scale per tensor)."""
    atol: float | None = None
    """Max |Δ| / max(1, |source|) of probabilities/values; default 1e-4 (float: golden and
    synthetic rows), 0.1 (int8: golden rows)."""
    parity_rows: int = 256
    """Synthetic rows added to the golden rows for the parity check."""
    public_key: Any = None
    """Verify the source bundle's signature against this key when given."""
    version: str | None = None
    """Version of the produced bundle (default: the source's)."""
    fallback: str = "none"
    """"onnx2tf" to fall back on TensorFlow + onnx2tf for unsupported ops (when installed)."""
    extra_provenance: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.fallback not in ("none", "onnx2tf"):
            raise ConversionError(f"fallback must be 'none' or 'onnx2tf', got {self.fallback!r}",
                                  field="fallback")
        if self.int8_min_elements < 0:
            raise ConversionError("int8_min_elements must be >= 0", field="int8_min_elements")
        if self.atol is not None and not self.atol > 0:
            raise ConversionError("atol must be > 0", field="atol")
        if self.parity_rows < 0:
            raise ConversionError("parity_rows must be >= 0", field="parity_rows")
        if self.fallback == "onnx2tf" and not onnx2tf_available():
            raise ConversionError("fallback='onnx2tf' needs tensorflow and onnx2tf installed",
                                  field="fallback")

    @property
    def tolerance(self) -> float:
        if self.atol is not None:
            return self.atol
        return 0.1 if self.int8_weights else 1e-4


def onnx2tf_available() -> bool:
    import importlib.util

    return bool(importlib.util.find_spec("onnx2tf") and importlib.util.find_spec("tensorflow"))


def supported_ops() -> dict[str, str]:
    """ONNX op type → what it becomes in TFLite."""
    from converters.tflite import ops  # noqa: F401  (fills the registry)
    from converters.tflite.graph import REGISTRY

    return {k: REGISTRY[k].doc for k in sorted(REGISTRY)}


def convert_model(model, config: TFLiteConfig) -> tuple[bytes, dict[str, Any]]:
    """ONNX ``ModelProto`` → (``.tflite`` bytes, facts about the conversion)."""
    from converters.tflite import ops  # noqa: F401
    from converters.tflite.graph import GraphConverter

    gc = GraphConverter(model, int8_weights=config.int8_weights,
                        int8_min_elements=config.int8_min_elements,
                        per_channel=config.per_channel)
    problems = gc.scan()
    if problems:
        raise UnsupportedOpsError("TFLite", problems)
    data = gc.convert()
    if config.int8_weights and not gc.quantized:
        raise ConversionError(f"nothing to quantize: 0 weights have int8_min_elements "
                              f"({config.int8_min_elements}) or more elements, so an --int8 "
                              "bundle would be the FP32 model labelled int8; not written (lower "
                              "--int8-min-elements, or convert without --int8)",
                              field="int8_weights")
    facts = {"tflite_ops": dict(sorted(gc.op_counts.items())),
             "dropped_outputs": gc.dropped_outputs,
             "quantized_weights": len(gc.quantized)}
    return data, facts


def onnx_to_tflite(src_bundle: str | Path | Bundle, out_dir: str | Path,
                   config: TFLiteConfig | None = None) -> Path:
    """Convert an ONNX bundle to a signed TFLite bundle at ``out_dir``; return its path."""
    config = config or TFLiteConfig()
    config.validate()
    key = resolve_key(config.key)
    t0 = time.perf_counter()
    src = load_source(src_bundle, public_key=config.public_key)
    out = check_out_dir(src.bundle.root, out_dir)
    try:
        data, facts = convert_model(src.onnx_model, config)
        converter = "edgefleet.converters.tflite"
    except UnsupportedOpsError as exc:
        if config.fallback != "onnx2tf":
            hint = "" if not onnx2tf_available() else \
                " (TensorFlow + onnx2tf are installed: pass fallback='onnx2tf' for wider coverage)"
            if hint:
                raise UnsupportedOpsError("TFLite", exc.problems + [hint.strip()]) from None
            raise
        data, facts = _onnx2tf_convert(src.onnx_model)
        converter = "onnx2tf"
    convert_s = time.perf_counter() - t0
    _check_loads(data)
    m = src.manifest
    with staging_dir(out) as stage:
        produced = _engine_outputs(data, stage)
        outputs = [o.name for o in m.outputs if o.name in produced]
        provenance = {
            "converter": converter,
            "converter_version": _version(),
            "litert": _litert_version(),
            "quantization": ("int8 weights (dynamic range, "
                             f"{'per-channel' if config.per_channel else 'per-tensor'})"
                             if config.int8_weights else "none"),
            "conversion_seconds": round(convert_s, 3),
            **facts, **config.extra_provenance,
        }
        fields = carried_manifest(m, fmt="tflite", model_file=MODEL_FILE, output_names=outputs,
                                  provenance=provenance)
        if config.version:
            fields["version"] = config.version
        from converters.parity import compare_bundles, recompute_golden

        staged = write_bundle(stage / "bundle", fields, {MODEL_FILE: data})
        parity = compare_bundles(src.bundle, staged, rows=config.parity_rows)
        tol = config.tolerance
        # INT8 is judged on the real (golden) rows: synthetic rows far from the data make
        # activation quantization look worse than it is. Without golden rows: all rows.
        check = parity["golden"] if config.int8_weights and parity["golden"]["rows"] \
            else parity["all"]
        if not check["rows"]:
            raise ConversionError("nothing to check parity on: the source bundle has no golden "
                                  "vectors and parity_rows is 0", field="parity_rows")
        if check["max_rel_diff"] > tol:
            from converters.parity import describe_worst

            worst = describe_worst(parity) if check is parity["all"] else ""
            raise ConversionError(
                f"the TFLite model disagrees with the source: max |Δ| {check['max_abs_diff']:.3g} "
                f"(relative {check['max_rel_diff']:.3g}) > atol {tol:g} on {check['rows']} rows "
                f"(label agreement {check['label_agreement']:.4f}){worst}; nothing written "
                "(raise atol to accept)", field="parity", parity=parity)
        parity.pop("worst_row", None)
        fields["golden"] = recompute_golden(staged, m.golden)
        fields["provenance"]["parity"] = parity
        return publish(stage, out, fields, {MODEL_FILE: data}, key)


def _check_loads(data: bytes) -> None:
    from edge_runtime.engines.tflite import load_interpreter_class

    try:
        interp = load_interpreter_class()(model_content=data)
        interp.allocate_tensors()
    except Exception as exc:
        raise ConversionError(f"LiteRT refuses the written model: {exc}", field="model") from exc


def _engine_outputs(data: bytes, stage: Path) -> set[str]:
    from edge_runtime.engines.tflite import TFLiteEngine

    p = stage / "probe.tflite"
    p.write_bytes(data)
    eng = TFLiteEngine(p)
    names = set(eng.output_names)
    eng.close()
    p.unlink()
    return names


def _onnx2tf_convert(model) -> tuple[bytes, dict[str, Any]]:  # pragma: no cover - needs TF
    import tempfile

    import onnx
    import onnx2tf  # type: ignore

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "model.onnx"
        onnx.save(model, str(src))
        onnx2tf.convert(input_onnx_file_path=str(src), output_folder_path=str(Path(d) / "tf"),
                        non_verbose=True, keep_shape_absolutely_input_names=None)
        found = sorted((Path(d) / "tf").glob("*_float32.tflite"))
        if not found:
            raise ConversionError("onnx2tf produced no float32 .tflite file", field="fallback")
        return found[0].read_bytes(), {"fallback": "onnx2tf"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgefleet")
    except PackageNotFoundError:  # pragma: no cover
        return "0+unknown"


def _litert_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-edge-litert")
    except PackageNotFoundError:  # pragma: no cover
        return None
