"""Device profiles: threads, memory budget, latency budget, preferred format.

Profiles live as TOML files in ``devices/profiles/``; a path to any TOML file
with the same keys also works.
"""

from __future__ import annotations

import importlib.util
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_runtime.engines.base import EngineOptions
from edge_runtime.errors import NotFoundError, ValidationError


def _profile_dir() -> Path:
    """Profiles ship as data in the `devices` package of this distribution."""
    spec = importlib.util.find_spec("devices")
    if spec and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / "profiles"
    return Path.cwd() / "devices" / "profiles"

#: Bundle formats a profile may prefer.
FORMATS = ("onnx", "tflite", "coreml")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    threads: int
    memory_budget_mb: int
    latency_budget_ms: float
    preferred_format: str

    def engine_options(self) -> EngineOptions:
        return EngineOptions(intra_op_threads=self.threads, inter_op_threads=1)

    def to_dict(self) -> dict:
        return asdict(self)


def list_profiles() -> list[str]:
    return sorted(p.stem for p in _profile_dir().glob("*.toml"))


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    path = Path(name_or_path)
    if not path.suffix:
        path = _profile_dir() / f"{name_or_path}.toml"
    if not path.exists():
        raise NotFoundError(f"unknown device profile {name_or_path!r} "
                            f"(known: {', '.join(list_profiles())})", field="profile")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValidationError(f"profile {path}: not a readable TOML file: {exc}",
                              field="profile") from exc
    missing = [k for k in ("name", "threads", "memory_budget_mb", "latency_budget_ms")
               if k not in data]
    if missing:
        raise ValidationError(f"profile {path}: missing key(s) {', '.join(missing)}",
                              field=f"profile.{missing[0]}")
    try:
        prof = DeviceProfile(name=str(data["name"]), description=str(data.get("description", "")),
                             threads=int(data["threads"]),
                             memory_budget_mb=int(data["memory_budget_mb"]),
                             latency_budget_ms=float(data["latency_budget_ms"]),
                             preferred_format=str(data.get("preferred_format", "onnx")))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"profile {path}: {exc}", field="profile") from exc
    if prof.threads < 1:
        raise ValidationError(f"profile {path}: threads must be >= 1, got {data['threads']!r}",
                              field="profile.threads")
    for key in ("memory_budget_mb", "latency_budget_ms"):  # 0 is allowed: nothing fits
        if not getattr(prof, key) >= 0:
            raise ValidationError(f"profile {path}: {key} must be >= 0, got {data[key]!r}",
                                  field=f"profile.{key}")
    if prof.preferred_format not in FORMATS:
        raise ValidationError(f"profile {path}: preferred_format {prof.preferred_format!r} is not "
                              f"one of {', '.join(FORMATS)}", field="profile.preferred_format")
    return prof
