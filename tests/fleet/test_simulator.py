"""The fleet simulator's faults show up where a fleet manager looks: the hub's merged stats."""

from __future__ import annotations

import pytest

from tests.fleet.conftest import wait_for

pytestmark = pytest.mark.services


def test_faults_reach_the_hub(mosquitto, prefix, make_hub, keypair, cancer_bundle):
    from devices.simulator import Fleet

    hub = make_hub(mqtt_url="mqtt://127.0.0.1:1883", mqtt_prefix=prefix)
    hub.fleet.start(session_expiry=0)
    assert hub.fleet.ingest.wait_connected(10)
    fleet = Fleet(3, mqtt_url=hub.fleet.mqtt_url, prefix=prefix, bundle=cancer_bundle, public_keys=[keypair[1]],
                  interval_s=0.25, request_rate=40, tags=[{"region": "eu"}, {"region": "us"}, {"region": "us"}])
    # faults set before the load starts, so every request of these devices carries them
    assert fleet.inject("slow", ["sim-0000"], latency_ms=30) == ["sim-0000"]
    fleet.inject("errors", ["sim-0001"], rate=1.0)
    fleet.start()
    try:
        wait_for(lambda: hub.fleet.window_stats(["sim-0000"]).requests >= 20
                 and hub.fleet.window_stats(["sim-0001"]).errors >= 20, what="faulty windows")
        slow = hub.fleet.window_stats(["sim-0000"])
        assert slow.p50 >= 0.029  # every call carries the injected 30 ms
        failing = hub.fleet.window_stats(["sim-0001"])
        assert failing.errors == failing.requests and failing.error_rate == 1.0
        healthy = hub.fleet.window_stats(["sim-0002"])
        assert healthy.errors == 0 and healthy.requests > 0  # (no timing asserted: the host is shared)
        by_tag = {g["tag"]: g for g in hub.fleet.stats("cancer", by="tag", tag="region")}
        assert by_tag["region=eu"]["p50_ms"] >= 29 and by_tag["region=us"]["errors"] > 0
        fleet.inject("clear")
        with pytest.raises(Exception) as ei:
            fleet.inject("meteor")
        assert "fault" in str(ei.value)
    finally:
        fleet.stop()


def test_a_fleet_split_over_processes_is_the_same_fleet(mosquitto, prefix, make_hub, keypair, cancer_bundle):
    """ProcessFleet (issue 14): the devices of Fleet(n) over several processes — same ids and tags,
    faults reach the right process, stats and outbox seqs merge, every process stops."""
    from devices.simulator import Fleet, ProcessFleet

    hub = make_hub(mqtt_url="mqtt://127.0.0.1:1883", mqtt_prefix=prefix)
    hub.fleet.start(session_expiry=0)
    assert hub.fleet.ingest.wait_connected(10)
    kw = {"mqtt_url": hub.fleet.mqtt_url, "prefix": prefix, "bundle": cancer_bundle, "public_keys": [keypair[1]],
          "interval_s": 0.25, "request_rate": 20, "tags": [{"region": "eu"}, {"region": "us"}, {"region": "us"}]}
    shard = Fleet(5, shard=(1, 2), share_models=False, shared_network=False, **kw)  # not started
    assert [d.id for d in shard.devices] == ["sim-0001", "sim-0003"]
    assert [d.tags["region"] for d in shard.devices] == ["us", "eu"]  # as in the unsharded fleet
    shard.stop()  # (never started: removes its work directory)
    fleet = ProcessFleet(5, procs=2, **kw)
    try:
        assert len(set(fleet.pids)) == 2
        fleet.start(timeout=60)
        assert fleet.inject("errors", ["sim-0003"], rate=1.0) == ["sim-0003"]
        wait_for(lambda: hub.fleet.window_stats(["sim-0003"]).errors >= 5, what="the faulty device's windows")
        assert hub.fleet.window_stats(["sim-0002"]).errors == 0
        wait_for(lambda: {d.id for d in hub.fleet.devices() if d.online} >= set(fleet.ids), what="5 online")
        st = fleet.stats()
        assert st["devices"] == 5 and st["connected"] == 5 and st["requests"] > 0
        seqs = fleet.outbox_seqs()
        assert sorted(seqs) == fleet.ids
        assert all(s["last"] >= s["first"] for s in seqs.values())
    finally:
        fleet.stop()
    assert fleet.pids == []
