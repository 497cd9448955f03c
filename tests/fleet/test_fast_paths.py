"""The ingest's and the aggregate's fast paths (issue 14) answer exactly as the full code:
window validation on many mutated windows (same refusal, same reason), and the aggregate's merge
of sketches and histograms (same statistics as Sketch.from_dict + merge)."""

from __future__ import annotations

import copy
import json
import math
import random

import pytest

from cloud_hub.fleet import validate as V
from cloud_hub.fleet.aggregate import SlotAggregate
from edge_runtime.sketch import Histogram, Sketch
from edge_runtime.telemetry import DIVERGENCE_EDGES


def _slot(rnd: random.Random) -> dict:
    sk = Sketch()
    for _ in range(rnd.randint(0, 60)):
        sk.add(rnd.lognormvariate(-5, 1.0))
    h = Histogram(list(V.SCORE_EDGES))
    for _ in range(rnd.randint(0, 40)):
        h.add(rnd.random())
    d = Histogram(list(DIVERGENCE_EDGES))
    for _ in range(rnd.randint(0, 5)):
        d.add(rnd.random())
    calls = rnd.randint(0, 50)
    return json.loads(json.dumps({
        "slot": "active", "name": "m", "version": "1", "sha256": "a" * 64, "requests": calls * 2,
        "errors": 0, "calls": calls, "errored_calls": 0, "latency": sk.to_dict(), "scores": h.to_dict(),
        "decisions": {"0": calls}, "compared": 0, "decision_changed": 0, "compared_calls": 0,
        "changed_share": 0.0, "divergence": d.to_dict() if rnd.random() < 0.5 else {}, "dropped": 0}))


_ODD = [-1, 0, 1, 2, True, False, 1.0, 0.5, -0.0, float("nan"), float("inf"), None, "3", "x", "", " 4", "+5",
        "1_0", "-7", [], {}, 10**20]


def _mutate(rnd: random.Random, s: dict) -> dict:
    s = copy.deepcopy(s)
    where = rnd.choice(["bin_key", "bin_count", "count", "zeros", "edge", "hcount", "hlen", "dedge", "none"])
    lat, sc = s["latency"], s["scores"]
    if where == "bin_key" and lat["bins"]:
        k = rnd.choice(list(lat["bins"]))
        lat["bins"][rnd.choice(["x", "1.5", " 3", "+2", "1_0", "٣", str(int(k) + 1000)])] = lat["bins"].pop(k)
    elif where == "bin_count" and lat["bins"]:
        lat["bins"][rnd.choice(list(lat["bins"]))] = rnd.choice(_ODD)
    elif where == "count":
        lat["count"] = rnd.choice(_ODD)
    elif where == "zeros":
        lat["zeros"] = rnd.choice(_ODD)
    elif where == "edge":
        i = rnd.choice([0, len(sc["edges"]) - 1, rnd.randrange(len(sc["edges"]))])
        e = sc["edges"][i] if isinstance(sc["edges"][i], float) and math.isfinite(sc["edges"][i]) else 0.5
        sc["edges"][i] = rnd.choice([e + 1e-13, e + 1e-9, True, False, int(e), str(e), float("nan")])
    elif where == "hcount":
        sc["counts"][rnd.randrange(len(sc["counts"]))] = rnd.choice(_ODD)
    elif where == "hlen":
        sc["counts"] = sc["counts"][:-1] if rnd.random() < 0.5 else sc["counts"] + [0]
    elif where == "dedge" and s["divergence"]:
        s["divergence"]["edges"] = s["divergence"]["edges"][:-1]
    return s


def _slow(monkeypatch):
    monkeypatch.setattr(V, "_bins_total", lambda bins, zeros: None)
    monkeypatch.setattr(V, "_hist_ok", lambda got, counts, edges: False)


def _answer(s: dict, hub_edges: bool):
    try:
        return ("ok", V.slot_problem(s, hub_edges=hub_edges))
    except Exception as exc:  # noqa: BLE001 - the full code may raise; the fast one must raise alike
        return ("raised", type(exc).__name__)


def test_validation_fast_paths_answer_as_the_full_checks(monkeypatch):
    rnd = random.Random(14)
    cases = []
    for _ in range(1500):
        s = _slot(rnd)
        for _ in range(rnd.randint(0, 2)):
            s = _mutate(rnd, s)
        cases.append(s)
    fast = [(_answer(s, True), _answer(s, False)) for s in cases]
    with monkeypatch.context() as m:
        _slow(m)
        slow = [(_answer(s, True), _answer(s, False)) for s in cases]
    assert fast == slow
    refused = sum(1 for (a, _), _ in zip(fast, slow) if a[1] is not None)
    assert 300 < refused < 1400  # the mutations reach both answers


def test_the_aggregate_merge_equals_sketch_from_dict_and_merge():
    rnd = random.Random(3)
    rows = []
    for i in range(400):
        s = _slot(rnd)
        s.update(device_id=f"d{i % 37}", seq=i, validated=True)
        if i % 50 == 7:
            s["latency"]["alpha"] = 0.05  # refused by the merge check either way
        rows.append(s)
    fast = SlotAggregate()
    for r in rows:
        fast.add_row(r)
    # the reference: the same rows folded with Sketch.from_dict + merge and Histogram.merge
    lat, scores, div, n = Sketch(), None, None, 0
    for r in rows:
        if r["latency"].get("alpha", 0.01) != 0.01:
            continue
        n += 1
        if r["latency"].get("count"):
            lat.merge(Sketch.from_dict(r["latency"]))
        for name in ("scores", "divergence"):
            data = r[name]
            if data and data.get("edges"):
                h = Histogram.from_dict(dict(data))
                if name == "scores":
                    scores = h if scores is None else scores.merge(h)
                else:
                    div = h if div is None else div.merge(h)
    out = fast.to_dict()
    assert out["latency"] == lat.to_dict() and out["windows"] == n and out["rejected"] == 8
    assert out["scores"] == (scores.to_dict() if scores else None)
    assert out["divergence"] == (div.to_dict() if div else None)
    assert out["p99_ms"] == pytest.approx(lat.quantile(0.99) * 1000, abs=1e-4)


def test_window_validation_reads_the_model_as_its_dump():
    """window_problem checks each slot through its attributes instead of a model_dump() copy."""
    from pydantic import ValidationError

    from edge_runtime.protocol import SlotStats

    rnd = random.Random(5)
    seen = 0
    for _ in range(600):
        s = _slot(rnd)
        for _ in range(rnd.randint(0, 2)):
            s = _mutate(rnd, s)
        try:
            m = SlotStats.model_validate(s)
        except ValidationError:
            continue
        seen += 1
        assert V.slot_problem(V._Fields(m)) == V.slot_problem(m.model_dump())
    assert seen > 300
