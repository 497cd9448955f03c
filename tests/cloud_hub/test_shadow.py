# ruff: noqa: F811  (pytest fixtures imported from routing_support)
"""Shadow deployments: mirrored off the critical path, comparison records, report numbers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from edge_runtime.model import Model
from tests.cloud_hub.routing_support import make_hub, rows_of, slow_bundle, weak_bundle  # noqa: F401

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["thread", "process"])
def executor(request):
    return request.param


@pytest.fixture
def hub(tmp_path, keypair, cancer_bundle, weak_bundle, executor):
    h = make_hub(tmp_path / "hub", keypair, shadow_executor=executor)
    h.registry.push(cancer_bundle, aliases=["champion"])
    h.registry.push(weak_bundle)
    yield h
    h.close()


def test_report_matches_direct_computation(hub, cancer_data, weak_bundle, executor):
    x, _, names = cancer_data
    t = hub.shadow.attach("cancer", "0.9.0", segments=["mean_radius:12,15,18", "tag:group"])
    assert t.version == "0.9.0" and t.segments == ["mean_radius:12,15,18", "tag:group"]
    primary = []
    for i in range(0, len(x), 3):  # requests of 3 rows, like a backend would send
        res = hub.inference.predict_sync("cancer", rows_of(x[i:i + 3], names))
        primary += res.predictions
    assert hub.shadow.drain(60)
    recs = hub.shadow.records("cancer")
    assert len(recs) == len(x)
    shadow = Model.load(weak_bundle).predict(rows_of(x, names))
    ps = np.array([p["probability"] for p in primary])
    ss = np.array([s["probability"] for s in shadow])
    changed = np.array([p["label"] != s["label"] for p, s in zip(primary, shadow)])
    same_bucket = np.array([p["risk_level"] == s["risk_level"] for p, s in zip(primary, shadow)])
    rep = hub.shadow.report("cancer", criteria={"sla_ms": 1000})
    s = rep["shadows"][0]
    assert s["shadow_version"] == "0.9.0" and s["primary_versions"] == ["1.0.0"]
    assert s["compared"] == len(x) and s["requests"] == (len(x) + 2) // 3
    assert s["decision_change_rate"] == pytest.approx(changed.mean())
    assert s["identical_bucket_rate"] == pytest.approx(same_bucket.mean())
    assert s["mean_primary_score"] == pytest.approx(ps.mean(), abs=1e-6)
    assert s["mean_shadow_score"] == pytest.approx(ss.mean(), abs=1e-6)
    assert s["mean_divergence"] == pytest.approx(np.abs(ps - ss).mean(), abs=1e-6)
    ks = stats.ks_2samp(ps, ss)
    assert s["ks_statistic"] == pytest.approx(ks.statistic, abs=1e-6)
    assert s["ks_pvalue"] == pytest.approx(ks.pvalue, rel=1e-3)
    # segments: recompute the worst mean_radius bin directly
    radius = x[:, names.index("mean_radius")]
    bins = np.digitize(radius, [12, 15, 18])
    labels = ["<12", "12-15", "15-18", ">=18"]
    direct = {labels[b]: changed[bins == b].mean() for b in range(4) if (bins == b).sum() >= 10}
    seg = {r["value"]: r for r in s["segments"] if r["segment"] == "mean_radius:12,15,18"}
    for k, v in direct.items():
        assert seg[k]["decision_change_rate"] == pytest.approx(v)
    assert s["segments"][0]["decision_change_rate"] == max(r["decision_change_rate"] for r in s["segments"])
    assert any(r["segment"] == "tag:group" and r["value"] == "none" for r in s["segments"])
    # verdict against the default criterion (decision change 5 %), computed directly: the report's
    # checks are sequential tests on requests (issue 18) — each request's share of changed
    # decisions, good at 2.5 %, bad at 5 %, FAIL at a likelihood ratio of 20; 190 requests cannot
    # *pass* the error-rate and p99 checks yet (595 needed), so no FAIL means NOT_ENOUGH_DATA
    shares = np.array([changed[i:i + 3].mean() for i in range(0, len(x), 3)])
    llr = shares.sum() * np.log(2) + (len(shares) - shares.sum()) * np.log(0.95 / 0.975)
    want = "FAIL" if llr >= np.log(20) else "NOT_ENOUGH_DATA"
    assert s["verdict"] == want and rep["verdict"] == want
    strict = hub.shadow.report("cancer", criteria={"max_decision_change": 0.0, "sla_ms": 1000})
    assert strict["verdict"] == "FAIL"
    assert "decision_change_rate" in strict["shadows"][0]["reasons"][0]
    loose = hub.shadow.report("cancer", criteria={"max_decision_change": 1.0, "max_error_rate": 1.0,
                                                  "sla_ms": None})
    assert loose["verdict"] == "PASS"
    few = hub.shadow.report("cancer", criteria={"min_samples": 10_000})
    assert few["verdict"] == "NOT_ENOUGH_DATA"
    text = hub.metrics.render()[0].decode()
    assert "hub_shadow_queue_depth" in text
    assert f'hub_shadow_requests_total{{model="cancer",version="0.9.0"}} {rep["shadows"][0]["requests"]}.0' in text \
        or executor == "process"  # the process executor reports its counts asynchronously
    assert hub.shadow.status()["executor"] == executor


def test_slow_shadow_never_blocks_primary_and_overflow_is_counted(tmp_path, keypair, cancer_bundle,
                                                                   slow_bundle, cancer_data, executor,
                                                                   monkeypatch):
    import threading

    import cloud_hub.shadow.service as shadow_service

    x, _, names = cancer_data
    release = threading.Event()
    if executor == "thread":
        # The thread worker batches what is queued into one run of the slow model; on a loaded
        # machine the primary (waiting for the GIL between requests) was the slower of the two and
        # nothing overflowed. Hold the worker's first comparison until every request is sent, so
        # "the shadow is slower than the primary" holds by construction; the real comparison runs
        # after. (The process executor's first comparison waits for a spawned interpreter.)
        real_compare = shadow_service.compare_group

        def held_compare(models, group):
            release.wait(120)
            return real_compare(models, group)

        monkeypatch.setattr(shadow_service, "compare_group", held_compare)
    hub = make_hub(tmp_path / "hub", keypair, shadow_queue_size=4, shadow_executor=executor)
    try:
        hub.registry.push(cancer_bundle, aliases=["champion"])
        hub.registry.push(slow_bundle)
        hub.shadow.attach("cancer", "3.0.0-slow")
        n = 60
        answered = 0
        depths = []
        for i in range(n):
            res = hub.inference.predict_sync("cancer", rows_of(x[i:i + 1], names))
            assert res.to_dict()["model"]["version"] == "1.0.0"
            answered += 1
            depths.append(hub.shadow.status()["queue_depth"])
        st = hub.shadow.status()
        release.set()
        assert answered == n
        assert st["dropped"] > 0, st  # the slow shadow could not keep up: requests dropped, counted
        assert st["mirrored"] + st["dropped"] == n
        assert max(depths) <= 4  # bounded
        text = hub.metrics.render()[0].decode()
        dropped_line = [ln for ln in text.splitlines() if ln.startswith('hub_shadow_dropped_total{model="cancer"}')]
        assert dropped_line and float(dropped_line[0].split()[-1]) == st["dropped"]
        assert hub.shadow.drain(120)
        recs = hub.shadow.records("cancer")
        assert len(recs) == st["mirrored"]  # every queued request was compared and stored
        assert all(r["shadow_version"] == "3.0.0-slow" and r["shadow_error"] is None for r in recs)
        # latency vs SLA: the report's p99 is the p99 of the per-request shadow latencies
        per_request = {r["request_id"]: r["shadow_latency_ms"] for r in recs}
        # the latency check is a sequential test (issue 18): each request over the SLA is a likelihood
        # ratio of 2 for "1 % over" against "0.5 % over"; with the few requests a full queue of 4
        # lets through, confidence 0.8 (FAIL at a ratio of 5: 3 requests) keeps the check decisive
        rep = hub.shadow.report("cancer", criteria={"min_samples": 1, "max_decision_change": 1.0,
                                                    "sla_ms": 0.001, "confidence": 0.8})
        lat = rep["shadows"][0]["latency_ms"]
        assert lat["shadow_p99"] == pytest.approx(np.percentile(list(per_request.values()), 99))
        assert lat["over_sla_rate"] == 1.0
        assert rep["verdict"] == "FAIL"
        assert any(r.startswith("shadow_p99_ms=") for r in rep["shadows"][0]["reasons"]), rep["shadows"][0]["checks"]
    finally:
        release.set()
        hub.close()


def test_attach_validation_and_detach(hub):
    from edge_runtime.errors import NotFoundError, ValidationError

    with pytest.raises(NotFoundError):
        hub.shadow.attach("cancer", "9.9.9")
    with pytest.raises(ValidationError) as e:
        hub.shadow.attach("cancer", "0.9.0", sample_rate=0)
    assert e.value.field == "sample_rate"
    with pytest.raises(ValidationError) as e:
        hub.shadow.attach("cancer", "0.9.0", segments=["mean_radius:3,2"])
    assert e.value.field == "segments"
    hub.shadow.attach("cancer", "0.9.0")
    assert [t.version for t in hub.shadow.targets("cancer")] == ["0.9.0"]
    hub.shadow.detach("cancer", "0.9.0")
    assert hub.shadow.targets("cancer") == []
    with pytest.raises(NotFoundError):
        hub.shadow.detach("cancer", "0.9.0")


def test_shadow_sampling_is_deterministic(hub, cancer_data):
    x, _, names = cancer_data
    hub.shadow.attach("cancer", "0.9.0", sample_rate=0.3)
    for i in range(200):
        hub.inference.predict_sync("cancer", rows_of(x[i:i + 1], names))
    assert hub.shadow.drain(60)
    n = len({r["request_id"] for r in hub.shadow.records("cancer")})
    assert 30 <= n <= 90


def test_failing_shadow_is_recorded_not_raised(tmp_path, keypair, cancer_bundle, cancer_data):
    """A shadow whose contract the requests do not satisfy: every run fails, the primary never does."""
    from sklearn.linear_model import LogisticRegression

    from tests.conftest import build_sklearn_bundle

    x, y, names = cancer_data
    other = [n + "_v2" for n in names]  # the live requests do not carry these features
    bad = build_sklearn_bundle(tmp_path / "bad", LogisticRegression(max_iter=3000).fit(x, y), x, other,
                               key=keypair[0], version="5.0.0")
    hub = make_hub(tmp_path / "hub", keypair)
    try:
        hub.registry.push(cancer_bundle, aliases=["champion"])
        hub.registry.push(bad)
        hub.shadow.attach("cancer", "5.0.0")
        for i in range(30):
            res = hub.inference.predict_sync("cancer", rows_of(x[i:i + 1], names))
            assert res.to_dict()["model"]["version"] == "1.0.0"
        assert hub.shadow.drain(60)
        recs = hub.shadow.records("cancer")
        assert len(recs) == 30
        assert all(r["shadow_error"].startswith("ValidationError: rows[0]: missing feature(s) mean_radius_v2")
                   for r in recs), recs[0]["shadow_error"]
        assert all(r["shadow_score"] is None and r["decision_changed"] is False for r in recs)
        rep = hub.shadow.report("cancer", criteria={"min_samples": 1})
        s = rep["shadows"][0]
        assert s["shadow_errors"] == 30 and s["error_rate"] == 1.0 and s["compared"] == 0
        assert rep["verdict"] == "NOT_ENOUGH_DATA"  # nothing compared
        assert hub.shadow.status()["shadow_errors"] == 30
        text = hub.metrics.render()[0].decode()
        assert 'hub_shadow_errors_total{model="cancer",version="5.0.0"} 30.0' in text
    finally:
        hub.close()
