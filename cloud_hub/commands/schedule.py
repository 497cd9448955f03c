"""``cloud-hub batch schedule``: cron schedules in the hub that create batch jobs."""

from __future__ import annotations

import argparse
import json


def register(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser(
        "schedule",
        help="scheduled batch jobs in the hub (create, list, show, pause, resume, run-now, delete)",
        description="A schedule creates a normal hub batch job at each firing of a 5-field cron "
        "expression in a time zone, exactly once across hub replicas. The model reference is "
        "resolved at each firing (churn@champion scores with the version the alias names then) "
        "and recorded. {date} (YYYY-MM-DD) and {datetime} (YYYY-MM-DDTHHMM) in --input/--output "
        "are the firing's time in the schedule's zone.",
    )
    ssub = p.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)

    c = ssub.add_parser("create", help="create a schedule")
    c.add_argument("--name", required=True, help="unique name, e.g. nightly-churn")
    c.add_argument("--cron", required=True, help='5-field cron, e.g. "0 6 * * *", or @daily')
    c.add_argument("--timezone", default="UTC", help="IANA zone of the cron times (default UTC)")
    c.add_argument("--model", required=True, help="REF: name, name@alias or name:version")
    c.add_argument("--input", required=True, help="input file on the hub (may hold {date})")
    c.add_argument(
        "--output", required=True, help="output file on the hub with {date} or {datetime}"
    )
    c.add_argument(
        "--id-column",
        action="append",
        default=[],
        metavar="C",
        help="column(s) copied to the output (repeat or comma-separate)",
    )
    c.add_argument(
        "--catch-up",
        choices=["run_once", "skip"],
        default="run_once",
        help="firings missed while no hub ran: run the latest once at start (default) or skip",
    )
    c.add_argument("--batch-size", type=int, default=None, help="rows per batch")
    c.add_argument("--engine", choices=["local", "ray"], default=None, help="scoring engine")
    c.add_argument("--workers", type=int, default=None, help="scoring threads / Ray actors")
    c.set_defaults(func=cmd_create)

    ls = ssub.add_parser("list", help="list schedules with their next firing")
    ls.set_defaults(func=cmd_list)
    for action, help_text in (
        ("show", "a schedule, its next firing and its recent firings with their jobs"),
        ("pause", "stop firing (run-now still works)"),
        ("resume", "fire again from the next firing after now"),
        ("run-now", "fire once now (creates a job)"),
        ("delete", "delete a schedule (its jobs stay)"),
    ):
        a = ssub.add_parser(action, help=help_text)
        a.add_argument("schedule", help="schedule name or id")
        a.set_defaults(func=cmd_action, action=action)
    from cloud_hub.commands.batch import _hub_args

    for sp in (c, ls, *[ssub.choices[a] for a in ("show", "pause", "resume", "run-now", "delete")]):
        _hub_args(sp)


def _client(args):
    from cloud_hub.client import HubClient

    return HubClient(args.hub, args.api_key)


def cmd_create(args: argparse.Namespace) -> int:
    from cloud_hub.commands.batch import _ids

    body = {
        "name": args.name,
        "cron": args.cron,
        "timezone": args.timezone,
        "model": args.model,
        "input": args.input,
        "output": args.output,
        "id_columns": _ids(args.id_column),
        "catch_up": args.catch_up,
        "batch_size": args.batch_size,
        "engine": args.engine,
        "workers": args.workers,
    }
    out = _client(args).post("/v1/schedules", json={k: v for k, v in body.items() if v is not None})
    print(json.dumps(out))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for s in _client(args).get("/v1/schedules")["schedules"]:
        print(json.dumps(s))
    return 0


def cmd_action(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    client = _client(args)
    path = f"/v1/schedules/{quote(args.schedule, safe='')}"
    if args.action == "show":
        out = client.get(path)
    elif args.action == "delete":
        client.request("DELETE", path)
        out = {"deleted": args.schedule}
    else:
        out = client.post(
            path + {"pause": "/pause", "resume": "/resume", "run-now": "/run"}[args.action]
        )
    print(json.dumps(out))
    return 0 if out.get("status") != "failed" else 1
