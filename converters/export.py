"""Export a trained model to a signed ONNX bundle (``edge-convert export``).

    export_model(model_or_path, sample, out_dir, ExportConfig(key=...)) -> Path

Supported sources: scikit-learn estimators and pipelines (a Python object or a
joblib/pickle file), LightGBM and XGBoost scikit-learn wrappers (also inside
pipelines, through onnxmltools' converters registered with skl2onnx), PyTorch
modules when torch is installed (``torch.onnx``; the ``torch`` extra), and ONNX
files made elsewhere (wrapped as they are; ``task`` tells what an ambiguous
output means).

From the model and the sample the bundle gets: the input contract (feature
names from ``feature_names_in_`` or the sample's columns, dtypes, optional
observed min/max), the task (binary / multiclass / regression), the
post-processing (classes, positive class, threshold, risk levels high /
medium / low at 0.7 / 0.4 for binary), golden vectors drawn from the sample,
and provenance with the parity measured between the ONNX graph and the
source model (:mod:`converters.gate`): on the sample rows and on held-out-like
rows (:mod:`converters.heldout`: each feature resampled within the sample's
range, missing values where the feature allows them), every output compared
(max |Δ| <= ``parity_tolerance``, default 1e-4; values relative to
max(1, |value|)) and labels compared with the model's own ``predict``. A
conversion that does not answer like the source is refused naming the worst
row, and nothing is left at ``out_dir``. Tree ensembles are converted with
scikit-learn's exact routing (:mod:`converters.trees`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pickle
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from converters import columns, gate, heldout
from converters.onnx_source import ConversionError
from converters.sample import Sample, finalize, load_sample
from converters.scalers import exact_scalers, has_standard_scaler
from converters.trees import exact_trees, refuse_unsupported
from edge_runtime.bundle import MANIFEST, read_bundle, write_bundle
from edge_runtime.errors import BundleError, EdgeError, EngineError, ValidationError

Task = Literal["binary_classification", "multiclass_classification", "regression"]
TASK_ALIASES = {"binary": "binary_classification", "multiclass": "multiclass_classification",
                "regression": "regression", "binary_classification": "binary_classification",
                "multiclass_classification": "multiclass_classification"}
DEFAULT_RISK_LEVELS = (("high", 0.7), ("medium", 0.4), ("low", 0.0))
KEY_ENV = "EDGE_CONVERT_KEY"
ANOMALY_CLASSES = ("anomaly", "normal")  # below / at or above the threshold
TARGET_OPSET = 17
ML_OPSET = 3


@dataclass
class ExportConfig:
    """Options of ``edge-convert export``; every field has a CLI flag."""

    key: Any = None  # ed25519 private key (path, PEM or object); default $EDGE_CONVERT_KEY
    name: str | None = None  # bundle name; default: model file stem or estimator class
    version: str = "1.0.0"
    label_column: str | None = None  # sample column holding labels (removed from features)
    feature_names: Sequence[str] | None = None  # names for an unnamed (array) sample / selection
    task: str | None = None  # binary | multiclass | regression; inferred when None
    class_names: Sequence[str | int] | None = None  # rename classes_ (same order)
    positive_class: str | int | None = None  # binary: default is the second class
    threshold: float = 0.5
    risk_levels: Sequence[tuple[str, float]] | None = DEFAULT_RISK_LEVELS  # binary only
    golden_rows: int = 8
    record_ranges: bool = False  # put the sample's observed min/max in the contract
    output_role: Literal["logits", "probabilities"] = "logits"  # torch classifiers
    min_label_agreement: float = 0.99  # refuse a conversion that agrees less with the source
    parity_rows: int = 2000  # sample rows used for the parity check
    heldout_rows: int = 1000  # held-out-like rows (converters.heldout) also checked
    heldout_seed: int = 0
    parity_tolerance: float = gate.DEFAULT_TOLERANCE  # max |Δ| per output (values: relative)
    target_opset: int = TARGET_OPSET
    overwrite: bool = False  # replace an existing bundle at out_dir
    description: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)  # extra provenance fields


# ---- keys and output paths (shared with quantize) -----------------------------------

def resolve_key(key: Any):
    """The signing key from the argument or ``$EDGE_CONVERT_KEY``; clear error if none."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge_runtime.signing import load_private_key

    if key is None:
        key = os.environ.get(KEY_ENV) or None
    if key is None:
        raise ValidationError(f"no signing key: pass --key FILE or set {KEY_ENV} "
                              "(create one with `edge-convert keygen`)", field="key")
    if isinstance(key, Ed25519PrivateKey):
        return key
    return load_private_key(key)


def check_out_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """Refuse to clobber something that is not ours (checked before any work)."""
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise ValidationError(f"output {out} exists and is not a directory", field="out")
        if any(out.iterdir()):
            if not (out / MANIFEST).exists():
                raise ValidationError(f"output {out} is a non-empty directory that is not a "
                                      "bundle; choose another --out", field="out")
            if not overwrite:
                raise ValidationError(f"output {out} already holds a bundle; pass --force to "
                                      "replace it", field="out")
    return out


def _check_config(cfg: ExportConfig) -> None:
    import re

    if cfg.name is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]+", cfg.name):
        raise ValidationError(f"name {cfg.name!r} may only use letters, digits, '_', '.', '-'",
                              field="name")
    if not re.fullmatch(r"[A-Za-z0-9_.\-+]+", cfg.version or ""):
        raise ValidationError(f"version {cfg.version!r} may only use letters, digits, '_.-+'",
                              field="version")
    if cfg.task is not None and cfg.task not in TASK_ALIASES:
        raise ValidationError(f"task {cfg.task!r} is not one of binary, multiclass, regression",
                              field="task")
    if not 0.0 <= cfg.threshold <= 1.0:
        raise ValidationError("threshold must be between 0 and 1", field="threshold")
    if cfg.golden_rows < 1:
        raise ValidationError("golden_rows must be at least 1", field="golden_rows")
    if cfg.output_role not in ("logits", "probabilities"):
        raise ValidationError(f"output_role {cfg.output_role!r} is not logits or probabilities",
                              field="output_role")


# ---- the public entry point -------------------------------------------------------

def export_model(model_or_path: Any, sample: Any, out_dir: str | Path,
                 config: ExportConfig | None = None) -> Path:
    """Convert ``model_or_path`` to a signed ONNX bundle at ``out_dir``; return its path."""
    cfg = config or ExportConfig()
    _check_config(cfg)
    key = resolve_key(cfg.key)
    out = check_out_dir(out_dir, cfg.overwrite)
    t0 = time.perf_counter()
    model, source_name = load_model(model_or_path)
    kind = model_kind(model)
    names = (_model_feature_names(model) if kind == "sklearn" else None) or cfg.feature_names
    smp = load_sample(sample, label_column=cfg.label_column, feature_names=names)
    smp = finalize(smp)
    if kind == "torch":
        conv = _convert_torch(model, smp, cfg)
    elif kind == "onnx":
        conv = _wrap_onnx(model, smp, cfg)
    else:
        conv = _convert_sklearn(model, smp, cfg)
    conv.seconds = time.perf_counter() - t0
    name = cfg.name or _default_name(source_name, model)
    try:
        _write(out, name, conv, smp, cfg, key, source_name, model)
    except ConversionError as exc:
        # a float32 Scaler 1 ulp off can flip a split downstream: once more with scikit-learn's
        # float64 arithmetic (ONNX-only: TFLite / Core ML take no float64), else the refusal
        if kind != "sklearn" or exc.field != "parity" or not has_standard_scaler(model):
            raise
        conv = _convert_sklearn(model, smp, cfg, float64_scalers=True)
        conv.seconds = time.perf_counter() - t0
        cfg = dataclasses.replace(cfg, provenance={**cfg.provenance, "scalers": "float64"})
        _write(out, name, conv, smp, cfg, key, source_name, model)
    return out


# ---- loading -----------------------------------------------------------------------

def load_model(model_or_path: Any) -> tuple[Any, str]:
    """A fitted model object and a short source name; corrupt files → ValidationError."""
    if not isinstance(model_or_path, (str, Path)):
        return model_or_path, type(model_or_path).__name__
    path = Path(model_or_path)
    if not path.is_file():
        raise ValidationError(f"model file not found: {path}", field="model")
    if path.suffix.lower() == ".onnx":
        import onnx

        try:
            model = onnx.load_model(str(path), load_external_data=False)
            onnx.checker.check_model(model)
        except Exception as exc:  # protobuf DecodeError, ValidationError, …
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise ValidationError(f"cannot load model {path.name}: not a valid ONNX model "
                                  f"({first})", field="model") from exc
        return model, path.stem
    if path.suffix.lower() in (".pt", ".pth"):
        try:
            import torch
        except ImportError as exc:
            raise ValidationError("PyTorch models need torch (pip install 'edgefleet[torch]')",
                                  field="model") from exc
        try:
            return torch.load(path, weights_only=False, map_location="cpu"), path.stem
        except Exception as exc:
            raise ValidationError(f"cannot load PyTorch model {path.name}: {exc}",
                                  field="model") from exc
    import joblib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = joblib.load(path)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, ImportError, ModuleNotFoundError, OSError) as exc:
        raise ValidationError(f"cannot load model {path.name}: not a valid joblib/pickle file "
                              f"({type(exc).__name__}: {str(exc)[:120]})", field="model") from exc
    return model, path.stem


def model_kind(model: Any) -> str:
    import sys

    torch = sys.modules.get("torch")  # a torch module implies torch is imported already
    if torch is not None and isinstance(model, torch.nn.Module):
        return "torch"
    if type(model).__name__ == "ModelProto" and type(model).__module__.startswith("onnx"):
        return "onnx"
    if hasattr(model, "predict") and hasattr(model, "fit"):
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        try:
            check_is_fitted(model)
        except NotFittedError as exc:
            raise ValidationError(f"{type(model).__name__} is not fitted: train it before "
                                  "exporting", field="model") from exc
        except TypeError:
            pass
        return "sklearn"
    raise ValidationError(f"cannot export a {type(model).__module__}.{type(model).__name__}: "
                          "expected a scikit-learn / LightGBM / XGBoost estimator or pipeline, "
                          "or a torch.nn.Module", field="model")


def _model_feature_names(model: Any) -> list[str] | None:
    names = getattr(model, "feature_names_in_", None)
    if names is None and hasattr(model, "steps"):
        names = getattr(model.steps[0][1], "feature_names_in_", None)
    return [str(n) for n in names] if names is not None else None


def _default_name(source_name: str, model: Any) -> str:
    import re

    base = source_name if source_name else type(model).__name__
    base = re.sub(r"[^A-Za-z0-9_.\-]+", "-", base).strip("-.") or "model"
    return base


# ---- conversions -------------------------------------------------------------------

@dataclass
class _Converted:
    onnx_bytes: bytes
    task: str
    input_name: str
    outputs: list[dict[str, str]]
    classes: list[Any]
    ref: dict[str, np.ndarray]  # source-model answers on the parity rows
    converter: str
    seconds: float = 0.0
    # the source model's answers on any float64 rows (the parity gate's reference):
    # {"probabilities", "label" (class index, from the model's own predict)} or {"value"}
    reference: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None
    label_output: bool = False  # labels come from the graph's label output (see _label_source)
    unknown: dict[str, str] = field(default_factory=dict)  # text feature → allow | reject


_REGISTERED = False


def _register_boosters() -> None:
    """Teach skl2onnx LightGBM / XGBoost through onnxmltools (also inside pipelines)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    opts = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        import lightgbm
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(lightgbm.LGBMClassifier, "LightGbmLGBMClassifier",
                                    calculate_linear_classifier_output_shapes, convert_lightgbm,
                                    options=opts)
        update_registered_converter(lightgbm.LGBMRegressor, "LightGbmLGBMRegressor",
                                    calculate_linear_regressor_output_shapes, convert_lightgbm,
                                    options={"split": None})
    except ImportError:
        pass
    try:
        import xgboost
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost

        update_registered_converter(xgboost.XGBClassifier, "XGBoostXGBClassifier",
                                    calculate_linear_classifier_output_shapes, convert_xgboost,
                                    options=opts)
        update_registered_converter(xgboost.XGBRegressor, "XGBoostXGBRegressor",
                                    calculate_linear_regressor_output_shapes, convert_xgboost)
    except ImportError:
        pass
    _REGISTERED = True


def _walk(model: Any):
    yield model
    for attr in ("steps",):
        for _, step in getattr(model, attr, []) or []:
            yield from _walk(step)


def _convert_sklearn(model: Any, smp: Sample, cfg: ExportConfig,
                     float64_scalers: bool = False) -> _Converted:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.base import is_classifier, is_outlier_detector, is_regressor

    if smp.is_tensor:
        raise ValidationError("scikit-learn models take feature rows: give a CSV/Parquet sample",
                              field="sample")
    n_in = getattr(model, "n_features_in_", None)
    if n_in is not None and n_in != len(smp.names):
        hint = "" if cfg.label_column else " (is the label still in the sample? pass --label-column)"
        raise ValidationError(f"the model expects {n_in} features, the sample has "
                              f"{len(smp.names)} columns{hint}", field="sample")
    classifier = is_classifier(model)
    anomaly = is_outlier_detector(model)
    if not classifier and not is_regressor(model) and not anomaly:
        raise ValidationError(f"{type(model).__name__} is neither a classifier, a regressor nor "
                              "an outlier detector", field="model")
    _register_boosters()
    refuse_unsupported(model)
    source = model
    model = _xgboost_without_names(model)
    options = {id(m): {"zipmap": False} for m in _walk(model) if is_classifier(m)}
    x32 = smp.x.astype(np.float32)
    by_column = columns.needs_columns(model, smp)
    text = [n for n in smp.names if smp.dtypes.get(n) == "string"]
    if text:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.predict(smp.frame(smp.x[:5]))
        except Exception as exc:  # the model refusing text, in its own words
            if type(model).__module__.split(".")[0] in ("lightgbm", "xgboost"):
                raise ValidationError(
                    f"sample column {text[0]!r} is categorical: {type(model).__name__}'s native "
                    "categorical features (pandas 'category' columns) are not exported — their "
                    "category-set splits have no ONNX TreeEnsemble equivalent (ai.onnx.ml opset "
                    "3); encode the column in a pipeline (OrdinalEncoder / OneHotEncoder) and "
                    "train on that", field=f"sample.{text[0]}", dtype="string") from exc
            raise ValidationError(
                f"sample column {text[0]!r} holds text, which {type(model).__name__} cannot take "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); it expects numeric "
                "features there, or encode the text in the pipeline (OneHotEncoder, "
                "OrdinalEncoder)", field=f"sample.{text[0]}", dtype="string") from exc
    initial = (columns.initial_types(smp) if by_column
               else [("input", FloatTensorType([None, len(smp.names)]))])
    try:
        scalers = exact_scalers() if float64_scalers else contextlib.nullcontext()
        with warnings.catch_warnings(), exact_trees(), scalers:
            warnings.simplefilter("ignore")
            onx = convert_sklearn(model, initial_types=initial, options=options,
                                  target_opset={"": cfg.target_opset, "ai.onnx.ml": ML_OPSET})
        if by_column:
            onx = columns.with_front(onx, smp)
    except EdgeError:
        raise
    except Exception as exc:  # skl2onnx raises RuntimeError/NotImplementedError/… per converter
        raise EngineError(f"skl2onnx cannot convert {type(model).__name__}: "
                          f"{_first_reason(exc)}", field="model") from exc
    model = source  # the reference answers come from the user's model, untouched
    reference = _sklearn_reference(model, smp, classifier, by_column)
    ref = reference(x32[: cfg.parity_rows].astype(np.float64))
    out_names = [o.name for o in onx.graph.output]
    if anomaly:
        # skl2onnx: label (-1 anomaly / 1 normal) and scores (decision_function)
        classes, task = list(ANOMALY_CLASSES), "anomaly"
        outputs = [{"name": out_names[0], "role": "label"},
                   {"name": out_names[1], "role": "value"}]
    elif classifier:
        classes = [_plain(c) for c in model.classes_]
        task = "binary_classification" if len(classes) == 2 else "multiclass_classification"
        outputs = [{"name": out_names[0], "role": "label"},
                   {"name": out_names[1], "role": "probabilities"}]
    else:
        classes, task = [], "regression"
        outputs = [{"name": out_names[0], "role": "value"}]
    if cfg.task is not None and TASK_ALIASES[cfg.task] != task:
        raise ValidationError(f"task {cfg.task!r} does not match the model, which is a "
                              f"{task.replace('_', ' ')} model", field="task")
    return _Converted(onx.SerializeToString(), task, "input", outputs, classes, ref,
                      converter=_converter_name(model),
                      reference=reference, unknown=columns.unknown_policy(source, smp))


def _first_reason(exc: BaseException) -> str:
    """skl2onnx's message without the attribute dump it appends (which hid the cause)."""
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    if "attributes=" in text and cause is not None:
        return f"{text.split(' and attributes=')[0]}: {type(cause).__name__}: " \
               f"{str(cause).splitlines()[0][:200]}"
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _sklearn_reference(model: Any, smp: Sample, classifier: bool, by_column: bool):
    from sklearn.base import is_outlier_detector

    classes = [_plain(c) for c in getattr(model, "classes_", [])]
    names = smp.names
    anomaly = is_outlier_detector(model)

    def reference(x: np.ndarray) -> dict[str, np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xin = smp.frame(x) if by_column else _as_model_input(model, x, names)
            if anomaly:  # predict(): -1 anomaly → classes[0], 1 normal → classes[1]
                v = np.asarray(model.decision_function(xin), dtype=np.float64).reshape(-1)
                return {"value": v, "label": (np.asarray(model.predict(xin)) == 1).astype(int)}
            if not classifier:
                v = np.asarray(model.predict(xin), dtype=np.float64).reshape(len(x), -1)[:, 0]
                return {"value": v}
            p = np.asarray(model.predict_proba(xin), dtype=np.float64)
            pred = [_plain(c) for c in np.asarray(model.predict(xin)).tolist()]
        index = {c: i for i, c in enumerate(classes)}
        return {"probabilities": p, "label": np.array([index.get(c, -1) for c in pred])}

    return reference


def _xgboost_without_names(model: Any) -> Any:
    """onnxmltools reads XGBoost trees by feature *index* (f0, f1, …): a model fitted on a
    DataFrame is converted from a copy whose booster forgets the column names."""
    named = [m for m in _walk(model) if type(m).__module__.startswith("xgboost")
             and hasattr(m, "get_booster") and m.get_booster().feature_names]
    if not named:
        return model
    import copy

    clone = copy.deepcopy(model)
    for m in _walk(clone):
        if type(m).__module__.startswith("xgboost") and hasattr(m, "get_booster"):
            m.get_booster().feature_names = None
    return clone


def _as_model_input(model: Any, x: np.ndarray, names: list[str]) -> Any:
    """Models fitted on a DataFrame get a DataFrame (same names) for the reference run."""
    if getattr(model, "feature_names_in_", None) is None:
        return x
    try:
        import pandas as pd

        return pd.DataFrame(x, columns=names)
    except ImportError:
        return x


def _converter_name(model: Any) -> str:
    import skl2onnx

    mods = {type(m).__module__.split(".")[0] for m in _walk(model)}
    if mods & {"lightgbm", "xgboost"}:
        import onnxmltools

        return f"skl2onnx {skl2onnx.__version__} + onnxmltools {onnxmltools.__version__}"
    return f"skl2onnx {skl2onnx.__version__}"


def _convert_torch(module: Any, smp: Sample, cfg: ExportConfig) -> _Converted:
    import torch

    module = module.eval()
    x32 = smp.x.astype(np.float32)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.from_numpy(x32[:2]),), buf, input_names=["input"],
                              output_names=["output"], opset_version=cfg.target_opset,
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                              dynamo=False)
    except Exception as exc:
        raise EngineError(f"torch.onnx cannot export {type(module).__name__}: "
                          f"{str(exc).splitlines()[0][:300]}", field="model") from exc
    with torch.no_grad():
        outs = []
        for i in range(0, min(len(x32), cfg.parity_rows), 256):
            outs.append(module(torch.from_numpy(x32[i:i + 256])).numpy())
        raw = np.concatenate(outs).astype(np.float64)
    raw2 = raw.reshape(len(raw), -1)
    task = TASK_ALIASES[cfg.task] if cfg.task else (
        "regression" if raw2.shape[1] == 1 else
        "binary_classification" if raw2.shape[1] == 2 else "multiclass_classification")
    if task == "regression":
        return _Converted(buf.getvalue(), task, "input", [{"name": "output", "role": "value"}], [],
                          {"value": raw2[:, 0]}, converter=f"torch.onnx {torch.__version__}",
                          reference=_torch_reference(module, task, "value"))
    if raw2.shape[1] < 2:
        raise ValidationError("a torch classifier must output one column per class "
                              f"(got {raw2.shape[1]})", field="task")
    probs = _class_probabilities(raw2, cfg.output_role)
    classes = list(range(raw2.shape[1]))
    return _Converted(buf.getvalue(), task, "input", [{"name": "output", "role": cfg.output_role}],
                      classes, {"probabilities": probs, "label": probs.argmax(axis=1)},
                      converter=f"torch.onnx {torch.__version__}",
                      reference=_torch_reference(module, task, cfg.output_role))


def _torch_reference(module: Any, task: str, role: str):
    import torch

    def reference(x: np.ndarray) -> dict[str, np.ndarray]:
        x32 = x.astype(np.float32)
        with torch.no_grad():
            raw = np.concatenate([module(torch.from_numpy(x32[i:i + 256])).numpy()
                                  for i in range(0, len(x32), 256)]).astype(np.float64)
        raw = raw.reshape(len(raw), -1)
        if task == "regression":
            return {"value": raw[:, 0]}
        p = _class_probabilities(raw, role)
        return {"probabilities": p, "label": p.argmax(axis=1)}

    return reference


def _wrap_onnx(model: Any, smp: Sample, cfg: ExportConfig) -> _Converted:
    """An ONNX file made elsewhere (torch.onnx, tf2onnx, …): the bundle gets a contract,
    post-processing and golden vectors; the reference is the file itself."""
    import onnxruntime as ort

    data = model.SerializeToString()
    try:
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ValidationError(f"ONNX Runtime cannot load the model: {str(exc)[:300]}",
                              field="model") from exc
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise ValidationError(f"the ONNX model has {len(inputs)} inputs; export takes models "
                              "with one input tensor", field="model")
    name = inputs[0].name
    shape = inputs[0].shape or []
    if not smp.is_tensor and len(shape) == 2 and isinstance(shape[1], int) \
            and shape[1] != len(smp.names):
        hint = "" if cfg.label_column else " (is the label still in the sample? pass --label-column)"
        raise ValidationError(f"the model expects {shape[1]} features, the sample has "
                              f"{len(smp.names)} columns{hint}", field="sample")
    x32 = smp.x[: cfg.parity_rows].astype(np.float32)
    try:
        outs = sess.run(None, {name: x32})
    except Exception as exc:
        raise ValidationError(f"the ONNX model does not run on the sample: "
                              f"{str(exc).splitlines()[0][:300]}", field="sample") from exc
    out_names = [o.name for o in sess.get_outputs()]
    by_name = dict(zip(out_names, outs))
    if "probabilities" in by_name:  # skl2onnx-style classifier (zipmap=False)
        role, head = "probabilities", "probabilities"
    else:
        head = next(n for n, o in by_name.items() if np.asarray(o).dtype.kind == "f")
        width = np.asarray(by_name[head]).reshape(len(x32), -1).shape[1]
        if cfg.task is None and width > 1:
            raise ValidationError(f"cannot tell what output {head!r} ({width} columns) is: pass "
                                  "--task binary|multiclass (and output_role logits or "
                                  "probabilities) or --task regression", field="task")
        given = TASK_ALIASES[cfg.task] if cfg.task else None
        # one column is a value, unless --task binary says it is the positive class's
        # logit (or probability)
        role = "value" if given == "regression" or (width == 1 and given != "binary_classification") \
            else cfg.output_role
    raw = np.asarray(by_name[head], dtype=np.float64).reshape(len(x32), -1)
    if role == "value":
        return _Converted(data, "regression", name, [{"name": head, "role": "value"}], [],
                          {"value": raw[:, 0]}, converter="onnx file (wrapped as is)")
    probs = _class_probabilities(raw, role)
    task = TASK_ALIASES[cfg.task] if cfg.task else (
        "binary_classification" if probs.shape[1] == 2 else "multiclass_classification")
    outputs = [{"name": head, "role": role}]
    if "label" in by_name:
        outputs.insert(0, {"name": "label", "role": "label"})
    return _Converted(data, task, name, outputs, list(range(probs.shape[1])),
                      {"probabilities": probs, "label": probs.argmax(axis=1)},
                      converter="onnx file (wrapped as is)")


def _class_probabilities(head: Any, role: str) -> np.ndarray:
    """A classifier head's output → (rows, classes) probabilities, scored as the edge runtime
    scores it (``edge_runtime.model``): a softmax over several logit columns, a sigmoid over a
    single logit column (binary; a softmax over one column is always 1.0), and a single
    column (logit or probability) read as the positive class: ``[1 - p, p]``."""
    raw = np.asarray(head, dtype=np.float64)
    raw = raw.reshape(len(raw), -1)
    if raw.shape[1] == 1:
        p1 = raw[:, 0]
        if role == "logits":
            with np.errstate(over="ignore"):
                p1 = 1.0 / (1.0 + np.exp(-p1))
        return np.stack([1.0 - p1, p1], axis=1)
    if role == "logits":
        e = np.exp(raw - raw.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return raw


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v if isinstance(v, (int, str)) else str(v)


# ---- bundle assembly ---------------------------------------------------------------

def _write(out: Path, name: str, conv: _Converted, smp: Sample, cfg: ExportConfig, key: Any,
           source_name: str, model: Any) -> None:
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(conv.onnx_bytes, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise EngineError(f"ONNX Runtime cannot load the converted model: {exc}") from exc
    n_par = min(len(smp), cfg.parity_rows)
    x32 = smp.x[:n_par].astype(np.float32)
    feed = {sess.get_inputs()[0].name: x32}
    out_names = [o["name"] for o in conv.outputs]
    got = dict(zip(out_names, sess.run(out_names, feed)))

    classes = list(conv.classes)
    if cfg.class_names is not None:
        if len(cfg.class_names) != len(classes):
            raise ValidationError(f"class_names has {len(cfg.class_names)} names, the model has "
                                  f"{len(classes)} classes", field="class_names")
        classes = [_plain(c) for c in cfg.class_names]
    task = conv.task
    post: dict[str, Any] = {}
    if task == "anomaly":
        post.update(classes=list(ANOMALY_CLASSES), positive_class=ANOMALY_CLASSES[0],
                    threshold=0.0)
    elif task != "regression":
        post["classes"] = classes
        if task == "binary_classification":
            pos = cfg.positive_class if cfg.positive_class is not None else classes[1]
            if pos not in classes and str(pos) in [str(c) for c in classes]:
                pos = classes[[str(c) for c in classes].index(str(pos))]
            if pos not in classes:
                raise ValidationError(f"positive_class {pos!r} is not one of the classes {classes}",
                                      field="positive_class")
            post.update(positive_class=pos, threshold=cfg.threshold)
            if cfg.risk_levels:
                post["risk_levels"] = [{"name": n, "min": float(m)} for n, m in cfg.risk_levels]
    parity = _parity_gate(sess, conv, smp, cfg, task, post, n_par)
    post.pop("user_threshold", None)
    settled = post.pop("_settled", None)
    if settled:
        parity["boundaries_settled"] = settled
    agreement = parity.get("label_agreement", 1.0)
    if conv.reference is None and agreement < cfg.min_label_agreement:
        raise EngineError(f"the ONNX model disagrees with the source model on "
                          f"{(1 - agreement) * 100:.2f}% of {n_par} sample rows (max |diff| "
                          f"{parity['max_abs_diff']:.3g}); refusing to write a bundle that does "
                          "not answer like the source", field="model")

    inputs = _inputs(smp, conv, cfg)
    golden = _golden(smp, conv, got, out_names, task, post, cfg)
    provenance = {
        "source": source_name, "source_type": f"{type(model).__module__}.{type(model).__name__}",
        "converter": conv.converter, "opset": cfg.target_opset, "sample": Path(smp.source).name,
        "sample_rows": len(smp), "parity": parity, "conversion_seconds": round(conv.seconds, 3),
    }
    if not smp.is_tensor:
        provenance["sample_profile"] = heldout.profile(
            smp.x, smp.names, smp.dtypes, {n: v == "allow" for n, v in conv.unknown.items()})
    acc = _sample_accuracy(smp, got, conv, post, task, n_par)
    if acc is not None:
        provenance["sample_accuracy"] = acc
    provenance.update(cfg.provenance)
    manifest = {
        "name": name, "version": cfg.version, "format": "onnx", "model_file": "model.onnx",
        "task": task, "inputs": inputs, "outputs": conv.outputs, "postprocess": post,
        "golden": golden, "provenance": provenance,
    }
    write_bundle(out, manifest, {"model.onnx": conv.onnx_bytes}, key=key)
    self_test_or_remove(out)


def _bundle_answers(sess: Any, conv: _Converted, x: np.ndarray, task: str,
                    post: dict[str, Any]) -> dict[str, np.ndarray]:
    """The written graph's answers post-processed as ``edge_runtime.model`` does."""
    names = [o["name"] for o in conv.outputs]
    outs = []
    for i in range(0, len(x), 4096):
        feed = {sess.get_inputs()[0].name: x[i:i + 4096].astype(np.float32)}
        outs.append(sess.run(names, feed))
    got = {n: np.concatenate([o[k] for o in outs]) for k, n in enumerate(names)}
    by_role = {o["role"]: got[o["name"]] for o in conv.outputs}
    if task == "regression":
        return {"value": np.asarray(by_role["value"], np.float64).reshape(len(x), -1)[:, 0]}
    if task == "anomaly":
        v = np.asarray(by_role["value"], np.float64).reshape(len(x), -1)[:, 0]
        return {"value": v, "label": np.where(v < post["threshold"], 0, 1)}
    role = next(o for o in conv.outputs if o["role"] in ("probabilities", "logits"))
    probs = _class_probabilities(got[role["name"]], role["role"])
    if post.get("label_from") == "output":
        return {"probabilities": probs, "label": graph_labels(by_role["label"], conv.classes)}
    if task == "binary_classification":
        pos = post["classes"].index(post["positive_class"])
        label = np.where(probs[:, pos] >= post["threshold"], pos, 1 - pos)
    else:
        label = probs.argmax(axis=1)
    return {"probabilities": probs, "label": label}


def graph_labels(labels: Any, classes: list[Any]) -> np.ndarray:
    """A graph's label output → indices into the model's classes (-1: not a class)."""
    index = {str(c): i for i, c in enumerate(classes)}
    flat = np.asarray(labels).reshape(-1).tolist()
    keys = [v.decode() if isinstance(v, bytes) else str(_plain(v)) for v in flat]
    return np.array([index.get(k, -1) for k in keys])


#: how far a decision boundary moves when the source model sits exactly on it: above the
#: float32 noise of an ONNX Runtime sum (~1e-7), far below any probability a model resolves
TIE_EPS = 2.0**-20


def _settle_ties(ref: dict[str, np.ndarray], post: dict[str, Any]) -> None:
    """Source probabilities exactly on a boundary (a forest's 25 of 50 votes = 0.5) come out
    of a float32 graph as 0.49999997 or 0.50000003: decided at random. Where the source has
    such rows, move the boundary by TIE_EPS to the side its own decision takes: above the
    threshold when predict() gives the negative class on the tie (argmax picks the first
    class), below a risk level's min (bands include their min)."""
    pos = post["classes"].index(post["positive_class"])
    p = ref["probabilities"][:, pos]
    thr = post["threshold"]
    on = p == thr
    settled = {}
    if on.any():
        # the default threshold answers like predict(); a chosen one means "p >= threshold"
        neg = thr == 0.5 and "label" in ref and bool(np.all(ref["label"][on] != pos))
        post["threshold"] = thr + TIE_EPS if neg else thr - TIE_EPS
        settled["threshold"] = {"from": thr, "to": post["threshold"], "rows": int(on.sum())}
    for r in post.get("risk_levels", []):
        hits = int((p == r["min"]).sum())
        if hits and r["min"] > 0:
            settled[f"risk_level.{r['name']}"] = {"from": r["min"], "to": r["min"] - TIE_EPS,
                                                  "rows": hits}
            r["min"] = r["min"] - TIE_EPS
    if settled:
        post["_settled"] = settled
    post["user_threshold"] = thr


def _parity_gate(sess: Any, conv: _Converted, smp: Sample, cfg: ExportConfig, task: str,
                 post: dict[str, Any], n_par: int) -> dict[str, Any]:
    """Measure the graph being written against the source model on the sample rows and on
    held-out-like rows (:mod:`converters.heldout`); refuse past ``cfg.parity_tolerance``."""
    xs = smp.x[:n_par].astype(np.float32).astype(np.float64)
    split = {"sample": len(xs)}
    x = xs
    if not smp.is_tensor and cfg.heldout_rows > 0:
        unseen = {n: v == "allow" for n, v in conv.unknown.items()}
        xh = heldout.rows(heldout.columns_of(smp.x, smp.names, smp.dtypes, unseen),
                          cfg.heldout_rows, seed=cfg.heldout_seed)
        x = np.concatenate([xs, xh])
        split["heldout"] = len(xh)
    if conv.reference is None:  # an ONNX file wrapped as is: it is its own reference
        ref = {k: np.asarray(v)[:n_par] for k, v in conv.ref.items()}
        got = _bundle_answers(sess, conv, xs, task, post)
        x, split = xs, {"sample": len(xs)}
        if "label" in ref and "probabilities" in ref:
            ref["label"] = got["label"] if task == "binary_classification" else ref["label"]
    else:
        try:
            ref = conv.reference(x)
        except Exception as exc:  # the user's model refusing a held-out row is its own bug
            raise ValidationError(f"the source model fails on held-out rows drawn from the "
                                  f"sample: {type(exc).__name__}: {str(exc)[:200]}",
                                  field="sample") from exc
        if task == "binary_classification":
            _settle_ties(ref, post)
        got = _bundle_answers(sess, conv, x, task, post)
        if "probabilities" in ref and "label" in ref and \
                any(o["role"] == "label" for o in conv.outputs) and \
                np.any(got["label"] != ref["label"]) and cfg.threshold == 0.5:
            # predict() not following the probabilities (SVC decides with its decision
            # function): the bundle takes the graph's label output when that is predict()
            trial = dict(post, label_from="output")
            alt = _bundle_answers(sess, conv, x, task, trial)
            if np.array_equal(alt["label"], ref["label"]):
                post["label_from"] = "output"
                got = alt
        if task == "binary_classification" and post.get("user_threshold", post["threshold"]) != 0.5:
            # a threshold the user chose: the decision is theirs, not predict()'s
            p = ref["probabilities"][:, post["classes"].index(post["positive_class"])]
            pos = post["classes"].index(post["positive_class"])
            ref["label"] = np.where(p >= post["threshold"], pos, 1 - pos)
    names = smp.names or [conv.input_name]
    xs_show = x if not smp.is_tensor else np.zeros((len(x), 0))
    pos = post["classes"].index(post["positive_class"]) if "positive_class" in post else 1
    res = gate.measure(ref, got, xs_show, names if not smp.is_tensor else [], tol=cfg.parity_tolerance,
                       threshold=post.get("threshold"), pos=pos, split=split)
    w = res.get("worst_row")
    if w and not smp.is_tensor:  # as a client sends them: text as text, true/false, null
        w["features"] = {n: smp.value(n, float(v)) for n, v in zip(smp.names, x[w["index"]])}
    gate.enforce(res, "the ONNX model",
                 fix=" (raise parity_tolerance / --tolerance to accept a known difference)")
    res.pop("worst_row", None)
    return res


def _inputs(smp: Sample, conv: _Converted, cfg: ExportConfig) -> dict[str, Any]:
    if smp.is_tensor:
        return {"kind": "tensors", "tensors": [
            {"name": conv.input_name, "dtype": "float32", "shape": [None, *smp.x.shape[1:]]}]}
    feats = []
    for j, n in enumerate(smp.names):
        col = smp.x[:, j]
        f: dict[str, Any] = {"name": n, "dtype": smp.dtypes.get(n, "float32")}
        if f["dtype"] not in ("float32", "float64", "int64", "int32", "bool", "string"):
            f["dtype"] = "float32"
        has_nan = bool(np.isnan(col).any())
        if has_nan:
            f["nan"] = "allow"
        if f["dtype"] == "string":
            f["categories"] = list(smp.categories.get(n, []))
            f["unknown"] = conv.unknown.get(n, "reject")
        elif cfg.record_ranges and not np.isnan(col).all():
            lo, hi = float(np.nanmin(col)), float(np.nanmax(col))
            # golden rows carry float32-rounded values: keep both roundings inside the range
            f["min"] = min(lo, float(np.float32(lo)))
            f["max"] = max(hi, float(np.float32(hi)))
        feats.append(f)
    return {"kind": "features", "tensor": conv.input_name, "features": feats}


def _golden(smp: Sample, conv: _Converted, got: dict[str, np.ndarray], out_names: list[str],
            task: str, post: dict[str, Any], cfg: ExportConfig) -> list[dict[str, Any]]:
    n_par = len(next(iter(got.values())))
    usable = ~np.isnan(smp.x[:n_par].reshape(n_par, -1)).any(axis=1)
    if task in ("regression", "anomaly"):
        vname = next(o["name"] for o in conv.outputs if o["role"] == "value")
        score = np.asarray(got[vname], dtype=np.float64).reshape(n_par, -1)[:, 0]
        if task == "anomaly":
            label_idx = np.where(score < post["threshold"], 0, 1)
            usable &= np.abs(score - post["threshold"]) > 1e-3
    else:
        role = next(o for o in conv.outputs if o["role"] in ("probabilities", "logits"))
        probs = _class_probabilities(got[role["name"]], role["role"])
        classes = post["classes"]
        if post.get("label_from") == "output":
            lname = next(o["name"] for o in conv.outputs if o["role"] == "label")
            label_idx = graph_labels(got[lname], conv.classes)
            score = (probs[:, classes.index(post["positive_class"])]
                     if task == "binary_classification" else probs[np.arange(n_par), label_idx])
        elif task == "binary_classification":
            pos = classes.index(post["positive_class"])
            score = probs[:, pos]
            # rows right at the threshold could flip on another CPU: keep them out
            usable &= np.abs(score - post["threshold"]) > 1e-3
            label_idx = np.where(score >= post["threshold"], pos, 1 - pos)
        else:
            label_idx = probs.argmax(axis=1)
            top2 = np.sort(probs, axis=1)[:, -2:]
            usable &= (top2[:, 1] - top2[:, 0]) > 1e-3
            score = probs[np.arange(n_par), label_idx]
    cand = np.flatnonzero(usable)
    if len(cand) == 0:
        raise ValidationError("the sample has no row usable as a golden vector (all rows have "
                              "NaN or sit on the decision threshold)", field="sample")
    k = min(cfg.golden_rows, len(cand))
    if task != "regression":  # cover as many predicted classes (anomaly/normal) as possible
        order = []
        by_cls = {c: list(cand[label_idx[cand] == c]) for c in np.unique(label_idx[cand])}
        while len(order) < k:
            for c in list(by_cls):
                if by_cls[c] and len(order) < k:
                    order.append(by_cls[c].pop(0))
        pick = np.array(sorted(order))
    else:
        pick = cand[np.linspace(0, len(cand) - 1, k).astype(int)]
    g: dict[str, Any] = {"atol": 1e-4}
    if smp.is_tensor:
        g["tensors"] = {conv.input_name: smp.x[pick].astype(np.float32).tolist()}
    else:
        x32 = smp.x[pick].astype(np.float32).astype(np.float64)
        g["rows"] = Sample(x32, smp.names, None, smp.dtypes, smp.source, smp.categories).rows()
    if task == "regression":
        g["expected_value"] = [float(v) for v in score[pick]]
    elif task == "anomaly":
        g["expected_value"] = [float(v) for v in score[pick]]
        g["expected_label"] = [post["classes"][i] for i in label_idx[pick]]
    else:
        g["expected_probability"] = [float(v) for v in score[pick]]
        g["expected_label"] = [post["classes"][i] for i in label_idx[pick]]
    return [g]


def _sample_accuracy(smp: Sample, got, conv, post, task, n_par) -> float | None:
    if smp.y is None or task in ("regression", "anomaly"):
        return None
    role = next(o for o in conv.outputs if o["role"] in ("probabilities", "logits"))
    probs = _class_probabilities(got[role["name"]], role["role"])
    classes = post["classes"]
    if task == "binary_classification":
        pos = classes.index(post["positive_class"])
        idx = np.where(probs[:, pos] >= post["threshold"], pos, 1 - pos)
    else:
        idx = probs.argmax(axis=1)
    src_classes = conv.classes or classes  # labels in the sample use the model's classes
    pred = [str(src_classes[i]) for i in idx]
    truth = [str(_plain(v)) for v in smp.y[:n_par]]
    return round(float(np.mean([a == b for a, b in zip(pred, truth)])), 6)


def self_test_or_remove(out: Path, what: str = "the new bundle failed its own self-test") -> None:
    """Load the bundle just written at ``out`` with the edge runtime and run its golden
    self-test; on failure remove ``out`` and raise ``EngineError("<what> and was removed: …")``."""
    import shutil

    from edge_runtime.model import Model

    try:
        model = Model.load(read_bundle(out), warmup=False)
        model.self_test()
        model.close()
    except (EngineError, BundleError) as exc:
        shutil.rmtree(out, ignore_errors=True)
        raise EngineError(f"{what} and was removed: {exc.message}", field=exc.field) from exc
