"""Bundles are refused with a message that says exactly what is wrong."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from edge_runtime.bundle import pack_bundle, read_bundle, sign_bundle, verify_bundle
from edge_runtime.errors import BundleError
from edge_runtime.signing import load_public_key


@pytest.fixture
def copy(cancer_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(cancer_bundle, dst)
    return dst


@pytest.fixture
def pub(keypair):
    return load_public_key(keypair[1])


def _edit(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_good_bundle_verifies(cancer_bundle, pub):
    r = verify_bundle(read_bundle(cancer_bundle), pub)
    assert r.ok and r.signed and r.key_id and len(r.digest) == 64
    assert set(r.files) == {"model.onnx"}


def test_wrong_hash(copy, pub):
    data = bytearray((copy / "model.onnx").read_bytes())
    data[100] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"file model.onnx sha256 mismatch: manifest [0-9a-f]{12}…") as ei:
        verify_bundle(copy, pub)
    assert ei.value.field == "files.model.onnx.sha256"


def test_wrong_size(copy, pub):
    (copy / "model.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="file model.onnx has size 1, manifest says"):
        verify_bundle(copy, pub)


def test_missing_file(copy, pub):
    (copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="file model.onnx listed in the manifest is missing") as ei:
        verify_bundle(copy, pub)
    assert ei.value.field == "files.model.onnx"


def test_bad_signature_other_key(copy, pub, other_keypair):
    sign_bundle(copy, other_keypair[0])
    with pytest.raises(BundleError, match="bad signature: bundle signed by key [0-9a-f]{16} does not "
                                          "verify against any trusted public key"):
        verify_bundle(copy, pub)
    # verifies with the key that signed it (several trusted keys allowed)
    assert verify_bundle(copy, [pub, load_public_key(other_keypair[1])]).ok


def test_manifest_edited_after_signing(copy, pub):
    _edit(copy, lambda m: m["postprocess"].update(threshold=0.1))
    with pytest.raises(BundleError, match="bad signature"):
        verify_bundle(copy, pub)


def test_unsigned_bundle(copy, pub):
    _edit(copy, lambda m: m.pop("signature"))
    with pytest.raises(BundleError, match="bundle is not signed"):
        verify_bundle(copy, pub)
    assert verify_bundle(copy, None, require_signature=False).signed is False


@pytest.mark.parametrize("edit,needle,field", [
    (lambda m: m.pop("name"), "invalid manifest: name: Field required", "manifest.name"),
    (lambda m: m.update(format="pickle"), "invalid manifest: format", "manifest.format"),
    (lambda m: m.update(model_file="other.onnx"), "model_file 'other.onnx' is not listed in files",
     "manifest"),
    (lambda m: m["files"].update({"../evil": m["files"]["model.onnx"]}), "unsafe name", "manifest"),
    (lambda m: m.update(task="binary_classification", outputs=[{"name": "label", "role": "label"}]),
     "needs an output with role 'probabilities' or 'logits'", "manifest"),
    (lambda m: m["inputs"].update(features=[]), "at least one feature", "manifest.inputs"),
    (lambda m: m.update(surprise=1), "surprise: Extra inputs are not permitted", "manifest.surprise"),
    (lambda m: m["files"]["model.onnx"].update(sha256="abc"), "files.model.onnx.sha256",
     "manifest.files.model.onnx.sha256"),
])
def test_invalid_manifest(copy, edit, needle, field):
    _edit(copy, edit)
    with pytest.raises(BundleError) as ei:
        read_bundle(copy)
    assert needle in str(ei.value)
    assert ei.value.field == field


def test_manifest_not_json_or_missing(copy, tmp_path):
    (copy / "manifest.json").write_text("{nope")
    with pytest.raises(BundleError, match="manifest.json is not valid JSON"):
        read_bundle(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="has no manifest.json"):
        read_bundle(copy)
    with pytest.raises(BundleError, match="bundle not found"):
        read_bundle(tmp_path / "nothing")
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(BundleError, match="neither a directory nor a tar"):
        read_bundle(tmp_path / "plain.txt")


def test_tar_bundle_roundtrip_and_tampering(cancer_bundle, tmp_path, pub):
    tar = pack_bundle(cancer_bundle, tmp_path / "b.tar")
    b = read_bundle(tar)
    assert b.digest == read_bundle(cancer_bundle).digest and verify_bundle(b, pub).ok
    # a tar holding a modified model file
    bad = tmp_path / "bad.tar"
    with tarfile.open(tar) as src, tarfile.open(bad, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == "model.onnx":
                data = data[:-1] + bytes([data[-1] ^ 1])
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(BundleError, match="model.onnx sha256 mismatch"):
        verify_bundle(bad, pub)


def test_tar_with_a_link_or_garbage_is_refused(cancer_bundle, tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        tar.add(cancer_bundle / "manifest.json", arcname="manifest.json")
        link = tarfile.TarInfo("model.onnx")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(BundleError, match="tar member model.onnx is not a regular file"):
        read_bundle(evil)
    trunc = tmp_path / "trunc.tar"
    trunc.write_bytes(pack_bundle(cancer_bundle, tmp_path / "ok.tar").read_bytes()[:700])
    with pytest.raises(BundleError):
        verify_bundle(trunc, None, require_signature=False)


def test_key_files_of_the_wrong_kind_are_named(keypair, tmp_path):
    from edge_runtime.signing import load_private_key

    priv, pubf = keypair
    with pytest.raises(BundleError) as ei:
        load_public_key(priv)  # a private key where the public one belongs
    assert ei.value.field == "public_key"
    assert str(ei.value).startswith(f"public key {priv} is not a PEM ed25519 key: ")
    assert "http" not in str(ei.value)  # no FAQ links in a one-line error
    with pytest.raises(BundleError, match=f"private key {pubf} is not a PEM ed25519 key") as ei:
        load_private_key(pubf)
    assert ei.value.field == "key"
    with pytest.raises(BundleError, match="cannot read public key .*nope.pub") as ei:
        load_public_key(tmp_path / "nope.pub")
    assert ei.value.field == "public_key"
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key\n")
    with pytest.raises(BundleError, match=f"public key {garbage} is not a PEM"):
        load_public_key(garbage)
    assert load_public_key(Path(pubf).read_bytes()) is not None  # inline PEM still works


def test_unpacked_tars_are_removed(cancer_bundle, tmp_path, monkeypatch):
    """A refused tar leaves no unpacked copy; an accepted one goes with its Bundle."""
    import gc
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    tar = pack_bundle(cancer_bundle, tmp_path / "ok.tar")
    evil = tmp_path / "nomanifest.tar"
    with tarfile.open(evil, "w") as t:
        t.add(cancer_bundle / "model.onnx", arcname="model.onnx")
    with pytest.raises(BundleError, match="has no manifest.json"):
        read_bundle(evil)
    assert list(scratch.iterdir()) == []
    b = read_bundle(tar)
    unpacked = b.root
    assert unpacked.is_dir() and unpacked.parent == scratch
    b._tmp.cleanup()  # what the hub registry does once it has copied the files
    assert not unpacked.exists()
    b = read_bundle(tar)
    unpacked = b.root
    del b
    gc.collect()
    assert not unpacked.exists()
