"""Gate statistics on real numbers: Wilson bounds, divergence with noise correction, the verdict."""

from __future__ import annotations

import random

import pytest

from cloud_hub.rollouts.gates import (FAIL, PASS, WAIT, Aggregate, StageView, divergence, evaluate, js_divergence,
                                      psi, rate_gate, total_variation, wilson_interval)
from cloud_hub.rollouts.plan import Gates, build_plan


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(10, 1000, 0.95)
    assert lo == pytest.approx(0.00599, abs=2e-4)
    assert hi == pytest.approx(0.01664, abs=3e-4)
    lo, hi = wilson_interval(0, 300, 0.95)
    assert lo == 0.0 and hi < 0.01
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_one_error_in_ten_waits_ten_in_thousand_rolls_back():
    g = Gates()
    one_in_ten = rate_gate("error_rate", 1, 10, g.max_error_rate, 100, g.confidence, "error rate")
    assert one_in_ten.status == WAIT  # not a rollback: sample size first
    # even with the minimum sample lowered, 1/10 is not conclusive evidence of a bad model
    one_in_ten_low_min = rate_gate("error_rate", 1, 10, 0.01, 5, 0.95, "error rate")
    assert one_in_ten_low_min.status == WAIT
    ten_in_thousand = rate_gate("error_rate", 10, 1000, g.max_error_rate, 100, g.confidence, "error rate")
    assert ten_in_thousand.status == FAIL
    assert ten_in_thousand.value > 0.01 and "10/1000" in ten_in_thousand.message
    assert rate_gate("error_rate", 0, 300, 0.01, 100, 0.95, "error rate").status == PASS
    assert rate_gate("error_rate", 2, 2000, 0.01, 100, 0.95, "error rate").status == PASS
    assert rate_gate("error_rate", 0, 100, 0.01, 100, 0.95, "error rate").status == WAIT  # not yet proven


def test_divergence_metrics_and_noise_correction():
    same = [10, 20, 30, 20, 10]
    assert psi(same, same) == pytest.approx(0.0)
    assert js_divergence(same, same) == pytest.approx(0.0)
    assert total_variation([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    # two samples of one distribution: the noise estimate covers the raw PSI
    rng = random.Random(7)
    a, b = [0] * 20, [0] * 20
    for _ in range(400):
        a[min(19, int(rng.betavariate(2, 5) * 20))] += 1
        b[min(19, int(rng.betavariate(2, 5) * 20))] += 1
    raw, noise = divergence("psi", a, b)
    assert raw > 0 and raw - noise < 0.1
    # a real shift is far above the noise
    c = [0] * 20
    for _ in range(400):
        c[min(19, int(rng.betavariate(5, 2) * 20))] += 1
    raw2, noise2 = divergence("psi", a, c)
    assert raw2 - noise2 > 1.0


def _view(stage, **kw):
    base = dict(stage=stage, elapsed_s=100.0, stage_devices=10, verified=10, pending=0, failed=0, unknown=0,
                candidate=Aggregate(requests=2000, errors=1, p99_ms=20.0, scores=[100] * 10),
                champion=Aggregate(requests=2000, errors=1, p99_ms=20.0, scores=[100] * 10))
    base.update(kw)
    return StageView(**base)


def test_verdict_paths():
    plan = build_plan({"shadow": True, "defaults": {"min_duration": "1m", "min_samples": 100,
                                                    "timeout": "10m"}})
    canary = plan.stages[1]
    g = plan.gates
    assert evaluate(_view(canary), g).decision == "advance"
    # too early: min duration not reached → wait
    assert evaluate(_view(canary, elapsed_s=10), g).decision == "wait"
    # installing devices → wait; past the timeout → pause, never pass
    assert evaluate(_view(canary, pending=2, verified=8), g).decision == "wait"
    v = evaluate(_view(canary, pending=2, verified=8, elapsed_s=601), g)
    assert v.decision == "pause" and "not enough data" in v.reason
    # sparse traffic → wait, then pause at the timeout
    sparse = Aggregate(requests=12, errors=0, p99_ms=5.0, scores=[1] * 10)
    assert evaluate(_view(canary, candidate=sparse), g).decision == "wait"
    assert evaluate(_view(canary, candidate=sparse, elapsed_s=700), g).decision == "pause"
    # latency over the SLA → rollback naming the gate
    slow = Aggregate(requests=2000, errors=0, p99_ms=450.0, scores=[100] * 10)
    v = evaluate(_view(canary, candidate=slow), g)
    assert v.decision == "rollback" and v.reason.startswith("p99_latency")
    # errors → rollback even before the minimum duration
    bad = Aggregate(requests=1000, errors=60, p99_ms=10.0, scores=[100] * 10)
    v = evaluate(_view(canary, candidate=bad, elapsed_s=5), g)
    assert v.decision == "rollback" and "error_rate" in v.reason
    # unknown devices pause
    v = evaluate(_view(canary, unknown=5, verified=5), g)
    assert v.decision == "pause" and "unknown_devices" in v.reason
    # a self-test failure rolls back
    assert evaluate(_view(canary, failed=1, verified=9), g).decision == "rollback"
    # shadow: decision changes over 5 % roll back
    shadow = plan.stages[0]
    changed = Aggregate(requests=2000, errors=0, p99_ms=10.0, scores=[100] * 10, compared=2000,
                        decision_changed=400)
    v = evaluate(_view(shadow, candidate=changed), g)
    assert v.decision == "rollback" and "decision_change" in v.reason
    # divergent score distribution → rollback
    shifted = Aggregate(requests=2000, errors=0, p99_ms=10.0, scores=[900, 900] + [25] * 8)
    v = evaluate(_view(canary, candidate=shifted), g)
    assert v.decision == "rollback" and "score_divergence" in v.reason


def test_divergence_needs_enough_scores():
    g = Gates()
    from cloud_hub.rollouts.gates import divergence_gate

    few = Aggregate(requests=500, scores=[250, 250] + [0] * 8)
    base = Aggregate(requests=5000, scores=[500] * 10)
    assert divergence_gate(few, base, g, 100, "champion").status == WAIT
    many = Aggregate(requests=2000, scores=[1000, 1000] + [0] * 8)
    assert divergence_gate(many, base, g, 100, "champion").status == FAIL
