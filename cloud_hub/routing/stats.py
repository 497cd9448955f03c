"""Significance tests used by champion/challenger evaluation (numpy + scipy only).

* :func:`two_proportion_ztest` — accuracy or positive rate of two independent groups
  (pooled z-test, two-sided p-value);
* :func:`auc` / :func:`delong_auc_test` — AUC by the Mann-Whitney statistic and the
  DeLong variance of each group's AUC; two independent groups, so the variance of the
  difference is the sum of the two variances;
* :func:`welch_ttest` — mean per-request cost of two groups.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass
class TestResult:
    test: str
    champion: float | None
    challenger: float | None
    difference: float | None  # challenger - champion
    statistic: float | None
    p_value: float | None
    ci95: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _f(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def two_proportion_ztest(success_a: int, n_a: int, success_b: int, n_b: int) -> TestResult:
    """Group a = champion, b = challenger. p-value two-sided; CI is Wald on the difference."""
    if n_a == 0 or n_b == 0:
        return TestResult("two_proportion_z", None, None, None, None, None)
    pa, pb = success_a / n_a, success_b / n_b
    pooled = (success_a + success_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        z, p = 0.0, 1.0
    else:
        z = (pb - pa) / se
        p = 2 * stats.norm.sf(abs(z))
    se_diff = math.sqrt(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b)
    ci = (pb - pa - 1.96 * se_diff, pb - pa + 1.96 * se_diff)
    return TestResult("two_proportion_z", pa, pb, pb - pa, _f(z), _f(p), ci)


def _midrank(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x, method="average")


def auc_with_variance(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """AUC (Mann-Whitney) and its DeLong variance for one group."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    pos, neg = score[y], score[~y]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return float("nan"), float("nan")
    tx, ty, tz = _midrank(pos), _midrank(neg), _midrank(np.concatenate([pos, neg]))
    auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:m] - tx) / n          # structural components of the positives
    v01 = 1.0 - (tz[m:] - ty) / m    # and of the negatives
    s10 = v10.var(ddof=1) if m > 1 else 0.0
    s01 = v01.var(ddof=1) if n > 1 else 0.0
    return float(auc), float(s10 / m + s01 / n)


def auc(y: np.ndarray, score: np.ndarray) -> float:
    return auc_with_variance(y, score)[0]


def delong_auc_test(y_a, s_a, y_b, s_b) -> TestResult:
    """DeLong test for the AUCs of two independent groups (a = champion, b = challenger)."""
    auc_a, var_a = auc_with_variance(y_a, s_a)
    auc_b, var_b = auc_with_variance(y_b, s_b)
    if not (math.isfinite(auc_a) and math.isfinite(auc_b)):
        return TestResult("delong", _f(auc_a), _f(auc_b), None, None, None)
    se = math.sqrt(var_a + var_b)
    diff = auc_b - auc_a
    if se == 0:
        z, p = 0.0, (1.0 if diff == 0 else 0.0)
    else:
        z = diff / se
        p = 2 * stats.norm.sf(abs(z))
    return TestResult("delong", auc_a, auc_b, diff, _f(z), _f(p), (diff - 1.96 * se, diff + 1.96 * se))


def welch_ttest(a, b) -> TestResult:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        return TestResult("welch_t", _f(a.mean()) if len(a) else None, _f(b.mean()) if len(b) else None,
                          None, None, None)
    res = stats.ttest_ind(b, a, equal_var=False)
    diff = float(b.mean() - a.mean())
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return TestResult("welch_t", float(a.mean()), float(b.mean()), diff, _f(float(res.statistic)),
                      _f(float(res.pvalue)) if se > 0 else (1.0 if diff == 0 else 0.0),
                      (diff - 1.96 * se, diff + 1.96 * se))
