"""End to end against Mosquitto: real hub (HTTP + ingest + controller), real device daemons."""

from __future__ import annotations

import pytest

from cloud_hub.demo.runtime import wait_for

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _final(hub, rid, timeout=90):
    svc = hub.rollouts
    return wait_for(lambda: svc.get(rid)["status"] in ("completed", "rolled_back", "aborted", "paused")
                    and svc.get(rid), timeout, 0.3, what=f"rollout {rid} to finish")


def _running(hub, version):
    out = {}
    for d in hub.hub.fleet.devices():
        act = d.running("active") or {}
        out[d.id] = act.get("version")
    return out


def test_good_model_goes_through_shadow_and_canary_to_promotion(hub, fleet_factory, fast_plan):
    fleet = fleet_factory(12)
    plan = fast_plan
    plan.update(shadow={"percent": 100}, stages=[10, 50, 100])
    r = hub.rollouts.start("cancer-risk:2.0.0", "*", plan)
    assert r["status"] == "running" and r["stage"]["name"] == "shadow"
    final = _final(hub, r["id"])
    events = hub.rollouts.events(r["id"])
    kinds = [e["kind"] for e in events]
    assert final["status"] == "completed", (final["reason"], [e["message"] for e in events])
    assert kinds.count("advanced") == 3 and kinds[-1] == "completed"
    # every advance carries the gate numbers it was decided on
    adv = [e for e in events if e["kind"] == "advanced"]
    assert all(g["status"] == "pass" for g in adv[0]["data"]["gates"])
    assert adv[0]["data"]["candidate"]["compared"] > 0  # shadow pairs were compared
    assert hub.hub.registry.aliases("cancer-risk")["champion"] == "2.0.0"
    wait_for(lambda: set(_running(hub, "2.0.0").values()) == {"2.0.0"}, 20, what="all devices on 2.0.0")
    assert fleet.stats()["errors"] == 0
