"""End to end against Mosquitto: real hub (HTTP + ingest + controller), real device daemons."""

from __future__ import annotations

import pytest

from cloud_hub.demo.runtime import wait_for

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _final(hub, rid, timeout=90):
    svc = hub.rollouts
    return wait_for(lambda: svc.get(rid)["status"] in ("completed", "rolled_back", "aborted", "paused")
                    and svc.get(rid), timeout, 0.3, what=f"rollout {rid} to finish")


def _versions(hub, online_only=False):
    return {d.id: (d.running("active") or {}).get("version") for d in hub.hub.fleet.devices()
            if d.online or not online_only}


# A flawless candidate needs ~600 calls per stage before the sequential gates can pass it: ~15 s
# per stage here on a quiet machine (10 devices × 4 calls/s), several times that on a saturated CI
# machine, where the 60 s stage timeout of the fast plan paused it. The stage timeout is raised so
# only a real fault pauses the test; on a quiet machine it still finishes in about a minute.
STAGE_TIMEOUT_S = 150


@pytest.mark.timeout(3 * STAGE_TIMEOUT_S + 120)
def test_good_model_goes_through_shadow_and_canary_to_promotion(hub, fleet_factory, fast_plan):
    fleet = fleet_factory(10)
    fast_plan.update(shadow={"percent": 100}, stages=[50, 100])
    fast_plan["defaults"]["timeout"] = f"{STAGE_TIMEOUT_S}s"
    r = hub.rollouts.start("cancer-risk:2.0.0", "*", fast_plan)
    assert r["status"] == "running" and r["stage"]["name"] == "shadow"
    final = _final(hub, r["id"], 3 * STAGE_TIMEOUT_S + 30)
    events = hub.rollouts.events(r["id"])
    kinds = [e["kind"] for e in events]
    assert final["status"] == "completed", (final["reason"], [e["message"] for e in events])
    assert kinds.count("advanced") == 2 and kinds[-1] == "completed"
    adv = [e for e in events if e["kind"] == "advanced"]
    # every advance carries the gate numbers it was decided on
    assert {g["name"] for g in adv[0]["data"]["gates"]} >= {"error_rate", "p99_latency", "decision_change",
                                                            "score_divergence", "install", "unknown_devices"}
    assert all(g["status"] == "pass" for g in adv[0]["data"]["gates"])
    assert adv[0]["data"]["candidate"]["compared"] >= 100  # shadow pairs compared on the devices
    assert hub.hub.registry.aliases("cancer-risk")["champion"] == "2.0.0"
    wait_for(lambda: set(_versions(hub).values()) == {"2.0.0"}, 20, what="all devices on 2.0.0")
    assert fleet.stats()["errors"] == 0


def _bad_rollout(hub, fleet, plan, version, reason):
    r = hub.rollouts.start(f"cancer-risk:{version}", "*", plan)
    final = _final(hub, r["id"])
    assert final["status"] == "rolled_back", final
    assert final["reason"].startswith(reason) or f"; {reason}" in final["reason"], final["reason"]
    ev = [e for e in hub.rollouts.events(r["id"]) if e["kind"] == "rollback"]
    assert len(ev) == 1 and any(g["name"] == reason and g["status"] == "fail" for g in ev[0]["data"]["gates"])
    wait_for(lambda: set(_versions(hub).values()) == {"1.0.0"}, 30, what="every device back on the champion")
    assert hub.hub.registry.aliases("cancer-risk")["champion"] == "1.0.0"
    return final


def test_bad_model_errors_rolled_back(hub, fleet_factory, fast_plan):
    fleet = fleet_factory(8)
    bad = hub.hub.registry.get("cancer-risk", "3.0.0")
    fleet.inject("errors", rate=0.3, sha256=bad.digest)
    fast_plan.update(stages=[25, 100])
    final = _bad_rollout(hub, fleet, fast_plan, "3.0.0", "error_rate")
    assert final["stage"]["name"] == "canary-25%"


def test_bad_model_latency_rolled_back(hub, fleet_factory, fast_plan):
    fleet = fleet_factory(8)
    bad = hub.hub.registry.get("cancer-risk", "3.0.0")
    fleet.inject("slow", latency_ms=300, sha256=bad.digest)
    fast_plan.update(stages=[25, 100])
    _bad_rollout(hub, fleet, fast_plan, "3.0.0", "p99_latency")


def test_bad_model_divergence_rolled_back_in_shadow(hub, fleet_factory, fast_plan):
    fleet_factory(6)
    fast_plan.update(shadow={"percent": 100}, stages=[100])
    final = _bad_rollout(hub, None, fast_plan, "4.0.0", "decision_change")
    assert final["stage"]["kind"] == "shadow"  # caught before any user saw it


def test_sparse_traffic_waits_then_pauses_never_passes(hub, fleet_factory, fast_plan):
    fleet_factory(3, request_rate=0.3, batch=1)
    fast_plan.update(stages=[100], defaults={"min_duration": "1s", "min_samples": 150, "timeout": "6s"})
    r = hub.rollouts.start("cancer-risk:2.0.0", "*", fast_plan)
    wait_for(lambda: hub.rollouts.status(r["id"])["next_decision"]["decision"] == "wait", 10,
             what="a wait decision")
    st = hub.rollouts.status(r["id"])
    assert st["status"] == "running"
    assert any(g["name"] == "error_rate" and g["status"] == "wait" for g in st["gates"])
    final = _final(hub, r["id"], 30)
    assert final["status"] == "paused" and "not enough data" in final["reason"]
    assert hub.hub.registry.aliases("cancer-risk")["champion"] == "1.0.0"  # never a silent pass
    # an operator can resume (fresh stage clock) or abort: abort puts the champion back
    hub.rollouts.abort(r["id"], "test")
    wait_for(lambda: hub.rollouts.get(r["id"])["status"] == "aborted", 30, what="abort to finish")
    wait_for(lambda: set(_versions(hub).values()) == {"1.0.0"}, 30, what="devices back on champion")


def test_device_offline_during_rollback_converges_on_reconnect(hub, fleet_factory, fast_plan):
    fleet = fleet_factory(8)
    bad = hub.hub.registry.get("cancer-risk", "3.0.0")
    fast_plan.update(stages=[50, 100], defaults={"min_duration": "2s", "min_samples": 150, "timeout": "60s"})
    fast_plan["gates"]["max_unknown_fraction"] = 0.5  # one silent device of four must not pause it
    r = hub.rollouts.start("cancer-risk:3.0.0", "*", fast_plan)
    stage = wait_for(lambda: (lambda s: s["devices"]["verified"] == s["devices"]["stage"] > 0 and s)(
        hub.rollouts.status(r["id"])), 30, what="stage devices running the candidate")
    member = next(d for d, v in _versions(hub).items() if v == "3.0.0")
    fleet.inject("disconnect", devices=[member])
    fleet.inject("errors", rate=0.3, sha256=bad.digest)  # now the candidate misbehaves
    final = _final(hub, r["id"])
    assert final["status"] == "rolled_back", final
    assert stage["devices"]["stage"] >= 2
    wait_for(lambda: all(v == "1.0.0" for d, v in _versions(hub, online_only=True).items()), 30,
             what="online devices back on champion")
    assert fleet.device(member).state()["running"][0]["version"] == "3.0.0"  # still offline, still bad
    fleet.inject("clear", devices=[member])  # reconnect: the retained desired state brings it back
    wait_for(lambda: _versions(hub).get(member) == "1.0.0", 30, what=f"{member} converging on reconnect")
