"""Compare champion and challenger: business metric, accuracy and AUC, with significance.

Inputs are plain arrays per group (scores, predicted positives, and — for the
requests that got feedback — the true outcome), so the verdict can be checked
against a direct computation. Verdict rules (all thresholds configurable):

* ``NOT_ENOUGH_DATA`` — a group has fewer than ``min_samples`` labelled rows, or
  (deciding on AUC) fewer than ``min_class_samples`` positives or negatives; or the data
  hold NaN/inf; or the deciding test cannot be computed (zero variance: constant scores,
  every row right in both groups …) — always with the reason, never a verdict on a p-value
  that was forced to 0 or 1;
* ``PROMOTE`` — the challenger is better on ``decide_on`` (accuracy | auc |
  business) with p < ``alpha``, and not significantly worse on the business
  metric (the guardrail);
* ``KEEP_CHAMPION`` — otherwise, with the reason; also when the challenger's error
  rate (failed rows / all routed rows, ``tests.error_rate``) is significantly higher
  than the champion's, however good its answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from cloud_hub.routing import stats
from cloud_hub.routing.split import CHALLENGER, CHAMPION

PROMOTE, KEEP_CHAMPION, NOT_ENOUGH_DATA = "PROMOTE", "KEEP_CHAMPION", "NOT_ENOUGH_DATA"


class EvaluationConfig(BaseModel):
    """How to compare the groups; stored with the split, overridable per call."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    decide_on: str = Field("accuracy", description="accuracy | auc | business: the metric that must improve.")
    business_metric: str = Field("positive_rate", description="positive_rate (share of positive decisions), "
                                 "mean_score, or cost (cost matrix on feedback).")
    business_goal: str = Field("min", description="min or max: which direction of the business metric is better "
                               "(cost is always min).")
    cost_tp: float = Field(0.0, ge=0, description="Cost of a true positive (cost metric).")
    cost_fp: float = Field(1.0, ge=0, description="Cost of a false positive (cost metric).")
    cost_fn: float = Field(1.0, ge=0, description="Cost of a false negative (cost metric).")
    cost_tn: float = Field(0.0, ge=0, description="Cost of a true negative (cost metric).")
    business_guardrail: bool = Field(False, description="Also refuse promotion when the business metric is "
                                     "significantly worse for the challenger.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the tests.")
    min_samples: int = Field(30, ge=1, description="Labelled rows needed per group before any verdict.")
    min_class_samples: int = Field(10, ge=2, description="Deciding on AUC: positives and negatives each "
                                   "group needs (DeLong's variance needs several of each).")

    @model_validator(mode="after")
    def _check(self) -> EvaluationConfig:
        from edge_runtime.errors import ValidationError

        if self.decide_on not in ("accuracy", "auc", "business"):
            raise ValidationError("decide_on must be accuracy, auc or business", field="decide_on")
        if self.business_metric not in ("positive_rate", "mean_score", "cost"):
            raise ValidationError("business_metric must be positive_rate, mean_score or cost",
                                  field="business_metric")
        if self.business_goal not in ("min", "max"):
            raise ValidationError("business_goal must be min or max", field="business_goal")
        return self


def make_config(values: dict[str, Any] | None, prefix: str = "") -> EvaluationConfig:
    """EvaluationConfig from user input; pydantic errors become a 422 naming the field."""
    from edge_runtime.errors import ValidationError, field_path

    if values is not None and not isinstance(values, dict):
        raise ValidationError("evaluation config must be a JSON object", field=prefix or "body")
    try:
        return EvaluationConfig(**(values or {}))
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        field = field_path(*err.get("loc", ())) or "body"
        raise ValidationError(f"{field}: {err.get('msg')}", field=prefix + field) from exc


@dataclass
class GroupData:
    """One group's rows: all predictions, and the labelled subset."""

    scores: np.ndarray  # every prediction's score
    positives: np.ndarray  # every prediction's positive decision (bool)
    versions: list[str] = field(default_factory=list)
    errors: int = 0
    labelled_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    labelled_positives: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    outcomes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def summary(self) -> dict[str, Any]:
        n, nl = len(self.scores), len(self.outcomes)
        correct = int((self.labelled_positives == self.outcomes).sum()) if nl else 0
        total = n + int(self.errors)  # answered rows + failed rows
        return {"requests": int(n), "errors": int(self.errors),
                "error_rate": int(self.errors) / total if total else None,
                "versions": sorted(set(self.versions)),
                "positive_rate": float(self.positives.mean()) if n else None,
                "mean_score": float(self.scores.mean()) if n else None,
                "labelled": int(nl), "accuracy": correct / nl if nl else None,
                "auc": _safe(stats.auc(self.outcomes, self.labelled_scores)) if nl else None}


def _safe(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def costs(cfg: EvaluationConfig, pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.where(pred & y, cfg.cost_tp, np.where(pred & ~y, cfg.cost_fp,
                    np.where(~pred & y, cfg.cost_fn, cfg.cost_tn))).astype(np.float64)


def business_test(cfg: EvaluationConfig, a: GroupData, b: GroupData) -> stats.TestResult:
    m = cfg.business_metric
    if m == "positive_rate":
        return stats.two_proportion_ztest(int(a.positives.sum()), len(a.positives),
                                          int(b.positives.sum()), len(b.positives))
    if m == "mean_score":
        return stats.welch_ttest(a.scores, b.scores)
    return stats.welch_ttest(costs(cfg, a.labelled_positives, a.outcomes),
                             costs(cfg, b.labelled_positives, b.outcomes))


def _better(diff: float | None, goal: str) -> bool:
    return diff is not None and (diff > 0 if goal == "max" else diff < 0)


def evaluate(cfg: EvaluationConfig, champion: GroupData, challenger: GroupData) -> dict[str, Any]:
    a, b = champion, challenger
    acc = stats.two_proportion_ztest(int((a.labelled_positives == a.outcomes).sum()), len(a.outcomes),
                                     int((b.labelled_positives == b.outcomes).sum()), len(b.outcomes))
    auc = stats.delong_auc_test(a.outcomes, a.labelled_scores, b.outcomes, b.labelled_scores)
    biz = business_test(cfg, a, b)
    errs = stats.two_proportion_ztest(int(a.errors), len(a.scores) + int(a.errors),
                                      int(b.errors), len(b.scores) + int(b.errors))
    business_goal = "min" if cfg.business_metric == "cost" else cfg.business_goal
    out: dict[str, Any] = {
        "groups": {CHAMPION: a.summary(), CHALLENGER: b.summary()},
        "tests": {"accuracy": acc.to_dict(), "auc": auc.to_dict(),
                  "business": {**biz.to_dict(), "metric": cfg.business_metric, "goal": business_goal},
                  "error_rate": errs.to_dict()},
        "config": cfg.model_dump(),
    }
    out["warnings"] = [f"{g} group answered with several versions ({', '.join(sorted(set(d.versions)))}): "
                       f"an alias moved during the experiment; reset the split to compare two versions"
                       for g, d in ((CHAMPION, a), (CHALLENGER, b)) if len(set(d.versions)) > 1]
    reasons: list[str] = []
    la, lb = len(a.outcomes), len(b.outcomes)
    # a challenger that fails significantly more often is never promoted, whatever its answers
    fails_more = (errs.difference is not None and errs.difference > 0 and errs.p_value is not None
                  and errs.p_value < cfg.alpha)
    if la < cfg.min_samples or lb < cfg.min_samples:
        reasons.append(f"labelled rows champion={la}, challenger={lb}; need {cfg.min_samples} per group")
    for g, d in ((CHAMPION, a), (CHALLENGER, b)):
        bad = sum(int((~np.isfinite(np.asarray(x, dtype=np.float64))).sum()) for x in (d.scores, d.labelled_scores))
        if bad:
            reasons.append(f"{g} group has {bad} NaN/inf score(s)")
    if cfg.decide_on == "auc":
        for g, d in ((CHAMPION, a), (CHALLENGER, b)):
            pos = int(np.asarray(d.outcomes, dtype=bool).sum())
            neg = len(d.outcomes) - pos
            if pos < cfg.min_class_samples or neg < cfg.min_class_samples:
                reasons.append(f"AUC: {g} feedback has {pos} positive(s) and {neg} negative(s); need "
                               f"{cfg.min_class_samples} of each per group")
    primary = {"accuracy": acc, "auc": auc, "business": biz}[cfg.decide_on]
    if not reasons and primary.p_value is None:
        reasons.append(f"{cfg.decide_on} test cannot be computed: {primary.reason or 'no p-value'}")
    if cfg.decide_on == "business" and cfg.business_metric != "cost" and (len(a.scores) < cfg.min_samples
                                                                           or len(b.scores) < cfg.min_samples):
        reasons.append(f"requests champion={len(a.scores)}, challenger={len(b.scores)}; "
                       f"need {cfg.min_samples} per group")
    if reasons and fails_more:
        out.update(verdict=KEEP_CHAMPION, reasons=[
            f"challenger fails significantly more often (error rate {_fmt(errs.challenger)} vs "
            f"{_fmt(errs.champion)}, p={_fmt(errs.p_value)}); besides, " + "; ".join(reasons)])
        return out
    if reasons:
        out.update(verdict=NOT_ENOUGH_DATA, reasons=reasons)
        return out

    goal = business_goal if cfg.decide_on == "business" else "max"
    significant = primary.p_value is not None and primary.p_value < cfg.alpha
    biz_worse = (_better(-(biz.difference or 0.0), business_goal) and biz.p_value is not None
                 and biz.p_value < cfg.alpha and biz.difference != 0)
    guarded = cfg.decide_on != "business" and cfg.business_guardrail and biz_worse
    if _better(primary.difference, goal) and significant and not guarded and not fails_more:
        out.update(verdict=PROMOTE, reasons=[
            (f"challenger {cfg.decide_on} {primary.challenger:.4f} vs champion {primary.champion:.4f} "
             f"(p={primary.p_value:.3g} < {cfg.alpha})")])
        return out
    if not _better(primary.difference, goal):
        reasons.append(f"challenger {cfg.decide_on} is not better ({_fmt(primary.challenger)} vs "
                       f"{_fmt(primary.champion)})")
    elif fails_more:
        reasons.append(f"challenger fails significantly more often (error rate {_fmt(errs.challenger)} vs "
                       f"{_fmt(errs.champion)}, p={_fmt(errs.p_value)})")
    elif not significant:
        reasons.append(f"challenger {cfg.decide_on} better ({_fmt(primary.challenger)} vs "
                       f"{_fmt(primary.champion)}) but not significant (p={_fmt(primary.p_value)} >= {cfg.alpha})")
    else:
        reasons.append(f"business metric {cfg.business_metric} significantly worse for the challenger "
                       f"({_fmt(biz.challenger)} vs {_fmt(biz.champion)}, p={_fmt(biz.p_value)})")
    out.update(verdict=KEEP_CHAMPION, reasons=reasons)
    return out


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"
