"""Device-side parts without a broker: shadow comparison, the bounded outbox, telemetry windows."""

from __future__ import annotations

import numpy as np

from edge_runtime.buffer import Outbox
from edge_runtime.sketch import Histogram
from edge_runtime.telemetry import DIVERGENCE_EDGES


def test_shadow_stats_equal_a_direct_computation(make_agent, cancer_bundle, cancer_bundle_v2, cancer_data):
    agent = make_agent("dev-s", url=None, prefix="p", bundle=cancer_bundle, interval_s=3600)
    agent.store.install(cancer_bundle_v2, "shadow")
    x, _, names = cancer_data
    rows = [dict(zip(names, map(float, r))) for r in x[:300]]
    for r in rows:
        agent.predict([r])
    assert agent.shadow.drain(20)
    window = agent.roll_window()
    by_slot = {s["slot"]: s for s in window["slots"]}
    active, shadow = by_slot["active"], by_slot["shadow"]
    # the same inputs scored directly, row by row, by both models
    m1, m2 = agent.store.model("active"), agent.store.model("shadow")
    changed, div = 0, Histogram(list(DIVERGENCE_EDGES))
    for r in rows:
        s1, s2 = m1.score_array(m1.codec.encode([r])), m2.score_array(m2.codec.encode([r]))
        changed += int(m1.decision(s1)[0] != m2.decision(s2)[0])
        div.add(abs(float(s2.score[0]) - float(s1.score[0])))
    assert active["requests"] == 300 and active["errors"] == 0 and active["latency"]["count"] == 300
    assert shadow["compared"] == 300 and shadow["dropped"] == 0
    assert shadow["decision_changed"] == changed and changed > 0
    assert shadow["divergence"]["counts"] == div.counts
    assert shadow["version"] == "2.0.0" and 1 <= shadow["latency"]["count"] <= 300  # sampled per worker pass
    assert sum(active["decisions"].values()) == 300


def test_shadow_queue_is_bounded_and_drops_are_counted(make_agent, cancer_bundle, cancer_bundle_v2, cancer_data):
    agent = make_agent("dev-q", url=None, prefix="p", bundle=cancer_bundle, interval_s=3600, shadow_queue=4)
    agent.store.install(cancer_bundle_v2, "shadow")
    slow = agent.store.model("shadow")
    import threading

    gate = threading.Event()
    orig = slow.score_array

    def blocked(x):
        gate.wait(60)
        return orig(x)

    slow.score_array = blocked  # the candidate is stuck; the active path must not wait for it
    x, _, names = cancer_data
    try:
        for r in x[:50]:  # all 50 answered while the candidate is still stuck on its first sample
            agent.predict([dict(zip(names, map(float, r)))])
        assert not gate.is_set() and agent.shadow.compared == 0
    finally:
        gate.set()
        slow.score_array = orig
    assert agent.shadow.drain(10)
    shadow = {s["slot"]: s for s in agent.roll_window()["slots"]}["shadow"]
    assert shadow["dropped"] >= 40 and shadow["compared"] + shadow["dropped"] == 50


def test_outbox_is_bounded_drops_oldest_and_counts(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_windows=3, first_seq=1)
    for _ in range(5):
        box.add_window(lambda seq, dropped: {"seq": seq, "dropped_windows": dropped})
    rows = box.pending()
    import json

    assert [json.loads(b)["seq"] for _, _, b in rows] == [3, 4, 5]
    assert box.dropped == 2 and json.loads(rows[-1][2])["dropped_windows"] == 2
    box.close()
    again = Outbox(tmp_path / "o.sqlite", max_windows=3)  # the sequence survives a restart
    assert again.add_window(lambda seq, dropped: {"seq": seq})["seq"] == 6
    again.close()
    # a wiped disk: the new outbox numbers above anything the old one used (no silent dedupe at the hub)
    import time

    fresh = Outbox(tmp_path / "new.sqlite")
    assert fresh.first_seq >= int(time.time()) * 1000 - 1000 and fresh.last_seq == fresh.first_seq - 1
    fresh.close()


def test_window_has_resources_and_vectorised_histograms(make_agent, cancer_bundle, cancer_data):
    agent = make_agent("dev-w", url=None, prefix="p", bundle=cancer_bundle, interval_s=3600)
    x, _, names = cancer_data
    _model, out = agent.predict([dict(zip(names, map(float, r))) for r in x[:64]])
    w = agent.roll_window()
    assert w["seq"] == agent.outbox.first_seq and w["rss_bytes"] > 0
    (active,) = w["slots"]
    probs = np.array([o["probability"] for o in out])
    h = Histogram.unit(20)
    for p in probs:
        h.add(float(p))
    assert active["scores"]["counts"] == h.counts and active["requests"] == 64
