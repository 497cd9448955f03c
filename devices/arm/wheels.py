"""Does the device install (core + ``[tflite]``) resolve to binary wheels on an ARM board?

A Raspberry Pi has no compiler to spare: a dependency without a wheel for its platform means a
source build on the device (minutes to hours, or a failure). ``pip download``/``install
--platform`` matches platform tags exactly, so we list every manylinux tag the board's glibc
accepts (Debian 12 / Raspberry Pi OS bookworm: glibc 2.36) and let pip resolve with
``--only-binary=:all:`` — metadata only (``--dry-run --report``), nothing is installed.

Environment markers are evaluated for the *target* (pip would evaluate them for the machine
running it), so a requirement such as ``onnxruntime; platform_machine != "armv7l"`` is judged
as the board would judge it.

    python -m devices.arm.wheels --arch aarch64
    python -m devices.arm.wheels --arch armv7l --system-package numpy --system-package psutil
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DEBIAN12_GLIBC_MINOR = 36


@dataclass(frozen=True)
class Target:
    arch: str  # uname -m: aarch64, armv7l
    python: str = "3.11"  # Debian 12 / Pi OS bookworm
    glibc_minor: int = DEBIAN12_GLIBC_MINOR

    def platform_tags(self) -> list[str]:
        tags = [f"manylinux_2_{m}_{self.arch}" for m in range(17, self.glibc_minor + 1)]
        return [f"manylinux2014_{self.arch}", *tags, f"linux_{self.arch}"]

    def marker_env(self) -> dict[str, str]:
        return {
            "platform_machine": self.arch,
            "sys_platform": "linux",
            "os_name": "posix",
            "platform_system": "Linux",
            "python_version": self.python,
            "python_full_version": f"{self.python}.0",
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
        }


def device_requirements(
    target: Target, extras: tuple[str, ...] = ("tflite",), pyproject: Path = ROOT / "pyproject.toml"
) -> list[str]:
    """The device install's requirements (core + ``extras``) that apply on ``target``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    out = []
    for line in lines:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(target.marker_env()):
            continue
        req.marker = None
        out.append(str(req))
    return out


class NoWheel(RuntimeError):
    """At least one requirement has no binary wheel for the target."""


def resolve(target: Target, requirements: list[str], *, timeout_s: float = 300) -> dict[str, str]:
    """Resolve ``requirements`` with binary wheels only; name → wheel file name."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-wheels-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--python-version",
            target.python,
            "--implementation",
            "cp",
            "--abi",
            "cp" + target.python.replace(".", ""),
            "--target",
            str(Path(tmp) / "t"),
            "--report",
            str(report),
        ]
        for tag in target.platform_tags():
            cmd += ["--platform", tag]
        proc = subprocess.run(
            cmd + requirements, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
            raise NoWheel(f"{target.arch}: " + ("; ".join(errors) or proc.stderr[-500:]))
        data = json.loads(report.read_text())
    return {
        item["metadata"]["name"]: item["download_info"]["url"].rsplit("/", 1)[-1]
        for item in data["install"]
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m devices.arm.wheels", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--arch", default="aarch64", help="uname -m of the board (aarch64, armv7l)")
    ap.add_argument("--python", default="3.11", help="the board's Python (default 3.11)")
    ap.add_argument("--extra", action="append", default=None, help="extras (default tflite)")
    ap.add_argument(
        "--system-package",
        action="append",
        default=[],
        metavar="NAME",
        help="taken from the OS (apt) instead of a wheel, e.g. numpy on armv7l",
    )
    args = ap.parse_args(argv)
    target = Target(args.arch, args.python)
    reqs = [
        r
        for r in device_requirements(target, tuple(args.extra or ["tflite"]))
        if Requirement(r).name not in set(args.system_package)
    ]
    try:
        wheels = resolve(target, reqs)
    except NoWheel as exc:
        print(f"error: no binary wheel: {exc}", file=sys.stderr)
        return 1
    for name, wheel in sorted(wheels.items(), key=lambda kv: kv[0].lower()):
        print(f"{name:24s} {wheel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
