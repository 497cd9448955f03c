"""The store on a lost/empty/corrupt journal and on a full disk (a real, small tmpfs)."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace

import pytest

from edge_runtime.bundle import read_bundle
from edge_runtime.errors import StoreError
from edge_runtime.profile import load_profile
from edge_runtime.store import ModelStore
from tests.edge_runtime.disk import fill


def _open(path, keypair):
    # a loose latency budget: these tests are about the journal and the disk, and the
    # machine running them may be busy
    profile = replace(load_profile("x86-gateway"), latency_budget_ms=10_000.0)
    return ModelStore(path, profile, [keypair[1]], latency_runs=20)


@pytest.fixture
def two_installed(tmp_path, keypair, cancer_bundle, cancer_bundle_v2):
    """A store with v2 active and v1 previous, closed."""
    path = tmp_path / "store"
    with _open(path, keypair) as s:
        s.install(cancer_bundle)
        s.install(cancer_bundle_v2)
    return path


def _bundles(path):
    return sorted(p.name for p in (path / "bundles").iterdir())


def _drop_journal(path):
    for suffix in ("", "-wal", "-shm"):
        p = path / f"journal.db{suffix}"
        if p.exists():
            p.unlink()


@pytest.mark.parametrize("damage", ["deleted", "empty", "garbage", "page"])
def test_a_lost_journal_is_rebuilt_from_the_bundles_and_nothing_is_deleted(
    two_installed, keypair, cancer_bundle, cancer_bundle_v2, rows, damage
):
    path = two_installed
    before = _bundles(path)
    assert len(before) == 2
    if damage == "deleted":
        _drop_journal(path)
    elif damage == "empty":
        _drop_journal(path)
        (path / "journal.db").write_bytes(b"")
    else:
        db = path / "journal.db"
        assert db.stat().st_size > 4096
        with open(db, "r+b") as fh:
            if damage == "garbage":  # the header: "file is not a database"
                fh.write(b"\x5a" * 100)
            else:  # inside the pages that hold the tables
                for page in range(1, db.stat().st_size // 4096):
                    fh.seek(page * 4096 + 8)
                    fh.write(b"\x5a" * 64)
    with _open(path, keypair) as s:
        assert _bundles(path) == before
        assert s.slot("active").sha256 == read_bundle(cancer_bundle_v2).digest
        assert s.slot("previous").sha256 == read_bundle(cancer_bundle).digest
        assert len(s.model("active").predict(rows)) == 5
        text = " | ".join(s.recovery)
        assert "rebuild" in text and "slots.json" in text
        assert s.journal(1)[0]["op"] == "rebuild"
    if damage != "deleted":  # the broken journal is kept for inspection
        assert [p.name for p in path.glob("journal.db.broken-*")]


def test_without_a_record_of_the_slots_nothing_is_activated_and_bundles_are_kept(
    two_installed, keypair, cancer_bundle_v2
):
    path = two_installed
    before = _bundles(path)
    _drop_journal(path)
    (path / "slots.json").unlink()
    for slot in ("active", "previous"):
        (path / slot).unlink()
    with _open(path, keypair) as s:
        assert s.model("active") is None
        assert "none activated" in " | ".join(s.recovery)
    # a second start (the journal is healthy now) still keeps them: no guessing, no deleting
    with _open(path, keypair) as s:
        assert s.model("active") is None
        assert _bundles(path) == before
        s.install(cancer_bundle_v2)  # a deliberate choice; the unused bundle may go now
        assert s.model("active").version == "2.0.0"
    assert _bundles(path) == [read_bundle(cancer_bundle_v2).digest]


def test_a_tampered_bundle_is_not_restored_by_a_rebuild(two_installed, keypair, cancer_bundle):
    path = two_installed
    _drop_journal(path)
    active = os.readlink(path / "active")
    model_file = next(p for p in (path / active).iterdir() if p.suffix == ".onnx")
    model_file.write_bytes(model_file.read_bytes() + b"x")
    with _open(path, keypair) as s:
        # the active slot's bundle fails verification: previous (v1) serves, with the reason
        assert s.model("active").digest == read_bundle(cancer_bundle).digest
        assert any("not usable" in line for line in s.recovery)
        assert path.joinpath(active).exists()  # kept, not deleted


def test_full_disk_at_start_serves_the_intact_model_read_only(
    small_disk, keypair, cancer_bundle, cancer_bundle_v2, rows
):
    path = small_disk / "store"
    with _open(path, keypair) as s:
        s.install(cancer_bundle)
        jid = s._journal_start("install", "active", "load", "left running (a crash)")
    assert jid
    filler = fill(small_disk)
    with _open(path, keypair) as s:
        assert s.read_only and "full" in s.read_only
        assert len(s.model("active").predict(rows)) == 5
        assert s.status()["slots"]["active"]["version"] == "1.0.0"
        with pytest.raises(StoreError, match="installs are refused: the disk is full"):
            s.install(cancer_bundle_v2)
    # space returns: the next start is writable again and marks the crash
    filler.unlink()
    with _open(path, keypair) as s:
        assert s.read_only is None
        assert s.journal(5)[0]["state"] in ("interrupted", "ok")
        s.install(cancer_bundle_v2)
        assert s.model("active").version == "2.0.0"


def test_an_install_refused_for_a_full_disk_records_why(
    small_disk, keypair, cancer_bundle, cancer_bundle_v2, rows
):
    path = small_disk / "store"
    with _open(path, keypair) as s:
        s.install(cancer_bundle)
        filler = fill(small_disk)
        with pytest.raises(StoreError) as err:
            s.install(cancer_bundle_v2)
        assert "space" in err.value.message.lower() or "full" in err.value.message.lower()
        row = s.journal(1)[0]
        assert row["state"] == "failed" and "disk is full" in row["detail"]
        assert len(s.model("active").predict(rows)) == 5  # the old model keeps serving
    filler.unlink()
    with _open(path, keypair) as s:  # the reason survives a restart (not "interrupted")
        row = next(r for r in s.journal(10) if r["op"] == "install" and r["state"] != "ok")
        assert row["state"] == "failed" and "disk is full" in row["detail"]


def test_journal_check_does_not_set_aside_a_healthy_journal(two_installed, keypair):
    with _open(two_installed, keypair) as s:
        assert not any("rebuild" in line for line in s.recovery)
    assert not list(two_installed.glob("journal.db.broken-*"))
    con = sqlite3.connect(two_installed / "journal.db")
    assert con.execute("SELECT COUNT(*) FROM slots").fetchone()[0] == 2
    con.close()
