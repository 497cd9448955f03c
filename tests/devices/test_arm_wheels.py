"""The device install resolves to binary wheels on arm64 boards (Debian 12 / Pi OS glibc).

A dependency that would need a compiler on a Raspberry Pi fails this test. It asks the package
index (metadata only, nothing installed): offline it skips, in CI (EDGEFLEET_REQUIRE_SERVICES=1)
an unreachable index fails.
"""

from __future__ import annotations

import os
import socket

import pytest

from devices.arm.wheels import NoWheel, Target, device_requirements, resolve

REQUIRE = os.environ.get("EDGEFLEET_REQUIRE_SERVICES") == "1"


@pytest.fixture(scope="module")
def package_index():
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError as exc:
        msg = f"the package index is not reachable ({exc})"
        if REQUIRE:
            pytest.fail(msg + " (EDGEFLEET_REQUIRE_SERVICES=1: required in CI)")
        pytest.skip(msg)


def test_requirements_follow_pyproject_and_target_markers():
    reqs = device_requirements(Target("aarch64"))
    names = {r.split(">")[0].split("=")[0].split(";")[0].strip() for r in reqs}
    assert {"numpy", "onnxruntime", "ai-edge-litert", "paho-mqtt"} <= names
    assert all(";" not in r for r in reqs)  # markers evaluated for the board, then dropped
    armv7 = " ".join(device_requirements(Target("armv7l")))
    # 32-bit Pi OS: no onnxruntime / ai-edge-litert wheels exist; TFLite via tflite-runtime
    assert "onnxruntime" not in armv7 and "ai-edge-litert" not in armv7
    assert "tflite-runtime" in armv7


def test_device_install_is_all_binary_wheels_on_aarch64(package_index):
    target = Target("aarch64")
    wheels = resolve(target, device_requirements(target))
    assert {"numpy", "onnxruntime", "ai-edge-litert", "pydantic_core", "cryptography"} <= set(
        wheels
    ), wheels
    for name, wheel in wheels.items():
        assert wheel.endswith(".whl"), (name, wheel)
        assert "aarch64" in wheel or wheel.endswith("-none-any.whl"), (name, wheel)
    # ai-edge-litert 2.x ships only manylinux_2_27: the tag list must cover it
    assert "manylinux_2_27_aarch64" in wheels["ai-edge-litert"]


def test_a_missing_wheel_fails_with_the_package_named(package_index):
    # 32-bit Pi OS: PyPI has no armv7l numpy wheel (Debian's python3-numpy is used there)
    with pytest.raises(NoWheel, match="numpy"):
        resolve(Target("armv7l"), ["numpy>=1.24"])


def test_without_onnxruntime_an_onnx_bundle_is_refused_in_one_line(cancer_bundle, tmp_path):
    """32-bit Pi OS has no onnxruntime: the daemon runs TFLite bundles and refuses ONNX ones
    with the reason (devices/arm/check.sh armhf runs this for real under qemu)."""
    import json
    import subprocess
    import sys

    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps({"rows": [{}]}))
    code = ("import sys; sys.modules['onnxruntime'] = None\n"  # as if no wheel had installed it
            "from edge_runtime.cli import main\n"
            f"sys.exit(main(['predict', '--bundle', {str(cancer_bundle)!r}, '--input', "
            f"{'@' + str(rows)!r}]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 1, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert "onnxruntime" in line and "TFLite" in line
