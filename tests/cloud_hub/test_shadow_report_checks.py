"""The shadow report's checks are sequential tests on requests (issue 18): no latency is not a
FAIL, a few hundred rows are not proof, the rows of one request count once."""

from __future__ import annotations

from cloud_hub.shadow.report import ReportCriteria, build_report


def _records(
    n_requests: int,
    rows: int = 1,
    changed_every: int = 0,
    latency_ms: float | None = 5.0,
    error_every: int = 0,
) -> list[dict]:
    out = []
    for i in range(n_requests):
        for j in range(rows):
            changed = bool(changed_every) and i % changed_every == 0
            out.append(
                {
                    "request_id": f"r{i}",
                    "primary_version": "1",
                    "primary_score": 0.4,
                    "shadow_score": 0.6 if changed else 0.4,
                    "primary_decision": 0,
                    "shadow_decision": int(changed),
                    "decision_changed": changed,
                    "divergence": 0.0,
                    "primary_bucket": "low",
                    "shadow_bucket": "low",
                    "primary_latency_ms": 3.0,
                    "shadow_latency_ms": latency_ms,
                    "shadow_error": "boom" if error_every and i % error_every == 0 else None,
                }
            )
    return out


def _check(rep: dict, name: str) -> dict:
    return next(c for c in rep["checks"] if c["check"] == name)


def test_no_latency_recorded_waits_instead_of_failing():
    rep = build_report(_records(700, latency_ms=None), ReportCriteria())
    lat = _check(rep, "shadow_p99_ms")
    assert lat["status"] == "wait" and "no shadow latency" in lat["detail"]
    assert rep["verdict"] == "NOT_ENOUGH_DATA"


def test_decision_change_is_a_sequential_test_on_requests():
    crit = ReportCriteria(sla_ms=None, max_error_rate=1.0)
    # 8 % of 100 requests changed: not a PASS any more (it was: "true 8 % passes 9 %") ...
    rep = build_report(_records(100, changed_every=12), crit)
    assert _check(rep, "decision_change_rate")["status"] != "pass"
    # ... while 116 requests without a change prove < 5 % (LR 20 for 2.5 % over 5 %)
    assert build_report(_records(116), crit)["verdict"] == "PASS"
    assert build_report(_records(115), crit)["verdict"] == "NOT_ENOUGH_DATA"
    # 20 rows per request that change together are 20 requests' worth of evidence no more
    many_rows = build_report(
        _records(10, rows=20, changed_every=5), ReportCriteria(min_samples=1, sla_ms=None)
    )
    dc = _check(many_rows, "decision_change_rate")
    assert dc["requests"] == 10 and dc["status"] == "wait"
    assert (
        build_report(_records(300, changed_every=4), crit)["verdict"] == "FAIL"
    )  # 25 %: clearly over


def test_error_rate_and_latency_checks():
    rep = build_report(
        _records(700, latency_ms=5.0), ReportCriteria(sla_ms=50.0, min_latency_samples=600)
    )
    assert rep["verdict"] == "PASS", rep["reasons"]
    slow = build_report(_records(200, latency_ms=80.0), ReportCriteria(sla_ms=50.0))
    assert slow["verdict"] == "FAIL" and any(
        r.startswith("shadow_p99_ms=") for r in slow["reasons"]
    )
    fails = build_report(
        _records(300, error_every=10), ReportCriteria(sla_ms=None, max_decision_change=1.0)
    )
    assert fails["verdict"] == "FAIL" and any(r.startswith("error_rate=") for r in fails["reasons"])
