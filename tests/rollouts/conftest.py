"""Rollout fixtures: demo models exported as signed bundles, a real in-process hub against
Mosquitto (unique topic prefix per test, so retained messages never leak between tests) and
simulated fleets running the real device daemon."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cloud_hub.demo.runtime import LocalHub, wait_for

# min_latency_samples 600 instead of 1,000: time-compressed stages (a flawless candidate needs 595
# calls to pass the sequential error-rate and p99 tests anyway)
PLAN_FAST = {"defaults": {"min_duration": "2s", "min_samples": 150, "timeout": "60s"},
             "gates": {"silent_after_s": 8, "install_timeout_s": 30, "min_latency_samples": 600}}


@pytest.fixture(scope="session")
def demo_bundles(tmp_path_factory, keypair) -> dict[str, Path]:
    from cloud_hub.demo.models import build_bundle

    d = tmp_path_factory.mktemp("rollout-bundles")
    return {kind: build_bundle(kind, version, d / kind, keypair[0])
            for kind, version in (("champion", "1.0.0"), ("challenger", "2.0.0"), ("bad", "3.0.0"),
                                  ("inverted", "4.0.0"))}


@pytest.fixture
def fast_plan() -> dict:
    """Time-compressed stages: 2 s minimum, 150 samples, 60 s timeout, 600 latency samples."""
    import copy

    return copy.deepcopy(PLAN_FAST)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}/v1"


@pytest.fixture
def hub(tmp_path, mosquitto, keypair, demo_bundles, prefix):
    host, port = mosquitto
    h = LocalHub(tmp_path / "hub", mqtt_url=f"mqtt://{host}:{port}", trusted_keys=[keypair[1]], tick_s=0.3,
                 silent_after_s=8, mqtt_prefix=prefix)
    h.start()
    reg = h.hub.registry
    reg.push(demo_bundles["champion"], aliases=["champion"])
    for kind in ("challenger", "bad", "inverted"):
        reg.push(demo_bundles[kind])
    yield h
    h.stop()


def make_fleet(hub: LocalHub, n: int, demo_bundles, keypair, prefix: str, **kw):
    from devices.simulator import Fleet

    opts = dict(interval_s=0.5, request_rate=4.0, batch=8, share_models=True, profiles=("tiny-arm",))
    opts.update(kw)
    fleet = Fleet(n, hub_url=hub.url, mqtt_url=hub.hub.fleet.mqtt_url, prefix=prefix,
                  bundle=demo_bundles["champion"], public_keys=[keypair[1], hub.hub_public_key], **opts)
    fleet.start(timeout=60)
    wait_for(lambda: len([d for d in hub.hub.fleet.devices() if d.online]) >= n, 30,
             what=f"{n} devices online at the hub")
    return fleet


@pytest.fixture
def fleet_factory(hub, demo_bundles, keypair, prefix):
    made = []

    def make(n: int, **kw):
        f = make_fleet(hub, n, demo_bundles, keypair, prefix, **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop()
