"""The bundle manifest (``manifest.json``): what a model is and how to call it.

The manifest is the contract shared by devices, the hub and converters. It is
validated with pydantic so an invalid manifest is refused with the field and
the reason. The ed25519 signature covers :func:`canonical_bytes` of the
manifest without its ``signature`` member, and the manifest lists the sha256 of
every file, so the signature covers the model files too.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1

Format = Literal["onnx", "tflite", "coreml"]
Task = Literal["binary_classification", "multiclass_classification", "regression", "anomaly",
               "raw"]
DType = Literal["float32", "float64", "int64", "int32", "int8", "uint8", "bool"]
NanPolicy = Literal["reject", "allow"]
OutputRole = Literal["probabilities", "logits", "label", "value", "raw"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Feature(_Strict):
    """One named input feature, in the order the model expects it.

    A ``string`` feature (a text category) lists the ``categories`` seen in the
    exporter's sample; the contract feeds the engine the category's index in that
    list. ``unknown`` says what a category outside the list does, as the source
    model did: ``allow`` (it reaches the model as "unknown": ``handle_unknown=
    'ignore'`` / an unknown value) or ``reject`` (refused, naming the feature).
    """

    name: str = Field(min_length=1)
    dtype: Literal["float32", "float64", "int64", "int32", "bool", "string"] = "float32"
    min: float | None = None
    max: float | None = None
    nan: NanPolicy = "reject"
    categories: list[str] | None = None
    unknown: Literal["allow", "reject"] | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _categories(self) -> Feature:
        if self.dtype == "string":
            if not self.categories:
                raise ValueError(f"feature {self.name!r}: a string feature lists its categories")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"feature {self.name!r}: categories has duplicates")
        elif self.categories is not None or self.unknown is not None:
            raise ValueError(f"feature {self.name!r}: categories/unknown are for string features")
        return self


class TensorSpec(_Strict):
    """A raw tensor input or output; ``None`` in ``shape`` is a free dimension."""

    name: str = Field(min_length=1)
    dtype: DType = "float32"
    shape: list[int | None] = Field(default_factory=list)


class Inputs(_Strict):
    """Named features packed into one tensor, or raw tensors."""

    kind: Literal["features", "tensors"] = "features"
    tensor: str | None = None
    features: list[Feature] = Field(default_factory=list)
    tensors: list[TensorSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> "Inputs":
        if self.kind == "features":
            if not self.features:
                raise ValueError("inputs.features must list at least one feature")
            if not self.tensor:
                raise ValueError("inputs.tensor must name the engine input for features")
            names = [f.name for f in self.features]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"inputs.features has duplicate names: {sorted(dup)}")
        elif not self.tensors:
            raise ValueError("inputs.tensors must list at least one tensor")
        return self


class Output(_Strict):
    name: str = Field(min_length=1)
    role: OutputRole = "raw"


class RiskLevel(_Strict):
    name: str
    min: float


class PostProcess(_Strict):
    """Turns model outputs into decisions.

    ``threshold`` is the probability of ``positive_class`` at or above which a
    binary decision is positive; ``risk_levels`` (highest ``min`` first) name
    score bands, e.g. high >= 0.7, medium >= 0.4, low >= 0.

    ``label_from: output``: the label is the graph's ``label`` output (mapped to
    ``classes``), not the thresholded probability — for models whose own predict()
    does not follow their probabilities (``SVC(probability=True)`` decides with its
    decision function). Task ``anomaly``: the ``value`` output is the model's
    anomaly score (scikit-learn's ``decision_function``: lower = more abnormal);
    a row scoring below ``threshold`` is ``classes[0]`` ("anomaly"), else
    ``classes[1]`` ("normal").
    """

    classes: list[str | int] = Field(default_factory=list)
    positive_class: str | int | None = None
    threshold: float = 0.5
    risk_levels: list[RiskLevel] = Field(default_factory=list)
    label_from: Literal["threshold", "output"] = "threshold"

    @field_validator("risk_levels")
    @classmethod
    def _sorted(cls, v: list[RiskLevel]) -> list[RiskLevel]:
        return sorted(v, key=lambda r: r.min, reverse=True)


class GoldenVector(_Strict):
    """Inputs with the outputs the bundle must reproduce before it may run."""

    rows: list[dict[str, Any]] | None = None
    tensors: dict[str, Any] | None = None
    expected_probability: list[float] | None = None
    expected_value: list[float] | None = None
    expected_label: list[str | int] | None = None
    atol: float = 1e-4


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Signature(_Strict):
    alg: Literal["ed25519"] = "ed25519"
    key_id: str
    value: str


class Manifest(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    version: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-+]+$")
    format: Format
    model_file: str
    files: dict[str, FileEntry]
    task: Task
    inputs: Inputs
    outputs: list[Output] = Field(default_factory=list)
    postprocess: PostProcess = Field(default_factory=PostProcess)
    golden: list[GoldenVector] = Field(default_factory=list)
    provenance: dict[str, Any] = Field(default_factory=dict)
    created_at: str | None = None
    signature: Signature | None = None

    @model_validator(mode="after")
    def _check(self) -> "Manifest":
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is not supported")
        if self.model_file not in self.files:
            raise ValueError(f"model_file {self.model_file!r} is not listed in files")
        for name in self.files:
            if name.startswith("/") or ".." in name.split("/") or name == "manifest.json":
                raise ValueError(f"files has an unsafe name: {name!r}")
        if self.task in ("binary_classification", "multiclass_classification"):
            roles = {o.role for o in self.outputs}
            if not roles & {"probabilities", "logits"}:
                raise ValueError("a classification bundle needs an output with role "
                                 "'probabilities' or 'logits'")
        if self.task == "binary_classification" and len(self.postprocess.classes) not in (0, 2):
            raise ValueError("postprocess.classes must have 2 entries for binary_classification")
        if self.task in ("binary_classification", "multiclass_classification") and \
                not 0.0 <= self.postprocess.threshold <= 1.0:
            raise ValueError("postprocess.threshold must be between 0 and 1 for a classifier")
        if self.postprocess.label_from == "output" and "label" not in {o.role for o in self.outputs}:
            raise ValueError("postprocess.label_from 'output' needs an output with role 'label'")
        if self.task == "anomaly":
            if "value" not in {o.role for o in self.outputs}:
                raise ValueError("an anomaly bundle needs an output with role 'value' (the score)")
            if len(self.postprocess.classes) != 2:
                raise ValueError("postprocess.classes of an anomaly bundle: [anomaly, normal]")
        return self

    # ---- identity -------------------------------------------------------------
    def unsigned_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude_none=True)
        data.pop("signature", None)
        return data

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.unsigned_dict())

    @property
    def digest(self) -> str:
        """sha256 of the canonical unsigned manifest: the bundle's identity."""
        import hashlib

        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.inputs.features]


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()
