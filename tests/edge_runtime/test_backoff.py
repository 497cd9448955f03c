"""The shared retry delay: bounded, growing, reset by success, and spread (jitter)."""

from __future__ import annotations

import random

import paho.mqtt.client as mqtt
import pytest

from edge_runtime.backoff import Backoff
from edge_runtime.mqtt import use_backoff


def test_delays_stay_in_bounds_grow_and_reset():
    b = Backoff(0.5, 8.0, rng=random.Random(1))
    ceilings, delays = [], []
    for _ in range(10):
        ceilings.append(b.ceiling())
        delays.append(b.next())
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    assert all(0.5 <= d <= c for d, c in zip(delays, ceilings))
    assert b.attempts == 10
    b.reset()
    assert b.attempts == 0 and b.ceiling() == 1.0


def test_a_fleet_does_not_retry_in_lockstep():
    # 1,000 devices that failed together three times: their next delays spread over [min, ceiling]
    fleet = [Backoff(0.5, 30.0, rng=random.Random(i)) for i in range(1000)]
    for b in fleet:
        b.next(), b.next(), b.next()
    nxt = sorted(b.next() for b in fleet)
    assert nxt[0] >= 0.5 and nxt[-1] <= 8.0
    assert nxt[100] < 2.0 and nxt[900] > 6.0  # spread over the interval, not one instant


@pytest.mark.parametrize("bad", [(0, 1), (2, 1), (-1, 5)])
def test_bad_bounds_are_refused(bad):
    with pytest.raises(ValueError, match="min_s"):
        Backoff(*bad)


def test_paho_reconnect_wait_uses_the_jittered_backoff():
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    b = use_backoff(c, 0.01, 0.04)
    c._reconnect_wait()
    c._reconnect_wait()
    assert b.attempts == 2 and 0.01 <= c._reconnect_delay <= 0.04
    c._reconnect_delay = None  # what paho does on an accepted CONNACK
    c._reconnect_wait()
    assert b.attempts == 1
