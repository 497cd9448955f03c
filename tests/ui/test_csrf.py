"""CSRF (issue 13): the session cookie counts only without a key header, and its CSRF
token is bound to the session (an HMAC the attacker cannot choose)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

ADMIN = "admin-key-0123456789abcdef"
VIEWER = "viewer-key-0123456789abcdef"


@pytest.fixture
def client(tmp_path, keypair):
    from cloud_hub.app import create_app
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings

    hub = Hub(HubSettings(data_dir=tmp_path / "hub", trusted_keys=[keypair[1]], admin_keys=[ADMIN],
                          viewer_keys=[VIEWER]))
    with TestClient(create_app(hub), raise_server_exceptions=False) as c:
        yield c
    hub.close()


def _act(c: TestClient, **kw):
    """A state-changing admin call; 404 (unknown model) means it was authorised."""
    return c.put("/v1/models/nosuch/aliases/champion", json={"version": "1"}, **kw)


def test_stray_authorization_header_does_not_fall_back_to_the_cookie(client):
    client.cookies.set("edgefleet_key", ADMIN)
    for hdr in ({"Authorization": "Basic Z2FyYmFnZQ=="}, {"Authorization": "Bearer "},
                {"X-API-Key": ""}, {"X-API-Key": "garbage"}):
        r = _act(client, headers=hdr)
        assert r.status_code == 401, (hdr, r.text)


def test_attacker_chosen_token_in_cookie_and_header_is_refused(client):
    client.cookies.set("edgefleet_key", ADMIN)
    client.cookies.set("edgefleet_csrf", "attacker")
    r = _act(client, headers={"X-CSRF-Token": "attacker"})
    assert r.status_code == 403 and r.json()["code"] == "csrf"
    assert _act(client).status_code == 403


def test_login_token_is_bound_to_the_session(client):
    r = client.post("/ui/login", json={"api_key": ADMIN})
    assert r.status_code == 200
    token = client.cookies.get("edgefleet_csrf")
    assert token and len(token) == 64
    assert _act(client, headers={"X-CSRF-Token": token}).status_code == 404  # authorised
    # the same token does not work for another session
    client.cookies.set("edgefleet_key", VIEWER)
    r = _act(client, headers={"X-CSRF-Token": token})
    assert r.status_code == 403 and r.json()["code"] == "csrf"
    # API clients with a key header need no CSRF token
    client.cookies.clear()
    assert _act(client, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 404


def test_whoami_repairs_a_stale_token(client):
    client.cookies.set("edgefleet_key", ADMIN)
    client.cookies.set("edgefleet_csrf", "stale")
    r = client.get("/ui/data/whoami")
    assert r.status_code == 200 and r.json()["role"] == "admin"
    token = r.cookies.get("edgefleet_csrf")
    assert token and token != "stale"
    client.cookies.set("edgefleet_csrf", token)
    assert _act(client, headers={"X-CSRF-Token": token}).status_code == 404
