"""``cloud-hub fleet``: fleet statistics (merged sketches) and Mosquitto ACL files."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("fleet", help="fleet telemetry stats and broker ACL files",
                       description="Fleet-wide statistics from device telemetry windows, and the "
                       "Mosquitto password/ACL files for registered devices.")
    fsub = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    st = fsub.add_parser("stats", help="p50/p99 from merged sketches, error and decision-change rates",
                         description="Fleet stats of a model grouped by version, tag, device or slot. "
                         "Quantiles come from merged per-device latency sketches.")
    st.add_argument("--model", help="model name (default: all)")
    st.add_argument("--by", default="version", choices=["version", "tag", "device", "slot"])
    st.add_argument("--tag", help="tag key for --by tag (default: every tag)")
    st.add_argument("--slot", choices=["active", "shadow"])
    st.add_argument("--since", type=float, metavar="SECONDS", help="only windows of the last SECONDS")
    st.add_argument("--url", help="hub URL (default HUB_URL or http://127.0.0.1:8000)")
    st.add_argument("--api-key", help="API key (default HUB_API_KEY)")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.set_defaults(func=cmd_stats)

    acl = fsub.add_parser("acl", help="write a ready Mosquitto configuration for the registered devices",
                          description="Write DIR/mosquitto.conf (start it with `mosquitto -c DIR/mosquitto.conf`), "
                          "DIR/dynamic-security.json (accounts, per-device topic rules checked on publish, "
                          "subscribe and delivery, each device bound to its own client id), DIR/passwd "
                          "(mosquitto_passwd format) and DIR/acl (pattern ACL) from the stored hashes. A device "
                          "may publish only its own state/events/telemetry and read only its own desired/ack; "
                          "it cannot subscribe to $share/… or to other devices' topics. Without a hub password "
                          "(HUB_MQTT_PASSWORD / --hub-password) one is created and written to DIR/hub.env. "
                          "Reads the hub database directly (HUB_DATABASE_URL / HUB_DATA_DIR).")
    acl.add_argument("--out", type=Path, required=True, help="output directory")
    acl.add_argument("--port", type=int, default=1883, help="listener port (default 1883)")
    acl.add_argument("--bind", default="", help="listener address (default: all interfaces)")
    acl.add_argument("--hub-user", default=None, help="broker user of the hub (default HUB_MQTT_USERNAME or hub)")
    acl.add_argument("--hub-password", default=None, help="its password (default HUB_MQTT_PASSWORD)")
    acl.add_argument("--plugin", default=None,
                     help="path of mosquitto_dynamic_security.so (default: searched in the usual places)")
    acl.add_argument("--run-as", default=None, metavar="USER",
                     help="`user` line: the account mosquitto runs as when started as root")
    acl.set_defaults(func=cmd_acl)


def cmd_stats(args: argparse.Namespace) -> int:
    from cloud_hub.client import HubClient

    params: dict = {"by": args.by}
    for k in ("model", "tag", "slot"):
        if getattr(args, k):
            params[k] = getattr(args, k)
    if args.since:
        params["since"] = time.time() - args.since
    body = HubClient(args.url, args.api_key).get("/v1/fleet/stats", params=params)
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    key = {"version": "VERSION", "tag": "TAG", "device": "DEVICE", "slot": "SLOT"}[args.by]
    print(f"{key:<22} {'MODEL':<14} {'SLOT':<7} {'DEVICES':>7} {'REQUESTS':>9} {'ERR%':>6} {'P50 ms':>8} "
          f"{'P99 ms':>8} {'COMPARED':>9} {'CHANGED%':>8}")
    for g in body["groups"]:
        k = g.get("version") if args.by == "version" else g.get("tag") if args.by == "tag" else \
            g.get("device_id") if args.by == "device" else g.get("slot")
        err = "-" if g["error_rate"] is None else f"{100 * g['error_rate']:.2f}"
        chg = "-" if g["decision_change_rate"] is None else f"{100 * g['decision_change_rate']:.2f}"
        p50 = "-" if g["p50_ms"] is None else f"{g['p50_ms']:.3f}"
        p99 = "-" if g["p99_ms"] is None else f"{g['p99_ms']:.3f}"
        print(f"{k!s:<22} {g['name']:<14} {g['slot']:<7} {g['devices_reporting']:>7} {g['requests']:>9} "
              f"{err:>6} {p50:>8} {p99:>8} {g['compared']:>9} {chg:>8}")
    if not body["groups"]:
        print("no telemetry windows yet", file=sys.stderr)
    return 0


def cmd_acl(args: argparse.Namespace) -> int:
    from cloud_hub.commands.serve import load_settings
    from cloud_hub.fleet.acl import new_password
    from cloud_hub.hub import Hub

    settings = load_settings()
    hub = Hub(settings)
    created = None
    try:
        pw = args.hub_password if args.hub_password is not None else settings.mqtt_password
        user = args.hub_user or settings.mqtt_username or "hub"
        if not pw:
            created = pw = new_password()
        out = hub.fleet.write_broker_config(args.out, port=args.port, bind=args.bind, hub_user=user,
                                            hub_password=pw, plugin=args.plugin, run_as=args.run_as)
    finally:
        hub.close()
    if created:
        env = Path(args.out) / "hub.env"
        env.write_text(f"HUB_MQTT_USERNAME={user}\nHUB_MQTT_PASSWORD={created}\n")
        env.chmod(0o600)
        print(f"created the hub's broker password: {env} (HUB_MQTT_USERNAME / HUB_MQTT_PASSWORD)")
    print(f"wrote {out['conf']}, {out['dynamic_security']}, {out['passwd']} and {out['acl']}: "
          f"{out['devices']} device(s) + hub user {out['hub_user']}; start: mosquitto -c {out['conf']}")
    if out["without_password"]:
        print(f"{len(out['without_password'])} registered device(s) have no password and cannot connect: "
              + ", ".join(out["without_password"][:10]), file=sys.stderr)
    return 0
