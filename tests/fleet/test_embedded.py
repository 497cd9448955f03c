"""End to end through the embedded amqtt broker: hub + simulated fleet of real daemons."""

from __future__ import annotations

from edge_runtime.bundle import read_bundle
from edge_runtime.protocol import DesiredBundle, DesiredState
from tests.fleet.conftest import wait_for


def test_embedded_broker_end_to_end(make_hub, prefix, keypair, cancer_bundle, cancer_bundle_v2, bundle_server):
    from devices.simulator import Fleet

    hub = make_hub(mqtt_prefix=prefix)  # no HUB_MQTT_URL
    url = hub.fleet.start()
    assert hub.fleet.broker is not None and "protocol=3.1.1" in url
    assert hub.fleet.ingest.wait_connected(10)
    fleet = Fleet(3, mqtt_url=url, prefix=prefix, bundle=cancer_bundle, public_keys=[keypair[1]],
                  interval_s=0.3, request_rate=20)
    fleet.start()
    try:
        wait_for(lambda: len(hub.fleet.devices(online=True)) == 3, what="3 devices online")
        wait_for(lambda: hub.fleet.window_stats(name="cancer").devices_reporting == 3, what="windows")
        m = read_bundle(cancer_bundle_v2).manifest
        hub.fleet.set_desired("sim-0000", DesiredState(id="e2e-1", bundles={"shadow": DesiredBundle(
            name=m.name, version=m.version, url=bundle_server(cancer_bundle_v2), sha256=m.digest)}))
        wait_for(lambda: hub.fleet.device("sim-0000").converged, what="shadow installed")
        wait_for(lambda: hub.fleet.window_stats(["sim-0000"], slot="shadow").compared >= 10, what="shadow stats")
        groups = {(g["version"], g["slot"]) for g in hub.fleet.stats("cancer", by="version")}
        assert groups == {("1.0.0", "active"), ("2.0.0", "shadow")}
        fleet.inject("crash", ["sim-0002"])
        wait_for(lambda: not hub.fleet.device("sim-0002").online, what="last will via amqtt")
    finally:
        fleet.stop()
