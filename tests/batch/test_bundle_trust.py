"""`cloud-hub batch run` and `cloud-hub stream` verify a bundle PATH before loading it: hashes,
exact file list, signature against the trusted keys. A bad bundle: one line, nothing scored."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="module")
def stranger_keypair(tmp_path_factory):
    from edge_runtime.signing import generate_keypair

    d = tmp_path_factory.mktemp("stranger")
    return generate_keypair(d / "stranger.key", d / "stranger.pub")


def _tampered(cancer_bundle, dest):
    shutil.copytree(cancer_bundle, dest)
    model = dest / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    return dest


def _resigned(cancer_bundle, dest, key):
    from edge_runtime.bundle import sign_bundle

    shutil.copytree(cancer_bundle, dest)
    sign_bundle(dest, key)
    return dest


def _extra_file(cancer_bundle, dest):
    shutil.copytree(cancer_bundle, dest)
    (dest / "run_me.sh").write_text("#!/bin/sh\necho hi\n")
    return dest


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cloud_hub.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


def _one_line(r, *needles: str) -> None:
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("cloud-hub: error: bundle ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr and "(invalid_bundle, field " in r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


CASES = {
    "tampered": (lambda b, d, k: _tampered(b, d), ["sha256 mismatch", "files.model.onnx.sha256"]),
    "untrusted": (lambda b, d, k: _resigned(b, d, k), ["bad signature", "field signature"]),
    "extra_file": (lambda b, d, k: _extra_file(b, d), ["run_me.sh", "does not list"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_batch_run_refuses_a_bad_bundle_path(case, tmp_path, cancer_bundle, stranger_keypair,
                                             clean_table):
    make, needles = CASES[case]
    bundle = make(cancer_bundle, tmp_path / "bundle", stranger_keypair[0])
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(clean_table.slice(0, 50), src)
    r = _cli("batch", "run", "--model", bundle, "--input", src, "--output", out)
    _one_line(r, *needles)
    assert not out.exists() and not list(tmp_path.glob("out*"))  # nothing scored, nothing written


def test_batch_run_trusts_only_the_given_public_key(tmp_path, cancer_bundle, stranger_keypair,
                                                    keypair, clean_table):
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(clean_table.slice(0, 50), src)
    stranger = _resigned(cancer_bundle, tmp_path / "b", stranger_keypair[0])
    # --public-key replaces the environment's keys: the fleet bundle is now untrusted
    r = _cli("batch", "run", "--model", cancer_bundle, "--input", src, "--output", out,
             "--public-key", stranger_keypair[1])
    _one_line(r, "bad signature")
    r = _cli("batch", "run", "--model", stranger, "--input", src, "--output", out,
             "--public-key", stranger_keypair[1], "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows_out"] == 50 and out.exists()


def test_batch_run_without_any_trusted_key_refuses_a_signed_bundle(tmp_path, cancer_bundle,
                                                                  clean_table):
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(clean_table.slice(0, 5), src)
    r = _cli("batch", "run", "--model", cancer_bundle, "--input", src, "--output", out,
             env={"HUB_TRUSTED_KEYS": "[]", "HUB_DATA_DIR": str(tmp_path / "hub")})
    _one_line(r, "no trusted key", "--public-key", "field public_key")
    assert not out.exists()


@pytest.mark.parametrize("case", ["tampered", "untrusted"])
def test_stream_refuses_a_bad_bundle_path_before_reading_a_message(case, tmp_path, cancer_bundle,
                                                                   stranger_keypair):
    """Refused before any broker is contacted (the URLs point at a closed port)."""
    make, needles = CASES[case]
    bundle = make(cancer_bundle, tmp_path / "bundle", stranger_keypair[0])
    url = "nats://127.0.0.1:9/never"
    r = _cli("stream", "--source", url, "--sink", url + "-out", "--model", bundle)
    _one_line(r, *needles)
    assert '"event": "ready"' not in r.stderr
