"""``cloud-hub devices``: list, show and register devices (through the hub API)."""

from __future__ import annotations

import argparse
import json
import time

from edge_runtime.errors import ValidationError


def register(sub) -> None:
    p = sub.add_parser("devices", help="device registry: list, show, register",
                       description="Device commands; they call the hub API at --url / HUB_URL with "
                       "--api-key / HUB_API_KEY.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="hub URL (default HUB_URL or http://127.0.0.1:8000)")
    common.add_argument("--api-key", help="API key (default HUB_API_KEY)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    dsub = p.add_subparsers(dest="devices_command", metavar="ACTION", required=True)

    ls = dsub.add_parser("list", parents=[common], help="list devices, what they run and whether they are online",
                         description="List devices (registered or seen on MQTT).")
    ls.add_argument("--selector", help="tag selector, e.g. region=eu,ring=canary")
    ls.add_argument("--online", action="store_true", help="only devices online now")
    ls.set_defaults(func=cmd_list)

    show = dsub.add_parser("show", parents=[common], help="show one device with its recent events",
                           description="Show a device: tags, profile, running bundles, desired state, events.")
    show.add_argument("device_id")
    show.add_argument("--events", type=int, default=20, help="number of recent events (default 20)")
    show.set_defaults(func=cmd_show)

    reg = dsub.add_parser("register", parents=[common], help="register a device (id, tags, profile, credentials)",
                          description="Register or update a device. --generate-password prints a new "
                          "MQTT password once (the hub keeps only its hash); then run "
                          "`cloud-hub fleet acl --out DIR` for Mosquitto.")
    reg.add_argument("device_id")
    reg.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="tag (repeatable)")
    reg.add_argument("--profile", default="", help="device profile, e.g. rpi4")
    reg.add_argument("--generate-password", action="store_true", help="create an MQTT password")
    reg.set_defaults(func=cmd_register)


def _client(args):
    from cloud_hub.client import HubClient

    return HubClient(args.url, args.api_key)


def parse_tags(items: list[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        if "=" not in item:
            raise ValidationError(f"--tag {item!r} must be KEY=VALUE", field="tag")
        k, v = item.split("=", 1)
        tags[k.strip()] = v.strip()
    return tags


def _ago(ts) -> str:
    if not ts:
        return "never"
    s = max(0.0, time.time() - ts)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.1f}h ago"


def _running(dev: dict) -> str:
    return ", ".join(f"{b['slot']}={b['name']}:{b['version']}({b['sha256'][:8]})" for b in dev.get("bundles") or []) or "-"


def cmd_list(args) -> int:
    params = {}
    if args.selector:
        params["selector"] = args.selector
    if args.online:
        params["online"] = "true"
    body = _client(args).get("/v1/devices", params=params)
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    devs = body["devices"]
    print(f"{'DEVICE':<20} {'ONLINE':<7} {'PROFILE':<12} {'LAST SEEN':<10} {'TAGS':<28} RUNNING")
    for d in devs:
        tags = ",".join(f"{k}={v}" for k, v in sorted(d["tags"].items()))
        print(f"{d['id']:<20} {'yes' if d['online'] else 'no':<7} {d['profile'] or '-':<12} "
              f"{_ago(d['last_seen']):<10} {tags or '-':<28} {_running(d)}")
    print(f"{len(devs)} device(s), {sum(d['online'] for d in devs)} online")
    return 0


def cmd_show(args) -> int:
    body = _client(args).get(f"/v1/devices/{args.device_id}", params={"events": args.events})
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    print(f"device      {body['id']} ({'online' if body['online'] else 'offline'}, last seen {_ago(body['last_seen'])})")
    print(f"profile     {body['profile'] or '-'}    registered {body['registered']}    "
          f"credentials {body['has_credentials']}")
    print(f"tags        {json.dumps(body['tags'])}")
    print(f"running     {_running(body)}")
    des = body.get("desired")
    if des:
        slots = ", ".join(f"{s}={b['name']}:{b['version']}" if b else f"{s}=(empty)" for s, b in des["bundles"].items())
        print(f"desired     {des['id']} {slots} ({'converged' if body['converged'] else 'not applied yet'})")
    print(f"windows     {body['windows']} received, {body['dropped_windows']} dropped by the device buffer, "
          f"{body.get('rejected_windows', 0)} rejected at ingest")
    if body.get("rejected_reason"):
        print(f"rejected    last: {body['rejected_reason']}")
    if body.get("last_seq") is not None:
        gaps = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in body.get("missing_seqs", [])[:10])
        print(f"seqs        {body['first_seq']}..{body['last_seq']} stored, {body.get('missing_windows', 0)} missing"
              + (f": {gaps}" if gaps else ""))
    for e in body.get("events", []):
        b = e.get("bundle") or {}
        print(f"  {time.strftime('%H:%M:%S', time.localtime(e['ts']))} {e['step']:<17} {e.get('slot') or '':<7} "
              f"{b.get('name', '')}:{b.get('version', '')} {e.get('reason') or ''}")
    return 0


def cmd_register(args) -> int:
    body = _client(args).post("/v1/devices", json={"id": args.device_id, "tags": parse_tags(args.tag),
                                                   "profile": args.profile,
                                                   "generate_password": args.generate_password})
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    print(f"registered {body['id']} tags={json.dumps(body['tags'])} profile={body['profile'] or '-'}")
    if body.get("password"):
        print(f"MQTT user {body['id']} password {body['password']}  (shown once; stored hashed)")
    return 0
