"""Two real ``cloud-hub serve`` replicas on one PostgreSQL database (issue 13): they start
together on an empty database, race on aliases and pushes, and share one truth
(HUB_ARTIFACTS=database, one signing key)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from edge_runtime.bundle import pack_bundle, sign_bundle
from tests.cloud_hub.hub_support import row_of
from tests.conftest import free_port

pytestmark = pytest.mark.slow


def _start(tmp: Path, name: str, db_url: str, key: Path, trusted: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, HUB_DATABASE_URL=db_url, HUB_DATA_DIR=str(tmp / name), HUB_SIGNING_KEY=str(key),
               HUB_TRUSTED_KEYS=json.dumps([str(trusted)]), HUB_ARTIFACTS="database", HUB_PORT=str(port),
               HUB_HOST="127.0.0.1", HUB_ACCESS_LOG="0", HUB_LOG_LEVEL="warning", HUB_MICROBATCH="0")
    for k in ("HUB_MQTT_URL", "HUB_ADMIN_KEYS", "HUB_CLIENT_KEYS", "HUB_VIEWER_KEYS"):
        env.pop(k, None)
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "cloud_hub.cli", "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=tmp)
    return proc, f"http://127.0.0.1:{port}"


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"replica exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"replica at {url} not healthy in {timeout} s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def replicas(tmp_path, fresh_pg_url, keypair):
    from edge_runtime.signing import generate_keypair

    key, _ = generate_keypair(tmp_path / "hub.key", tmp_path / "hub.pub")
    procs = [_start(tmp_path, n, fresh_pg_url, key, keypair[1]) for n in ("a", "b")]  # together
    try:
        for (proc, url), n in zip(procs, ("a", "b")):
            _wait_healthy(proc, url, tmp_path / f"{n}.log")
        yield [url for _, url in procs], fresh_pg_url
    finally:
        for proc, _ in procs:
            _stop(proc)


def _tar(bundle: Path, tmp: Path, name: str) -> bytes:
    return pack_bundle(bundle, tmp / name).read_bytes()


def _push(url: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{url}/v1/models", content=data, headers={"Content-Type": "application/x-tar"}, timeout=60)


def _both(fn_a, fn_b):
    with ThreadPoolExecutor(2) as ex:
        fa, fb = ex.submit(fn_a), ex.submit(fn_b)
        return fa.result(), fb.result()


def _orphans(db_url: str) -> int:
    from sqlalchemy import create_engine, text

    eng = create_engine(db_url)
    try:
        with eng.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM artifact_blobs WHERE sha256 NOT IN "
                                     "(SELECT artifact_sha256 FROM model_versions)")).scalar()
    finally:
        eng.dispose()


def test_two_replicas_on_one_database(replicas, cancer_bundle, cancer_bundle_v2, cancer_data, tmp_path, keypair):
    (a, b), db_url = replicas
    # one truth: the same key, and a model pushed to A is served by B
    assert httpx.get(f"{a}/v1/keys/hub.pub").content == httpx.get(f"{b}/v1/keys/hub.pub").content
    assert _push(a, _tar(cancer_bundle, tmp_path, "v1.tar")).status_code == 201

    # identical push to both at once: one 201, one 200, one version
    v2 = _tar(cancer_bundle_v2, tmp_path, "v2.tar")
    ra, rb = _both(lambda: _push(a, v2), lambda: _push(b, v2))
    assert sorted([ra.status_code, rb.status_code]) == [200, 201], (ra.text, rb.text)
    assert ra.json()["sha256"] == rb.json()["sha256"]
    digest = ra.json()["sha256"]
    r = httpx.get(f"{b}/v1/bundles/{digest}", timeout=30)
    assert r.status_code == 200 and r.headers["etag"] == f'"{digest}"' and "immutable" in r.headers["cache-control"]

    # push race: the same name:version with different content: one 201, one 409, no orphan artifact
    def variant(src: Path, tag: str) -> bytes:
        d = tmp_path / f"var-{tag}"
        shutil.copytree(src, d)
        m = json.loads((d / "manifest.json").read_text())
        m["version"] = "3.0.0"
        m.pop("signature")
        (d / "manifest.json").write_text(json.dumps(m))
        sign_bundle(d, keypair[0])
        return _tar(d, tmp_path, f"var-{tag}.tar")

    x, y = variant(cancer_bundle, "x"), variant(cancer_bundle_v2, "y")
    ra, rb = _both(lambda: _push(a, x), lambda: _push(b, y))
    assert sorted([ra.status_code, rb.status_code]) == [201, 409], (ra.text, rb.text)
    assert _orphans(db_url) == 0

    # alias races: new aliases created on both at once, and moves to different versions
    for i in range(5):
        alias = f"race{i}"
        ra, rb = _both(lambda al=alias: httpx.put(f"{a}/v1/models/cancer/aliases/{al}", json={"version": "1.0.0"}),
                       lambda al=alias: httpx.put(f"{b}/v1/models/cancer/aliases/{al}", json={"version": "2.0.0"}))
        codes = sorted([ra.status_code, rb.status_code])
        assert codes in ([200, 200], [200, 409]), (ra.text, rb.text)
        final_a = httpx.get(f"{a}/v1/models/cancer/aliases").json()["aliases"][alias]
        final_b = httpx.get(f"{b}/v1/models/cancer/aliases").json()["aliases"][alias]
        assert final_a == final_b and final_a in ("1.0.0", "2.0.0")

    # B predicts with what A registered (artifacts in the database)
    r = httpx.post(f"{b}/v1/models/cancer:3.0.0/predict", json={"rows": [row_of(cancer_data)]}, timeout=30)
    assert r.status_code == 200 and r.json()["model"]["version"] == "3.0.0", r.text
