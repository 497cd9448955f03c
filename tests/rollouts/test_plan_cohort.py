"""Plans (files, flags, defaults) and cohort selectors with stable nested stage membership."""

from __future__ import annotations

import json

import pytest

from cloud_hub.rollouts.cohort import parse_selector, stage_members
from cloud_hub.rollouts.plan import build_plan, load_plan_file, parse_duration, plan_from_flags
from edge_runtime.errors import ValidationError


def test_default_plan_follows_the_guide():
    plan = build_plan()
    assert [s.percent for s in plan.stages] == [1, 5, 25, 50, 100]
    assert all(s.kind == "canary" and s.min_samples == 100 and s.min_duration_s == 600 for s in plan.stages)
    g = plan.gates
    assert (g.max_error_rate, g.max_p99_ms, g.max_psi, g.max_decision_change) == (0.01, 200, 0.1, 0.05)


def test_plan_file_yaml_and_json(tmp_path):
    y = tmp_path / "plan.yaml"
    y.write_text("shadow: {percent: 50, min_duration: 30s}\nstages:\n  - {percent: 10, min_samples: 50}\n"
                 "  - 100\ndefaults: {min_duration: 2m, timeout: 1h}\ngates: {max_p99_ms: 80}\n")
    plan = load_plan_file(y)
    assert [(s.kind, s.percent, s.min_duration_s) for s in plan.stages] == [
        ("shadow", 50, 30), ("canary", 10, 120), ("canary", 100, 120)]
    assert plan.stages[1].min_samples == 50 and plan.stages[2].timeout_s == 3600
    assert plan.gates.max_p99_ms == 80
    j = tmp_path / "plan.json"
    j.write_text(json.dumps({"stages": [50, 100]}))
    assert [s.percent for s in load_plan_file(j).stages] == [50, 100]


@pytest.mark.parametrize("text,field", [
    ("stages: [5, 1, 100]\n", "plan"),
    ("stages: [1, 50]\n", "plan"),
    ("stages: [{percent: 150}]\n", "stages[0].percent"),
    ("gates: {max_error_rate: 2}\n", "gates.max_error_rate"),
    ("gates: {bogus: 1}\n", "gates.bogus"),
    ("defaults: {min_duration: soon}\n", "defaults"),
    ("stages: [{percent: 100, min_duration: '-'}]\n", "stages[0].min_duration"),
    ("stages: [1, 100\n", "plan"),
    ("- just\n- a list\n", "plan"),
])
def test_bad_plan_files_name_the_field(tmp_path, text, field):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ValidationError) as ei:
        load_plan_file(p)
    assert ei.value.field == field, ei.value.message
    assert "bad.yaml" in ei.value.message


def test_missing_plan_file():
    with pytest.raises(ValidationError, match="does not exist"):
        load_plan_file("/nonexistent/plan.yaml")


def test_plan_from_flags_and_durations():
    p = plan_from_flags(stages="10,100", shadow=True, min_duration="1.5m", min_samples=20, timeout="1h")
    assert [s.name for s in p.stages] == ["shadow", "canary-10%", "canary-100%"]
    assert p.stages[1].min_duration_s == 90 and p.stages[1].min_samples == 20
    assert parse_duration("250ms") == 0.25 and parse_duration(3) == 3.0
    with pytest.raises(ValidationError, match="--stages"):
        plan_from_flags(stages="1,five")


def test_selectors():
    s = parse_selector("region=eu,profile=rpi4")
    assert s.matches("d1", {"region": "eu"}, "rpi4")
    assert not s.matches("d1", {"region": "us"}, "rpi4")
    assert not s.matches("d1", {"region": "eu"}, "jetson-nano")
    s = parse_selector("region in (eu, us),!canary_exempt,site")
    assert s.matches("d", {"region": "us", "site": "x"}, "")
    assert not s.matches("d", {"region": "us", "site": "x", "canary_exempt": "1"}, "")
    assert not s.matches("d", {"region": "ap", "site": "x"}, "")
    assert parse_selector("region!=eu").matches("d", {}, "")
    assert parse_selector("id in (a,b)").matches("b", {}, "")
    assert parse_selector("*").matches("any", {}, None)
    assert str(parse_selector("region=eu,profile=rpi4")) == "region=eu,profile=rpi4"
    for bad in ("region=", "region=eu,,x=1", "region in ()", "a=b c", "(x", "=eu"):
        with pytest.raises(ValidationError) as ei:
            parse_selector(bad)
        assert ei.value.field == "cohort"


def test_stage_membership_is_stable_and_nested():
    ids = [f"dev-{i:04d}" for i in range(2000)]
    stages = [stage_members(ids, "ro-abc", f / 100, min_devices=1) for f in (1, 5, 25, 50, 100)]
    for small, big in zip(stages, stages[1:]):
        assert small <= big
    assert len(stages[-1]) == 2000
    assert 5 <= len(stages[0]) <= 40 and 60 <= len(stages[1]) <= 140
    # same answer in another call (sha256, not hash()); another rollout id picks other devices
    assert stage_members(ids, "ro-abc", 0.05) == stages[1]
    assert stage_members(ids, "ro-xyz", 0.05) != stages[1]
    # a small fleet still gets a device in the 1 % stage; adding devices does not evict members
    small = stage_members(ids[:20], "ro-abc", 0.01, min_devices=1)
    assert len(small) == 1
    grown = stage_members(ids[:40], "ro-abc", 0.05, min_devices=1)
    assert stage_members(ids[:40], "ro-abc", 0.01, min_devices=1) <= grown
