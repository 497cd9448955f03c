"""ONNX → TFLite without TensorFlow: the flatbuffer is written with LiteRT's own schema.

    from converters.tflite import onnx_to_tflite, TFLiteConfig
    onnx_to_tflite("bundles/cancer-1.0.0", "bundles/cancer-1.0.0-tflite",
                   TFLiteConfig(key="fleet.key", int8_weights=False))

Op support lives in :data:`converters.tflite.graph.REGISTRY` (one handler per
ONNX op type, see ``ops.py``); :func:`supported_ops` lists it.
"""

from converters.tflite.convert import (
                                       MODEL_FILE,
                                       TFLiteConfig,
                                       convert_model,
                                       onnx_to_tflite,
                                       supported_ops,
)

__all__ = ["MODEL_FILE", "TFLiteConfig", "convert_model", "onnx_to_tflite", "supported_ops"]
