"""The significance tests behind the evaluation, checked against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from cloud_hub.routing import stats
from cloud_hub.routing.evaluation import EvaluationConfig, GroupData, evaluate
from edge_runtime.errors import ValidationError


def test_two_proportion_ztest_matches_formula():
    r = stats.two_proportion_ztest(80, 100, 95, 110)
    p1, p2, pool = 0.8, 95 / 110, 175 / 210
    z = (p2 - p1) / math.sqrt(pool * (1 - pool) * (1 / 100 + 1 / 110))
    assert r.statistic == pytest.approx(z)
    assert r.p_value == pytest.approx(2 * sps.norm.sf(abs(z)))
    assert r.difference == pytest.approx(p2 - p1)
    assert stats.two_proportion_ztest(0, 0, 1, 2).p_value is None


def test_auc_and_delong_variance_against_sklearn_and_bootstrap():
    rng = np.random.default_rng(1)
    y = rng.random(400) < 0.4
    s = np.where(y, rng.normal(1.0, 1, 400), rng.normal(0, 1, 400)).round(1)  # ties on purpose
    auc, var = stats.auc_with_variance(y, s)
    assert auc == pytest.approx(roc_auc_score(y, s))
    boots = []
    for _ in range(400):
        i = rng.integers(0, len(y), len(y))
        if y[i].all() or not y[i].any():
            continue
        boots.append(roc_auc_score(y[i], s[i]))
    assert math.sqrt(var) == pytest.approx(np.std(boots), rel=0.2)


def test_delong_two_groups():
    rng = np.random.default_rng(2)
    ya, yb = rng.random(300) < 0.5, rng.random(300) < 0.5
    sa = np.where(ya, rng.normal(0.3, 1, 300), rng.normal(0, 1, 300))
    sb = np.where(yb, rng.normal(2.0, 1, 300), rng.normal(0, 1, 300))
    r = stats.delong_auc_test(ya, sa, yb, sb)
    va, vb = stats.auc_with_variance(ya, sa)[1], stats.auc_with_variance(yb, sb)[1]
    assert r.statistic == pytest.approx((r.challenger - r.champion) / math.sqrt(va + vb))
    assert r.difference > 0.2 and r.p_value < 1e-6
    assert stats.delong_auc_test(np.ones(5, bool), np.ones(5), yb, sb).p_value is None


def test_welch_matches_scipy():
    a, b = np.array([1.0, 2, 3, 4, 5]), np.array([2.0, 3, 5, 7, 9, 10])
    r = stats.welch_ttest(a, b)
    ref = sps.ttest_ind(b, a, equal_var=False)
    assert r.statistic == pytest.approx(ref.statistic) and r.p_value == pytest.approx(ref.pvalue)


def _group(n, acc, rng, pos_rate=0.5):
    y = rng.random(n) < pos_rate
    pred = np.where(rng.random(n) < acc, y, ~y)
    score = np.clip(np.where(pred, 0.75, 0.25) + rng.normal(0, 0.1, n), 0, 1)
    return GroupData(scores=score, positives=pred, versions=["v"] * n, labelled_scores=score,
                     labelled_positives=pred, outcomes=y)


def test_verdicts_and_guardrail():
    rng = np.random.default_rng(3)
    champ, chall = _group(400, 0.80, rng), _group(400, 0.92, rng)
    assert evaluate(EvaluationConfig(), champ, chall)["verdict"] == "PROMOTE"
    assert evaluate(EvaluationConfig(), chall, champ)["verdict"] == "KEEP_CHAMPION"
    assert evaluate(EvaluationConfig(min_samples=1000), champ, chall)["verdict"] == "NOT_ENOUGH_DATA"
    same = evaluate(EvaluationConfig(), champ, _group(400, 0.80, rng))
    assert same["verdict"] == "KEEP_CHAMPION"
    # guardrail: a challenger that flags far more positives is refused when positives are costly
    loud = _group(400, 0.92, rng)
    loud.positives = np.ones(400, bool)
    res = evaluate(EvaluationConfig(business_guardrail=True, business_goal="min"), champ, loud)
    assert res["verdict"] == "KEEP_CHAMPION" and "business metric" in res["reasons"][0]
    with pytest.raises(ValidationError) as e:
        EvaluationConfig(decide_on="f1")
    assert e.value.field == "decide_on"
