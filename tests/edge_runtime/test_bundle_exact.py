"""A bundle is exactly its manifest: unlisted or unsafe tar entries are refused, and a
tar is unpacked within bounds (a decompression bomb is refused without being written)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from edge_runtime.bundle import pack_bundle, read_bundle, verify_bundle
from edge_runtime.cli import main
from edge_runtime.errors import BundleError
from edge_runtime.signing import load_public_key


def _tar_with_extra(bundle: Path, out: Path, name: str, data: bytes = b"#!/bin/sh\necho pwned\n") -> Path:
    with tarfile.open(pack_bundle(bundle, out.with_suffix(".ok.tar"))) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member))
        extra = tarfile.TarInfo(name)
        extra.size = len(data)
        dst.addfile(extra, io.BytesIO(data))
    return out


def test_unlisted_tar_entry_is_refused_by_verify_and_the_cli(cancer_bundle, tmp_path, keypair, capsys):
    evil = _tar_with_extra(cancer_bundle, tmp_path / "evil.tar", "README-smuggled.sh")
    with pytest.raises(BundleError, match="README-smuggled.sh.*does not list") as ei:
        verify_bundle(evil, load_public_key(keypair[1]))
    assert ei.value.field == "files"
    assert main(["bundle", "verify", str(evil), "--public-key", str(keypair[1])]) == 1
    err = capsys.readouterr().err
    assert "README-smuggled.sh" in err and "ok:" not in err


def test_unlisted_file_in_a_directory_bundle_is_refused(cancer_bundle, tmp_path, keypair):
    import shutil

    d = tmp_path / "b"
    shutil.copytree(cancer_bundle, d)
    (d / "sub").mkdir()
    (d / "sub" / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match="sub/extra.bin"):
        verify_bundle(d, load_public_key(keypair[1]))


@pytest.mark.parametrize("name", ["/etc/cron.d/evil", "../escape.sh", "a/../../escape.sh"])
def test_absolute_or_escaping_entry_names_are_refused(cancer_bundle, tmp_path, name):
    evil = _tar_with_extra(cancer_bundle, tmp_path / "evil.tar", name)
    with pytest.raises(BundleError, match="unsafe entry name"):
        read_bundle(evil)
    assert not (tmp_path / "escape.sh").exists()


def test_store_install_refuses_an_unlisted_file(store, cancer_bundle, tmp_path):
    evil = _tar_with_extra(cancer_bundle, tmp_path / "evil.tar", "README-smuggled.sh")
    with pytest.raises(BundleError, match="README-smuggled.sh"):
        store.install(evil, "active")
    assert store.status()["slots"].get("active") is None


def gzip_bomb(path: Path, unpacked: int, *, first: tuple[str, bytes] | None = None) -> Path:
    """A .tar.gz whose big member is ``unpacked`` zero bytes. A gzip file may hold several
    members back to back, so one compressed 16 MiB block of zeros is repeated: the bomb is
    never held unpacked, in memory or on disk."""
    block = 16 * 1024 * 1024
    assert unpacked % block == 0
    head = b""
    if first is not None:
        info = tarfile.TarInfo(first[0])
        info.size = len(first[1])
        head = info.tobuf(format=tarfile.GNU_FORMAT) + first[1] + bytes(-len(first[1]) % 512)
    info = tarfile.TarInfo("model.onnx")
    info.size = unpacked
    zeros = gzip.compress(bytes(block), compresslevel=9)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(head + info.tobuf(format=tarfile.GNU_FORMAT)))
        fh.writelines(zeros for _ in range(unpacked // block))
        fh.write(gzip.compress(bytes(1024)))  # end-of-archive blocks
    return path


def test_decompression_bomb_is_refused_before_it_is_written(tmp_path):
    bomb = gzip_bomb(tmp_path / "bomb.tar.gz", 256 * 1024 * 1024)
    assert bomb.stat().st_size < 1024 * 1024
    work = tmp_path / "work"
    with pytest.raises(BundleError, match="unpacks to more than 1048576 bytes"):
        read_bundle(bomb, work_dir=work, max_bytes=1024 * 1024)
    assert list(work.iterdir()) == []  # the refused tar left nothing behind


def test_entry_count_is_bounded(tmp_path):
    path = tmp_path / "many.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(20):
            info = tarfile.TarInfo(f"f{i}")
            tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(BundleError, match="more than 10 entries"):
        read_bundle(path, max_entries=10)


def test_label_hides_the_server_path(tmp_path):
    bad = tmp_path / "secret-dir" / "upload.tar"
    bad.parent.mkdir()
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("x")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(BundleError) as ei:
        read_bundle(bad, label="upload")
    assert "secret-dir" not in ei.value.message and str(tmp_path) not in ei.value.message
    assert os.path.exists(bad)
