"""``cloud-hub demo``: the whole product in one command, no services needed."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="one-command demo: simulated fleet, shadow → canary → promotion, "
                                    "then an automatic rollback of a bad model; writes an HTML report",
                       description="Runs a real hub (embedded MQTT broker, SQLite, HTTP API on a free port, "
                                   "rollout controller) and a simulated fleet running the real device daemon. "
                                   "Trains a champion and a challenger on scikit-learn's breast-cancer data, "
                                   "rolls the challenger out (shadow, canary 10/50/100 %) to promotion, then "
                                   "rolls out a bad model and shows the automatic rollback. Exit code 0 only if "
                                   "the promotion happened and the bad model was rolled back.")
    p.add_argument("--devices", type=int, default=50, help="simulated devices (default 50)")
    p.add_argument("--out", type=Path, help="output directory (report.html, hub data, bundles); default a "
                                            "temporary directory")
    p.add_argument("--mqtt-url", help="use this broker instead of the embedded one (e.g. mqtt://127.0.0.1:1883)")
    p.add_argument("--stage-seconds", type=float, default=4.0, help="minimum duration of each stage (default 4)")
    p.add_argument("--min-samples", type=int, default=200, help="minimum samples per stage (default 200)")
    p.add_argument("--bad", choices=["errors", "slow"], default="errors",
                   help="how the bad model misbehaves on devices (default errors)")
    p.add_argument("--profiles", default="tiny-arm,rpi4", help="device profiles, comma-separated")
    p.add_argument("--keep-serving", type=float, default=0.0, metavar="SECONDS",
                   help="keep the hub's HTTP API up this long after the demo (explore the API/UI)")
    p.add_argument("--timeout", type=float, default=170.0, help="give up after this many seconds")
    p.add_argument("--quiet", action="store_true", help="print nothing; exit code and report only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cloud_hub.demo.runner import Demo, DemoConfig
    from edge_runtime.errors import ValidationError

    if args.devices < 2:
        raise ValidationError("--devices must be at least 2", field="devices")
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    cfg = DemoConfig(devices=args.devices, out=args.out, mqtt_url=args.mqtt_url, stage_s=args.stage_seconds,
                     min_samples=args.min_samples, bad_fault=args.bad,
                     profiles=tuple(p.strip() for p in args.profiles.split(",") if p.strip()),
                     keep_serving=args.keep_serving, timeout_s=args.timeout, quiet=args.quiet)
    try:
        result = Demo(cfg).run()
    except TimeoutError as exc:
        print(f"cloud-hub demo: {exc}")
        return 1
    return 0 if result.ok else 1
