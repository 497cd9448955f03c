"""A tick that raises pauses the rollout with the error as the reason (issue 18: one device's bad
window made every controller tick fail forever — the rollout neither decided nor paused)."""

from __future__ import annotations

from cloud_hub.hub import Hub
from cloud_hub.rollouts.service import rollout_service
from cloud_hub.settings import HubSettings


def _hub(tmp_path, keypair, demo_bundles) -> Hub:
    hub = Hub(HubSettings(data_dir=tmp_path / "hub", dev=True, trusted_keys=[keypair[1]]))
    hub.registry.push(demo_bundles["champion"], aliases=["champion"])
    hub.registry.push(demo_bundles["challenger"])
    for i in range(3):
        hub.fleet.register_device(f"dev-{i}")
    return hub


def test_a_tick_that_raises_pauses_the_rollout_with_the_error(tmp_path, keypair, demo_bundles):
    hub = _hub(tmp_path, keypair, demo_bundles)
    try:
        svc = rollout_service(hub)
        r = svc.start(
            "cancer-risk:2.0.0", "*", {"stages": [100], "gates": {"max_unknown_fraction": 1.0}}
        )
        assert svc.get(r["id"])["status"] == "running", svc.get(r["id"])["reason"]
        with hub.engine.begin() as conn:  # the table the gates read is gone: every read raises
            conn.exec_driver_sql("DROP TABLE fleet_slot_stats")
        svc.tick()
        st = svc.get(r["id"])
        assert st["status"] == "paused" and st["reason"].startswith("tick failed: OperationalError")
        ev = svc.events(r["id"])[-1]
        assert (
            ev["kind"] == "paused"
            and "the tick failed" in ev["message"]
            and "resume to retry" in ev["message"]
        )
        svc.tick()  # a paused rollout is not ticked again: nothing else happens
        assert svc.get(r["id"])["status"] == "paused"
    finally:
        hub.close()


def test_an_impossible_stored_row_is_skipped_and_named_not_raised(tmp_path, keypair, demo_bundles):
    """Rows stored before ingest validation (another sketch alpha used to raise in the merge)."""
    from cloud_hub.fleet import tables as T

    hub = _hub(tmp_path, keypair, demo_bundles)
    try:
        svc = rollout_service(hub)
        r = svc.start(
            "cancer-risk:2.0.0", "*", {"stages": [100], "gates": {"max_unknown_fraction": 1.0}}
        )
        row = svc._row(r["id"])
        with hub.engine.begin() as conn:
            conn.execute(
                T.slot_stats.insert().values(
                    device_id="dev-0",
                    seq=1,
                    start=row.stage_started_at,
                    end=row.stage_started_at + 1,
                    slot="active",
                    name="cancer-risk",
                    version="2.0.0",
                    sha256=row.candidate_digest,
                    requests=10,
                    errors=0,
                    calls=2,
                    errored_calls=0,
                    latency={
                        "alpha": 0.05,
                        "count": 1,
                        "zeros": 0,
                        "sum": 0.01,
                        "min": 0.01,
                        "max": 0.01,
                        "bins": {"5": 1},
                    },
                    scores={},
                    decisions={},
                    compared=0,
                    decision_changed=0,
                    divergence={},
                )
            )
        svc.tick()
        st = svc.status(r["id"])
        assert st["status"] == "running"
        assert st["candidate_stats"]["rejected_rows"] == 1 and st["candidate_stats"]["calls"] == 0
        assert any(
            "impossible stored rows skipped" in g["message"] and "alpha 0.05" in g["message"]
            for g in st["gates"]
        )
    finally:
        hub.close()
