"""Rollout plans: ordered stages (optional shadow, then canary percentages) and gate thresholds.

A plan comes from a YAML/JSON file, from CLI flags, or from the defaults, which
follow the users' guide: canary 1 % → 5 % → 25 % → 50 % → 100 %, never advance a
candidate failing 1 % of its calls, slower than 200 ms at the p99 or with a score PSI of
0.1 (and never roll back one at half of these), both with probability 1 − ``confidence``
(sequential tests, see :mod:`cloud_hub.rollouts.gates`), and never judge a stage before
its minimum sample size.

File format (every key optional)::

    shadow:                 # or `shadow: true`, or omit for no shadow stage
      percent: 100          # share of the cohort running the candidate in its shadow slot
      min_duration: 2m      # seconds as a number, or "30s", "10m", "1h"
      min_samples: 200
    stages:                 # canary stages, percent strictly increasing, last one 100
      - {percent: 1, min_duration: 10m, min_samples: 100}
      - 5                   # a bare number = percent with the default duration/samples
      - 100
    defaults: {min_duration: 10m, min_samples: 100, timeout: 1h}
    gates:
      max_error_rate: 0.01
      max_p99_ms: 200
      ...

Errors name the offending field (``stages[2].percent: …``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from edge_runtime.errors import ValidationError

DEFAULT_PERCENTS = (1.0, 5.0, 25.0, 50.0, 100.0)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """``90`` / ``"90s"`` / ``"1.5m"`` / ``"2h"`` → seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s', '10m', '1h'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a duration (use seconds, or '30s', '10m', '1h')")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# One threshold per divergence metric: JS (bits) is about PSI/5.6 and total variation about
# 1.3 × PSI for the same shift, so one number cannot mean the same for all three. These are the
# thresholds equivalent to PSI 0.1 on 10 buckets (a logit-normal score shift).
DIVERGENCE_DEFAULTS = {"psi": 0.10, "js": 0.018, "tv": 0.13}


class Gates(_Strict):
    """Thresholds; a stage passes only when every gate passes on enough data."""

    max_error_rate: float = Field(0.01, gt=0, lt=1, description="Share of failed calls a candidate must "
                                  "never be advanced at; at half of it, it is never rolled back (both "
                                  "with probability 1 - confidence, sequential test on calls).")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="1 - α = 1 - β of every sequential gate: "
                              "P(roll back a candidate at half a threshold) <= 1 - confidence and "
                              "P(advance one at the threshold) <= 1 - confidence, however often "
                              "the gates look.")
    max_p99_ms: float = Field(200.0, gt=0, description="Latency SLA on the p99 (merged sketches): roll "
                              "back when more than 1 % of calls are provably slower, advance when "
                              "provably fewer than 0.5 % are.")
    min_latency_samples: int = Field(1000, ge=1, description="Latency samples (calls) in the merged "
                                     "sketch before the p99 gate judges (so the p99 is not the maximum).")
    max_decision_change: float = Field(0.05, gt=0, lt=1, description="Shadow stage: share of changed "
                                       "decisions (per call) the candidate must never be advanced at.")
    max_psi: float | None = Field(DIVERGENCE_DEFAULTS["psi"], gt=0, description="Score-distribution "
                                  "PSI vs the champion (noise-corrected) never to advance at; null: "
                                  "no PSI gate.")
    max_js: float | None = Field(None, gt=0, description="Same for the Jensen-Shannon divergence (bits).")
    max_tv: float | None = Field(None, gt=0, description="Same for the total variation distance.")
    min_compared: int = Field(100, ge=1, description="Shadow calls compared before judging decision change.")
    max_failed_fraction: float = Field(0.0, ge=0, lt=1, description="Roll back when more than this "
                                       "share of the stage's devices failed to install/self-test "
                                       "the candidate (0: any failure).")
    max_unknown_fraction: float = Field(0.2, ge=0, le=1, description="Pause when more than this share "
                                        "of the stage's devices are silent/unconverged (unknown).")
    silent_after_s: float | None = Field(None, description="A device with no message for this long is "
                                         "unknown; default: the hub's device_silent_after_s.")
    install_timeout_s: float = Field(300.0, gt=0, description="A stage device that has not verified the "
                                     "candidate after this long is unknown.")

    @field_validator("silent_after_s", "install_timeout_s", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)

    @model_validator(mode="before")
    @classmethod
    def _old_divergence_keys(cls, data: Any) -> Any:
        """Plans written before one threshold per metric: ``max_divergence`` (+ ``divergence_metric``)
        becomes ``max_<metric>`` and the metric is the only divergence gate, as it was."""
        if not isinstance(data, dict) or not ({"max_divergence", "divergence_metric"} & set(data)):
            return data
        data = dict(data)
        metric = data.pop("divergence_metric", None) or "psi"
        if metric not in DIVERGENCE_DEFAULTS:
            raise ValueError(f"divergence_metric must be psi, js or tv (got {metric!r}); it is replaced by "
                             f"one threshold per metric: max_psi, max_js, max_tv")
        key = f"max_{metric}"
        if key in data:
            raise ValueError(f"max_divergence (with divergence_metric) is the old name of {key}; give only {key}")
        value = data.pop("max_divergence", None)
        data[key] = DIVERGENCE_DEFAULTS[metric] if value is None else value
        for other in DIVERGENCE_DEFAULTS:
            if other != metric:
                data.setdefault(f"max_{other}", None)
        return data

    @model_validator(mode="after")
    def _one_divergence_gate(self) -> Gates:
        if self.max_psi is None and self.max_js is None and self.max_tv is None:
            raise ValueError("at least one of max_psi, max_js, max_tv is needed (the score-divergence gate)")
        return self

    @property
    def divergence_thresholds(self) -> dict[str, float]:
        """{metric: threshold} of the divergence gates that are on."""
        return {m: v for m in DIVERGENCE_DEFAULTS if (v := getattr(self, f"max_{m}")) is not None}


class Stage(_Strict):
    name: str
    kind: Literal["shadow", "canary"]
    percent: float = Field(gt=0, le=100)
    min_duration_s: float = Field(ge=0)
    min_samples: int = Field(ge=1)
    timeout_s: float = Field(gt=0, description="Not enough data after this long → pause.")

    @property
    def fraction(self) -> float:
        return self.percent / 100.0


class Plan(_Strict):
    stages: list[Stage]
    gates: Gates = Field(default_factory=Gates)
    min_devices: int = Field(1, ge=0, description="Each stage holds at least this many devices (the "
                             "lowest hash buckets), so 1 % of a small fleet is not empty.")

    @model_validator(mode="after")
    def _check(self) -> Plan:
        if not self.stages:
            raise ValueError("a plan needs at least one stage")
        canary = [s for s in self.stages if s.kind == "canary"]
        if not canary:
            raise ValueError("a plan needs at least one canary stage (ending at 100 %)")
        if any(s.kind == "shadow" for s in self.stages[1:]):
            raise ValueError("the shadow stage must come first")
        last = 0.0
        for s in canary:
            if s.percent <= last:
                raise ValueError(f"canary percentages must increase (got {s.percent:g} after {last:g})")
            last = s.percent
        if canary[-1].percent != 100:
            raise ValueError("the last canary stage must be 100 %")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class _StageIn(_Strict):
    percent: float = Field(gt=0, le=100)
    min_duration: Any = None
    min_samples: int | None = Field(None, ge=1)
    timeout: Any = None
    name: str | None = None


class _ShadowIn(_Strict):
    percent: float = Field(100.0, gt=0, le=100)
    min_duration: Any = None
    min_samples: int | None = Field(None, ge=1)
    timeout: Any = None


class _Defaults(_Strict):
    min_duration: Any = "10m"
    min_samples: int = Field(100, ge=1)
    timeout: Any = "2h"


class _PlanIn(_Strict):
    shadow: bool | _ShadowIn | None = None
    stages: list[_StageIn | float] | None = None
    defaults: _Defaults = Field(default_factory=_Defaults)
    gates: Gates = Field(default_factory=Gates)
    min_devices: int = Field(1, ge=0)


def build_plan(data: dict[str, Any] | None = None, *, source: str = "plan") -> Plan:
    """Validate a plan document (dict from YAML/JSON/flags) into a :class:`Plan`."""
    data = data or {}
    if not isinstance(data, dict):
        raise ValidationError(f"{source}: a plan must be a mapping with keys shadow, stages, defaults, "
                              f"gates", field="plan")
    try:
        doc = _PlanIn.model_validate(data)
    except PydanticValidationError as exc:
        raise _as_error(exc, source) from exc
    d = doc.defaults
    try:
        d_dur, d_timeout = parse_duration(d.min_duration), parse_duration(d.timeout)
    except ValueError as exc:
        raise ValidationError(f"{source}: defaults: {exc}", field="defaults") from exc
    stages: list[Stage] = []
    if doc.shadow:
        sh = doc.shadow if isinstance(doc.shadow, _ShadowIn) else _ShadowIn()
        stages.append(Stage(name="shadow", kind="shadow", percent=sh.percent,
                            min_duration_s=_dur(sh.min_duration, d_dur, f"{source}: shadow.min_duration"),
                            min_samples=sh.min_samples or d.min_samples,
                            timeout_s=_dur(sh.timeout, d_timeout, f"{source}: shadow.timeout")))
    raw = doc.stages if doc.stages is not None else list(DEFAULT_PERCENTS)
    for i, s in enumerate(raw):
        st = s if isinstance(s, _StageIn) else _StageIn(percent=s) if 0 < s <= 100 else None
        if st is None:
            raise ValidationError(f"{source}: stages[{i}].percent: must be in (0, 100], got {s!r}",
                                  field=f"stages[{i}].percent")
        stages.append(Stage(name=st.name or f"canary-{st.percent:g}%", kind="canary", percent=st.percent,
                            min_duration_s=_dur(st.min_duration, d_dur, f"{source}: stages[{i}].min_duration"),
                            min_samples=st.min_samples or d.min_samples,
                            timeout_s=_dur(st.timeout, d_timeout, f"{source}: stages[{i}].timeout")))
    try:
        return Plan(stages=stages, gates=doc.gates, min_devices=doc.min_devices)
    except PydanticValidationError as exc:
        raise _as_error(exc, source) from exc


def _dur(value: Any, default: float, where: str) -> float:
    if value is None:
        return default
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValidationError(f"{where}: {exc}", field=where.split(": ", 1)[-1]) from exc


def _as_error(exc: PydanticValidationError, source: str) -> ValidationError:
    first = exc.errors()[0]
    parts: list[str] = []
    for p in first.get("loc", ()):
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        elif p in ("_StageIn", "_ShadowIn", "float", "bool") or "[" in str(p) and "]" in str(p):
            continue  # pydantic's union-branch labels
        else:
            parts.append(str(p))
    field = ".".join(parts) or "plan"
    msg = first.get("msg", "invalid")
    return ValidationError(f"{source}: {field}: {msg}", field=field)


def read_plan_document(path: str | Path) -> dict[str, Any]:
    """Read a plan file (``.yaml``/``.yml``/``.json``) and validate it; return the raw document."""
    p = Path(path)
    if not p.is_file():
        raise ValidationError(f"plan file {str(p)!r} does not exist", field="plan")
    text = p.read_text(encoding="utf-8", errors="replace")
    kind = "JSON" if p.suffix.lower() == ".json" else "YAML"
    try:
        if kind == "JSON":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError
        mark = getattr(exc, "problem_mark", None)
        line = getattr(mark, "line", None)
        if line is None:
            line = getattr(exc, "lineno", None)
            line = None if line is None else line - 1
        where = f" (line {line + 1})" if line is not None else ""
        msg = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise ValidationError(f"plan file {p.name}: not valid {kind}{where}: {msg}", field="plan") from exc
    if data is None:
        data = {}
    build_plan(data, source=f"plan file {p.name}")
    return data


def load_plan_file(path: str | Path) -> Plan:
    """Read a plan from ``.yaml``/``.yml``/``.json``; clear errors for missing/invalid files."""
    return build_plan(read_plan_document(path), source=f"plan file {Path(path).name}")


def flags_document(*, stages: str | None = None, shadow: bool = False, min_duration: Any = None,
                   min_samples: int | None = None, timeout: Any = None,
                   gates: dict[str, Any] | None = None) -> dict[str, Any]:
    """Plan document from CLI flags: ``--stages 1,5,25,50,100 --shadow --min-duration 10m``."""
    data: dict[str, Any] = {"defaults": {}}
    if stages:
        try:
            data["stages"] = [float(x) for x in stages.split(",") if x.strip()]
        except ValueError as exc:
            raise ValidationError(f"--stages: expected comma-separated percentages like 1,5,25,50,100, "
                                  f"got {stages!r}", field="stages") from exc
    if shadow:
        data["shadow"] = True
    if min_duration is not None:
        data["defaults"]["min_duration"] = min_duration
    if min_samples is not None:
        data["defaults"]["min_samples"] = min_samples
    if timeout is not None:
        data["defaults"]["timeout"] = timeout
    if gates:
        data["gates"] = gates
    build_plan(data, source="flags")
    return data


def plan_from_flags(**kw: Any) -> Plan:
    return build_plan(flags_document(**kw), source="flags")
