"""``cloud-hub rollout start|status|list|pause|resume|abort|advance|events`` (talks to the hub's API)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from cloud_hub.client import HubClient
from cloud_hub.rollouts.cohort import parse_selector
from cloud_hub.rollouts.plan import flags_document, read_plan_document
from edge_runtime.errors import ValidationError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rollout", help="canary rollouts of a model to a device cohort",
                       description="Roll a model version out to a device cohort: optional shadow stage, "
                                   "then canary percentages, gated on the devices' telemetry, with "
                                   "automatic rollback. Talks to the hub at --url / HUB_URL.")
    rs = p.add_subparsers(dest="rollout_cmd", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--url", help="hub URL (default HUB_URL or http://127.0.0.1:8000)")
        q.add_argument("--api-key", help="API key (default HUB_API_KEY)")
        q.add_argument("--json", action="store_true", help="print the raw JSON answer")

    s = rs.add_parser("start", help="start a rollout",
                      description="Start a rollout. The plan comes from --plan FILE (YAML/JSON) or the "
                                  "flags; default: canary 1,5,25,50,100 %%, 10 min and 100 samples per "
                                  "stage, roll back on error rate > 1 %%, p99 > 200 ms, divergence > 0.1.")
    s.add_argument("--model", required=True, help="candidate NAME:VERSION (pushed to the registry)")
    s.add_argument("--cohort", default="*", help="device selector, e.g. 'region=eu,profile=rpi4' (default *)")
    s.add_argument("--plan", help="plan file (.yaml/.yml/.json)")
    s.add_argument("--stages", help="canary percentages, e.g. 1,5,25,50,100")
    s.add_argument("--shadow", action="store_true", help="start with a shadow stage")
    s.add_argument("--min-duration", help="minimum stage duration (e.g. 30s, 10m)")
    s.add_argument("--min-samples", type=int, help="minimum requests per stage before judging")
    s.add_argument("--timeout", help="stage timeout: not enough data after this → pause (e.g. 2h)")
    s.add_argument("--max-error-rate", type=float, help="error-rate threshold (default 0.01)")
    s.add_argument("--max-p99-ms", type=float, help="p99 latency SLA in ms (default 200)")
    s.add_argument("--max-divergence", type=float, help="score divergence threshold (default 0.1)")
    s.add_argument("--id", help="rollout id (default generated)")
    common(s)
    s.set_defaults(func=cmd_start)

    st = rs.add_parser("status", help="stage, devices per state, gate values, next decision")
    st.add_argument("id")
    common(st)
    st.set_defaults(func=cmd_status)

    ls = rs.add_parser("list", help="list rollouts")
    ls.add_argument("--status", help="only this status (running, paused, completed, rolled_back, …)")
    ls.add_argument("--model", help="only this model name")
    common(ls)
    ls.set_defaults(func=cmd_list)

    for action, text in (("pause", "pause a running rollout"), ("resume", "resume a paused rollout"),
                         ("abort", "abort: every device of the rollout goes back to the champion"),
                         ("advance", "operator override: go to the next stage now")):
        a = rs.add_parser(action, help=text, description=text)
        a.add_argument("id")
        if action != "resume":
            a.add_argument("--reason", help="recorded in the rollout's event log")
        common(a)
        a.set_defaults(func=cmd_action, action=action)

    ev = rs.add_parser("events", help="the rollout's decision log")
    ev.add_argument("id")
    common(ev)
    ev.set_defaults(func=cmd_events)


def _client(args: argparse.Namespace) -> HubClient:
    return HubClient(args.url, args.api_key)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def cmd_start(args: argparse.Namespace) -> int:
    if ":" not in args.model:
        raise ValidationError(f"--model must be NAME:VERSION (got {args.model!r})", field="model")
    parse_selector(args.cohort)  # clear error before contacting the hub
    gates = {k: v for k, v in (("max_error_rate", args.max_error_rate), ("max_p99_ms", args.max_p99_ms),
                               ("max_divergence", args.max_divergence)) if v is not None}
    if args.plan:
        doc = read_plan_document(args.plan)
        if any(x is not None for x in (args.stages, args.min_duration, args.min_samples, args.timeout)) \
                or args.shadow:
            raise ValidationError("--plan cannot be combined with --stages/--shadow/--min-duration/"
                                  "--min-samples/--timeout (put them in the file)", field="plan")
        if gates:
            doc = {**doc, "gates": {**(doc.get("gates") or {}), **gates}}
    else:
        doc = flags_document(stages=args.stages, shadow=args.shadow, min_duration=args.min_duration,
                             min_samples=args.min_samples, timeout=args.timeout, gates=gates or None)
    body = {"model": args.model, "cohort": args.cohort, "plan": doc}
    if args.id:
        body["id"] = args.id
    out = _client(args).post("/v1/rollouts", json=body)
    if args.json:
        _print_json(out)
    else:
        print(f"rollout {out['id']} started: {out['model']}:{out['candidate']['version']} → cohort "
              f"{out['cohort']}; stages {' → '.join(out['stages'])}")
    return 0


def _ts(t: float | None) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def format_status(s: dict[str, Any]) -> str:
    lines = []
    champ = s.get("champion") or {}
    lines.append(f"rollout {s['id']}  {s['model']}:{s['candidate']['version']} (champion "
                 f"{champ.get('version', 'none')})  cohort {s['cohort']}")
    st = s["stage"]
    lines.append(f"status  {s['status']}" + (f"  — {s['reason']}" if s.get("reason") else ""))
    lines.append(f"stage   {st['index'] + 1}/{len(s['stages'])} {st['name']} ({st['percent']:g} %), "
                 f"started {_ts(st['started_at'])} UTC, min {st['min_duration_s']:.0f}s / "
                 f"{st['min_samples']} samples, timeout {st['timeout_s']:.0f}s")
    d = s.get("devices") or {}
    lines.append("devices " + ", ".join(f"{k} {d[k]}" for k in ("cohort", "stage", "verified", "installing",
                                                               "failed", "unknown", "champion", "reverting")
                                         if k in d))
    gates = s.get("gates") or []
    if gates:
        lines.append("gates")
        for g in gates:
            lines.append(f"  {g['status'].upper():5} {g['name']:17} {g['message']}")
    nd = s.get("next_decision") or {}
    if nd:
        lines.append(f"next    {nd.get('decision')}: {nd.get('reason')}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    out = _client(args).get(f"/v1/rollouts/{args.id}")
    if args.json:
        _print_json(out)
    else:
        print(format_status(out))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("status", args.status), ("model", args.model)) if v}
    out = _client(args).get("/v1/rollouts", params=params)
    if args.json:
        _print_json(out)
        return 0
    rows = out["rollouts"]
    if not rows:
        print("no rollouts")
        return 0
    print(f"{'ID':14} {'MODEL':28} {'STATUS':13} {'STAGE':16} {'COHORT':24} CREATED (UTC)")
    for r in rows:
        print(f"{r['id']:14} {(r['model'] + ':' + r['candidate']['version'])[:28]:28} {r['status']:13} "
              f"{r['stage']['name'][:16]:16} {r['cohort'][:24]:24} {_ts(r['created_at'])}")
    return 0


def cmd_action(args: argparse.Namespace) -> int:
    body = {"reason": args.reason} if getattr(args, "reason", None) else None
    out = _client(args).post(f"/v1/rollouts/{args.id}/{args.action}", json=body)
    if args.json:
        _print_json(out)
    else:
        print(f"rollout {out['id']}: {out['status']} (stage {out['stage']['name']})"
              + (f" — {out['reason']}" if out.get("reason") else ""))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    out = _client(args).get(f"/v1/rollouts/{args.id}/events")
    if args.json:
        _print_json(out)
        return 0
    for e in out["events"]:
        print(f"{_ts(e['ts'])}  {e['kind']:10} {e.get('stage') or '':16} {e['message']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)
