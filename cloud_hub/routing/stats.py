"""Significance tests used by champion/challenger evaluation (numpy + scipy only).

* :func:`two_proportion_ztest` — accuracy or positive rate of two independent groups
  (pooled z-test, two-sided p-value);
* :func:`auc` / :func:`delong_auc_test` — AUC by the Mann-Whitney statistic and the
  DeLong variance of each group's AUC; two independent groups, so the variance of the
  difference is the sum of the two variances;
* :func:`welch_ttest` — mean per-request cost of two groups (interval on Student's t with the
  Welch-Satterthwaite degrees of freedom).

A test that cannot be computed honestly returns ``p_value=None`` and says why in ``reason``
— an empty group, NaN or ±inf in the data, zero variance (constant scores, both groups all
right or all wrong), or fewer than two of a class for DeLong — never a p-value of 0 or 1 that a
verdict could act on.
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
    reason: str | None = None  # why p_value is None

    def to_dict(self) -> dict:
        return asdict(self)


def _f(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _not_finite(*arrays: np.ndarray) -> str | None:
    bad = sum(int((~np.isfinite(a)).sum()) for a in arrays)
    return f"{bad} value(s) are NaN or infinite" if bad else None


def two_proportion_ztest(success_a: int, n_a: int, success_b: int, n_b: int) -> TestResult:
    """Group a = champion, b = challenger. p-value two-sided; CI is Wald on the difference."""
    if n_a <= 0 or n_b <= 0:
        return TestResult("two_proportion_z", None, None, None, None, None, reason="a group has no rows")
    if not (0 <= success_a <= n_a and 0 <= success_b <= n_b):
        return TestResult("two_proportion_z", None, None, None, None, None,
                          reason=f"counts {success_a}/{n_a}, {success_b}/{n_b} are not proportions")
    pa, pb = success_a / n_a, success_b / n_b
    pooled = (success_a + success_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return TestResult("two_proportion_z", pa, pb, pb - pa, None, None,
                          reason=f"no variance: every row of both groups is {'a success' if pooled else 'a failure'}")
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
    if m == 0 or n == 0 or not np.isfinite(score).all():
        return float("nan"), float("nan")
    tx, ty, tz = _midrank(pos), _midrank(neg), _midrank(np.concatenate([pos, neg]))
    auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:m] - tx) / n          # structural components of the positives
    v01 = 1.0 - (tz[m:] - ty) / m    # and of the negatives
    if m < 2 or n < 2:  # one positive (or negative) has no variance to estimate: not zero
        return float(auc), float("nan")
    return float(auc), float(v10.var(ddof=1) / m + v01.var(ddof=1) / n)


def auc(y: np.ndarray, score: np.ndarray) -> float:
    return auc_with_variance(y, score)[0]


def delong_auc_test(y_a, s_a, y_b, s_b) -> TestResult:
    """DeLong test for the AUCs of two independent groups (a = champion, b = challenger)."""
    auc_a, var_a = auc_with_variance(y_a, s_a)
    auc_b, var_b = auc_with_variance(y_b, s_b)
    if not (math.isfinite(auc_a) and math.isfinite(auc_b)):
        return TestResult("delong", _f(auc_a), _f(auc_b), None, None, None,
                          reason="a group lacks positives or negatives, or has NaN/inf scores")
    diff = auc_b - auc_a
    if not (math.isfinite(var_a) and math.isfinite(var_b)):
        return TestResult("delong", auc_a, auc_b, diff, None, None,
                          reason="a group has fewer than 2 positives or 2 negatives: no DeLong variance")
    se = math.sqrt(var_a + var_b)
    if se == 0:
        return TestResult("delong", auc_a, auc_b, diff, None, None,
                          reason="no variance: the scores separate (or tie) every pair identically")
    z = diff / se
    p = 2 * stats.norm.sf(abs(z))
    return TestResult("delong", auc_a, auc_b, diff, _f(z), _f(p), (diff - 1.96 * se, diff + 1.96 * se))


def welch_ttest(a, b) -> TestResult:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    bad = _not_finite(a, b)
    if bad:
        return TestResult("welch_t", None, None, None, None, None, reason=bad)
    if len(a) < 2 or len(b) < 2:
        return TestResult("welch_t", _f(a.mean()) if len(a) else None, _f(b.mean()) if len(b) else None,
                          None, None, None, reason="a group has fewer than 2 values")
    diff = float(b.mean() - a.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return TestResult("welch_t", float(a.mean()), float(b.mean()), diff, None, None,
                          reason="no variance: every value of both groups is the same")
    res = stats.ttest_ind(b, a, equal_var=False)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))  # Welch-Satterthwaite
    half = float(stats.t.ppf(0.975, df)) * se
    return TestResult("welch_t", float(a.mean()), float(b.mean()), diff, _f(float(res.statistic)),
                      _f(float(res.pvalue)), (diff - half, diff + half))
