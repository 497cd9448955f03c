"""``cloud-hub stream``: run a stream worker in this process (MQTT or NATS JetStream)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stream",
        help="score a message stream (MQTT v5, NATS JetStream or Kafka)",
        description="Consume JSON messages from SOURCE, score them in micro-batches with the "
        "model, publish one result per message to SINK and bad messages with their reason to "
        "the dead-letter destination; acknowledge inputs only after their results are "
        "confirmed (at-least-once). URLs: mqtt://host:1883/topic (QoS 1, shared subscription "
        "$share/GROUP/topic, persistent session), nats://host:4222/subject (JetStream durable "
        "consumer GROUP, explicit ack) or kafka://host:9092[,host2:9092]/topic (consumer group "
        "GROUP; offsets committed after the results are acknowledged; record keys kept). "
        "Options in the URL query: group, client_id, stream, ack_wait, session_expiry, "
        "username, password; Kafka: security_protocol, sasl_mechanism, sasl_username, "
        "sasl_password_env, ssl_ca_location, … (see the README).",
    )
    p.add_argument("--source", required=True, help="input URL (mqtt://…, nats://… or kafka://…)")
    p.add_argument("--sink", required=True, help="output URL (mqtt://…, nats://… or kafka://…)")
    p.add_argument(
        "--model", required=True, help="REF: name, name@alias, name:version (or a bundle path)"
    )
    p.add_argument(
        "--dead-letter",
        default=None,
        help="dead-letter URL (default: SINK/dead-letter, or SINK.dead-letter for NATS)",
    )
    p.add_argument(
        "--group",
        default="cloudhub",
        help="shared-subscription group / JetStream durable consumer (default cloudhub)",
    )
    p.add_argument(
        "--name",
        default="0",
        help="this worker's name in the group: keep it across restarts so an MQTT "
        "worker gets its unacknowledged messages back (client id cloudhub-GROUP-NAME)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="largest micro-batch (default 256)")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="longest wait to fill a micro-batch after its first message (default 5)",
    )
    p.add_argument("--key-field", default="key", help="message field holding the key (default key)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument(
        "--public-key",
        action="append",
        default=[],
        metavar="KEY.pub",
        help="with a bundle path: trust only this key (repeatable); default HUB_TRUSTED_KEYS, "
        "<data_dir>/keys/trusted/*.pub and the hub key. A bundle whose hashes or signature do "
        "not check out is refused before any message is read",
    )
    p.set_defaults(func=cmd_stream)


def cmd_stream(args: argparse.Namespace) -> int:
    """A bundle path is verified and scored as is; a registry REF is followed: before each
    micro-batch the worker asks this process's model cache, which re-reads the registry at
    most every ``resolve_ttl_s`` (1 s), so an alias move reaches the stream within about a
    second plus one micro-batch, without a restart."""
    from pathlib import Path

    from cloud_hub.stream.transport import default_dead_letter, parse_url
    from edge_runtime.errors import ValidationError

    if args.batch_size < 1:
        raise ValidationError("--batch-size must be at least 1", field="batch_size")
    parse_url(args.source, "source")  # bad URLs before any model work
    parse_url(args.sink, "sink")
    parse_url(args.dead_letter or default_dead_letter(args.sink), "dead_letter")
    if Path(args.model).exists():
        from cloud_hub.batch.job import resolve_model

        model = resolve_model(args.model, threads=args.threads, public_keys=args.public_key).model
        return _run(args, model, None)
    from dataclasses import replace

    from cloud_hub.hub import Hub

    hub = Hub()
    try:
        opts = replace(hub.models.options, intra_op_threads=args.threads, inter_op_threads=1)
        hub.models.options = opts
        ref = args.model
        _, model = hub.models.get(ref)
        return _run(args, model, lambda: hub.models.get(ref)[1])
    finally:
        hub.close()


def _run(args: argparse.Namespace, model, follow) -> int:
    from cloud_hub.stream.service import build_worker
    from cloud_hub.stream.worker import StreamOptions

    opts = StreamOptions(
        batch_size=args.batch_size, max_wait_ms=args.max_wait_ms, key_field=args.key_field
    )
    worker = build_worker(
        model,
        args.source,
        args.sink,
        args.dead_letter,
        opts,
        group=args.group,
        name=args.name,
        follow=follow,
    )
    stop = threading.Event()

    def on_signal(signum, frame):
        worker.stop()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        json.dumps(
            {
                "event": "ready",
                "source": args.source,
                "sink": args.sink,
                "dead_letter": worker.dead_letter.url,
                "model": model.describe()["name"],
                "version": model.version,
                "follows": args.model if follow is not None else None,
            }
        ),
        file=sys.stderr,
        flush=True,
    )
    try:
        worker.run()
    finally:
        worker.close()
        print(
            json.dumps({"event": "stopped", **worker.stats.to_dict()}), file=sys.stderr, flush=True
        )
    return 0
