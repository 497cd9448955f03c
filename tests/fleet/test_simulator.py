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
