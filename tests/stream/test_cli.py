"""`cloud-hub stream` help and clean one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cloud_hub.stream.transport import default_dead_letter, parse_url
from edge_runtime import ValidationError


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "cloud_hub.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_help_and_bad_url(cancer_bundle):
    r = _cli("stream", "--help")
    assert r.returncode == 0 and "--dead-letter" in r.stdout and "JetStream" in r.stdout
    r = _cli(
        "stream",
        "--source",
        "amqp://h/t",
        "--sink",
        "mqtt://127.0.0.1:1883/o",
        "--model",
        str(cancer_bundle),
    )
    assert r.returncode == 1 and "scheme must be mqtt://, nats:// or kafka://" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0


def test_urls():
    ep = parse_url("mqtt://10.0.0.1:1884/a/b?group=g", "source")
    assert (ep.host, ep.port, ep.target, ep.options) == ("10.0.0.1", 1884, "a/b", {"group": "g"})
    assert parse_url("nats://h/scores.in", "source").port == 4222
    assert default_dead_letter("nats://h:4222/out") == "nats://h:4222/out.dead-letter"
    assert default_dead_letter("mqtt://h:1883/a/out") == "mqtt://h:1883/a/out/dead-letter"
    with pytest.raises(ValidationError) as e:
        parse_url("mqtt://h:1883/", "sink")
    assert e.value.field == "sink"


def test_poison_message_is_dead_lettered_not_blocking(cancer_bundle, cancer_data):
    """A message that breaks scoring itself goes to the dead letters; the others are scored."""
    import json

    from cloud_hub.stream.transport import InMessage
    from cloud_hub.stream.worker import StreamWorker
    from edge_runtime import Model
    from tests.stream.conftest import messages

    class Url:  # process() only reads .url of the transports
        url = "test://in"

    model = Model.load(cancer_bundle)
    worker = StreamWorker(model, Url(), Url(), Url())
    real = model.score_array
    msgs = [InMessage(m) for m in messages(cancer_data, 5)]

    def flaky(x):  # the engine fails on batches containing a huge value
        if (x > 1e30).any():
            raise RuntimeError("engine exploded")
        return real(x)

    model.score_array = flaky
    poison = json.loads(msgs[2].data)
    poison["features"][cancer_data[2][0]] = 1e38
    msgs[2] = InMessage(json.dumps(poison).encode())
    out, dead = worker._process_safely(msgs)
    assert sorted(json.loads(o)["key"] for o in out) == ["k0", "k1", "k3", "k4"]
    assert len(dead) == 1 and "engine exploded" in json.loads(dead[0])["reason"]
