"""The local HTTP endpoint on a real socket (127.0.0.1, free port) and a Unix socket."""

from __future__ import annotations

import http.client
import json
import socket

import pytest

from edge_runtime import Model
from edge_runtime.daemon import Daemon
from edge_runtime.settings import load_settings


@pytest.fixture(scope="module")
def sock_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("sock")


@pytest.fixture(scope="module")
def daemon(cancer_bundle, keypair, sock_dir):
    """One server for the module: requests do not change its state."""
    settings = load_settings(local_api={"port": 0, "unix_socket": str(sock_dir / "edge.sock"),
                                        "max_body_bytes": 64 * 1024, "max_rows": 20},
                             store={"public_key": str(keypair[1])})
    d = Daemon(settings, bundle=cancer_bundle).start()
    yield d
    d.stop()


@pytest.fixture
def conn(daemon):
    c = http.client.HTTPConnection(daemon.api.host, daemon.api.port, timeout=10)
    yield c
    c.close()


def call(conn, method, path, body=None, headers=None):
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    conn.request(method, path, body, headers or {"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def test_predict_rows_match_the_in_process_model(conn, cancer_bundle, rows):
    status, body = call(conn, "POST", "/predict", {"rows": rows})
    assert status == 200
    model = Model.load(cancer_bundle)
    assert body["model"] == {"name": "cancer", "version": "1.0.0", "sha256": model.digest}
    assert body["predictions"] == model.predict(rows)
    assert set(body["predictions"][0]) == {"probability", "label", "risk_level"}


def test_predict_single_object_and_bare_list(conn, rows):
    s1, one = call(conn, "POST", "/predict", rows[0])
    s2, many = call(conn, "POST", "/predict", rows[:2])
    assert s1 == s2 == 200
    assert len(one["predictions"]) == 1 and len(many["predictions"]) == 2
    assert one["predictions"][0] == many["predictions"][0]


def test_keep_alive_reuses_one_connection(conn, rows):
    call(conn, "POST", "/predict", {"rows": rows[:1]})
    sock = conn.sock
    for _ in range(5):
        assert call(conn, "POST", "/predict", {"rows": rows[:1]})[0] == 200
    assert conn.sock is sock


def test_health_and_models(conn, cancer_bundle):
    status, body = call(conn, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["model"]["name"] == "cancer"
    status, body = call(conn, "GET", "/models")
    assert status == 200
    assert body["models"]["active"]["version"] == "1.0.0"
    assert body["models"]["active"]["features"][0] == "mean_radius"


def _bad(rows, key, value):
    bad = [dict(r) for r in rows]
    if value is KeyError:
        del bad[0][key]
    else:
        bad[0][key] = value
    return bad


@pytest.mark.parametrize("make,status,code,field", [
    (lambda r: b"{not json", 400, "invalid_json", "body"),
    (lambda r: b"\xff\xfe", 400, "invalid_json", "body"),
    (lambda r: b"", 400, "invalid_json", "body"),
    (lambda r: {"rows": _bad(r, "mean_radius", KeyError)}, 422, "invalid_input", "rows[0].mean_radius"),
    (lambda r: {"rows": _bad(r, "colour", 1.0)}, 422, "invalid_input", "rows[0].colour"),
    (lambda r: {"rows": _bad(r, "mean_area", "big")}, 422, "invalid_input", "rows[0].mean_area"),
    (lambda r: {"rows": _bad(r, "mean_area", True)}, 422, "invalid_input", "rows[0].mean_area"),
    (lambda r: {"rows": _bad(r, "mean_area", None)}, 422, "invalid_input", "rows[0].mean_area"),
    (lambda r: {"rows": _bad(r, "mean_area", [1, 2])}, 422, "invalid_input", "rows[0].mean_area"),
    (lambda r: json.dumps({"rows": _bad(r, "mean_area", float("nan"))}), 422, "invalid_input",
     "rows[0].mean_area"),
    # ±Infinity and an integer too long for any dtype: refused, naming the feature
    (lambda r: json.dumps({"rows": _bad(r, "mean_area", float("inf"))}), 422, "invalid_input",
     "rows[0].mean_area"),
    (lambda r: json.dumps({"rows": _bad(r, "mean_area", float("-inf"))}), 422, "invalid_input",
     "rows[0].mean_area"),
    (lambda r: json.dumps({"rows": _bad(r, "mean_area", 10**400)}), 422, "invalid_input",
     "rows[0].mean_area"),
    (lambda r: json.dumps({"rows": _bad(r, "mean_area", 12345)}).replace("12345", "9" * 5000),
     422, "invalid_input", "rows[0].mean_area"),
    # nesting past the depth limit: 400 before any parsing (no RecursionError, no traceback)
    (lambda r: b"[" * 5000 + b"]" * 5000, 400, "invalid_json", "body"),
    (lambda r: b'{"rows": ' + b"[" * 40 + b"]" * 40 + b"}", 400, "invalid_json", "body"),
    # valid JSON, but inf once in float32: refused like NaN, naming the feature
    (lambda r: {"rows": _bad(r, "mean_area", 1e39)}, 422, "invalid_input", "rows[0].mean_area"),
    (lambda r: {"rows": []}, 422, "invalid_input", "rows"),
    (lambda r: {"rows": 3}, 422, "invalid_input", "rows"),
    (lambda r: {"rows": [1, 2]}, 422, "invalid_input", "rows[0]"),
    (lambda r: {"rows": [r[0], "x"]}, 422, "invalid_input", "rows[1]"),
    (lambda r: "42", 422, "invalid_input", "body"),
    (lambda r: {"rows": r, "slot": "x"}, 422, "invalid_input", "slot"),
    (lambda r: {"rows": r * 5}, 413, "payload_too_large", "rows"),
    (lambda r: {"tensors": {"x": [[1.0] * 29]}}, 422, "invalid_input", "tensors.x"),
])
def test_bad_input_gets_a_clear_4xx(conn, rows, make, status, code, field):
    body = make(rows)
    got_status, got = call(conn, "POST", "/predict", body)
    assert (got_status, got["code"], got.get("field")) == (status, code, field), got
    assert got["error"]
    # the server is still fine after every bad request
    assert call(conn, "POST", "/predict", {"rows": rows[:1]})[0] == 200


def test_oversize_body_is_413_without_reading_it(daemon, rows):
    c = http.client.HTTPConnection(daemon.api.host, daemon.api.port, timeout=10)
    big = json.dumps({"rows": rows * 200}).encode()
    assert len(big) > 64 * 1024
    c.putrequest("POST", "/predict")
    c.putheader("Content-Type", "application/json")
    c.putheader("Content-Length", str(len(big)))
    c.endheaders()
    r = c.getresponse()
    body = json.loads(r.read())
    assert r.status == 413 and body["code"] == "payload_too_large" and body["field"] == "body"
    assert r.getheader("Connection") == "close"
    c.close()


def test_transport_errors(conn, daemon):
    assert call(conn, "GET", "/nope")[0] == 404
    assert call(conn, "GET", "/predict") == (405, {"error": "use POST /predict",
                                                   "code": "method_not_allowed", "field": "method"})
    assert call(conn, "DELETE", "/models")[0] == 405
    status, body = call(conn, "POST", "/predict", b"a=1",
                        {"Content-Type": "application/x-www-form-urlencoded"})
    assert (status, body["field"]) == (415, "Content-Type")
    # no Content-Length (raw socket: http.client always adds one)
    with socket.create_connection((daemon.api.host, daemon.api.port), timeout=10) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"2\r\n{}\r\n0\r\n\r\n")
        data = s.recv(4096).decode()
    assert data.startswith("HTTP/1.1 411") and '"field":"Content-Length"' in data


def test_unix_socket(daemon, rows, sock_dir):
    path = str(sock_dir / "edge.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        body = json.dumps({"rows": rows[:2]}).encode()
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                  + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(json.loads(payload)["predictions"]) == 2


def test_store_backed_daemon_without_a_model_answers_503(tmp_path, keypair, cancer_bundle, rows):
    settings = load_settings(local_api={"port": 0},
                             store={"dir": str(tmp_path / "store"), "public_key": str(keypair[1]),
                                    "latency_runs": 20})
    with Daemon(settings) as d:
        c = http.client.HTTPConnection(d.api.host, d.api.port, timeout=10)
        assert call(c, "GET", "/health") [0] == 503
        status, body = call(c, "POST", "/predict", {"rows": rows})
        assert (status, body["code"]) == (503, "unavailable")
        d.store.install(cancer_bundle)
        status, body = call(c, "POST", "/predict", {"rows": rows})
        assert status == 200 and body["model"]["version"] == "1.0.0"
        assert call(c, "GET", "/models")[1]["models"]["previous"] is None
        c.close()


def _raw(daemon, data: bytes) -> bytes:
    with socket.create_connection((daemon.api.host, daemon.api.port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("request_bytes,status", [
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"GET /health HTTP/2.0\r\n\r\n", b"400"),
    (b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120))
     + b"\r\n", b"431"),
    (b"GET /health HTTP/1.1\r\n\r\n", b"400"),  # HTTP/1.1 without Host (RFC 9112)
])
def test_malformed_requests_get_a_json_error_and_close(daemon, request_bytes, status):
    out = _raw(daemon, request_bytes)  # returns once the server closes the connection
    assert out.startswith(b"HTTP/1.1 " + status)
    assert b'"code"' in out


def test_http10_and_connection_close_end_the_connection(daemon, rows):
    out = _raw(daemon, b"GET /health HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and b"Connection: close" in out
    body = json.dumps(rows[0]).encode()
    out = _raw(daemon, b"POST /predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
               b"Connection: close\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200")


def test_concurrent_keep_alive_clients(daemon, rows):
    import threading

    results, errors = [], []

    def client(k):
        c = http.client.HTTPConnection(daemon.api.host, daemon.api.port, timeout=10)
        try:
            for i in range(30):
                status, body = call(c, "POST", "/predict", {"rows": rows[: 1 + (i + k) % 5]})
                results.append((status, len(body["predictions"]), 1 + (i + k) % 5))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(results) == 180
    assert all(s == 200 and n == want for s, n, want in results)


def test_a_body_arriving_in_many_pieces_is_read_whole(daemon, rows):
    body = json.dumps({"rows": rows[:2]}).encode()
    body = body[:-1] + b" " * (60 * 1024 - len(body)) + b"}"  # ~60 KiB: several recv() calls
    with socket.create_connection((daemon.api.host, daemon.api.port), timeout=10) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 4096):
            s.sendall(body[i:i + 4096])
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    head, _, payload = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), out[:200]
    assert len(json.loads(payload)["predictions"]) == 2


@pytest.fixture
def pooled(cancer_bundle, keypair):
    """A daemon with an I/O thread and one pool thread (``workers = 2``)."""
    settings = load_settings(local_api={"port": 0, "workers": 2}, store={"public_key": str(keypair[1])})
    d = Daemon(settings, bundle=cancer_bundle).start()
    yield d
    d.stop()


def test_a_slow_model_runs_in_the_pool_and_health_is_answered_meanwhile(pooled, rows):
    """Once recent /predict calls average over 2 ms, they leave the I/O thread: /health and the
    other clients are served while one runs (the order of the answers proves it)."""
    import threading

    fast = pooled.predict
    gate, entered, done = threading.Event(), threading.Event(), threading.Event()

    def slow(rows_):
        entered.set()
        if not gate.wait(timeout=30):
            raise AssertionError("the test never opened the gate")
        return fast(rows_)

    def sleepy(rows_):
        threading.Event().wait(0.01)  # 10 ms a call: a slow model
        return fast(rows_)

    c = http.client.HTTPConnection(pooled.api.host, pooled.api.port, timeout=30)
    pooled.predict = sleepy
    for _ in range(3):  # learned inline: the next /predict goes to the pool
        assert call(c, "POST", "/predict", {"rows": rows[:1]})[0] == 200
    pooled.predict = slow
    answer = {}

    def client():
        answer["status"], answer["body"] = call(c, "POST", "/predict", {"rows": rows[:2]})
        done.set()

    t = threading.Thread(target=client)
    t.start()
    try:
        assert entered.wait(timeout=10)
        h = http.client.HTTPConnection(pooled.api.host, pooled.api.port, timeout=10)
        status, health = call(h, "GET", "/health")
        h.close()
        assert status == 200 and health["status"] == "ok"
        assert not done.is_set(), "/health was answered while the slow /predict still ran"
    finally:
        gate.set()
        t.join(timeout=30)
    assert answer["status"] == 200 and len(answer["body"]["predictions"]) == 2
    pooled.predict = fast
    c.close()


def test_pipelined_requests_behind_a_pooled_one_are_answered_in_order(pooled, rows):
    """A body over 64 KiB goes to the pool; the requests the client pipelined behind it on the
    same connection are answered after it, in order, on the same connection."""
    big = json.dumps({"rows": rows[:3]}).encode()
    big = big[:-1] + b" " * (70 * 1024 - len(big)) + b"}"
    small = json.dumps({"rows": rows[:1]}).encode()

    def req(body: bytes, close: bool = False) -> bytes:
        return (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + (b"Connection: close\r\n" if close else b"")
                + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    out = _raw(pooled, req(big) + req(small) + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + req(small, True))
    answers = []
    while out:
        head, _, rest = out.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        answers.append((head.split(b" ")[1], json.loads(rest[:length])))
        out = rest[length:]
    assert [s for s, _ in answers] == [b"200"] * 4
    assert [len(b.get("predictions", [])) for _, b in answers] == [3, 1, 0, 1]
    assert answers[2][1]["status"] == "ok"
