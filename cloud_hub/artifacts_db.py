"""Artifact store in the hub database (``HUB_ARTIFACTS=database``).

Bundles are KB–MB, so keeping their tars as blobs in the database lets hub
replicas share one truth with nothing but PostgreSQL (no shared directory).
Each replica keeps a local copy under ``<data_dir>/cache/artifacts`` for the
engines and the download route; a copy is written atomically and re-hashed
when it is made, and a cached file is only trusted when its size matches.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    LargeBinary,
    String,
    Table,
    delete,
    insert,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from cloud_hub import db
from cloud_hub.artifacts import CHUNK, ArtifactStore, _check_digest
from edge_runtime.errors import NotFoundError, StoreError

artifact_blobs = Table(
    "artifact_blobs", db.metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

db.migration("0101_artifact_blobs")(db.create_tables(artifact_blobs))


class DatabaseArtifactStore(ArtifactStore):
    """Blobs in table ``artifact_blobs``; local copies under ``cache_dir``."""

    def __init__(self, engine: Engine, cache_dir: str | Path) -> None:
        self.engine = engine
        self.cache = Path(cache_dir)
        self.cache.mkdir(parents=True, exist_ok=True)

    def put_file(self, path: str | Path) -> tuple[str, int]:
        data = Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        try:
            with self.engine.begin() as conn:
                if conn.execute(select(artifact_blobs.c.size).where(
                        artifact_blobs.c.sha256 == digest)).first() is None:
                    conn.execute(insert(artifact_blobs).values(
                        sha256=digest, size=len(data), data=data, created_at=dt.datetime.now(dt.UTC)))
        except IntegrityError:  # another replica stored the same bytes at the same time
            pass
        return digest, len(data)

    def exists(self, sha256: str) -> bool:
        try:
            _check_digest(sha256)
        except NotFoundError:
            return False
        with self.engine.connect() as conn:
            return conn.execute(select(artifact_blobs.c.size).where(
                artifact_blobs.c.sha256 == sha256)).first() is not None

    def size(self, sha256: str) -> int:
        _check_digest(sha256)
        with self.engine.connect() as conn:
            n = conn.execute(select(artifact_blobs.c.size).where(artifact_blobs.c.sha256 == sha256)).scalar()
        if n is None:
            raise NotFoundError(f"artifact {sha256} is not in the store", field="digest")
        return int(n)

    def _data(self, sha256: str) -> bytes:
        _check_digest(sha256)
        with self.engine.connect() as conn:
            data = conn.execute(select(artifact_blobs.c.data).where(artifact_blobs.c.sha256 == sha256)).scalar()
        if data is None:
            raise NotFoundError(f"artifact {sha256} is not in the store", field="digest")
        data = bytes(data)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StoreError(f"artifact {sha256[:12]}… in the database does not match its sha256",
                             field="digest")
        return data

    def open(self, sha256: str) -> BinaryIO:
        path = self.local_path(sha256)
        return open(path, "rb") if path is not None else io.BytesIO(self._data(sha256))

    def local_path(self, sha256: str) -> Path | None:
        """The cached copy, fetched from the database (and checked) on first use."""
        _check_digest(sha256)
        dest = self.cache / sha256[:2] / sha256
        size = self.size(sha256)
        if dest.is_file() and dest.stat().st_size == size:
            return dest
        data = self._data(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".get-", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                for i in range(0, len(data), CHUNK):
                    fh.write(data[i:i + CHUNK])
            os.replace(tmp, dest)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise StoreError(f"cannot cache artifact {sha256[:12]}…: {exc.strerror}") from exc
        return dest

    def delete(self, sha256: str) -> bool:
        _check_digest(sha256)
        with self.engine.begin() as conn:
            n = conn.execute(delete(artifact_blobs).where(artifact_blobs.c.sha256 == sha256)).rowcount
        (self.cache / sha256[:2] / sha256).unlink(missing_ok=True)
        return bool(n)

    def digests(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(artifact_blobs.c.sha256)).scalars())
