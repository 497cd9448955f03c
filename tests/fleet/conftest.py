"""Fleet fixtures: a hub on a temp dir, unique MQTT topic prefixes, own mosquitto instances."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVICES, free_port, port_open


@pytest.fixture
def prefix() -> str:
    """A topic prefix of its own per test, so tests on the shared broker never see each other."""
    return f"test-{uuid.uuid4().hex[:10]}/v1"


@pytest.fixture
def make_hub(tmp_path):
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings

    hubs = []

    def make(**kw):
        kw.setdefault("data_dir", tmp_path / f"hub{len(hubs)}")
        hub = Hub(HubSettings(**kw))
        hubs.append(hub)
        return hub

    yield make
    for h in hubs:
        h.close()


class MosquittoProcess:
    """A private mosquitto on a free port (killed by its PID), for restart and ACL tests."""

    def __init__(self, workdir: Path, passwd: Path | None = None, acl: Path | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.passwd, self.acl = passwd, acl
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MosquittoProcess":
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        lines = [f"listener {self.port} 127.0.0.1", "persistence false"]
        if self.passwd:
            lines += ["allow_anonymous false", f"password_file {self.passwd}"]
        else:
            lines += ["allow_anonymous true"]
        if self.acl:
            lines += [f"acl_file {self.acl}"]
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([_mosquitto_bin(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port, 0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
                self.stop()
                raise RuntimeError(f"mosquitto did not start on {self.port}: {err}")
            time.sleep(0.05)
        return self

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None


def _mosquitto_bin() -> str:
    path = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if path is None:
        if REQUIRE_SERVICES:
            pytest.fail("the mosquitto binary is required in CI")
        pytest.skip("mosquitto binary not installed")
    return path


@pytest.fixture
def own_mosquitto(tmp_path):
    """Factory: start a private mosquitto (optionally with passwd/acl files); all stopped at the end."""
    procs: list[MosquittoProcess] = []

    def start(passwd: Path | None = None, acl: Path | None = None) -> MosquittoProcess:
        _mosquitto_bin()
        m = MosquittoProcess(tmp_path, passwd, acl).start()
        procs.append(m)
        return m

    yield start
    for m in procs:
        m.stop()


def wait_for(cond, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
