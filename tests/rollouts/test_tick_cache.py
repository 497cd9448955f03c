"""The controller's caches (device index refreshed from the database's change markers, incremental
telemetry aggregate) never change a decision: after devices change state between ticks, every
gate of a tick equals the one a hub with cold caches computes from scratch on the same database
(issue 14). A stale cache giving a wrong gate decision would be the worst bug of the tick."""

from __future__ import annotations

import random
import time

import pytest

from cloud_hub.fleet import tables as FT
from cloud_hub.hub import Hub
from cloud_hub.rollouts.service import rollout_service
from cloud_hub.settings import HubSettings
from edge_runtime.protocol import DeviceEvent, DeviceState
from edge_runtime.sketch import Histogram, Sketch

N = 40


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    return request.getfixturevalue("fresh_pg_url")


def _window_row(rnd, did, seq, t, version, sha, name, error_rate, shift):
    sk = Sketch()
    for _ in range(20):
        sk.add(rnd.lognormvariate(-5.5, 0.4))
    hist = Histogram.unit(20)
    for _ in range(20):
        hist.add(min(1.0, rnd.betavariate(2, 5) + shift))
    errs = sum(rnd.random() < error_rate for _ in range(20))
    return {"device_id": did, "seq": seq, "start": t, "end": t + 1, "slot": "active", "name": name,
            "version": version, "sha256": sha, "requests": 20, "errors": errs, "calls": 20,
            "errored_calls": errs, "latency": sk.to_dict(), "scores": hist.to_dict(),
            "decisions": {"0": 14, "1": 6}, "compared": 0, "decision_changed": 0, "divergence": {},
            "dropped": 0, "validated": True}


def _scratch(data_dir, url, rid, now):
    """What a hub with cold caches (a second replica, started now) computes on the same database."""
    h = Hub(HubSettings(data_dir=data_dir, database_url=url, dev=True))
    try:
        svc = rollout_service(h)
        return _view(svc._observe(svc._row(rid), now, persist=False))
    finally:
        h.close()


def _view(obs):
    v = obs["verdict"]
    return {"counts": obs["counts"], "states": obs["states"],
            "verdict": v.to_dict() if v is not None else None,
            "candidate": obs["candidate"].summary(),
            "champion": obs["champion"].summary() if obs["champion"] else None}


def test_gate_results_with_caches_equal_a_cold_hub(tmp_path, keypair, demo_bundles, db_url):
    rnd = random.Random(7)
    hub = Hub(HubSettings(data_dir=tmp_path / "hub", database_url=db_url, dev=True, trusted_keys=[keypair[1]]))
    try:
        champ = hub.registry.push(demo_bundles["champion"], aliases=["champion"])
        cand = hub.registry.push(demo_bundles["challenger"])
        fleet = hub.fleet
        t0 = time.time()
        for i in range(N):
            fleet.register_device(f"dev-{i:02d}", tags={"region": ("eu", "us")[i % 2]})
        running = {f"dev-{i:02d}": champ.digest for i in range(N)}
        online = dict.fromkeys(running, True)

        def report(dids, at):
            fleet.write_batch(states=[(DeviceState(device_id=d, online=online[d], bundles=[
                {"slot": "active", "name": champ.name, "version": "x", "sha256": running[d]}]), at)
                for d in dids])

        report(list(running), t0)
        svc = rollout_service(hub)
        plan = {"stages": [50, 100], "defaults": {"min_duration": "1h", "min_samples": 50, "timeout": "2h"},
                "gates": {"max_unknown_fraction": 0.5, "max_failed_fraction": 0.3, "silent_after_s": 30,
                          "min_latency_samples": 100}}
        # a fixed id: stage membership hashes it, and the path below (wait, advance, rollback) with it
        rid = svc.start(f"{cand.name}:{cand.version}", "*", plan, rollout_id="ro-tick-cache")["id"]
        seq = 0
        decisions = set()
        for rnd_i in range(7):
            now = time.time()
            row = svc._row(rid)
            if row.status not in ("running", "rolling_back"):
                break
            members = svc._members(rid)
            stage = [d for d, m in members.items() if m.target == "candidate"]
            # devices change between ticks: installs finish, some go offline or silent, one fails,
            # new windows arrive, a device joins the cohort, tags change
            changed = rnd.sample(stage, k=max(1, len(stage) // 3)) if stage else []
            for d in changed:
                running[d] = cand.digest
            for d in rnd.sample(sorted(running), k=3):
                online[d] = not online[d]
            report(changed + [d for d in running if not online[d]], now)
            if rnd_i == 2:
                fleet.write_batch(events=[(DeviceEvent(device_id=(stage or ["dev-00"])[0], event_id=f"e-{rid}-fail", step="failed",
                                                       bundle={"sha256": cand.digest}, rollout_id=rid,
                                                       reason="self-test failed", ts=now), now)])
            if rnd_i == 3:
                fleet.register_device(f"dev-{N}", tags={"region": "eu"})
                running[f"dev-{N}"], online[f"dev-{N}"] = champ.digest, True
                report([f"dev-{N}"], now)
                fleet.register_device("dev-01", tags={"region": "apac"})
            if rnd_i == 4:  # plain SQL, as another replica or program: one device silent for long
                with hub.engine.begin() as conn:
                    conn.execute(FT.device_state.update().where(FT.device_state.c.device_id == (stage or ["dev-00"])[-1])
                                 .values(last_seen=now - 3600))
            rows = []
            for d, sha in running.items():
                seq += 1
                is_cand = sha == cand.digest
                rows.append(_window_row(rnd, d, seq, row.stage_started_at + rnd_i,
                                        cand.version if is_cand else champ.version,
                                        cand.digest if is_cand else champ.digest, cand.name,
                                        0.002 if is_cand else 0.001, 0.05 * rnd_i if is_cand else 0.0))
            with hub.engine.begin() as conn:
                conn.execute(FT.slot_stats.insert(), rows)
            cached = _view(svc._observe(svc._row(rid), now, persist=False))
            scratch = _scratch(tmp_path / "hub", db_url, rid, now)
            assert cached == scratch, f"round {rnd_i}"
            if cached["verdict"]:
                decisions.add(cached["verdict"]["decision"])
            svc.tick_one(rid, now=now)  # the real tick, which also warms the caches for the next round
            if rnd_i == 3 and svc.get(rid)["status"] == "running":
                # the next rounds at 100 %: the champion side is the stored baseline
                svc.advance(rid, "test")
                assert svc._baseline(rid)
        assert fleet._index.stats["incremental"] >= 3  # the cache was really used
        assert {"wait", "rollback"} <= decisions  # waiting at 50 %, rolled back at 100 % (baseline side)
    finally:
        hub.close()


def test_a_window_committed_late_with_a_lower_id_is_folded(tmp_path, keypair, demo_bundles, fresh_pg_url):
    """PostgreSQL, several writers: a window row whose transaction commits after a row with a higher
    id was already folded in is still folded in at the next tick (by its transaction id), once."""
    rnd = random.Random(3)
    hub = Hub(HubSettings(data_dir=tmp_path / "hub", database_url=fresh_pg_url, dev=True,
                          trusted_keys=[keypair[1]]))
    try:
        champ = hub.registry.push(demo_bundles["champion"], aliases=["champion"])
        cand = hub.registry.push(demo_bundles["challenger"])
        for i in range(10):
            hub.fleet.register_device(f"dev-{i}")
        hub.fleet.write_batch(states=[(DeviceState(device_id=f"dev-{i}", online=True, bundles=[
            {"slot": "active", "name": champ.name, "version": "1", "sha256": champ.digest}]), time.time())
            for i in range(10)])
        svc = rollout_service(hub)
        rid = svc.start(f"{cand.name}:{cand.version}", "*", {"stages": [50, 100]})["id"]
        row = svc._row(rid)
        stage = sorted(d for d, m in svc._members(rid).items() if m.target == "candidate")
        rows = [_window_row(rnd, d, seq, row.stage_started_at, cand.version, cand.digest, cand.name, 0.0, 0.0)
                for seq, d in enumerate(stage * 2)]
        svc.tick_one(rid)  # the aggregate cache is warm (no rows yet)
        late = hub.engine.connect()
        try:
            tx = late.begin()
            late.execute(FT.slot_stats.insert(), rows[:1])  # the lower id, committed last
            with hub.engine.begin() as conn:
                conn.execute(FT.slot_stats.insert(), rows[1:])
            first = _view(svc._observe(svc._row(rid), time.time(), persist=False))
            assert first["candidate"]["calls"] == 20 * (len(rows) - 1)
            tx.commit()
        finally:
            late.close()
        now = time.time()
        cached = _view(svc._observe(svc._row(rid), now, persist=False))
        assert cached["candidate"]["calls"] == 20 * len(rows)
        assert cached == _scratch(tmp_path / "hub", fresh_pg_url, rid, now)
        again = _view(svc._observe(svc._row(rid), now, persist=False))  # nothing folded twice
        assert again == cached
    finally:
        hub.close()
