"""The model registry: versions of signed bundles, aliases, and the hub's signing key.

Push = read the bundle (dir or tar) → check every file hash and the signature
against the trusted keys (unsigned only when ``allow_unsigned``) → load it and
run its golden vectors → re-sign the manifest with the hub key (devices trust
one key, the hub's; the uploader's key id is kept as provenance) → pack a tar
into the content-addressed artifact store → one row in ``model_versions``.
Nothing is written to the database before the artifact is safely stored, and a
failed push leaves the registry as it was.

A bundle's identity is ``Manifest.digest`` (sha256 of the canonical unsigned
manifest); re-signing does not change it, so the same digest names the bundle
on the uploader's disk, in the registry and on every device.

Aliases (``champion``, ``challenger`` or any name) point at one version of a
model; :meth:`Registry.set_aliases` moves several in one transaction so a
promotion is atomic. Every change is journalled in ``model_alias_events``.

References: ``name`` (the ``champion`` alias if set, else the newest version),
``name@alias``, ``name:version``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from cloud_hub import db
from cloud_hub.artifacts import ArtifactStore, LocalArtifactStore
from edge_runtime import signing
from edge_runtime.bundle import (
    MANIFEST,
    MAX_UNPACKED_BYTES,
    Bundle,
    pack_bundle,
    read_bundle,
    sign_bundle,
)
from edge_runtime.errors import (
    BundleError,
    ConflictError,
    EdgeError,
    NotFoundError,
    ValidationError,
)

log = logging.getLogger("cloud_hub.registry")

DEFAULT_ALIAS = "champion"
NAME_MAX = 200  # the column width of name/version
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9_.\-+]{1,200}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")

model_versions = Table(
    "model_versions", db.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, index=True),
    Column("version", String(200), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("format", String(16), nullable=False),
    Column("task", String(40), nullable=False),
    Column("size", Integer, nullable=False),
    Column("artifact_sha256", String(64), nullable=False),
    Column("manifest", Text, nullable=False),
    Column("signer_key_id", String(32)),
    Column("hub_key_id", String(32), nullable=False),
    Column("self_test", String(40), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(64)),
    UniqueConstraint("name", "version", name="uq_model_versions_name_version"),
)

model_aliases = Table(
    "model_aliases", db.metadata,
    Column("name", String(200), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version", String(200), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

model_alias_events = Table(
    "model_alias_events", db.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, index=True),
    Column("alias", String(64), nullable=False),
    Column("old_version", String(200)),
    Column("new_version", String(200)),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("reason", String(200)),
)

db.migration("0100_registry")(db.create_tables(model_versions, model_aliases, model_alias_events))


@dataclass
class ModelVersion:
    """One registered bundle (what ``resolve`` returns)."""

    name: str
    version: str
    digest: str
    format: str
    size: int
    aliases: list[str]
    created_at: dt.datetime
    provenance: dict[str, Any]
    task: str = ""
    artifact_sha256: str = ""
    signer_key_id: str | None = None
    hub_key_id: str = ""
    self_test: str = ""
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self, *, manifest: bool = False) -> dict[str, Any]:
        out = {"name": self.name, "version": self.version, "sha256": self.digest,
               "format": self.format, "task": self.task, "size": self.size,
               "aliases": list(self.aliases), "created_at": self.created_at.isoformat(),
               "provenance": self.provenance, "artifact_sha256": self.artifact_sha256,
               "signer_key_id": self.signer_key_id, "hub_key_id": self.hub_key_id,
               "self_test": self.self_test}
        if manifest:
            out["manifest"] = self.manifest
        return out


@dataclass
class Pushed(ModelVersion):
    """What :meth:`Registry.push` returns: the version, and whether this push created it
    (``False``: the same bundle was registered already)."""

    created: bool = False


@dataclass(frozen=True)
class Ref:
    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.version:
            return f"{self.name}:{self.version}"
        if self.alias:
            return f"{self.name}@{self.alias}"
        return self.name


def parse_ref(ref: str) -> Ref:
    """``name`` | ``name@alias`` | ``name:version`` → :class:`Ref` (ValidationError if malformed)."""
    if not isinstance(ref, str) or not ref:
        raise ValidationError("model reference is empty", field="model")
    if "@" in ref:
        name, _, alias = ref.partition("@")
        if not NAME_RE.match(name) or not ALIAS_RE.match(alias):
            raise ValidationError(f"bad model reference {ref[:200]!r}: expected name@alias",
                                  field="model")
        return Ref(name, alias=alias)
    if ":" in ref:
        name, _, version = ref.partition(":")
        if not NAME_RE.match(name) or not VERSION_RE.match(version):
            raise ValidationError(f"bad model reference {ref[:200]!r}: expected name:version",
                                  field="model")
        return Ref(name, version=version)
    if not NAME_RE.match(ref):
        raise ValidationError(f"bad model name {ref[:200]!r}: a letter or digit, then letters, digits, "
                              f"'_', '.', '-' (at most {NAME_MAX})", field="model")
    return Ref(ref)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _unique() -> str:
    return f"{os.getpid()}.{threading.get_ident()}.{os.urandom(4).hex()}"


class HubKey:
    """The hub's ed25519 signing key (private PEM at ``path``, public next to it)."""

    def __init__(self, path: Path, *, create: bool) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise BundleError(f"hub signing key {self.path} does not exist", field="signing_key")
            self._create()
        self.private: Ed25519PrivateKey = signing.load_private_key(self.path)
        self.public: Ed25519PublicKey = self.private.public_key()
        self.key_id = signing.key_id(self.public)
        self.public_pem = signing.public_pem(self.public)
        pub_path = self.path.with_suffix(".pub")
        if not pub_path.exists() or pub_path.read_bytes() != self.public_pem:
            tmp = pub_path.with_name(f".{pub_path.name}.{_unique()}")
            tmp.write_bytes(self.public_pem)
            os.replace(tmp, pub_path)

    def _create(self) -> None:
        """Generate the key without racing another process starting on the same data dir
        (``serve --workers N``): write a temp pair, hard-link the private key into place
        (fails if another process won), and use whichever key is in place."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{_unique()}")
        signing.generate_keypair(tmp, tmp.with_suffix(".pubtmp"))
        try:
            os.link(tmp, self.path)
            log.warning("generated a new hub signing key at %s; devices must trust %s",
                        self.path, self.path.with_suffix(".pub"))
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
            tmp.with_suffix(".pubtmp").unlink(missing_ok=True)


class Registry:
    """Registry of model versions backed by the hub database and an artifact store."""

    def __init__(self, engine: Engine, store: ArtifactStore, hub_key: HubKey, *,
                 trusted_keys: list[Ed25519PublicKey] | None = None, allow_unsigned: bool = False,
                 self_test: bool = True, work_dir: Path | None = None) -> None:
        self.engine = engine
        self.store = store
        self.hub_key = hub_key
        self.trusted_keys = list(trusted_keys or [])
        self.allow_unsigned = allow_unsigned
        self.self_test = self_test
        self.work_dir = Path(work_dir) if work_dir else None
        if self.work_dir:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        self._listeners: list[Callable[[str], None]] = []
        self._push_lock = threading.Lock()
        self.max_unpacked_bytes = MAX_UNPACKED_BYTES
        self._own_workdir = None

    @classmethod
    def from_settings(cls, engine: Engine, settings, *, work_dir: Path | None = None) -> Registry:
        """The registry of a hub's settings. ``work_dir`` is the process's scratch
        directory (:class:`cloud_hub.workdir.WorkDir`); one is claimed if not given."""
        data_dir = Path(settings.data_dir)
        workdir = None
        if work_dir is None:
            from cloud_hub.workdir import WorkDir

            workdir = WorkDir(data_dir / "tmp")
            work_dir = workdir.path
        key_path = settings.signing_key or data_dir / "keys" / "hub.key"
        hub_key = HubKey(key_path, create=settings.signing_key is None or settings.dev)
        from cloud_hub.trust import fleet_keys

        trusted = fleet_keys(settings)
        reg = cls(engine, make_store(engine, settings, work_dir), hub_key,
                  trusted_keys=trusted, allow_unsigned=settings.allow_unsigned, work_dir=work_dir)
        reg.max_unpacked_bytes = int(settings.max_upload_bytes)
        reg._own_workdir = workdir
        return reg

    # ---- listeners (the loaded-model cache drops resolutions on alias changes) -----
    def on_change(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(model_name)`` after a version or alias of that model changes."""
        self._listeners.append(fn)

    def _changed(self, name: str) -> None:
        for fn in self._listeners:
            try:
                fn(name)
            except Exception:  # a listener must not break a registry write
                log.exception("registry listener failed")

    # ---- push ------------------------------------------------------------------------
    def push(self, path: str | Path, *, created_by: str | None = None,
             aliases: list[str] | None = None) -> Pushed:
        """Verify, re-sign and store a bundle (dir or tar); return its version
        (``.created``: whether this push registered it).

        Pushing the same bundle again returns the existing version (idempotent);
        the same name:version with different content is a 409 conflict.
        The tar is unpacked in the work dir within ``max_unpacked_bytes``; error
        messages name the bundle, never a server path. A push that fails, or
        loses a race, leaves no artifact behind; an identical push that races
        another one answers with the version the other one registered.
        """
        for a in aliases or []:
            _check_alias(a)
        bundle = None
        try:
            bundle = read_bundle(path, work_dir=self.work_dir, max_bytes=self.max_unpacked_bytes,
                                 label="the uploaded bundle")
            mv, created = self._push_bundle(bundle, created_by, aliases or [])
            return Pushed(**{f.name: getattr(mv, f.name) for f in fields(ModelVersion)},
                          created=created)
        except EdgeError as exc:
            _scrub(exc, [p for p in (bundle.root if bundle else None, self.work_dir, Path(path).parent) if p])
            raise
        finally:
            if bundle is not None and bundle._tmp is not None:
                bundle._tmp.cleanup()

    def _push_bundle(self, bundle: Bundle, created_by: str | None,
                     aliases: list[str]) -> tuple[ModelVersion, bool]:
        m = bundle.manifest
        _check_name(m.name, m.version)
        signer = self._verify(bundle)
        existing = self._by_digest(m.digest)
        if existing is not None:
            return self._existing(existing, aliases), False
        self_test = self._self_test(bundle)
        with self._push_lock:
            other = self._row(m.name, m.version)
            if other is not None:
                if other["digest"] == m.digest:
                    return self._existing(self.get(m.name, m.version), aliases), False
                raise _version_conflict(m.name, m.version, other["digest"])
            tmp = Path(tempfile.mkdtemp(prefix="push-", dir=self.work_dir))
            try:
                tar = self._signed_tar(bundle, tmp)
                art_sha, size = self.store.put_file(tar)
                row = {"name": m.name, "version": m.version, "digest": m.digest, "format": m.format,
                       "task": m.task, "size": size, "artifact_sha256": art_sha,
                       "manifest": json.dumps(m.model_dump(mode="json", exclude_none=True)),
                       "signer_key_id": signer, "hub_key_id": self.hub_key.key_id,
                       "self_test": self_test, "created_at": _now(), "created_by": created_by}
                try:
                    with self.engine.begin() as conn:
                        conn.execute(insert(model_versions).values(**row))
                except IntegrityError as exc:  # a concurrent push from another replica won
                    self._drop_unreferenced(art_sha)
                    winner = self._by_digest(m.digest)
                    if winner is not None:  # the same bundle: idempotent
                        return self._existing(winner, aliases), False
                    other = self._row(m.name, m.version)
                    raise _version_conflict(m.name, m.version, other["digest"] if other else "") from exc
                except BaseException:
                    self._drop_unreferenced(art_sha)
                    raise
                if not self.store.exists(art_sha):  # an identical blob was dropped by a failed twin
                    self.store.put_file(tar)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        log.info("registered %s:%s sha256=%s", m.name, m.version, m.digest)
        for a in aliases:
            self.set_alias(m.name, a, m.version, reason="push")
        self._changed(m.name)
        return self.get(m.name, m.version), True

    def _existing(self, mv: ModelVersion, aliases: list[str]) -> ModelVersion:
        for a in aliases:
            self.set_alias(mv.name, a, mv.version, reason="push")
        return self.get(mv.name, mv.version) if aliases else mv

    def _drop_unreferenced(self, art_sha: str) -> None:
        """Delete a blob no version references (what a failed push stored)."""
        try:
            with self.engine.connect() as conn:
                used = conn.execute(select(model_versions.c.id).where(
                    model_versions.c.artifact_sha256 == art_sha).limit(1)).first()
            if used is None:
                self.store.delete(art_sha)
        except Exception:  # the push already failed; `cloud-hub artifacts gc` removes it later
            log.exception("could not remove the artifact of a failed push")

    def _verify(self, bundle: Bundle) -> str | None:
        """The same policy as a bundle path in batch/stream (:func:`cloud_hub.trust.verify_trusted`)."""
        from cloud_hub.trust import verify_trusted

        keys = self.trusted_keys + [self.hub_key.public]
        return verify_trusted(bundle, keys, allow_unsigned=self.allow_unsigned)

    def _self_test(self, bundle: Bundle) -> str:
        if not self.self_test:
            return "skipped"
        from edge_runtime.model import Model

        try:
            model = Model.load(bundle, warmup=False)
        except BundleError as exc:
            if exc.field == "format":  # e.g. Core ML cannot run here; devices still verify it
                return "skipped: no engine on the hub"
            raise
        except EdgeError as exc:
            raise BundleError(f"the model does not load: {exc.message}", field="model_file") from exc
        try:
            n = model.self_test()
        except EdgeError as exc:
            raise BundleError(f"golden vectors failed: {exc.message}", field=exc.field or "golden") from exc
        finally:
            model.close()
        return f"passed ({n} golden)" if n else "loaded (no golden vectors)"

    def _signed_tar(self, bundle: Bundle, tmp: Path) -> Path:
        """The hub-signed tar of ``bundle``, written under ``tmp``."""
        d = tmp / "bundle"
        shutil.copytree(bundle.root, d)
        sign_bundle(d, self.hub_key.private)
        return pack_bundle(d, tmp / "bundle.tar")

    def open_bundle(self, mv: ModelVersion):
        """The version's bundle, unpacked in the work dir (what the model cache loads)."""
        return read_bundle(self.artifact_path(mv), work_dir=self.work_dir,
                           max_bytes=max(self.max_unpacked_bytes, mv.size), label=mv.ref)

    # ---- reads -------------------------------------------------------------------------
    def _row(self, name: str, version: str):
        with self.engine.connect() as conn:
            return conn.execute(select(model_versions).where(
                and_(model_versions.c.name == name, model_versions.c.version == version))).mappings().first()

    def _by_digest(self, digest: str) -> ModelVersion | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(model_versions).where(model_versions.c.digest == digest)).mappings().first()
            if row is None:
                return None
            return self._mv(row, self._aliases_of(conn, row["name"]).get(row["version"], []))

    def _aliases_of(self, conn, name: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for r in conn.execute(select(model_aliases.c.alias, model_aliases.c.version)
                              .where(model_aliases.c.name == name).order_by(model_aliases.c.alias)):
            out.setdefault(r.version, []).append(r.alias)
        return out

    @staticmethod
    def _mv(row, aliases: list[str]) -> ModelVersion:
        manifest = json.loads(row["manifest"])
        return ModelVersion(name=row["name"], version=row["version"], digest=row["digest"],
                            format=row["format"], size=row["size"], aliases=aliases,
                            created_at=_aware(row["created_at"]),
                            provenance=manifest.get("provenance", {}), task=row["task"],
                            artifact_sha256=row["artifact_sha256"], signer_key_id=row["signer_key_id"],
                            hub_key_id=row["hub_key_id"], self_test=row["self_test"], manifest=manifest)

    def get(self, name: str, version: str) -> ModelVersion:
        with self.engine.connect() as conn:
            row = conn.execute(select(model_versions).where(
                and_(model_versions.c.name == name, model_versions.c.version == version))).mappings().first()
            if row is None:
                self._raise_unknown(conn, name, f"model {name} has no version {version}", "version")
            return self._mv(row, self._aliases_of(conn, name).get(version, []))

    def by_digest(self, digest: str) -> ModelVersion:
        mv = self._by_digest(digest)
        if mv is None:
            raise NotFoundError(f"no bundle with sha256 {digest[:80]}", field="digest")
        return mv

    def _raise_unknown(self, conn, name: str, msg: str, fld: str) -> None:
        known = conn.execute(select(model_versions.c.id).where(model_versions.c.name == name).limit(1)).first()
        if known is None:
            raise NotFoundError(f"unknown model {name}", field="model")
        raise NotFoundError(msg, field=fld)

    def resolve(self, ref: str | Ref) -> ModelVersion:
        """``name`` | ``name@alias`` | ``name:version`` → ModelVersion (NotFoundError naming what)."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        if r.version:
            return self.get(r.name, r.version)
        with self.engine.connect() as conn:
            alias = r.alias or DEFAULT_ALIAS
            version = conn.execute(select(model_aliases.c.version).where(
                and_(model_aliases.c.name == r.name, model_aliases.c.alias == alias))).scalar()
            if version is None:
                if r.alias:
                    self._raise_unknown(conn, r.name, f"model {r.name} has no alias {r.alias}", "alias")
                version = conn.execute(select(model_versions.c.version).where(
                    model_versions.c.name == r.name).order_by(model_versions.c.id.desc()).limit(1)).scalar()
                if version is None:
                    raise NotFoundError(f"unknown model {r.name}", field="model")
        return self.get(r.name, version)

    def versions(self, name: str) -> list[ModelVersion]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(model_versions).where(model_versions.c.name == name)
                                .order_by(model_versions.c.id)).mappings().all()
            if not rows:
                raise NotFoundError(f"unknown model {name}", field="model")
            al = self._aliases_of(conn, name)
            return [self._mv(r, al.get(r["version"], [])) for r in rows]

    def list(self, name: str | None = None) -> list[ModelVersion]:
        """All versions (of one model when ``name`` is given), oldest first."""
        if name is not None:
            return self.versions(name)
        with self.engine.connect() as conn:
            rows = conn.execute(select(model_versions).order_by(model_versions.c.name,
                                                                 model_versions.c.id)).mappings().all()
            al: dict[str, dict[str, list[str]]] = {}
            for r in conn.execute(select(model_aliases).order_by(model_aliases.c.alias)):
                al.setdefault(r.name, {}).setdefault(r.version, []).append(r.alias)
        return [self._mv(r, al.get(r["name"], {}).get(r["version"], [])) for r in rows]

    def names(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(model_versions.c.name).distinct()
                                     .order_by(model_versions.c.name)).scalars())

    # ---- aliases -----------------------------------------------------------------------
    def aliases(self, name: str) -> dict[str, str]:
        """alias → version for one model."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(model_aliases.c.alias, model_aliases.c.version)
                                .where(model_aliases.c.name == name).order_by(model_aliases.c.alias)).all()
            if not rows:
                known = conn.execute(select(model_versions.c.id)
                                     .where(model_versions.c.name == name).limit(1)).first()
                if known is None:
                    raise NotFoundError(f"unknown model {name}", field="model")
        return {r.alias: r.version for r in rows}

    def set_alias(self, name: str, alias: str, version: str | None, *, reason: str | None = None) -> None:
        """Point ``alias`` at ``version`` (None removes it)."""
        self.set_aliases(name, {alias: version}, reason=reason)

    def set_aliases(self, name: str, changes: dict[str, str | None], *, reason: str | None = None) -> dict[str, str]:
        """Move several aliases of one model in ONE transaction (atomic promotion).

        ``changes`` maps alias → version, or None to remove the alias. Returns
        the model's aliases after the change.
        """
        for a in changes:
            _check_alias(a)
        try:
            result = self._set_aliases(name, changes, reason)
        except IntegrityError:
            # Another replica created the same alias between our read and our insert: run
            # again, now seeing its committed row (the later change wins, like two moves).
            try:
                result = self._set_aliases(name, changes, reason)
            except IntegrityError as exc:
                raise ConflictError(f"aliases of {name} were changed concurrently; retry",
                                    field="alias") from exc
        self._changed(name)
        return result

    def _set_aliases(self, name: str, changes: dict[str, str | None], reason: str | None) -> dict[str, str]:
        now = _now()
        with self.engine.begin() as conn:
            for alias, version in changes.items():
                if version is not None:
                    ok = conn.execute(select(model_versions.c.id).where(
                        and_(model_versions.c.name == name, model_versions.c.version == version))).first()
                    if ok is None:
                        self._raise_unknown(conn, name, f"model {name} has no version {version}", "version")
                old = conn.execute(select(model_aliases.c.version).where(
                    and_(model_aliases.c.name == name, model_aliases.c.alias == alias))).scalar()
                if old == version:
                    continue
                if version is None:
                    conn.execute(delete(model_aliases).where(
                        and_(model_aliases.c.name == name, model_aliases.c.alias == alias)))
                elif old is None:
                    conn.execute(insert(model_aliases).values(name=name, alias=alias, version=version,
                                                              updated_at=now))
                else:
                    conn.execute(update(model_aliases).where(
                        and_(model_aliases.c.name == name, model_aliases.c.alias == alias))
                        .values(version=version, updated_at=now))
                conn.execute(insert(model_alias_events).values(name=name, alias=alias, old_version=old,
                                                               new_version=version, at=now,
                                                               reason=(reason or "")[:200] or None))
            return {r.alias: r.version for r in conn.execute(
                select(model_aliases.c.alias, model_aliases.c.version).where(model_aliases.c.name == name))}

    def alias_history(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(model_alias_events).where(model_alias_events.c.name == name)
                                .order_by(model_alias_events.c.id.desc()).limit(limit)).mappings().all()
        return [{"alias": r["alias"], "old_version": r["old_version"], "new_version": r["new_version"],
                 "at": _aware(r["at"]).isoformat(), "reason": r["reason"]} for r in rows]

    # ---- artifacts ---------------------------------------------------------------------
    def artifact_path(self, mv: ModelVersion) -> Path:
        """Local path of the version's (hub-signed) bundle tar, its sha256 checked first
        (:meth:`ArtifactStore.verified_path`): every load and download goes through here."""
        p = self.store.verified_path(mv.artifact_sha256)
        if p is None:  # remote store: cache a copy locally
            raise NotFoundError("artifact store has no local path", field="digest")
        return p

    def delete_version(self, name: str, version: str) -> None:
        """Remove a version that no alias points at (409 otherwise). The blob stays if shared."""
        mv = self.get(name, version)
        if mv.aliases:
            raise ConflictError(f"{name}:{version} is aliased as {', '.join(mv.aliases)}; move the "
                                "alias first", field="version")
        with self.engine.begin() as conn:
            conn.execute(delete(model_versions).where(model_versions.c.digest == mv.digest))
            still = conn.execute(select(model_versions.c.id).where(
                model_versions.c.artifact_sha256 == mv.artifact_sha256).limit(1)).first()
        if still is None:
            self.store.delete(mv.artifact_sha256)
        self._changed(name)


def _check_name(name: str, version: str) -> None:
    if not NAME_RE.match(name):
        raise BundleError(f"bad model name {name[:80]!r}: a letter or digit, then letters, digits, "
                          f"'_', '.', '-' (at most {NAME_MAX} characters)", field="manifest.name")
    if not VERSION_RE.match(version):
        raise BundleError(f"bad version {version[:80]!r}: letters, digits, '_', '.', '-', '+' "
                          f"(at most {NAME_MAX} characters)", field="manifest.version")


def _version_conflict(name: str, version: str, digest: str) -> ConflictError:
    return ConflictError(f"{name}:{version} is already registered with different content "
                         f"(sha256 {digest[:12]}…); bump the version", field="version")


def _scrub(exc: EdgeError, paths: list[Path]) -> None:
    """Replace server paths in an error's message (clients never see them)."""
    msg = exc.message
    for p in sorted({str(p) for p in paths} | {str(Path(p).resolve()) for p in paths}, key=len, reverse=True):
        if len(p) > 1:
            msg = msg.replace(p, "<bundle>")
    exc.message = msg
    exc.args = (msg,)


def make_store(engine: Engine, settings, work_dir: Path) -> ArtifactStore:
    """The artifact store ``HUB_ARTIFACTS`` names: ``local`` (files under the data dir)
    or ``database`` (blobs in the hub database, so replicas need only the database)."""
    kind = getattr(settings, "artifacts", "local")
    if kind == "database":
        from cloud_hub.artifacts_db import DatabaseArtifactStore

        return DatabaseArtifactStore(engine, Path(settings.data_dir) / "cache" / "artifacts")
    return LocalArtifactStore(Path(settings.data_dir) / "artifacts")


def _check_alias(alias: str) -> None:
    if not isinstance(alias, str) or not ALIAS_RE.match(alias):
        raise ValidationError(f"bad alias {str(alias)[:80]!r}: a letter then letters, digits, '_' "
                              "or '-' (max 64)", field="alias")


__all__ = ["MANIFEST", "HubKey", "ModelVersion", "Pushed", "Ref", "Registry", "parse_ref"]
