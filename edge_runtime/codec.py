"""Codecs: raw tensors ⇄ numpy; JSON feature rows go through the contract.

Kept apart from engines (MLServer's codecs/ idea). Named-feature rows are
decoded and checked by :mod:`edge_runtime.contract` (``RowCodec`` is its old
name); this module keeps the raw-tensor side and JSON-safe output values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edge_runtime.contract import FeatureContract, RowCodec
from edge_runtime.errors import ValidationError
from edge_runtime.postprocess import json_safe

__all__ = ["FeatureContract", "RowCodec", "check_shape", "encode_tensors", "json_safe"]


def encode_tensors(specs, data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Raw tensors by name → arrays of the declared dtype and rank."""
    if not isinstance(data, Mapping):
        raise ValidationError("tensors must be an object of name → nested list", field="tensors")
    out = {}
    known = {s.name for s in specs}
    extra = sorted(set(data) - known)
    if extra:
        raise ValidationError(f"unknown tensor(s) {', '.join(extra)}", field=f"tensors.{extra[0]}")
    for spec in specs:
        if spec.name not in data:
            raise ValidationError(f"missing tensor {spec.name}", field=f"tensors.{spec.name}")
        try:
            arr = np.asarray(data[spec.name], dtype=spec.dtype)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"tensor {spec.name}: cannot convert to {spec.dtype}: {exc}",
                                  field=f"tensors.{spec.name}") from exc
        check_shape(spec, arr.shape, f"tensors.{spec.name}")
        out[spec.name] = arr
    return out


def check_shape(spec, shape: tuple[int, ...], field: str) -> None:
    if spec.shape and len(shape) != len(spec.shape):
        raise ValidationError(f"{field}: expected rank {len(spec.shape)} shape {spec.shape}, "
                              f"got {list(shape)}", field=field)
    for want, got in zip(spec.shape, shape):
        if want is not None and want != got:
            raise ValidationError(f"{field}: expected shape {spec.shape}, got {list(shape)}",
                                  field=field)
    if shape and shape[0] == 0:
        raise ValidationError(f"{field}: empty batch", field=field)
