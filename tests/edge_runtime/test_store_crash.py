"""Crash safety: a real install subprocess is SIGKILLed at every step.

The child runs ``python -m edge_runtime.store`` with ``EDGE_STORE_PAUSE_AT=<point>``:
it writes the point name to a marker file and waits there; the test kills it
by its own PID. A fresh store must then open with a working active model,
the old one or the new one, never neither.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_runtime.bundle import read_bundle
from edge_runtime.store import INSTALL_POINTS, ModelStore

# In install order. Before the SQLite switch commits, the old model must still be
# active; from "switch:committed" on, the new one.
ORDER = ["stage", "verify", "load", "self_test", "budget", "commit", "commit:renamed",
         "switch", "switch:in_transaction", "switch:committed", "cleanup"]


def _kill_at(point: str, store_dir: Path, bundle: Path, pub: Path, tmp: Path) -> str:
    marker = tmp / f"paused-{point.replace(':', '_')}"
    env = dict(os.environ, EDGE_STORE_PAUSE_AT=point, EDGE_STORE_PAUSE_FILE=str(marker))
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime.store", str(store_dir),
                             str(bundle), "--public-key", str(pub)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            if proc.poll() is not None:
                _out, err = proc.communicate()
                pytest.fail(f"install child exited ({proc.returncode}) before {point}: {err.decode()}")
            if time.monotonic() > deadline:
                pytest.fail(f"install child never reached {point}")
            time.sleep(0.02)
        assert marker.read_text().split()[0] == point
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return point


@pytest.mark.slow
def test_sigkill_at_each_install_step_leaves_a_working_active_model(
        tmp_path, keypair, cancer_bundle, cancer_bundle_v2, cancer_data):
    assert sorted(ORDER) == sorted(INSTALL_POINTS)
    x, _, names = cancer_data
    row = dict(zip(names, map(float, x[0])))
    bundles = {read_bundle(b).digest: b for b in (cancer_bundle, cancer_bundle_v2)}
    store_dir = tmp_path / "store"
    with ModelStore(store_dir, "x86-gateway", keypair[1], latency_runs=20) as s:
        s.install(cancer_bundle)
        active = s.model("active").digest
    for point in ORDER:
        new = next(d for d in bundles if d != active)
        _kill_at(point, store_dir, bundles[new], keypair[1], tmp_path)
        with ModelStore(store_dir, "x86-gateway", keypair[1]) as s:
            model = s.model("active")
            assert model is not None, f"no active model after a kill at {point}"
            expect = new if ORDER.index(point) >= ORDER.index("switch:committed") else active
            assert model.digest == expect, f"kill at {point}"
            assert model.self_test() == 1
            assert 0.0 <= model.predict(row)[0]["probability"] <= 1.0
            # recovery: interrupted install journalled, staging emptied, no orphan bundles
            if expect == active:
                assert s.journal(1)[0]["state"] == "interrupted"
                assert s.journal(1)[0]["step"] == point.split(":")[0]
                assert any("interrupted" in r for r in s.recovery)
            assert list((store_dir / "tmp").iterdir()) == []
            held = {p.name for p in (store_dir / "bundles").iterdir()}
            slots = {i["sha256"] for i in s.status()["slots"].values() if i}
            assert held == slots
            if expect == new:
                assert s.slot("previous").sha256 == active
            active = model.digest
    # the store still installs normally after all those crashes
    with ModelStore(store_dir, "x86-gateway", keypair[1], latency_runs=20) as s:
        new = next(d for d in bundles if d != active)
        assert s.install(bundles[new]).switched
        assert s.model("active").digest == new
