"""Kafka (a real Kafka-protocol broker, Tansu): SIGKILL loses nothing, dead letters, keys kept,
two workers share a group, offsets committed only for published results, managed streams.

One broker for the module (see kafka_support); each test uses its own topics and group.
"""

from __future__ import annotations

import json
import signal

import pytest

from cloud_hub.stream.transport import default_dead_letter, parse_url
from edge_runtime.errors import ValidationError
from tests.stream.conftest import messages, wait_until, worker_cmd
from tests.stream.kafka_support import (
    GROUP_OPTS,
    committed,
    create_topics,
    produce,
    readers,  # noqa: F401  (fixture)
    tansu,  # noqa: F401  (module-scoped broker fixture)
    topics,
)
from tests.stream.test_stream_nats import _check_outputs

BAD = {5: "json", 17: "missing", 33: "string", 48: "array"}


@pytest.fixture(autouse=True)
def _trust_test_key(monkeypatch, keypair):
    """Worker subprocesses verify the test bundle's signature against the test key."""
    monkeypatch.setenv("HUB_TRUSTED_KEYS", json.dumps([str(keypair[1])]))


def _records(cancer_data, n: int, start: int = 0, bad: dict | None = None) -> list:
    """Messages keyed ``k<i>`` on the record; every 10th carries its key only on the record."""
    out = []
    for i, body in enumerate(messages(cancer_data, n, start, bad), start):
        if i % 10 == 0 and i not in (bad or {}):
            obj = json.loads(body)
            del obj["key"]
            body = json.dumps(obj).encode()
        out.append((f"k{i}".encode(), body))
    return out


def _stopped_stats(log_path) -> dict:
    for line in reversed(log_path.read_text().splitlines()):
        if '"event": "stopped"' in line:
            return json.loads(line[line.index("{") :])
    raise AssertionError(f"no stopped event in {log_path}")


# ---- no broker needed ----------------------------------------------------------------------
def test_kafka_urls_and_options(monkeypatch):
    ep = parse_url(
        "kafka://k1:9093,k2/scores.in?group=g&client_id=c&security_protocol=SSL", "source"
    )
    assert (ep.scheme, ep.host, ep.port, ep.target) == ("kafka", "k1", 9093, "scores.in")
    assert ep.options["bootstrap_servers"] == "k1:9093,k2:9092" and ep.options["group"] == "g"
    assert default_dead_letter("kafka://k:9092/out?group=g") == (
        "kafka://k:9092/out.dead-letter?group=g"
    )
    hostile = {
        "kafka://k:9092/": "source",
        "kafka:///t": "source",
        "kafka://k:99999/t": "source",
        "kafka://k:9092/a/b": "source",
        "kafka://k:9092/t?acks=0": "source.acks",
        "kafka://k:9092/t?security_protocol=TLS": "source.security_protocol",
        "kafka://k:9092/t?partitions=0": "source.partitions",
        "kafka://k:9092/t?ack_wait=soon": "source.ack_wait",
        "kafka://k:9092/t?sasl_password_env=EDGEFLEET_NOT_SET_X": "source.sasl_password_env",
    }
    for url, field in hostile.items():
        with pytest.raises(ValidationError) as e:
            parse_url(url, "source")
        assert e.value.field == field, url
    monkeypatch.setenv("KAFKA_SECRET_T", "s3cret")
    from cloud_hub.stream.kafka import _client_config

    ep = parse_url(
        "kafka://k/t?security_protocol=SASL_SSL&sasl_mechanism=SCRAM-SHA-512"
        "&sasl_username=u&sasl_password_env=KAFKA_SECRET_T&ssl_ca_location=/ca.pem",
        "sink",
    )
    cfg = _client_config(ep, "x")
    assert cfg["sasl.password"] == "s3cret" and cfg["sasl.mechanism"] == "SCRAM-SHA-512"
    assert cfg["security.protocol"] == "SASL_SSL" and cfg["ssl.ca.location"] == "/ca.pem"


def test_unreachable_broker_is_one_clear_line(cancer_bundle):
    import subprocess

    from tests.conftest import free_port

    url = f"kafka://127.0.0.1:{free_port()}/in?connect_timeout=1"
    r = subprocess.run(
        [*worker_cmd(cancer_bundle, url, url.replace("/in", "/out"), url.replace("/in", "/d"))],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "cannot reach Kafka at 127.0.0.1:" in r.stderr
    assert "Traceback" not in r.stderr


# ---- with the broker ------------------------------------------------------------------------
@pytest.mark.slow
def test_kafka_kill_restart_no_loss_keys_and_dead_letters(
    tansu,  # noqa: F811
    readers,  # noqa: F811
    workers,
    cancer_bundle,
    cancer_data,
):
    t = topics()
    b = tansu.bootstrap
    create_topics(b, [t["in"], t["out"], t["dlq"]])
    src = tansu.url(t["in"]) + "?" + GROUP_OPTS + "&ack_wait=5"
    cmd = worker_cmd(
        cancer_bundle,
        src,
        tansu.url(t["out"]),
        tansu.url(t["dlq"]),
        "--group",
        t["group"],
        "--batch-size",
        "4",
        "--max-wait-ms",
        "0",
    )
    first, more = 2000, 300
    produce(b, t["in"], _records(cancer_data, first, bad=BAD))
    w = workers(cmd)
    w.wait_ready()
    out_r, dlq_r, in_r = (readers(b, t[k]) for k in ("out", "dlq", "in"))
    wait_until(lambda: out_r.count() >= 40, 60, "first outputs")
    w.kill()  # SIGKILL mid-stream: some batches published, some unacknowledged, some unread
    done_at_kill = out_r.count()
    produce(b, t["in"], _records(cancer_data, more, start=first))  # while no worker runs
    w2 = workers(cmd)
    w2.wait_ready()
    total_valid = first + more - len(BAD)

    def keys_out() -> set:
        return {json.loads(v)["key"] for _, v in out_r.poll()}

    wait_until(lambda: len(keys_out()) >= total_valid, 90, "all outputs after restart")
    out = out_r.poll()
    assert done_at_kill < total_valid
    for key, value in out:  # the record key is kept; a body without key takes it
        assert json.loads(value)["key"] == key.decode()
    _check_outputs([json.loads(v) for _, v in out], first + more, BAD, cancer_bundle, cancer_data)

    wait_until(lambda: dlq_r.count() >= len(BAD), 30, "dead letters")
    dead = dlq_r.poll()
    assert {k.decode() for k, _ in dead} == {f"k{i}" for i in BAD}
    by_key = {k.decode(): json.loads(v) for k, v in dead}
    names = cancer_data[2]
    assert by_key["k5"]["field"] == "message" and by_key["k5"]["payload"] == "{oops"
    assert by_key["k17"]["field"] == names[3] and "missing" in by_key["k17"]["reason"]
    assert by_key["k33"]["field"] == names[0] and "expected a number" in by_key["k33"]["reason"]
    for d in by_key.values():
        assert d["code"] == "invalid_input" and d["key"] in by_key and d["source"] == src

    # a clean stop commits everything that was published, and nothing beyond the input's end
    w2.proc.send_signal(signal.SIGTERM)
    w2.proc.wait(timeout=30)
    assert len(in_r.poll()) == first + more
    assert committed(b, t["group"], t["in"]) == in_r.ends


@pytest.mark.slow
def test_two_workers_share_a_group(tansu, readers, cancer_bundle, cancer_data):  # noqa: F811
    """A second worker joins mid-stream (a rebalance while the first is scoring): nothing is
    skipped, repeats are allowed (at-least-once) and score the same; then both share the topic.
    Workers run in threads here, to see their assignments."""
    import threading

    from cloud_hub.stream.service import build_worker
    from cloud_hub.stream.worker import StreamOptions
    from edge_runtime.model import Model

    t = topics()
    b = tansu.bootstrap
    create_topics(b, [t["in"], t["out"], t["dlq"]])
    out_r = readers(b, t["out"])
    model = Model.load(cancer_bundle)
    pair, threads = [], []

    def start(name: str) -> None:
        w = build_worker(
            model,
            tansu.url(t["in"]) + "?" + GROUP_OPTS,
            tansu.url(t["out"]),
            tansu.url(t["dlq"]),
            StreamOptions(batch_size=8, max_wait_ms=0),
            group=t["group"],
            name=name,
        )
        pair.append(w)
        threads.append(threading.Thread(target=w.run, daemon=True))
        threads[-1].start()

    def parts(w) -> list[int]:
        return sorted(w.source.assigned)

    n = 1500
    try:
        start("a")
        produce(b, t["in"], _records(cancer_data, n))
        wait_until(lambda: out_r.count() >= 50, 60, "first outputs")
        start("b")  # joins while "a" is scoring: partitions are revoked and reassigned
        wait_until(
            lambda: (
                all(parts(w) for w in pair) and sorted(parts(pair[0]) + parts(pair[1])) == [0, 1, 2]
            ),
            60,
            "both workers assigned partitions",
        )
        produce(b, t["in"], _records(cancer_data, n, start=n))
        want = {f"k{i}" for i in range(2 * n)}
        wait_until(
            lambda: {json.loads(v)["key"] for _, v in out_r.poll()} >= want, 60, "all outputs"
        )
    finally:
        for w in pair:
            w.stop()
        for th in threads:
            th.join(timeout=30)
        for w in pair:
            w.close()
    assert pair[0].source.rebalances >= 2  # assigned, revoked, assigned again
    assert all(w.stats.published > 0 for w in pair)  # both scored a share
    scores: dict[str, float] = {}
    for _, v in out_r.poll():
        o = json.loads(v)
        assert scores.setdefault(o["key"], o["score"]) == o["score"]  # a repeat, same answer
    assert set(scores) == want  # nothing skipped
    in_r = readers(b, t["in"])
    assert len(in_r.poll()) == 2 * n
    assert committed(b, t["group"], t["in"]) == in_r.ends  # closed: all published, committed


@pytest.mark.slow
def test_managed_kafka_stream(tmp_path, keypair, cancer_bundle, cancer_data, tansu, readers):  # noqa: F811
    from fastapi.testclient import TestClient

    from cloud_hub.app import create_app
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings

    t = topics("m")
    b = tansu.bootstrap
    create_topics(b, [t["in"], t["out"], t["out"] + ".dead-letter"])
    out_r, dlq_r = readers(b, t["out"]), readers(b, t["out"] + ".dead-letter")
    hub = Hub(HubSettings(data_dir=tmp_path / "hub", trusted_keys=[keypair[1]]))
    hub.registry.push(cancer_bundle)
    body = {
        "name": "kafka-scorer",
        "model": "cancer",
        "source": tansu.url(t["in"]) + "?" + GROUP_OPTS,
        "sink": tansu.url(t["out"]),
        "batch_size": 32,
    }
    x, _, names = cancer_data
    try:
        with TestClient(create_app(hub)) as client:
            r = client.post("/v1/streams", json=body)
            assert r.status_code == 201, r.text
            assert r.json()["status"] == "running", r.json()
            assert r.json()["dead_letter"] == tansu.url(t["out"]) + ".dead-letter"
            bad = dict(body, name="bad", source=tansu.url(t["in"]) + "?acks=0")
            r = client.post("/v1/streams", json=bad)
            assert r.status_code == 422 and r.json()["field"] == "source.acks"
            produce(b, t["in"], _records(cancer_data, 60, bad={7: "json"}))
            wait_until(lambda: out_r.count() >= 59, 60, "managed outputs")
            outs = {json.loads(v)["key"]: json.loads(v) for _, v in out_r.poll()}
            idx = [i for i in range(60) if i != 7]
            rows = [{k: float(v) for k, v in zip(names, x[i])} for i in idx]
            pred = client.post("/v1/models/cancer/predict", json={"rows": rows})
            assert pred.status_code == 200, pred.text
            for i, p in zip(idx, pred.json()["predictions"]):
                assert outs[f"k{i}"]["probability"] == pytest.approx(p["probability"], abs=1e-9)
                assert outs[f"k{i}"]["label"] == p["label"]
            wait_until(lambda: dlq_r.count() >= 1, 30, "dead letter")
            sid = client.get("/v1/streams").json()["streams"][0]["id"]
            st = client.post(f"/v1/streams/{sid}/stop").json()
            assert st["status"] == "stopped" and st["stats"]["published"] == 59
    finally:
        hub.close()
