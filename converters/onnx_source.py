"""The source side shared by the format converters (ONNX → TFLite, ONNX → Core ML).

Loads and checks the source ONNX bundle, resolves the signing key, carries the
manifest contract over to the converted bundle, and holds the converter errors.

    EdgeError
    └── ConversionError (400)          the source cannot be converted as asked
        └── UnsupportedOpsError (400)  ops/attributes the target writer cannot express;
                                       lists every one, not just the first
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.bundle import MANIFEST, Bundle, read_bundle, verify_bundle
from edge_runtime.errors import BundleError, EdgeError

#: Environment variable holding the path of the ed25519 private key used to sign bundles.
KEY_ENV = "EDGE_CONVERT_KEY"


class ConversionError(EdgeError):
    status_code = 400
    code = "conversion_failed"


class UnsupportedOpsError(ConversionError):
    """The graph uses ops the target cannot express; ``problems`` lists all of them."""

    code = "unsupported_ops"

    def __init__(self, target: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"cannot convert to {target}: {len(problems)} unsupported op(s): "
                         + "; ".join(problems), field="model", problems=problems)


@dataclass
class SourceModel:
    """A verified source ONNX bundle with its parsed model."""

    bundle: Bundle
    onnx_model: Any  # onnx.ModelProto

    @property
    def manifest(self):
        return self.bundle.manifest


def resolve_key(key: Any) -> Any:
    """Key given (path or key object) or ``$EDGE_CONVERT_KEY`` → loaded private key.

    Every converted bundle is signed, so a missing or unreadable key is refused
    before any work is done.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge_runtime import signing

    if isinstance(key, Ed25519PrivateKey):
        return key
    if key is None:
        key = os.environ.get(KEY_ENV) or None
    if key is None:
        raise ConversionError(f"no signing key: pass key=… (--key) or set {KEY_ENV} to the path "
                              "of an ed25519 private key", field="key")
    path = Path(key)
    if not path.is_file():
        raise ConversionError(f"signing key file not found: {path}", field="key")
    try:
        return signing.load_private_key(path)
    except Exception as exc:  # cryptography raises several types for bad key files
        raise ConversionError(f"cannot read signing key {path}: {exc}", field="key") from exc


def check_out_dir(src_root: Path, out_dir: str | Path) -> Path:
    """Refuse an output path that would clobber the source or an unrelated directory."""
    out = Path(out_dir)
    if out.exists():
        if out.resolve() == src_root.resolve():
            raise ConversionError("--out is the source bundle itself; choose another directory",
                                  field="out_dir")
        if not out.is_dir():
            raise ConversionError(f"output path {out} exists and is not a directory",
                                  field="out_dir")
        if any(out.iterdir()) and not (out / MANIFEST).exists():
            raise ConversionError(f"output directory {out} is not empty and is not a bundle; "
                                  "refusing to replace it", field="out_dir")
    return out


def load_source(src_bundle: str | Path | Bundle, *, public_key: Any = None) -> SourceModel:
    """Read the bundle, check file hashes (and the signature when a key is given), parse ONNX."""
    import onnx

    bundle = src_bundle if isinstance(src_bundle, Bundle) else read_bundle(src_bundle)
    keys = None
    if public_key is not None:
        from edge_runtime.signing import load_public_key

        keys = public_key if not isinstance(public_key, (str, Path)) else load_public_key(public_key)
    verify_bundle(bundle, keys, require_signature=keys is not None)
    m = bundle.manifest
    if m.format != "onnx":
        raise ConversionError(f"source bundle format is {m.format!r}; converters take an ONNX "
                              "bundle (run edge-convert export first)", field="format")
    path = bundle.model_path
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ConversionError(f"{m.model_file} is not a valid ONNX model: {_first_line(exc)}",
                              field="model_file") from exc
    if not model.graph.node and not model.graph.output:
        raise ConversionError(f"{m.model_file} is not a valid ONNX model: the graph is empty",
                              field="model_file")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ConversionError(f"{m.model_file} fails the ONNX checker: {_first_line(exc)}",
                              field="model_file") from exc
    return SourceModel(bundle=bundle, onnx_model=model)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def golden_inputs(manifest) -> list[tuple[int, Any]]:
    """(index, rows-or-tensors) of every golden vector that has inputs."""
    out = []
    for i, g in enumerate(manifest.golden):
        if g.rows is not None:
            out.append((i, g.rows))
        elif g.tensors is not None:
            out.append((i, g.tensors))
    return out


def carried_manifest(manifest, *, fmt: str, model_file: str, output_names: list[str] | None,
                     provenance: dict[str, Any]) -> dict[str, Any]:
    """Manifest fields of the converted bundle: same contract, new format and provenance."""
    data = manifest.unsigned_dict()
    for k in ("files", "created_at", "signature"):
        data.pop(k, None)
    data["format"] = fmt
    data["model_file"] = model_file
    if output_names is not None:
        data["outputs"] = [o for o in data.get("outputs", []) if o["name"] in output_names]
    prov = dict(provenance)
    prov["source"] = {"name": manifest.name, "version": manifest.version,
                      "format": manifest.format, "sha256": manifest.digest,
                      "provenance": manifest.provenance}
    data["provenance"] = prov
    return data


@contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A scratch directory beside ``out_dir``, removed whatever happens."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.stage.", dir=out_dir.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(stage: Path, out: Path, fields: dict[str, Any], files: dict[str, Any], key: Any, *,
            self_test: bool = True) -> Path:
    """Write the signed bundle in ``stage``, verify (and self-test) it, then move it to ``out``.

    ``out`` is replaced only once the new bundle is complete and verified.
    """
    from edge_runtime.bundle import write_bundle

    final = write_bundle(stage / "final", fields, files, key=key)
    verify_bundle(final, key.public_key())
    if self_test:
        from edge_runtime.model import Model

        model = Model.load(final, warmup=False)
        try:
            model.self_test()
        except EdgeError as exc:
            raise ConversionError(f"the converted bundle fails its own golden vectors: "
                                  f"{exc.message}", field="golden") from exc
        finally:
            model.close()
    if out.exists():
        shutil.rmtree(out)
    os.replace(final.root, out)
    return out


__all__ = [
    "KEY_ENV",
    "BundleError",
    "ConversionError",
    "SourceModel",
    "UnsupportedOpsError",
    "carried_manifest",
    "check_out_dir",
    "golden_inputs",
    "load_source",
    "publish",
    "resolve_key",
    "staging_dir",
]
