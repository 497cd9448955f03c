"""Shadow report: how a shadow version would have answered the live traffic, and a verdict.

Computed from comparison records only (so it is the same on every replica and
after a restart): identical-bucket rate, decision-change rate, mean scores and
divergence, two-sample KS test on the score distributions
(``scipy.stats.ks_2samp``), the most divergent segments, shadow latency vs the
SLA, and PASS / FAIL against :class:`ReportCriteria` (NOT_ENOUGH_DATA below
``min_samples`` compared rows).

The report is read again and again while traffic flows, so its main checks are the rollout
gates' sequential tests (:class:`cloud_hub.rollouts.gates.Sprt`, ``α = β = 1 − confidence``)
with *requests* as the unit — the rows of one request share their inputs and fail together:

* decision change: mean over requests of each request's share of changed decisions, good at
  half ``max_decision_change``, bad at it;
* error rate: the same on each request's share of failed rows, against ``max_error_rate``;
* shadow p99: share of requests slower than ``sla_ms``, good at 0.5 %, bad at 1 %; passing also
  needs ``min_latency_samples`` requests with a latency; no latency recorded → undecided.

A check that is not conclusive yet says ``wait`` and the verdict is NOT_ENOUGH_DATA with the
reason. The optional checks (identical bucket, mean divergence, KS p-value) compare point
estimates with their limits once ``min_samples`` rows are compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats


class ReportCriteria(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_decision_change: float = Field(0.05, ge=0, le=1, description="Decision-change rate must stay below this.")
    sla_ms: float | None = Field(50.0, gt=0, description="Shadow p99 latency must be at most this (ms); "
                                 "null disables the check.")
    min_identical_bucket: float | None = Field(None, ge=0, le=1, description="Identical-bucket rate at least.")
    max_mean_divergence: float | None = Field(None, ge=0, description="Mean |primary - shadow| score at most.")
    min_ks_pvalue: float | None = Field(None, ge=0, le=1, description="KS p-value at least (distribution unchanged).")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Shadow error rate at most.")
    min_samples: int = Field(100, ge=1, description="Compared rows needed for a verdict.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="1 - α = 1 - β of the sequential checks.")
    min_latency_samples: int = Field(1000, ge=1, description="Requests with a shadow latency needed before "
                                     "the p99 check can pass.")
    min_segment_size: int = Field(10, ge=1, description="Smallest segment listed among the most divergent.")
    top_segments: int = Field(10, ge=0, description="How many divergent segments to list.")


def _pct(x: np.ndarray, q: float) -> float | None:
    return float(np.percentile(x, q)) if len(x) else None


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if len(x) else None


def build_report(records: Sequence[dict[str, Any]], crit: ReportCriteria,
                 shadow_version: str | None = None) -> dict[str, Any]:
    total = len(records)
    ok = [r for r in records if not r.get("shadow_error")]
    errors = total - len(ok)
    scored = [r for r in ok if r.get("primary_score") is not None and r.get("shadow_score") is not None]
    ps = np.array([r["primary_score"] for r in scored], dtype=np.float64)
    ss = np.array([r["shadow_score"] for r in scored], dtype=np.float64)
    div = np.abs(ps - ss)
    decided = [r for r in ok if r.get("primary_decision") is not None and r.get("shadow_decision") is not None]
    changed = sum(1 for r in decided if r["decision_changed"])
    bucketed = [r for r in ok if r.get("primary_bucket") is not None and r.get("shadow_bucket") is not None]
    same_bucket = sum(1 for r in bucketed if r["primary_bucket"] == r["shadow_bucket"])
    ks = stats.ks_2samp(ps, ss) if len(ps) and len(ss) else None
    plat = np.array([r["primary_latency_ms"] for r in records if r.get("primary_latency_ms") is not None],
                    dtype=np.float64)
    # latency is per mirrored request: count each request once
    req_lat = {}
    for r in records:
        req_lat.setdefault(r["request_id"], r.get("shadow_latency_ms"))
    rl = np.array([v for v in req_lat.values() if v is not None], dtype=np.float64)
    out: dict[str, Any] = {
        "shadow_version": shadow_version,
        "primary_versions": sorted({r["primary_version"] for r in records}),
        "compared": len(ok), "records": total, "requests": len(req_lat), "shadow_errors": errors,
        "error_rate": errors / total if total else None,
        "identical_bucket_rate": same_bucket / len(bucketed) if bucketed else None,
        "decision_change_rate": changed / len(decided) if decided else None,
        "decisions_changed": changed,
        "mean_primary_score": _mean(ps), "mean_shadow_score": _mean(ss),
        "mean_divergence": _mean(div), "p99_divergence": _pct(div, 99), "max_divergence": _pct(div, 100),
        "ks_statistic": float(ks.statistic) if ks is not None else None,
        "ks_pvalue": float(ks.pvalue) if ks is not None else None,
        "latency_ms": {
            "shadow_p50": _pct(rl, 50), "shadow_p95": _pct(rl, 95), "shadow_p99": _pct(rl, 99),
            "primary_p50": _pct(plat, 50), "primary_p99": _pct(plat, 99),
            "sla_ms": crit.sla_ms,
            "over_sla_rate": float((rl > crit.sla_ms).mean()) if crit.sla_ms and len(rl) else None,
        },
        "segments": top_segments(ok, crit),
    }
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, limit: float | None, ok_if: str) -> None:
        if limit is None:
            return
        passed = value is not None and (value < limit if ok_if == "<" else value <= limit if ok_if == "<="
                                        else value >= limit)
        checks.append({"check": name, "value": value, "limit": limit, "rule": f"{ok_if} {limit}",
                       "passed": bool(passed), "status": "pass" if passed else "fail"})

    by_request: dict[Any, list[dict[str, Any]]] = {}
    for r in records:
        by_request.setdefault(r["request_id"], []).append(r)
    changed_shares = [sum(bool(r["decision_changed"]) for r in d) / len(d) for d in
                      ([r for r in rows if not r.get("shadow_error") and r.get("primary_decision") is not None
                        and r.get("shadow_decision") is not None] for rows in by_request.values()) if d]
    error_shares = [sum(1 for r in rows if r.get("shadow_error")) / len(rows) for rows in by_request.values()]
    checks.append(_rate_check("decision_change_rate", out["decision_change_rate"], changed_shares,
                              crit.max_decision_change, crit.confidence, "requests compared"))
    if crit.sla_ms is not None:
        checks.append(_latency_check(rl, crit))
    checks.append(_rate_check("error_rate", out["error_rate"], error_shares, crit.max_error_rate, crit.confidence,
                              "requests"))
    check("identical_bucket_rate", out["identical_bucket_rate"], crit.min_identical_bucket, ">=")
    check("mean_divergence", out["mean_divergence"], crit.max_mean_divergence, "<=")
    check("ks_pvalue", out["ks_pvalue"], crit.min_ks_pvalue, ">=")
    out["checks"] = checks
    failed = [c for c in checks if c["status"] == "fail"]
    waiting = [c for c in checks if c["status"] == "wait"]
    if len(ok) < crit.min_samples:
        out["verdict"] = "NOT_ENOUGH_DATA"
        out["reasons"] = [f"{len(ok)} compared rows; need {crit.min_samples}"]
    elif failed:
        out["verdict"] = "FAIL"
        out["reasons"] = [f"{c['check']}={_fmt(c['value'])} fails {c['rule']}" + (f": {c['detail']}" if c.get("detail")
                                                                                  else "") for c in failed]
    elif waiting:
        out["verdict"] = "NOT_ENOUGH_DATA"
        out["reasons"] = [f"{c['check']}={_fmt(c['value'])}: {c['detail']}" for c in waiting]
    else:
        out["verdict"] = "PASS"
        out["reasons"] = ["all criteria met"]
    return out


def _rate_check(name: str, value: float | None, shares: Sequence[float], limit: float, confidence: float,
                unit: str) -> dict[str, Any]:
    """Sequential test of a rate on per-request shares in [0, 1] (see the module docstring)."""
    from cloud_hub.rollouts.gates import FAIL, PASS, Sprt

    n, k = len(shares), float(sum(shares))
    out: dict[str, Any] = {"check": name, "value": value, "limit": limit, "rule": f"< {limit}", "requests": n}
    if limit <= 0 or limit >= 1:  # nothing is below 0; nothing is above 1 — no test needed
        passed = limit >= 1 and (value is None or value < 1)
        return {**out, "passed": passed, "status": "pass" if passed else "fail",
                "detail": "" if passed else f"nothing is below a limit of {limit:g}"}
    test = Sprt.for_threshold(limit, confidence)
    llr = test.llr(k, n) if n else 0.0
    status = test.decide(llr) if n else "wait"
    detail = {FAIL: f"the data favour {limit:.2%} over {test.p0:.2%} (likelihood ratio >= {1 / test.alpha:g}) "
                    f"on {n} {unit}",
              PASS: f"the data favour {test.p0:.2%} over {limit:.2%} on {n} {unit}"}.get(
        status, f"not conclusive between {test.p0:.2%} and {limit:.2%} on {n} {unit} (log-likelihood ratio "
                f"{llr:.2f}; FAIL at {test.upper:.2f}, PASS at {test.lower:.2f})")
    return {**out, "passed": {"pass": True, "fail": False}.get(status), "status": status, "llr": llr,
            "detail": detail}


def _latency_check(rl: np.ndarray, crit: ReportCriteria) -> dict[str, Any]:
    """Share of requests slower than the SLA: good at 0.5 %, bad at 1 % (the p99 at the SLA)."""
    from cloud_hub.rollouts.gates import FAIL, PASS, Sprt

    n = len(rl)
    p99 = _pct(rl, 99)
    out: dict[str, Any] = {"check": "shadow_p99_ms", "value": p99, "limit": crit.sla_ms,
                           "rule": f"<= {crit.sla_ms}", "requests": n}
    if n == 0:
        return {**out, "passed": None, "status": "wait", "detail": "no shadow latency recorded yet"}
    over = int((rl > crit.sla_ms).sum())
    test = Sprt(0.005, 0.01, 1 - crit.confidence, 1 - crit.confidence)
    status = test.decide(test.llr(over, n))
    if status == PASS and n < crit.min_latency_samples:
        status = "wait"
    detail = {FAIL: f"{over} of {n} requests slower than the SLA: more than 1 % (sequential test)",
              PASS: f"{over} of {n} requests slower than the SLA: under 0.5 % (sequential test)"}.get(
        status, f"{over} of {n} requests slower than the SLA; not conclusive"
                + (f" (passing needs {crit.min_latency_samples} requests)" if n < crit.min_latency_samples else ""))
    return {**out, "passed": {"pass": True, "fail": False}.get(status), "status": status, "over_sla": over,
            "detail": detail}


def top_segments(records: Sequence[dict[str, Any]], crit: ReportCriteria) -> list[dict[str, Any]]:
    """Segments (field = value) ranked by decision-change rate, then mean divergence."""
    acc: dict[tuple[str, str], list[float]] = {}
    for r in records:
        d = r.get("divergence")
        for k, v in (r.get("segment") or {}).items():
            a = acc.setdefault((k, v), [0, 0, 0.0, 0])
            a[0] += 1
            a[1] += bool(r.get("decision_changed"))
            if d is not None:
                a[2] += d
                a[3] += 1
    rows = [{"segment": k, "value": v, "count": int(n), "decision_change_rate": ch / n,
             "mean_divergence": (s / nd) if nd else None}
            for (k, v), (n, ch, s, nd) in acc.items() if n >= crit.min_segment_size]
    rows.sort(key=lambda x: (-x["decision_change_rate"], -(x["mean_divergence"] or 0.0), x["segment"], x["value"]))
    return rows[:crit.top_segments]


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"
