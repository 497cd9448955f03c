"""Model bundles: a directory (or ``.tar`` of one) with ``manifest.json`` and files.

``read_bundle`` parses and validates the manifest; ``verify_bundle`` checks
every file's sha256 and size, that the bundle holds exactly the files its
manifest lists (an unlisted file is refused: the signature would not cover it),
and the ed25519 signature; ``write_bundle`` creates a bundle atomically (temp
dir + rename) and signs it.

A tar is unpacked under bounds (:data:`MAX_UNPACKED_BYTES`, :data:`MAX_ENTRIES`,
or the caller's): each entry's declared size is checked *before* it is written,
so a decompression bomb is refused at the first header that passes the bound,
without writing past it. Entry names must be relative and stay inside the
bundle (no absolute names, no ``..``, no links or devices).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tarfile
import tempfile
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_runtime import signing
from edge_runtime.errors import BundleError, field_path
from edge_runtime.hashing import sha256_file
from edge_runtime.manifest import FileEntry, Manifest, Signature

MANIFEST = "manifest.json"
MAX_UNPACKED_BYTES = 4 * 1024**3
"""Default bound on the unpacked size of a tar bundle (the hub passes its upload limit)."""
MAX_ENTRIES = 1000
"""Default bound on the number of entries in a tar bundle."""


class _UnpackedTar:
    """Where a tar bundle is unpacked: removed by ``cleanup()``, or quietly when the
    bundle is garbage-collected (``TemporaryDirectory`` warns then)."""

    def __init__(self, work_dir: Path | None = None) -> None:
        if work_dir is not None:
            Path(work_dir).mkdir(parents=True, exist_ok=True)
        self.name = tempfile.mkdtemp(prefix="bundle-", dir=work_dir)
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


def read_bundle(path: str | Path, *, work_dir: str | Path | None = None,
                max_bytes: int = MAX_UNPACKED_BYTES, max_entries: int = MAX_ENTRIES,
                label: str | None = None) -> Bundle:
    """Open a bundle directory or tar and validate its manifest (no hash check).

    A tar is unpacked under ``work_dir`` (the system temp dir by default) within
    ``max_bytes``/``max_entries``. ``label`` names the bundle in error messages
    instead of its path (the hub does not show clients its server paths).
    """
    path = Path(path)
    shown = label or str(path)
    if path.is_file() and tarfile.is_tarfile(path):
        tmp = _UnpackedTar(Path(work_dir) if work_dir is not None else None)
        try:
            root = Path(tmp.name)
            _extract_tar(path, root, max_bytes=max_bytes, max_entries=max_entries, label=shown)
            inner = [p for p in root.iterdir()]
            if not (root / MANIFEST).exists() and len(inner) == 1 and inner[0].is_dir():
                root = inner[0]
            return _read_manifest(Path(shown), root, tmp)
        except BaseException:
            tmp.cleanup()  # a refused tar leaves nothing behind
            raise
    if path.is_dir():
        return _read_manifest(path, path, None)
    if not path.exists():
        raise BundleError(f"bundle not found: {shown}", field="bundle")
    raise BundleError(f"bundle is neither a directory nor a tar file: {shown}", field="bundle")


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
        loc = field_path(*err["loc"]) or MANIFEST
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
    check_exact_files(bundle)
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


def check_exact_files(bundle: Bundle) -> None:
    """Refuse anything in the bundle that its manifest does not list.

    The signature covers the manifest and, through its hashes, the listed files
    only: an extra file (a script, a second model) would ride along unsigned.
    """
    listed = set(bundle.manifest.files) | {MANIFEST}
    for dirpath, dirnames, filenames in os.walk(bundle.root):
        for name in sorted(filenames) + sorted(d for d in dirnames if os.path.islink(os.path.join(dirpath, d))):
            rel = Path(dirpath, name).relative_to(bundle.root).as_posix()
            if rel not in listed:
                raise BundleError(f"bundle holds {rel[:200]!r}, which its manifest does not list "
                                  "(a bundle is exactly its manifest's files)", field="files")
            if os.path.islink(os.path.join(dirpath, name)):
                raise BundleError(f"bundle file {rel[:200]!r} is a symbolic link", field=f"files.{rel}")


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
        draft.setdefault("created_at", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
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


def _extract_tar(path: Path, dest: Path, *, max_bytes: int = MAX_UNPACKED_BYTES,
                 max_entries: int = MAX_ENTRIES, label: str | None = None) -> None:
    """Unpack ``path`` into ``dest`` one entry at a time, within the bounds.

    Members are read as a stream (never ``getmembers()``, which would inflate a
    whole compressed bomb just to list it); each header's size is checked
    against the remaining budget before its data is written.
    """
    shown = label or str(path)
    total = entries = 0
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                entries += 1
                if entries > max_entries:
                    raise BundleError(f"bundle tar {shown} has more than {max_entries} entries",
                                      field="bundle")
                name = member.name
                parts = [p for p in name.split("/") if p not in ("", ".")]
                if name.startswith("/") or "\\" in name or ".." in parts or "\x00" in name:
                    raise BundleError(f"bundle tar {shown} has an unsafe entry name {name[:200]!r} "
                                      "(absolute, or leaving the bundle)", field="bundle")
                if not (member.isfile() or member.isdir()):
                    raise BundleError(f"tar member {name[:200]} is not a regular file or directory",
                                      field="bundle")
                total += max(member.size, 0)
                if total > max_bytes:
                    raise BundleError(f"bundle tar {shown} unpacks to more than {max_bytes} bytes "
                                      "(the unpacked size limit)", field="bundle")
                if not parts:
                    continue
                tar.extract(member, dest, filter="data")
    except tarfile.TarError as exc:
        raise BundleError(f"cannot unpack bundle tar {shown}: {exc}", field="bundle") from exc
    except OSError as exc:
        raise BundleError(f"cannot unpack bundle tar {shown}: {exc.strerror or type(exc).__name__}",
                          field="bundle") from exc


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), size=path.stat().st_size)
