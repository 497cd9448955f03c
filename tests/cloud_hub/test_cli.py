"""``cloud-hub serve`` as a real subprocess and ``cloud-hub models`` against it; --help of every command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from cloud_hub.cli import main
from tests.conftest import free_port

HELP = [["serve"], ["models"], ["models", "push"], ["models", "list"], ["models", "show"], ["models", "alias"]]


@pytest.mark.parametrize("argv", HELP, ids=[" ".join(a) for a in HELP])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: cloud-hub" in capsys.readouterr().out


def _serve(data_dir, port, env_extra):
    env = {**os.environ, "HUB_DATA_DIR": str(data_dir), "HUB_ACCESS_LOG": "0", **env_extra}
    proc = subprocess.Popen([sys.executable, "-m", "cloud_hub.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("serve did not become ready")


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def test_serve_push_alias_restart(tmp_path, keypair, cancer_bundle, cancer_bundle_v2, capsys):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"HUB_TRUSTED_KEYS": json.dumps([str(keypair[1])])}
    proc = _serve(tmp_path / "hub", port, env)
    try:
        assert main(["models", "push", str(cancer_bundle), "--url", url, "--alias", "champion"]) == 0
        out = capsys.readouterr().out
        assert "pushed cancer:1.0.0" in out and "champion" in out
        from edge_runtime.bundle import pack_bundle

        tar = pack_bundle(cancer_bundle_v2, tmp_path / "v2.tar")
        assert main(["models", "push", str(tar), "--url", url, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["version"] == "2.0.0"
        assert main(["models", "alias", "cancer", "challenger", "2.0.0", "--url", url]) == 0
        assert "challenger=2.0.0" in capsys.readouterr().out
        assert main(["models", "list", "--url", url]) == 0
        out = capsys.readouterr().out
        assert "cancer" in out and "champion=1.0.0" in out
        assert main(["models", "show", "cancer@challenger", "--url", url]) == 0
        assert "cancer:2.0.0" in capsys.readouterr().out
        # errors: one line on stderr, exit 1
        assert main(["models", "show", "cancer@nope", "--url", url]) == 1
        err = capsys.readouterr().err
        assert err.startswith("cloud-hub: error:") and "404" in err and err.count("\n") == 1
        assert main(["models", "push", str(tmp_path / "missing"), "--url", url]) == 1
        assert "not found" in capsys.readouterr().err
        assert main(["models", "alias", "cancer", "champion", "--url", url]) == 2
        capsys.readouterr()
    finally:
        _stop(proc)
    assert main(["models", "list", "--url", url]) == 1
    assert "cannot reach the hub" in capsys.readouterr().err
    # restart on the same data dir: versions and aliases survive, predictions served
    proc = _serve(tmp_path / "hub", port, env)
    try:
        assert main(["models", "list", "cancer", "--url", url, "--json"]) == 0
        versions = json.loads(capsys.readouterr().out)["versions"]
        assert {v["version"]: v["aliases"] for v in versions} == {"1.0.0": ["champion"], "2.0.0": ["challenger"]}
        r = httpx.post(f"{url}/v1/models/cancer@challenger/predict", json={"rows": []})
        assert r.status_code == 422
    finally:
        _stop(proc)
    assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a clean shutdown


def test_serve_refuses_bad_settings(tmp_path, capsys):
    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path), "HUB_ADMIN_KEYS": '["short"]'}
    r = subprocess.run([sys.executable, "-m", "cloud_hub.cli", "serve", "--port", str(free_port())], env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("cloud-hub: error:") and "Traceback" not in r.stderr


def test_serve_with_two_workers(tmp_path, keypair, cancer_bundle):
    """Workers share one data dir: migrations and the hub key are made once, before they start."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path / "hub"), "HUB_ACCESS_LOG": "0",
           "HUB_TRUSTED_KEYS": json.dumps([str(keypair[1])])}
    proc = subprocess.Popen([sys.executable, "-m", "cloud_hub.cli", "serve", "--port", str(port), "--workers", "2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve --workers 2 did not become ready"
            time.sleep(0.3)
        assert main(["models", "push", str(cancer_bundle), "--url", url, "--alias", "champion"]) == 0
        keys = {httpx.get(f"{url}/v1/keys/hub.pub").headers["x-key-id"] for _ in range(8)}
        assert len(keys) == 1  # every worker signs with the same hub key
        for _ in range(8):  # whichever worker answers knows the model
            assert httpx.get(f"{url}/v1/models/cancer@champion").status_code == 200
    finally:
        _stop(proc)
    out = proc.stdout.read()
    assert "Traceback" not in out, out[-3000:]
