"""The inference fast path (cloud_hub/api/fastpath.py) answers exactly as the full FastAPI stack:
the same requests — good and hostile — sent to one real server with the fast path on and off give
the same status, content type, body (less the per-request id and timestamp) and headers; requests
another layer must see (cookie, origin, content-encoding, NUL) take the full stack."""

from __future__ import annotations

import json
import socket

import httpx
import numpy as np
import pytest

from cloud_hub.app import create_app
from tests.cloud_hub.hub_support import live_server, row_of

CLIENT, VIEWER = "client-key-0123456789abcdef", "viewer-key-0123456789abcdef"
LIMIT = 64 * 1024


@pytest.fixture
def served(make_hub, cancer_bundle):
    hub = make_hub(client_keys=[CLIENT], viewer_keys=[VIEWER], max_body_bytes=LIMIT)
    hub.registry.push(cancer_bundle, aliases=["champion"])
    app = create_app(hub)
    with live_server(app) as url:
        yield url, app, hub


def _cases(row: dict, x0: list[float]) -> list[tuple[str, str, dict, bytes]]:
    auth = {"Authorization": f"Bearer {CLIENT}", "Content-Type": "application/json"}
    v2 = {"inputs": [{"name": "X", "shape": [1, len(x0)], "datatype": "FP32", "data": x0}]}
    binary_header = json.dumps({"inputs": [{"name": "X", "shape": [1, len(x0)], "datatype": "FP32",
                                            "parameters": {"binary_data_size": 4 * len(x0)}}],
                                "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    binary = binary_header + np.asarray(x0, dtype=np.float32).tobytes()
    j = lambda d: json.dumps(d).encode()  # noqa: E731
    return [
        ("v1 one row", "/v1/models/cancer/predict", auth, j(row)),
        ("v1 rows + entity key", "/v1/models/cancer@champion/predict", auth,
         j({"rows": [{**row, "cid": "C-1"}, {**row, "cid": "C-2"}], "entity_key": "cid"})),
        ("v1 entity key in the query", "/v1/models/cancer:1.0.0/predict?entity_key=cid", auth, j({**row, "cid": 7})),
        ("v1 X-API-Key", "/v1/models/cancer/predict", {"X-API-Key": CLIENT}, j(row)),
        ("v1 sane request id", "/v1/models/cancer/predict", {**auth, "X-Request-ID": "abc-123"}, j(row)),
        ("v1 insane request id", "/v1/models/cancer/predict", {**auth, "X-Request-ID": "a b"}, j(row)),
        ("v1 no key", "/v1/models/cancer/predict", {}, j(row)),
        ("v1 wrong key", "/v1/models/cancer/predict", {"Authorization": "Bearer nope"}, j(row)),
        ("v1 basic auth", "/v1/models/cancer/predict", {"Authorization": "Basic eDp5"}, j(row)),
        ("v1 viewer key", "/v1/models/cancer/predict", {"Authorization": f"Bearer {VIEWER}"}, j(row)),
        ("v1 not JSON", "/v1/models/cancer/predict", auth, b"{nope"),
        ("v1 empty body", "/v1/models/cancer/predict", auth, b""),
        ("v1 list body", "/v1/models/cancer/predict", auth, b"[1, 2]"),
        ("v1 unknown model", "/v1/models/ghost/predict", auth, j(row)),
        ("v1 unknown alias", "/v1/models/cancer@nope/predict", auth, j(row)),
        ("v1 float32 overflow", "/v1/models/cancer/predict", auth, j({**row, next(iter(row)): 1e39})),
        ("v1 NaN literal", "/v1/models/cancer/predict", auth, j(row).replace(b"}", b', "x": NaN}')),
        ("v1 missing feature", "/v1/models/cancer/predict", auth, j(dict(list(row.items())[1:]))),
        ("v1 unknown field", "/v1/models/cancer/predict", auth, j({"rows": [row], "extra": 1})),
        ("v2 JSON", "/v2/models/cancer/infer", auth, j(v2)),
        ("v2 version", "/v2/models/cancer/versions/1.0.0/infer", auth, j({**v2, "id": "r-1"})),
        ("v2 alias and version", "/v2/models/cancer@champion/versions/1.0.0/infer", auth, j(v2)),
        ("v2 unknown version", "/v2/models/cancer/versions/9.9.9/infer", auth, j(v2)),
        ("v2 binary", "/v2/models/cancer/infer", {**auth, "Inference-Header-Content-Length": str(len(binary_header)),
                                                  "Content-Type": "application/octet-stream"}, binary),
        ("v2 header length too long", "/v2/models/cancer/infer",
         {**auth, "Inference-Header-Content-Length": str(len(binary) + 1)}, binary),
        ("v2 bad shape", "/v2/models/cancer/infer", auth,
         j({"inputs": [{**v2["inputs"][0], "shape": [4294967296, 4294967296]}]})),
        ("v2 inf", "/v2/models/cancer/infer", auth,
         j({"inputs": [{**v2["inputs"][0], "data": [1e39] + x0[1:]}]})),
        ("v2 no key", "/v2/models/cancer/infer", {}, j(v2)),
        ("body over the limit", "/v1/models/cancer/predict", auth, b" " * (LIMIT + 1)),
    ]


def _norm(r: httpx.Response) -> tuple:
    ctype = r.headers.get("content-type", "")
    body: object = r.content
    if ctype.startswith("application/json"):
        body = r.json()
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k not in ("request_id", "timestamp")}
    rid = r.headers.get("x-request-id")
    return (r.status_code, ctype, r.headers.get("inference-header-content-length"), body, rid is not None)


def test_fast_path_answers_as_the_full_stack(served, cancer_data):
    url, app, hub = served
    row = row_of(cancer_data)
    x0 = [float(v) for v in cancer_data[0][0]]
    fast = app.fast_path
    assert fast is not None
    answers = {}
    for mode in ("fast", "full"):
        app.fast_path = fast if mode == "fast" else None
        with httpx.Client(base_url=url, timeout=30) as c:
            for name, path, headers, body in _cases(row, x0):
                r = c.post(path, headers=headers, content=body)
                answers.setdefault(name, {})[mode] = r
    app.fast_path = fast
    for name, got in answers.items():
        assert _norm(got["fast"]) == _norm(got["full"]), name
    status = {name: got["fast"].status_code for name, got in answers.items()}
    assert status["v1 one row"] == 200 and status["v2 binary"] == 200 and status["v2 version"] == 200
    assert status["v1 no key"] == 401 and status["v1 viewer key"] == 403 and status["body over the limit"] == 413
    assert status["v1 float32 overflow"] == 422 and status["v2 inf"] == 422 and status["v2 bad shape"] in (400, 422)
    assert answers["v1 sane request id"]["fast"].headers["x-request-id"] == "abc-123"
    assert answers["v1 insane request id"]["fast"].headers["x-request-id"] != "a b"
    keys = [p["cid"] for p in answers["v1 rows + entity key"]["fast"].json()["predictions"]]
    assert keys == ["C-1", "C-2"]
    assert answers["v1 entity key in the query"]["fast"].json()["predictions"][0]["cid"] == 7


def test_fast_path_counts_requests_and_logs_them(served, cancer_data):
    url, _app, hub = served
    before = _count(hub, "200"), _count(hub, "401")
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.post("/v1/models/cancer/predict", json=row_of(cancer_data),
                      headers={"Authorization": f"Bearer {CLIENT}"}).status_code == 200
        assert c.post("/v1/models/cancer/predict", json=row_of(cancer_data)).status_code == 401
    assert (_count(hub, "200"), _count(hub, "401")) == (before[0] + 1, before[1] + 1)


def _count(hub, status: str) -> float:
    from prometheus_client import generate_latest

    text = generate_latest(hub.metrics.registry).decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("hub_http_requests_total{") and f'status="{status}"' in line and 'method="POST"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_chunked_body_over_the_limit_is_413(served, cancer_data):
    url, _app, _hub = served

    def chunks():
        for _ in range(LIMIT // 1024 + 2):
            yield b" " * 1024

    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/models/cancer/predict", content=chunks(), headers={"Authorization": f"Bearer {CLIENT}"})
    assert r.status_code == 413 and r.json()["field"] == "body"


def test_bad_content_length_is_400(served):
    url, _app, _hub = served
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/models/cancer/predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n"
                  b"Authorization: Bearer " + CLIENT.encode() + b"\r\n\r\n")
        data = s.recv(65536)
    assert data.split(b"\r\n", 1)[0].split()[1] in (b"400",)


@pytest.mark.parametrize("headers,query,status", [
    ({"Cookie": "edgefleet_key=x"}, "", 200),  # a key header is sent: the cookie is not used
    ({"Origin": "http://elsewhere.example"}, "", 403),  # cross-site: the CSRF layer
    ({"Content-Encoding": "br"}, "", 415),  # the guard
    ({}, "?entity_key=%00", 422),  # the guard
])
def test_requests_other_layers_must_see_take_the_full_stack(served, cancer_data, headers, query, status):
    url, app, _hub = served
    scope = {"type": "http", "method": "POST", "path": "/v1/models/cancer/predict",
             "raw_path": b"/v1/models/cancer/predict", "query_string": query[1:].encode(),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    assert app.fast_path.match(scope) is None
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/models/cancer/predict" + query, json=row_of(cancer_data),
                   headers={"Authorization": f"Bearer {CLIENT}", **headers})
    assert r.status_code == status, r.text
    assert status == 200 or r.json()["error"]


def test_key_table_follows_each_hubs_settings(hub_settings):
    """The cached key table is compared by value: two hubs in one process (tests, tools) with
    different keys never answer with each other's table."""
    from cloud_hub.api.deps import AuthError, role_for

    a = hub_settings(client_keys=["key-a-0123456789abcdef"])
    b = hub_settings(admin_keys=["key-b-0123456789abcdef"])
    for _ in range(3):
        assert role_for(a, "key-a-0123456789abcdef", None, lambda: None) == "client"
        with pytest.raises(AuthError):
            role_for(a, "key-b-0123456789abcdef", None, lambda: None)
        assert role_for(b, None, "Bearer key-b-0123456789abcdef", lambda: None) == "admin"
        with pytest.raises(AuthError):
            role_for(b, "key-a-0123456789abcdef", None, lambda: None)
