"""Issue 20: /v1/devices paged, sorted and filtered on the server (the dashboard's fleet table).

The paged answer must hold exactly the devices the unpaged list holds (same filters), on
SQLite and PostgreSQL; problems (telemetry gaps, failed installs, rejected windows) are
flagged; bad paging input is refused naming the field.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from benchmarks.dashboard_devices import seed

ADMIN, VIEWER = "admin-key-0123456789abcdef", "viewer-key-0123456789abcdef"
N = 600


@pytest.fixture(params=["sqlite", "postgresql"])
def client(request, tmp_path, keypair):
    from cloud_hub.app import create_app
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings

    url = request.getfixturevalue("fresh_pg_url") if request.param == "postgresql" else None
    hub = Hub(HubSettings(data_dir=tmp_path / "hub", database_url=url, trusted_keys=[keypair[1]],
                          admin_keys=[ADMIN], viewer_keys=[VIEWER]))
    expect = seed(hub.engine, N)
    hub.fleet.register_device("zz-unseen", {"region": "eu"}, "rpi4")  # registered, never connected
    with TestClient(create_app(hub), raise_server_exceptions=False,
                    headers={"Authorization": f"Bearer {VIEWER}"}) as c:
        yield c, hub, expect
    hub.close()


def _all_pages(c, params, size=150):
    out, offset = [], 0
    while True:
        body = c.get("/v1/devices", params={**params, "limit": size, "offset": offset}).json()
        assert body["count"] == len(body["devices"]) <= size
        out += body["devices"]
        offset += size
        if offset >= body["total"]:
            assert len(out) == body["total"]
            return out


def test_pages_hold_exactly_the_unpaged_devices(client):
    c, _hub, expect = client
    full = c.get("/v1/devices").json()
    assert full["count"] == full["total"] == N + 1
    paged = _all_pages(c, {})
    assert [d["id"] for d in paged] == [d["id"] for d in full["devices"]]  # id order, no overlap, no gap
    strip = [{k: v for k, v in d.items() if k != "problems"} for d in paged]
    assert strip == full["devices"]
    for sel in ("region=eu", "region=eu,ring=canary"):
        want = [d["id"] for d in c.get("/v1/devices", params={"selector": sel}).json()["devices"]]
        assert [d["id"] for d in _all_pages(c, {"selector": sel})] == want and want
    assert c.get("/v1/devices", params={"limit": 1, "selector": "region=eu"}).json()["total"] == expect["eu"] + 1


def test_filters_sorts_and_problems(client):
    c, _hub, expect = client
    body = c.get("/v1/devices", params={"limit": 200, "profile": "rpi4"}).json()
    assert body["total"] == expect["rpi4"] + 1 and all(d["profile"] == "rpi4" for d in body["devices"])
    body = c.get("/v1/devices", params={"limit": 200, "version": "cancer-risk:2.0.0"}).json()
    assert body["total"] == expect["v2"]
    assert all(d["bundles"][0]["version"] == "2.0.0" for d in body["devices"])
    assert c.get("/v1/devices", params={"limit": 5, "version": "2.0.0"}).json()["total"] == expect["v2"]
    body = c.get("/v1/devices", params={"limit": 200, "online": "false"}).json()
    assert body["total"] == N + 1 - expect["online"] and not any(d["online"] for d in body["devices"])
    seen = [d["last_seen"] for d in _all_pages(c, {"sort": "last_seen", "order": "desc"}, size=200)]
    known = [s for s in seen if s is not None]
    assert known == sorted(known, reverse=True) and seen[-1] is None  # never seen: last
    ids = [d["id"] for d in c.get("/v1/devices", params={"limit": 3, "order": "desc"}).json()["devices"]]
    assert ids == ["zz-unseen", f"dev-{N - 1:05d}", f"dev-{N - 2:05d}"]

    body = c.get("/v1/devices", params={"limit": 200, "problems": "true"}).json()
    assert body["total"] == expect["problems"]
    why = {d["id"]: d["problems"] for d in body["devices"]}
    assert why["dev-00000"] == ["1 telemetry window(s) missing", "install failed: self-test failed",
                                "3 window(s) rejected"]
    assert why["dev-00501"] == ["1 telemetry window(s) missing"]


def test_bad_paging_input_is_refused_naming_the_field(client):
    c, _hub, _ = client
    for params, field in (({"limit": 0}, "limit"), ({"limit": 5000}, "limit"), ({"offset": -1}, "offset"),
                          ({"limit": 5, "sort": "password"}, "sort"), ({"limit": 5, "order": "up"}, "order"),
                          ({"limit": 5, "selector": "region"}, "selector")):
        r = c.get("/v1/devices", params=params)
        assert r.status_code in (400, 422), (params, r.text)
        body = r.json()
        assert body["field"].split(".")[-1] == field and body["error"], body
    r = c.get("/v1/devices", params={"limit": 5}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
