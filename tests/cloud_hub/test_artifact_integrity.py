"""The hub checks a stored artifact's sha256 before it loads or serves it (issue 11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient


def _flip_byte(path, offset: int = 700) -> bytes:
    """Flip one byte in place; return the original bytes (the file keeps its size)."""
    data = path.read_bytes()
    bad = bytearray(data)
    bad[offset] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(bad))
    return data


def _rows(cancer_data, n: int = 3) -> list[dict]:
    x, _, names = cancer_data
    return [{k: float(v) for k, v in zip(names, x[i])} for i in range(n)]


def test_tampered_artifact_is_neither_scored_nor_served(make_hub, cancer_bundle, cancer_data):
    from cloud_hub.app import create_app

    hub = make_hub()
    mv = hub.registry.push(cancer_bundle, aliases=["champion"])
    path = hub.registry.store.local_path(mv.artifact_sha256)
    original = _flip_byte(path)
    with TestClient(create_app(hub)) as client:
        r = client.post("/v1/models/cancer@champion/predict", json={"rows": _rows(cancer_data)})
        assert r.status_code == 500, r.text
        body = r.json()
        assert body["code"] == "integrity_error" and body["field"] == "digest"
        assert mv.artifact_sha256[:12] in body["error"] and str(path) not in body["error"]
        assert "predictions" not in body
        r = client.get(f"/v1/bundles/{mv.digest}")
        assert r.status_code == 500 and r.json()["code"] == "integrity_error"
        assert r.headers["content-type"].startswith("application/json")  # no tar bytes sent
        # the bytes restored (from a backup): the file changed, so it is checked again
        path.write_bytes(original)
        r = client.get(f"/v1/bundles/{mv.digest}")
        assert r.status_code == 200 and r.content == original
        r = client.post("/v1/models/cancer@champion/predict", json={"rows": _rows(cancer_data)})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3


def test_verdict_is_cached_per_digest_until_the_file_changes(make_hub, cancer_bundle):
    from edge_runtime.errors import IntegrityError

    hub = make_hub()
    mv = hub.registry.push(cancer_bundle)
    store = hub.registry.store
    path = store.verified_path(mv.artifact_sha256)
    stamp = store._verdicts[mv.artifact_sha256]
    assert stamp[1] is True
    assert store.verified_path(mv.artifact_sha256) == path  # same file: the kept verdict
    assert store._verdicts[mv.artifact_sha256] is stamp
    _flip_byte(path)
    with pytest.raises(IntegrityError):
        store.verified_path(mv.artifact_sha256)
    with pytest.raises(IntegrityError):  # refused again, not served from a stale verdict
        hub.registry.artifact_path(mv)


def test_cli_batch_on_a_tampered_registry_artifact_scores_nothing(
    tmp_path, hub_settings, cancer_bundle, cancer_data, keypair
):
    """`cloud-hub batch run --model cancer:1.0.0` with a flipped byte in the stored tar."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cloud_hub.hub import Hub

    settings = hub_settings()
    hub = Hub(settings)
    try:
        mv = hub.registry.push(cancer_bundle)
        _flip_byte(hub.registry.store.local_path(mv.artifact_sha256))
    finally:
        hub.close()
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.Table.from_pylist(_rows(cancer_data, 20)), src)
    env = {**os.environ, "HUB_DATA_DIR": str(settings.data_dir),
           "HUB_TRUSTED_KEYS": json.dumps([str(keypair[1])])}
    r = subprocess.run([sys.executable, "-m", "cloud_hub.cli", "batch", "run", "--model",
                        f"cancer:{mv.version}", "--input", str(src), "--output", str(out)],
                       capture_output=True, text=True, timeout=120, check=False, env=env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("cloud-hub: error: artifact ") and r.stderr.count("\n") == 1
    assert "(integrity_error, field digest)" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob("out*rejects*"))
