"""Installed like a device daemon: the systemd unit (checked by systemd-analyze) and the
sd_notify readiness/watchdog protocol spoken by a real ``edge-runtime run`` process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_runtime.cli import main
from edge_runtime.systemd import UNIT_NAME

EDGE_RUNTIME = Path(sys.executable).with_name("edge-runtime")
REQUIRE = os.environ.get("EDGEFLEET_REQUIRE_SERVICES") == "1"


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "device.toml"
    cfg.write_text(
        '[device]\nid = "dev-sd"\n\n[store]\ndir = "store"\n\n[local_api]\nenabled = false\n'
    )
    return cfg


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        msg = "systemd-analyze not installed (Debian package systemd)"
        if REQUIRE:
            pytest.fail(msg + " (EDGEFLEET_REQUIRE_SERVICES=1: required in CI)")
        pytest.skip(msg)
    return tool


def test_dry_run_prints_a_unit_that_systemd_accepts(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert main(["install-service", "--config", str(cfg), "--dry-run"]) == 0
    unit = capsys.readouterr().out
    store = (tmp_path / "store").resolve()
    assert f"ExecStart={EDGE_RUNTIME} run --config {cfg.resolve()}" in unit
    for line in (
        "Type=notify",
        "User=edgefleet",
        "ProtectSystem=strict",
        f"ReadWritePaths={store}",
        "Restart=on-failure",
        "WatchdogSec=30",
        "StandardOutput=journal",
    ):
        assert line in unit.splitlines(), line
    path = tmp_path / UNIT_NAME
    path.write_text(unit)
    tool = _systemd_analyze()
    out = subprocess.run(
        [tool, "verify", str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr
    # the verifier is not a rubber stamp: a unit whose command does not exist fails it
    broken = tmp_path / "broken" / UNIT_NAME
    broken.parent.mkdir()
    broken.write_text(unit.replace(str(EDGE_RUNTIME), "/nonexistent/edge-runtime"))
    out = subprocess.run(
        [tool, "verify", str(broken)], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0 and "nonexistent" in out.stderr


def test_install_writes_unit_and_store_dir(tmp_path, capsys):
    if os.geteuid() != 0:
        pytest.skip("install-service writes as root; --dry-run is covered above")
    cfg = _config(tmp_path)
    units = tmp_path / "units"
    # user root: exercise the write path without creating an account on the test machine
    assert (
        main(["install-service", "--config", str(cfg), "--user", "root", "--unit-dir", str(units)])
        == 0
    )
    out = capsys.readouterr().out
    assert f"wrote {units / UNIT_NAME}" in out and "systemctl daemon-reload" in out
    assert (tmp_path / "store").is_dir()
    assert "User=root" in (units / UNIT_NAME).read_text()


def test_missing_config_is_one_line(tmp_path, capsys):
    code = main(["install-service", "--config", str(tmp_path / "nope.toml")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "config file not found" in err


def test_daemon_speaks_sd_notify_ready_watchdog_stopping(tmp_path):
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    cfg = _config(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [str(EDGE_RUNTIME), "run", "--config", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while seen.count("WATCHDOG=1") < 3 and time.monotonic() < deadline:
            seen.append(sock.recv(4096).decode())
        assert seen[0] == "READY=1", seen
        assert seen.count("WATCHDOG=1") >= 3
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in seen and time.monotonic() < deadline:
            seen.append(sock.recv(4096).decode())
        assert "STOPPING=1" in seen
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        sock.close()
