"""StandardScaler exactly as scikit-learn computes it: ``(x - mean_) / scale_`` in float64.

skl2onnx writes a ``StandardScaler`` as ``ai.onnx.ml.Scaler`` in float32 (a multiply by a
float32 ``1/scale``; even its ``div_cast`` option rounds ``mean_`` to float32 first). Measured
on the churn pipeline: ~4,000 of 21,000 scaled cells land 1 ulp away from scikit-learn's
float64 result cast to float32 — harmless for most models, but a tree whose split values are
sample values (XGBoost's histogram splits) sends those rows down the other branch (max |Δ|
0.33). While :func:`exact_scalers` is active the converter writes Cast(double) → Sub(mean_)
→ Div(scale_) → Cast(float), the same IEEE operations scikit-learn runs. Export uses it only
when the float32 graph fails the parity gate: TFLite and Core ML take no float64.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

_LOCK = threading.RLock()


def _convert_scaler(scope, operator, container) -> None:  # skl2onnx converter signature
    from onnx import TensorProto
    from skl2onnx.algebra.onnx_ops import OnnxCast, OnnxDiv, OnnxSub

    op = operator.raw_operator
    n = int(op.n_features_in_)
    mean = np.asarray(op.mean_ if op.with_mean else np.zeros(n), dtype=np.float64)
    scale = np.asarray(op.scale_ if op.with_std and op.scale_ is not None else np.ones(n),
                       dtype=np.float64)
    opv = container.target_opset
    x = OnnxCast(operator.inputs[0], to=TensorProto.DOUBLE, op_version=opv)
    y = OnnxDiv(OnnxSub(x, mean, op_version=opv), scale, op_version=opv)
    out = OnnxCast(y, to=TensorProto.FLOAT, op_version=opv,
                   output_names=[operator.outputs[0].full_name])
    out.add_to(scope, container)


@contextmanager
def exact_scalers() -> Iterator[None]:
    """While active, a StandardScaler with one float input converts in float64."""
    from skl2onnx.common import _registration as reg

    with _LOCK:
        saved = reg._converter_pool.get("SklearnScaler")
        if saved is None:  # pragma: no cover - skl2onnx always registers it
            yield
            return
        orig = saved._fct

        def convert(scope, operator, container):
            from skl2onnx.common.data_types import FloatTensorType

            op = operator.raw_operator
            if (type(op).__name__ == "StandardScaler" and len(operator.inputs) == 1
                    and isinstance(operator.inputs[0].type, FloatTensorType)
                    and (not op.with_mean or getattr(op, "mean_", None) is not None)):
                return _convert_scaler(scope, operator, container)
            return orig(scope, operator, container)

        saved._fct = convert
        try:
            yield
        finally:
            saved._fct = orig


def has_standard_scaler(model) -> bool:
    from converters.trees import _estimators

    return any(type(m).__name__ == "StandardScaler" for m in _estimators(model))
