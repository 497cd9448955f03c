"""HubClientError keeps the hub's own answer (status, code, field), so the CLI line names it."""

from __future__ import annotations

import pytest


def test_hub_client_error_carries_the_hub_answer(server):
    from cloud_hub.client import HubClient, HubClientError
    from edge_runtime.errors import error_line

    url, _ = server
    client = HubClient(url)
    try:
        with pytest.raises(HubClientError) as exc:
            client.get("/v1/models/nope/versions")
        err = exc.value
        assert (err.code, err.field, err.status_code) == ("not_found", "model", 404)
        assert error_line("cloud-hub", err) == (
            "cloud-hub: error: hub answered 404: unknown model nope (not_found, field model)")
    finally:
        client.close()
    down = HubClient("http://127.0.0.1:9", timeout=2)
    try:
        with pytest.raises(HubClientError) as exc:
            down.get("/v1/models")
        assert (exc.value.code, exc.value.status_code) == ("hub_unreachable", 503)
    finally:
        down.close()
