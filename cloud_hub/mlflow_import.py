"""Import a model version from an MLflow Model Registry into the hub (``cloud-hub models import``).

Only MLflow's REST API is used (the ``mlflow`` package is not a dependency: it
pins pyarrow below ours):

1. resolve ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or
   ``models:/NAME/STAGE`` to a model version (name, version, run id);
2. download its artifacts through the tracking server's artifact proxy
   (``mlflow-artifacts:``; ``mlflow server`` serves them by default) or from a
   local ``file:`` artifact store;
3. load the logged flavour — scikit-learn (pickle/cloudpickle), XGBoost,
   LightGBM, or ONNX — and take the sample rows from the logged
   ``input_example`` (or ``--sample``);
4. export a signed bundle with :func:`converters.export.export_model` (its
   parity gate refuses a conversion that does not answer like the model) with
   provenance ``mlflow`` = tracking URI, model URI, name, version, run id,
   source alias, flavour; push it to the hub and point the alias at it.

The logged pickle is unpickled in this process: import only from a registry
you trust (as ``mlflow.pyfunc.load_model`` would).

Errors (one line each, naming the field): unreachable server, unknown name /
alias / version / stage, artifacts not served, a flavour we cannot convert
(named), no input example and no ``--sample``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import httpx

from edge_runtime.errors import EdgeError, NotFoundError, UnavailableError, ValidationError

log = logging.getLogger("cloud_hub.mlflow_import")

FLAVOURS = ("onnx", "sklearn", "xgboost", "lightgbm")  # the ones we convert, in this order
_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<ref>[^/]+))")


class MlflowError(UnavailableError):
    """The MLflow server could not be reached, answered an error, or serves no artifacts."""


@dataclass
class MlflowVersion:
    name: str
    version: str
    run_id: str | None
    source: str | None
    source_alias: str | None
    stage: str | None
    model_uri: str


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` → (NAME, ALIAS, None); ``models:/NAME/REF`` → (NAME, None, REF)."""
    m = _URI.fullmatch(uri.strip())
    if not m:
        raise ValidationError(
            f"model URI {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION",
            field="model_uri",
        )
    return m["name"], m["alias"], m["ref"]


class MlflowRegistry:
    """The few REST calls of MLflow's tracking server we need (API 2.0 paths)."""

    def __init__(self, tracking_uri: str, timeout: float = 30.0) -> None:
        u = urlparse(tracking_uri)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ValidationError(
                f"tracking URI {tracking_uri!r}: an http(s):// URL of an MLflow server",
                field="tracking_uri",
            )
        self.url = tracking_uri.rstrip("/")
        headers = {}
        auth = None
        if os.environ.get("MLFLOW_TRACKING_TOKEN"):
            headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
        elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
            auth = (
                os.environ["MLFLOW_TRACKING_USERNAME"],
                os.environ.get("MLFLOW_TRACKING_PASSWORD", ""),
            )
        self.http = httpx.Client(base_url=self.url, headers=headers, auth=auth, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, what: str, **kw: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise MlflowError(
                f"cannot reach the MLflow server at {self.url}: {exc}", field="tracking_uri"
            ) from exc
        if r.status_code < 400:
            return r
        try:
            body = r.json()
            code, msg = str(body.get("error_code", "")), str(body.get("message") or "")
        except (ValueError, AttributeError):
            code, msg = "", r.text[:200]
        # MLflow answers an unknown alias with 400 INVALID_PARAMETER_VALUE "... not found"
        if (
            r.status_code == 404
            or code == "RESOURCE_DOES_NOT_EXIST"
            or (r.status_code == 400 and "not found" in msg.lower())
        ):
            raise NotFoundError(f"MLflow has no {what}", field="model_uri")
        raise MlflowError(f"MLflow answered {r.status_code} for {what}: {msg[:200]}")

    def _json(self, method: str, path: str, what: str, **kw: Any) -> dict[str, Any]:
        r = self._call(method, path, what, **kw)
        try:
            return r.json()
        except ValueError as exc:
            raise MlflowError(
                f"{self.url} did not answer JSON for {what}: is it an MLflow tracking server?",
                field="tracking_uri",
            ) from exc

    def resolve(self, uri: str) -> MlflowVersion:
        name, alias, ref = parse_model_uri(uri)
        api = "/api/2.0/mlflow"
        if alias:
            mv = self._json(
                "GET",
                f"{api}/registered-models/alias",
                f"model {name!r} with alias {alias!r}",
                params={"name": name, "alias": alias},
            )["model_version"]
        elif ref.isdigit():
            mv = self._json(
                "GET",
                f"{api}/model-versions/get",
                f"version {ref} of model {name!r}",
                params={"name": name, "version": ref},
            )["model_version"]
        else:  # a stage (None/Staging/Production/Archived), the older registry workflow
            got = self._json(
                "POST",
                f"{api}/registered-models/get-latest-versions",
                f"model {name!r}",
                json={"name": name, "stages": [ref]},
            ).get("model_versions", [])
            if not got:
                raise NotFoundError(
                    f"MLflow model {name!r} has no version in stage {ref!r}", field="model_uri"
                )
            mv = got[0]
        return MlflowVersion(
            name=mv["name"],
            version=str(mv["version"]),
            run_id=mv.get("run_id") or None,
            source=mv.get("source"),
            source_alias=alias,
            stage=None if alias or ref.isdigit() else ref,
            model_uri=uri,
        )

    def download_uri(self, mv: MlflowVersion) -> str:
        got = self._json(
            "GET",
            "/api/2.0/mlflow/model-versions/get-download-uri",
            f"download URI of {mv.name} version {mv.version}",
            params={"name": mv.name, "version": mv.version},
        )
        return got["artifact_uri"]

    def download(self, mv: MlflowVersion, dest: Path) -> Path:
        """The model version's artifacts (the directory holding ``MLmodel``) under ``dest``."""
        uri = self.download_uri(mv)
        u = urlparse(uri)
        if u.scheme == "mlflow-artifacts":
            self._fetch_tree(u.path.lstrip("/"), dest)
        elif u.scheme in ("", "file") and Path(u.path).is_dir():
            shutil.copytree(u.path, dest, dirs_exist_ok=True)
        else:
            raise MlflowError(
                f"the artifacts of {mv.name} version {mv.version} are at {uri}, which this "
                "command cannot read: run `mlflow server` with artifact serving (the default, "
                "--serve-artifacts) so they come through the tracking server",
                field="tracking_uri",
            )
        if not (dest / "MLmodel").is_file():
            raise MlflowError(f"{uri} holds no MLmodel file: not an MLflow model")
        return dest

    def _fetch_tree(self, path: str, dest: Path, depth: int = 0) -> None:
        if depth > 8:
            raise MlflowError(f"artifact tree at {path} is too deep")
        listing = self._json(
            "GET",
            "/api/2.0/mlflow-artifacts/artifacts",
            f"artifacts at {path}",
            params={"path": path},
        )
        dest.mkdir(parents=True, exist_ok=True)
        for f in listing.get("files", []):
            rel = f["path"].rsplit("/", 1)[-1]
            if rel in ("", ".", "..") or "\\" in rel:
                raise MlflowError(f"artifact listing at {path} has a bad name {f['path']!r}")
            if f.get("is_dir"):
                self._fetch_tree(f"{path}/{rel}", dest / rel, depth + 1)
                continue
            r = self._call(
                "GET",
                f"/api/2.0/mlflow-artifacts/artifacts/{quote(path)}/{quote(rel)}",
                f"artifact {path}/{rel}",
            )
            (dest / rel).write_bytes(r.content)


# ---- the logged model ---------------------------------------------------------------------
def read_mlmodel(model_dir: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load((model_dir / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise MlflowError(f"cannot read MLmodel: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("flavors"), dict):
        raise MlflowError("MLmodel has no flavors: not an MLflow model")
    return doc


def _inside(model_dir: Path, rel: str, what: str) -> Path:
    p = (model_dir / rel).resolve()
    if model_dir.resolve() not in p.parents or not p.is_file():
        raise MlflowError(f"MLmodel names {what} file {rel!r}, which is not in the model")
    return p


def load_flavour(model_dir: Path, mlmodel: dict[str, Any]) -> tuple[Any, str]:
    """The model as the converter takes it (an estimator, or an ONNX file path) + flavour."""
    flavors = mlmodel["flavors"]
    for name in FLAVOURS:
        if name in flavors:
            conf = flavors[name] or {}
            break
    else:
        found = ", ".join(sorted(flavors)) or "none"
        raise ValidationError(
            f"the MLflow model's flavour(s) {found}: we convert sklearn, xgboost, lightgbm "
            "and onnx",
            field="flavor",
        )
    if name == "onnx":
        return str(_inside(model_dir, conf.get("data", "model.onnx"), "ONNX")), name
    if name == "sklearn":
        fmt = conf.get("serialization_format", "cloudpickle")
        path = _inside(model_dir, conf.get("pickled_model", "model.pkl"), "model")
        if fmt == "skops":
            return _load_skops(path), name
        if fmt not in ("cloudpickle", "pickle"):
            raise ValidationError(
                f"scikit-learn model serialized as {fmt!r}: we read skops, pickle and cloudpickle",
                field="flavor",
            )
        return _unpickle(path), name
    data = _inside(model_dir, conf.get("data", ""), name)
    cls_path = conf.get("model_class", "")
    if data.suffix == ".pkl":  # sklearn-API wrappers are pickled by these flavours
        return _unpickle(data), name
    if name == "xgboost":
        import xgboost

        cls = {
            "xgboost.sklearn.XGBClassifier": xgboost.XGBClassifier,
            "xgboost.sklearn.XGBRegressor": xgboost.XGBRegressor,
        }.get(cls_path)
        if cls is None:
            raise ValidationError(
                f"XGBoost model class {cls_path or 'Booster'!r}: we convert XGBClassifier and "
                "XGBRegressor (log the scikit-learn API model)",
                field="flavor",
            )
        model = cls()
        model.load_model(str(data))
        return model, name
    raise ValidationError(
        f"LightGBM model class {cls_path or 'Booster'!r} stored as {data.name}: we convert the "
        "scikit-learn API (LGBMClassifier / LGBMRegressor)",
        field="flavor",
    )


# skops (MLflow 3's default for scikit-learn) loads only the types it is told to trust: the
# estimators, arrays and functions of these packages; anything else is refused by name.
SKOPS_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "xgboost.", "lightgbm.", "builtins.")


def _load_skops(path: Path) -> Any:
    try:
        import skops.io as sio
    except ImportError as exc:
        raise UnavailableError(
            "the model is saved with skops: pip install skops (part of edgefleet[convert])",
            field="flavor",
        ) from exc
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # not a skops file / corrupt zip
        raise ValidationError(
            f"cannot read the skops file {path.name}: {type(exc).__name__}: {str(exc)[:200]}",
            field="flavor",
        ) from exc
    foreign = [t for t in untrusted if not t.startswith(SKOPS_TRUSTED_PREFIXES)]
    if foreign:
        raise ValidationError(
            f"the skops model holds types we do not load: {', '.join(sorted(foreign)[:5])}",
            field="flavor",
        )
    try:
        return sio.load(path, trusted=untrusted)
    except Exception as exc:  # a type's reconstruction failed (version mismatch, …)
        raise ValidationError(
            f"cannot load the logged model {path.name}: {type(exc).__name__}: {str(exc)[:200]}",
            field="flavor",
        ) from exc


def _unpickle(path: Path) -> Any:
    try:
        import cloudpickle as loader
    except ImportError:  # plain pickle reads cloudpickle files of importable classes
        import pickle as loader
    try:
        with open(path, "rb") as fh:
            return loader.load(fh)
    except Exception as exc:  # unpickling raises anything a class's __setstate__ raises
        raise ValidationError(
            f"cannot load the logged model {path.name}: {type(exc).__name__}: {str(exc)[:200]} "
            "(is it made with a scikit-learn/xgboost/lightgbm version this hub has?)",
            field="flavor",
        ) from exc


def input_example(model_dir: Path, mlmodel: dict[str, Any]) -> Any | None:
    """The logged input example as an Arrow table (named columns), or None."""
    import pyarrow as pa

    info = mlmodel.get("saved_input_example_info") or {}
    rel = info.get("artifact_path")
    if not rel:
        return None
    doc = json.loads(_inside(model_dir, rel, "input example").read_text())
    if isinstance(doc, dict) and "dataframe_split" in doc:
        doc = doc["dataframe_split"]
    if isinstance(doc, dict) and "columns" in doc and "data" in doc:
        cols = [str(c) for c in doc["columns"]]
        return pa.table({c: [row[i] for row in doc["data"]] for i, c in enumerate(cols)})
    if isinstance(doc, dict) and "inputs" in doc and isinstance(doc["inputs"], dict):
        return pa.table(doc["inputs"])
    if isinstance(doc, list) and doc and all(isinstance(r, dict) for r in doc):
        return pa.Table.from_pylist(doc)
    names = _signature_names(mlmodel)
    arr = doc.get("inputs") if isinstance(doc, dict) else doc
    if names and isinstance(arr, list) and arr and all(len(r) == len(names) for r in arr):
        return pa.table({n: [r[i] for r in arr] for i, n in enumerate(names)})
    raise ValidationError(
        f"the logged input example {rel} is neither a named DataFrame nor rows of the "
        "signature's columns: pass --sample FILE",
        field="sample",
    )


def _signature_names(mlmodel: dict[str, Any]) -> list[str] | None:
    sig = (mlmodel.get("signature") or {}).get("inputs")
    try:
        cols = json.loads(sig) if isinstance(sig, str) else None
    except ValueError:
        return None
    names = [c.get("name") for c in cols or [] if isinstance(c, dict)]
    return names if names and all(names) else None


# ---- the whole import ---------------------------------------------------------------------
def bundle_name(mlflow_name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", mlflow_name).strip("-.") or "model"
    return name[:100]


def import_version(
    registry: MlflowRegistry,
    mv: MlflowVersion,
    out_dir: Path,
    *,
    key: Any = None,
    sample: str | None = None,
    name: str | None = None,
) -> Path:
    """Download, load, export a signed bundle of ``mv`` at ``out_dir``; returns it."""
    from converters.export import ExportConfig, export_model

    with tempfile.TemporaryDirectory(prefix="mlflow-import-") as tmp:
        model_dir = registry.download(mv, Path(tmp) / "model")
        mlmodel = read_mlmodel(model_dir)
        model, flavour = load_flavour(model_dir, mlmodel)
        smp: Any = sample
        if smp is None:
            smp = input_example(model_dir, mlmodel)
            if smp is None:
                raise ValidationError(
                    f"{mv.model_uri} was logged without an input example: pass --sample FILE "
                    "(CSV/Parquet rows with the model's feature columns)",
                    field="sample",
                )
        provenance = {
            "mlflow": {
                "tracking_uri": registry.url,
                "model_uri": mv.model_uri,
                "name": mv.name,
                "version": mv.version,
                "run_id": mv.run_id,
                "source_alias": mv.source_alias,
                "stage": mv.stage,
                "flavor": flavour,
                "source": mv.source,
            }
        }
        cfg = ExportConfig(
            key=key,
            name=name or bundle_name(mv.name),
            version=mv.version,
            provenance=provenance,
            description=f"imported from MLflow {mv.model_uri} (version {mv.version})",
        )
        return export_model(model, smp, out_dir, cfg)


def run_import(
    model_uri: str,
    tracking_uri: str,
    push: Callable[[Path, list[str]], dict[str, Any]],
    *,
    alias: str | None = None,
    key: Any = None,
    sample: str | None = None,
    name: str | None = None,
    skip_versions: set[str] | None = None,
) -> dict[str, Any] | None:
    """Resolve, import and ``push(bundle_dir, aliases)`` one version; None when the version
    is in ``skip_versions`` (already imported)."""
    registry = MlflowRegistry(tracking_uri)
    try:
        mv = registry.resolve(model_uri)
        if skip_versions is not None and mv.version in skip_versions:
            return None
        aliases = [a for a in [alias or mv.source_alias] if a]
        with tempfile.TemporaryDirectory(prefix="mlflow-bundle-") as tmp:
            bundle = import_version(
                registry, mv, Path(tmp) / "bundle", key=key, sample=sample, name=name
            )
            pushed = push(bundle, aliases)
        return {"mlflow": {"name": mv.name, "version": mv.version, "run_id": mv.run_id}, **pushed}
    finally:
        registry.close()


def watch(
    model_uri: str,
    every_s: float,
    step: Callable[[set[str]], dict[str, Any] | None],
    stop: Callable[[], bool],
) -> None:
    """Call ``step(seen)`` every ``every_s`` seconds; each new version it imports is added to
    ``seen``. Errors are logged and retried at the next poll (a server restart is not fatal)."""
    seen: set[str] = set()
    while not stop():
        try:
            got = step(seen)
            if got is not None:
                seen.add(got["mlflow"]["version"])
        except EdgeError as exc:
            log.warning("watching %s: %s", model_uri, exc.message)
        deadline = time.monotonic() + every_s
        while time.monotonic() < deadline and not stop():
            time.sleep(min(0.5, every_s))
