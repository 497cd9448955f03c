"""Champion/challenger statistics on degenerate data: they wait with the reason instead of deciding
(issue 18: DeLong promoted on one positive, constant scores gave p = 0, NaN gave p = 0)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from cloud_hub.routing import stats
from cloud_hub.routing.evaluation import GroupData, evaluate, make_config
from edge_runtime.errors import ValidationError


def test_welch_refuses_nan_and_zero_variance_and_uses_t_for_its_interval():
    r = stats.welch_ttest([1, np.nan, 2], [2, 3, 4])
    assert r.p_value is None and "NaN" in r.reason
    assert stats.welch_ttest([1, 2, np.inf], [2, 3, 4]).p_value is None
    r = stats.welch_ttest([2, 2, 2], [2, 2, 2])
    assert r.p_value is None and "no variance" in r.reason
    a, b = np.array([1.0, 2, 3, 4]), np.array([2.0, 3, 5, 9])
    ci = sps.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert stats.welch_ttest(a, b).ci95 == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_delong_needs_two_of_each_class_and_variance():
    rng = np.random.default_rng(0)
    y1 = np.array([True] + [False] * 30)  # one positive per group: variance was forced to 0
    r = stats.delong_auc_test(y1, rng.random(31), y1, rng.random(31) + y1)
    assert r.p_value is None and "fewer than 2 positives" in r.reason
    y = np.array([True] * 15 + [False] * 15)
    r = stats.delong_auc_test(
        y, np.ones(30), y, np.ones(30)
    )  # constant scores: z = 0 yet p was 0.0
    assert r.p_value is None and "no variance" in r.reason
    assert (
        stats.delong_auc_test(y, np.r_[np.nan, rng.random(29)], y, rng.random(30)).p_value is None
    )


def test_two_proportion_zero_variance_and_impossible_counts():
    r = stats.two_proportion_ztest(50, 50, 40, 40)
    assert r.p_value is None and "no variance" in r.reason
    assert stats.two_proportion_ztest(5, 3, 1, 10).p_value is None


def _group(n, pos, rng, scores=None):
    y = np.zeros(n, bool)
    y[:pos] = True
    s = rng.random(n) * 0.5 + 0.5 * y if scores is None else scores
    return GroupData(
        scores=s,
        positives=s > 0.5,
        versions=["v"] * n,
        labelled_scores=s,
        labelled_positives=s > 0.5,
        outcomes=y,
    )


def test_evaluation_waits_on_degenerate_data_with_the_reason():
    rng = np.random.default_rng(1)
    cfg = make_config({"decide_on": "auc"})
    ev = evaluate(cfg, _group(200, 1, rng), _group(200, 1, rng))  # one positive per group
    assert ev["verdict"] == "NOT_ENOUGH_DATA"
    assert any("1 positive(s)" in r and "need 10 of each" in r for r in ev["reasons"])
    ev = evaluate(
        make_config({"decide_on": "auc", "min_class_samples": 2}),
        _group(200, 2, rng),
        _group(200, 2, rng),
    )
    assert ev["verdict"] in ("KEEP_CHAMPION", "PROMOTE", "NOT_ENOUGH_DATA")  # configurable floor
    const = _group(100, 50, rng, scores=np.full(100, 0.7))
    ev = evaluate(cfg, const, _group(100, 50, rng, scores=np.full(100, 0.7)))
    assert ev["verdict"] == "NOT_ENOUGH_DATA" and "no variance" in ev["reasons"][0]
    nan = _group(100, 50, rng)
    nan.scores = nan.scores.copy()
    nan.scores[3] = np.nan
    ev = evaluate(make_config({}), nan, _group(100, 50, rng))
    assert ev["verdict"] == "NOT_ENOUGH_DATA" and any("NaN" in r for r in ev["reasons"])
    good = _group(100, 50, rng)
    ev = evaluate(
        make_config({"decide_on": "business", "business_metric": "mean_score"}), good, good
    )
    assert ev["verdict"] == "KEEP_CHAMPION"  # identical groups: a test with variance, not better


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"cost_fp": float("nan")}, "cost_fp"),
        ({"cost_fn": float("inf")}, "cost_fn"),
        ({"cost_tp": -1}, "cost_tp"),
        ({"min_class_samples": 1}, "min_class_samples"),
        ({"alpha": float("nan")}, "alpha"),
    ],
)
def test_evaluation_config_must_be_finite_and_not_negative(values, field):
    with pytest.raises(ValidationError) as e:
        make_config(values)
    assert e.value.field == field
