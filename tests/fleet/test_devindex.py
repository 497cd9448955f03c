"""The controller's cached device index (cloud_hub.fleet.devindex): after any change — by this hub,
another replica, plain SQL, a transaction still open while the index refreshed — it returns exactly
what a full load returns, on SQLite and PostgreSQL (issue 14)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from cloud_hub.fleet import tables as T
from edge_runtime.protocol import DesiredBundle, DesiredState, DeviceState, TelemetryWindow


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    return request.getfixturevalue("fresh_pg_url")


def _hub(make_hub, tmp_path, db_url, name="hub0"):
    return make_hub(data_dir=tmp_path / name, database_url=db_url)


def _same(fleet) -> None:
    cached = [r.to_dict() for r in fleet.cached_devices()]
    scratch = [r.to_dict() for r in fleet.devices()]
    assert cached == scratch


def _state(did: str, sha: str, online: bool = True) -> DeviceState:
    return DeviceState(device_id=did, online=online,
                       bundles=[{"slot": "active", "name": "m", "version": sha[:3], "sha256": sha}])


def test_index_follows_every_kind_of_change(make_hub, tmp_path, db_url):
    hub = _hub(make_hub, tmp_path, db_url)
    fleet = hub.fleet
    for i in range(8):
        fleet.register_device(f"dev-{i}", tags={"region": "eu"})
    fleet.write_batch(states=[(_state(f"dev-{i}", "a" * 64), time.time()) for i in range(8)])
    _same(fleet)
    idx = fleet._index
    assert idx.stats["full"] == 1

    # nothing changed: nothing re-read
    _same(fleet)
    assert idx.stats["full"] == 1 and idx.stats["reread"] == 0

    # the ingest: a new state (bundles), a window (last_seen, last_seq), an unregistered device
    win = TelemetryWindow(device_id="dev-2", seq=1, start=1.0, end=2.0)
    fleet.write_batch(states=[(_state("dev-1", "b" * 64), time.time()),
                              (_state("dev-new", "a" * 64), time.time())],
                      windows=[(win, time.time())])
    _same(fleet)
    assert idx.stats["full"] == 1 and idx.stats["reread"] == 3

    # registry: tags changed, a device registered
    fleet.register_device("dev-3", tags={"region": "us"})
    fleet.register_device("dev-9", profile="rpi4")
    _same(fleet)

    # desired documents, one and many
    doc = DesiredState(id="d1", bundles={"active": DesiredBundle(name="m", version="1", sha256="c" * 64,
                                                                 url="http://x/b")})
    fleet.set_desired("dev-4", doc)
    fleet.set_desired_many([(f"dev-{i}", doc) for i in (5, 6)])
    _same(fleet)

    # plain SQL, as another program or an older hub would write: update, delete, rename
    with hub.engine.begin() as conn:
        conn.execute(T.device_state.update().where(T.device_state.c.device_id == "dev-0")
                     .values(online=False, last_seen=123.0))
        conn.execute(T.device_state.delete().where(T.device_state.c.device_id == "dev-7"))
        conn.execute(T.devices.delete().where(T.devices.c.id == "dev-7"))
        conn.execute(T.desired.delete().where(T.desired.c.device_id == "dev-6"))
    _same(fleet)
    assert "dev-7" not in {r.id for r in fleet.cached_devices()}
    with hub.engine.begin() as conn:
        conn.execute(T.devices.update().where(T.devices.c.id == "dev-9").values(id="dev-9b"))
    _same(fleet)
    assert idx.stats["full"] == 1  # all of it incremental

    # many changes at once: a full reload, same result
    with hub.engine.begin() as conn:
        conn.execute(T.device_state.update().values(last_seen=456.0))
    _same(fleet)


def test_a_replica_sees_what_another_wrote(make_hub, tmp_path, db_url):
    a = _hub(make_hub, tmp_path, db_url, "a")
    b = make_hub(data_dir=tmp_path / "b", database_url=db_url, signing_key=tmp_path / "a" / "keys" / "hub.key")
    for i in range(4):
        a.fleet.register_device(f"dev-{i}")
    _same(a.fleet)
    _same(b.fleet)
    b.fleet.write_batch(states=[(_state("dev-1", "d" * 64), time.time())])
    a.fleet.write_batch(states=[(_state("dev-2", "e" * 64, online=False), time.time())])
    for h in (a, b):
        _same(h.fleet)
    assert {r.id: r.running()["sha256"] for r in a.fleet.cached_devices() if r.bundles} == \
        {"dev-1": "d" * 64, "dev-2": "e" * 64}


def test_a_change_committed_after_the_refresh_by_an_older_transaction_is_not_missed(
        make_hub, tmp_path, db_url):
    """A transaction that wrote before a refresh but committed after it (PostgreSQL: a lower
    transaction id than rows already seen) is read at the next refresh."""
    hub = _hub(make_hub, tmp_path, db_url)
    fleet = hub.fleet
    for i in range(3):
        fleet.register_device(f"dev-{i}")
    fleet.write_batch(states=[(_state(f"dev-{i}", "a" * 64), time.time()) for i in range(3)])
    _same(fleet)
    slow = hub.engine.connect()
    try:
        tx = slow.begin()
        slow.execute(T.device_state.update().where(T.device_state.c.device_id == "dev-0")
                     .values(online=False))
        if hub.engine.dialect.name == "postgresql":
            # a younger transaction commits meanwhile (SQLite has one writer: it would wait)
            fleet.write_batch(states=[(_state("dev-1", "b" * 64), time.time())])
        _same(fleet)  # dev-0's change is not visible yet
        assert next(r for r in fleet.cached_devices() if r.id == "dev-0").online
        tx.commit()
    finally:
        slow.close()
    _same(fleet)
    assert not next(r for r in fleet.cached_devices() if r.id == "dev-0").online


def test_without_the_triggers_nothing_is_cached(make_hub, tmp_path, db_url):
    hub = _hub(make_hub, tmp_path, db_url)
    fleet = hub.fleet
    fleet.register_device("dev-0")
    _same(fleet)
    with hub.engine.begin() as conn:
        if hub.engine.dialect.name == "postgresql":
            conn.execute(text("DROP TRIGGER fleet_device_state_rev_upd ON fleet_device_state"))
        else:
            conn.execute(text("DROP TRIGGER fleet_device_state_rev_upd"))
    fleet.write_batch(states=[(_state("dev-0", "f" * 64), time.time())])
    _same(fleet)
    assert fleet._index.stats["uncached"] >= 1
    assert fleet.cached_devices()[0].running()["sha256"] == "f" * 64


def test_existing_database_gets_the_markers(tmp_path):
    """A database from before 0005_fleet_rev (no rev columns, no triggers) is migrated."""
    from cloud_hub import db
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings

    url = f"sqlite:///{tmp_path / 'old.db'}"
    h = Hub(HubSettings(data_dir=tmp_path / "h", database_url=url))
    h.fleet.register_device("dev-0")
    h.close()
    eng = db.connect(url)
    with eng.begin() as conn:
        for name in T.rev_trigger_names():
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        for t in ("fleet_devices", "fleet_device_state", "fleet_desired"):
            conn.exec_driver_sql(f"DROP INDEX ix_{t}_rev")
            conn.exec_driver_sql(f"ALTER TABLE {t} DROP COLUMN rev")
        conn.exec_driver_sql("DROP TABLE fleet_rev")
        conn.exec_driver_sql("DROP TABLE fleet_device_gone")
        conn.exec_driver_sql("DELETE FROM schema_migrations WHERE id = '0005_fleet_rev'")
    eng.dispose()
    h = Hub(HubSettings(data_dir=tmp_path / "h", database_url=url))
    try:
        assert "0005_fleet_rev" in h.applied_migrations
        _same(h.fleet)
        h.fleet.register_device("dev-1", tags={"a": "b"})
        _same(h.fleet)
        assert h.fleet._index.stats["uncached"] == 0 and h.fleet._index.stats["reread"] == 1
    finally:
        h.close()
