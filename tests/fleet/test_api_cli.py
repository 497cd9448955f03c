"""Fleet HTTP API (in-process) and CLI surface."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fastapi.testclient import TestClient


def test_devices_api(make_hub):
    from cloud_hub.app import create_app

    hub = make_hub()
    c = TestClient(create_app(hub))
    r = c.post("/v1/devices", json={"id": "dev-1", "tags": {"region": "eu"}, "profile": "rpi4",
                                    "generate_password": True})
    assert r.status_code == 201 and r.json()["password"]
    assert c.get("/v1/devices", params={"selector": "region=eu"}).json()["count"] == 1
    assert c.get("/v1/devices", params={"selector": "region=us"}).json()["count"] == 0
    body = c.get("/v1/devices/dev-1").json()
    assert body["profile"] == "rpi4" and "password" not in body and body["has_credentials"]
    r = c.get("/v1/devices/ghost")
    assert r.status_code == 404 and r.json()["field"] == "device_id"
    r = c.post("/v1/devices", json={"id": "bad id!"})
    assert r.status_code == 422 and r.json()["field"] == "device_id"
    r = c.get("/v1/fleet/stats", params={"model": "x", "by": "colour"})
    assert r.status_code == 422 and r.json()["field"] == "by"
    assert c.get("/v1/fleet/stats", params={"model": "x"}).json()["groups"] == []
    r = c.put("/v1/devices/dev-1/desired", json={"id": "d1", "bundles": {"active": None}})
    assert r.status_code == 200 and hub.fleet.get_desired("dev-1").id == "d1"


@pytest.mark.parametrize("args", [["devices", "--help"], ["devices", "list", "--help"],
                                  ["devices", "show", "--help"], ["devices", "register", "--help"],
                                  ["fleet", "stats", "--help"], ["fleet", "acl", "--help"]])
def test_cli_help(args):
    r = subprocess.run([sys.executable, "-m", "cloud_hub.cli", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "usage:" in r.stdout


def test_cli_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cloud_hub.cli", "devices", "list", "--url", "http://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "cannot reach the hub" in r.stderr


def test_cli_acl_writes_files(tmp_path):
    import os

    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path / "hub"), "HUB_DEV": "1"}
    r = subprocess.run([sys.executable, "-m", "cloud_hub.cli", "fleet", "acl", "--out", str(tmp_path / "acl")],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "acl" / "acl").read_text().count("pattern write") == 3
