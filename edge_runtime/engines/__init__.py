"""Engines run a model file: ONNX Runtime and LiteRT/TFLite behind one interface.

Third parties can add an engine through the ``edge_runtime.engines`` entry
point group (name = bundle format, value = Engine class).
"""

from __future__ import annotations

from edge_runtime.engines.base import Engine, EngineOptions
from edge_runtime.errors import BundleError


def engine_class(fmt: str) -> type[Engine]:
    if fmt == "onnx":
        try:
            from edge_runtime.engines.onnx import OnnxEngine
        except ImportError as exc:  # e.g. 32-bit ARM: no onnxruntime wheel exists
            raise BundleError("ONNX bundles need onnxruntime, which is not installed on this "
                              "device: install it, or ship the TFLite bundle",
                              field="format") from exc

        return OnnxEngine
    if fmt == "tflite":
        from edge_runtime.engines.tflite import TFLiteEngine

        return TFLiteEngine
    from importlib.metadata import entry_points

    for ep in entry_points(group="edge_runtime.engines"):
        if ep.name == fmt:
            return ep.load()
    if fmt == "coreml":
        raise BundleError("Core ML bundles cannot run on this platform (Core ML needs macOS/iOS)",
                          field="format")
    raise BundleError(f"no engine for format {fmt!r}", field="format")


__all__ = ["Engine", "EngineOptions", "engine_class"]
