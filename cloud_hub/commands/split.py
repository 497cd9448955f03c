"""``cloud-hub split``: champion/challenger traffic split, per-group stats, feedback, promotion."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_runtime.errors import ValidationError


def common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="hub URL (default HUB_URL or http://127.0.0.1:8000)")
    common.add_argument("--api-key", help="API key (default HUB_API_KEY)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    return common


def client(args):
    from cloud_hub.client import HubClient

    return HubClient(args.url, args.api_key)


def emit(args, data, text: str) -> int:
    print(json.dumps(data, indent=2, default=str) if args.json else text)
    return 0


def register(sub) -> None:
    common = common_parser()
    p = sub.add_parser("split", help="champion/challenger split: set, show, stats, feedback, promote",
                       description="Route a share of entities (stable hash of the entity key) to "
                       "NAME@challenger; everyone else gets NAME@champion.")
    s = p.add_subparsers(dest="split_command", metavar="ACTION", required=True)

    st = s.add_parser("set", parents=[common], help="create or change a split",
                      description="Create or change the split of NAME. Changing the fraction keeps the "
                      "split id, so entities stay in their group (nested); --reset reshuffles.")
    st.add_argument("name")
    st.add_argument("--challenger", type=float, required=True, metavar="FRACTION",
                    help="share of entities for the challenger, 0..1 (e.g. 0.1)")
    st.add_argument("--entity-key", help="row field holding the entity id (default customer_id)")
    st.add_argument("--reset", action="store_true", help="new split id (reshuffle everyone)")
    st.add_argument("--disabled", action="store_true", help="store the split but send all to the champion")
    st.set_defaults(func=cmd_set)

    sh = s.add_parser("show", parents=[common], help="show a split (or all splits without NAME)")
    sh.add_argument("name", nargs="?")
    sh.set_defaults(func=cmd_show)

    ss = s.add_parser("stats", parents=[common], help="stored per-group counters of the current split")
    ss.add_argument("name")
    ss.set_defaults(func=cmd_stats)

    fb = s.add_parser("feedback", parents=[common], help="record true outcomes from a JSON/JSONL file",
                      description="FILE holds a JSON list or JSON lines of {request_id[, row] | entity_key, "
                      "outcome}. Use - for stdin.")
    fb.add_argument("name")
    fb.add_argument("file")
    fb.set_defaults(func=cmd_feedback)

    pr = s.add_parser("promote", parents=[common], help="champion ← challenger (needs a PROMOTE verdict)")
    pr.add_argument("name")
    pr.add_argument("--force", action="store_true", help="promote without a PROMOTE verdict")
    pr.set_defaults(func=cmd_promote)

    pn = s.add_parser("prune", parents=[common], help="delete prediction log and feedback older than a time")
    pn.add_argument("name")
    pn.add_argument("--before", required=True, help="ISO time, e.g. 2026-11-01T00:00:00Z")
    pn.set_defaults(func=cmd_prune)

    rm = s.add_parser("delete", parents=[common], help="remove the split (all traffic to the champion)")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_delete)


def _fmt_split(d: dict) -> str:
    state = "enabled" if d["enabled"] else "disabled"
    return (f"{d['name']}: challenger {d['challenger_fraction']:.1%} by {d['entity_key']} "
            f"(split {d['split_id']}, {state})")


def cmd_set(args) -> int:
    if not 0 <= args.challenger <= 1:
        raise ValidationError("--challenger must be between 0 and 1", field="challenger")
    body = {"challenger_fraction": args.challenger, "reset": args.reset, "enabled": not args.disabled}
    if args.entity_key:
        body["entity_key"] = args.entity_key
    d = client(args).request("PUT", f"/v1/models/{args.name}/split", json=body)
    return emit(args, d, _fmt_split(d))


def cmd_show(args) -> int:
    c = client(args)
    if args.name:
        d = c.get(f"/v1/models/{args.name}/split")
        return emit(args, d, _fmt_split(d))
    d = c.get("/v1/splits")
    return emit(args, d, "\n".join(_fmt_split(x) for x in d["splits"]) or "no splits")


def cmd_stats(args) -> int:
    d = client(args).get(f"/v1/models/{args.name}/split/stats")
    lines = [f"{d['name']} split {d['split_id']} ({d['rows']} rows)"]
    for g, v in d["groups"].items():
        share = "n/a" if v["share"] is None else f"{v['share']:.1%}"
        lines.append(f"  {g:<11} rows={v['requests']:<7} share={share:<6} errors={v['errors']}")
        for ver, x in v["versions"].items():
            pr = "n/a" if x["positive_rate"] is None else f"{x['positive_rate']:.3f}"
            lines.append(f"    {ver}: rows={x['rows']} positive_rate={pr}")
    return emit(args, d, "\n".join(lines))


def _read_feedback(path: str) -> list[dict]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}", field="file") from exc
    text = text.strip()
    try:
        if text.startswith("["):
            items = json.loads(text)
        else:
            items = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{path}: not JSON or JSON lines ({exc.msg}, line {exc.lineno})", field="file") from exc
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValidationError(f"{path}: expected a list of objects", field="file")
    return items


def cmd_feedback(args) -> int:
    items = _read_feedback(args.file)
    d = client(args).post(f"/v1/models/{args.name}/feedback", json={"feedback": items})
    return emit(args, d, f"stored {d['stored']} outcomes ({d['matched']} matched a prediction, "
                         f"{d['unmatched']} not yet)")


def cmd_promote(args) -> int:
    d = client(args).post(f"/v1/models/{args.name}/promote", json={"force": args.force})
    return emit(args, d, f"{args.name}: champion is now {d['champion']} (previous {d['previous']})")


def cmd_delete(args) -> int:
    client(args).request("DELETE", f"/v1/models/{args.name}/split")
    return emit(args, {"deleted": args.name}, f"{args.name}: split removed")


def cmd_prune(args) -> int:
    d = client(args).request("DELETE", f"/v1/models/{args.name}/split/log", params={"before": args.before})
    n = d["deleted"]
    return emit(args, d, f"{args.name}: deleted {n['predictions']} logged predictions, {n['feedback']} outcomes")
