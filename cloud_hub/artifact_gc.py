"""Remove artifacts no model version references (``cloud-hub artifacts gc``).

A push stores its artifact before the row that references it, and removes it
again when it fails; older hub versions did not, and a crash between the two
steps leaves a blob behind. ``gc`` deletes blobs that no row references and
that are older than ``min_age_s`` (so a push in flight on another replica,
whose row is not committed yet, keeps its blob).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from cloud_hub.artifacts import LocalArtifactStore
from cloud_hub.registry import Registry, model_versions


@dataclass
class GcReport:
    kept: int = 0
    removed: list[str] = field(default_factory=list)
    young: int = 0  # unreferenced but younger than min_age_s
    freed_bytes: int = 0


def stored(store) -> dict[str, float]:
    """sha256 → age in seconds of every blob in ``store``."""
    now = time.time()
    if isinstance(store, LocalArtifactStore):
        out = {}
        for p in Path(store.root).glob("??/*"):
            if p.is_file() and len(p.name) == 64:
                out[p.name] = now - p.stat().st_mtime
        return out
    from cloud_hub.artifacts_db import artifact_blobs

    with store.engine.connect() as conn:
        rows = conn.execute(select(artifact_blobs.c.sha256, artifact_blobs.c.created_at)).all()
    utc_now = dt.datetime.now(dt.UTC)
    return {r.sha256: (utc_now - (r.created_at if r.created_at.tzinfo else r.created_at.replace(
        tzinfo=dt.UTC))).total_seconds() for r in rows}


def gc(registry: Registry, *, min_age_s: float = 3600.0, dry_run: bool = False) -> GcReport:
    with registry.engine.connect() as conn:
        used = set(conn.execute(select(model_versions.c.artifact_sha256).distinct()).scalars())
    report = GcReport()
    for sha, age in sorted(stored(registry.store).items()):
        if sha in used:
            report.kept += 1
        elif age < min_age_s:
            report.young += 1
        else:
            size = registry.store.size(sha)
            if dry_run or registry.store.delete(sha):
                report.removed.append(sha)
                report.freed_bytes += size
    return report
