"""Model bundles: a directory (or ``.tar`` of one) with ``manifest.json`` and files.

``read_bundle`` parses and validates the manifest; ``verify_bundle`` checks
every file's sha256 and size and the ed25519 signature; ``write_bundle``
creates a bundle atomically (temp dir + rename) and signs it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tarfile
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pydantic
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_runtime import signing
from edge_runtime.errors import BundleError
from edge_runtime.hashing import sha256_file
from edge_runtime.manifest import FileEntry, Manifest, Signature

MANIFEST = "manifest.json"


class _UnpackedTar:
    """Where a tar bundle is unpacked: removed by ``cleanup()``, or quietly when the
    bundle is garbage-collected (``TemporaryDirectory`` warns then)."""

    def __init__(self) -> None:
        self.name = tempfile.mkdtemp(prefix="bundle-")
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.name, True)

    def cleanup(self) -> None:
        self._finalizer()


@dataclass
class Bundle:
    """A bundle on disk. ``root`` is a directory (tar bundles are unpacked)."""

    root: Path
    manifest: Manifest
    _tmp: _UnpackedTar | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def model_path(self) -> Path:
        return self.root / self.manifest.model_file

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.digest,
                "format": self.manifest.format}


@dataclass
class VerifyReport:
    ok: bool
    digest: str
    files: dict[str, str]
    signed: bool
    key_id: str | None
    problems: list[str]


def read_bundle(path: str | Path) -> Bundle:
    """Open a bundle directory or tar and validate its manifest (no hash check)."""
    path = Path(path)
    if path.is_file() and tarfile.is_tarfile(path):
        tmp = _UnpackedTar()
        try:
            root = Path(tmp.name)
            _extract_tar(path, root)
            inner = [p for p in root.iterdir()]
            if not (root / MANIFEST).exists() and len(inner) == 1 and inner[0].is_dir():
                root = inner[0]
            return _read_manifest(path, root, tmp)
        except BaseException:
            tmp.cleanup()  # a refused tar leaves nothing behind
            raise
    if path.is_dir():
        return _read_manifest(path, path, None)
    if not path.exists():
        raise BundleError(f"bundle not found: {path}", field="bundle")
    raise BundleError(f"bundle is neither a directory nor a tar file: {path}", field="bundle")


def _read_manifest(path: Path, root: Path, tmp: _UnpackedTar | None) -> Bundle:
    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        raise BundleError(f"bundle {path} has no {MANIFEST}", field=MANIFEST)
    try:
        raw = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{MANIFEST} is not valid JSON: {exc}", field=MANIFEST) from exc
    manifest = parse_manifest(raw)
    return Bundle(root=root, manifest=manifest, _tmp=tmp)


def parse_manifest(raw: Any) -> Manifest:
    try:
        return Manifest.model_validate(raw)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or MANIFEST
        field = f"manifest.{loc}" if err["loc"] else "manifest"
        raise BundleError(f"invalid manifest: {loc}: {err['msg']}", field=field,
                          errors=len(exc.errors())) from exc


def verify_bundle(bundle: Bundle | str | Path,
                  public_keys: Iterable[Ed25519PublicKey] | Ed25519PublicKey | None = None,
                  *, require_signature: bool = True) -> VerifyReport:
    """Check file hashes/sizes and the signature; raise BundleError naming the problem."""
    if not isinstance(bundle, Bundle):
        bundle = read_bundle(bundle)
    m = bundle.manifest
    for name, entry in m.files.items():
        p = bundle.root / name
        if not p.is_file():
            raise BundleError(f"file {name} listed in the manifest is missing", field=f"files.{name}")
        size = p.stat().st_size
        if size != entry.size:
            raise BundleError(f"file {name} has size {size}, manifest says {entry.size}",
                              field=f"files.{name}.size")
        actual = sha256_file(p)
        if actual != entry.sha256:
            raise BundleError(f"file {name} sha256 mismatch: manifest {entry.sha256[:12]}…, "
                              f"file {actual[:12]}…", field=f"files.{name}.sha256")
    keys = _as_key_list(public_keys)
    signed = m.signature is not None
    key_used = None
    if keys or require_signature:
        if not signed:
            raise BundleError("bundle is not signed", field="signature")
        if not keys:
            raise BundleError("no public key given to verify the bundle signature",
                              field="public_key")
        data = m.canonical_bytes()
        for key in keys:
            if signing.verify(data, m.signature.value, key):
                key_used = signing.key_id(key)
                break
        else:
            raise BundleError(f"bad signature: bundle signed by key {m.signature.key_id} "
                              "does not verify against any trusted public key", field="signature")
    return VerifyReport(ok=True, digest=m.digest, files={n: e.sha256 for n, e in m.files.items()},
                        signed=signed, key_id=key_used, problems=[])


def sign_bundle(path: str | Path, key: Ed25519PrivateKey | str | Path) -> Manifest:
    """(Re)sign a bundle directory in place after checking its file hashes."""
    if not isinstance(key, Ed25519PrivateKey):
        key = signing.load_private_key(key)
    bundle = read_bundle(path)
    if bundle._tmp is not None:
        raise BundleError("sign a bundle directory, not a tar (unpack it first)", field="bundle")
    verify_bundle(bundle, require_signature=False)
    manifest = _signed(bundle.manifest, key)
    _write_json_atomic(bundle.root / MANIFEST, manifest.model_dump(mode="json", exclude_none=True))
    return manifest


def write_bundle(out_dir: str | Path, manifest_fields: dict[str, Any],
                 files: dict[str, bytes | str | Path], *,
                 key: Ed25519PrivateKey | str | Path | None = None) -> Bundle:
    """Create a bundle directory atomically from a manifest draft and files.

    ``files`` maps names in the bundle to bytes or source paths; hashes and
    sizes are computed here. Nothing is left at ``out_dir`` if anything fails.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        entries: dict[str, dict[str, Any]] = {}
        for name, src in files.items():
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, bytes):
                dest.write_bytes(src)
            else:
                shutil.copyfile(src, dest)
            entries[name] = {"sha256": sha256_file(dest), "size": dest.stat().st_size}
        draft = dict(manifest_fields)
        draft["files"] = entries
        draft.setdefault("created_at", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        draft.pop("signature", None)
        manifest = parse_manifest(draft)
        if key is not None:
            if not isinstance(key, Ed25519PrivateKey):
                key = signing.load_private_key(key)
            manifest = _signed(manifest, key)
        _write_json_atomic(tmp / MANIFEST, manifest.model_dump(mode="json", exclude_none=True))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle(root=out_dir, manifest=manifest)


def pack_bundle(bundle_dir: str | Path, tar_path: str | Path) -> Path:
    """Write ``bundle_dir`` as an uncompressed tar (manifest first), atomically."""
    bundle_dir, tar_path = Path(bundle_dir), Path(tar_path)
    read_bundle(bundle_dir)
    tmp = tar_path.with_name(f".{tar_path.name}.tmp")
    with tarfile.open(tmp, "w") as tar:
        tar.add(bundle_dir / MANIFEST, arcname=MANIFEST)
        for p in sorted(bundle_dir.rglob("*")):
            if p.is_file() and p.name != MANIFEST:
                tar.add(p, arcname=str(p.relative_to(bundle_dir)))
    os.replace(tmp, tar_path)
    return tar_path


def _signed(manifest: Manifest, key: Ed25519PrivateKey) -> Manifest:
    sig = Signature(key_id=signing.key_id(key), value=signing.sign(manifest.canonical_bytes(), key))
    return manifest.model_copy(update={"signature": sig})


def _as_key_list(keys: Any) -> list[Ed25519PublicKey]:
    if keys is None:
        return []
    if isinstance(keys, Ed25519PublicKey):
        return [keys]
    return list(keys)


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _extract_tar(path: Path, dest: Path) -> None:
    try:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if not (member.isfile() or member.isdir()):
                    raise BundleError(f"tar member {member.name} is not a regular file",
                                      field="bundle")
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"cannot unpack bundle tar {path}: {exc}", field="bundle") from exc


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), size=path.stat().st_size)
