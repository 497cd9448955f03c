"""``cloud-hub batch``: score a file here (``run``) or as a hub job (``submit``, ``status``,
``cancel``, ``list``)."""

from __future__ import annotations

import argparse
import json
import sys
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="batch inference over Parquet/CSV/JSON-lines files",
        description="Score whole files with a registered model: locally "
        "(`run`) or as a job in the hub (`submit`, `status`, `cancel`, `list`).",
    )
    bsub = p.add_subparsers(dest="batch_command", metavar="ACTION", required=True)

    r = bsub.add_parser(
        "run",
        help="score a file in this process",
        description="Read INPUT as a stream of record batches, score every row with "
        "the model, write OUTPUT atomically (a rerun after a crash resumes from the "
        "last checkpoint) and bad rows with their reason to a rejects file.",
    )
    _job_args(r)
    r.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: threads in this process (default); ray: Ray Data actors "
        "(RAY_ADDRESS selects a cluster)",
    )
    r.add_argument(
        "--workers",
        type=int,
        default=None,
        help="scoring threads / Ray actors (default: the cores this process may use)",
    )
    r.add_argument(
        "--processes",
        action="store_true",
        help="local engine: score in worker processes instead of threads (past the "
        "GIL; worth it for large jobs, costs ~1-2 s of start-up)",
    )
    r.add_argument(
        "--no-resume",
        action="store_true",
        help="ignore a checkpoint left by an interrupted run and start over",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.add_argument(
        "--public-key",
        action="append",
        default=[],
        metavar="KEY.pub",
        help="with a bundle path: trust only this key (repeatable); default HUB_TRUSTED_KEYS, "
        "<data_dir>/keys/trusted/*.pub and the hub key. A bundle whose hashes or signature do "
        "not check out is refused before any row is scored",
    )
    r.set_defaults(func=cmd_run)

    s = bsub.add_parser("submit", help="submit a job to the hub (paths are on the hub's machine)")
    _job_args(s)
    s.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="engine the hub uses"
    )
    s.add_argument("--workers", type=int, default=None, help="scoring threads in the hub")
    s.add_argument("--wait", action="store_true", help="wait until the job ends, showing progress")
    _hub_args(s)
    s.set_defaults(func=cmd_submit)

    st = bsub.add_parser("status", help="show a hub job")
    st.add_argument("job_id")
    st.add_argument("--wait", action="store_true", help="wait until the job ends")
    _hub_args(st)
    st.set_defaults(func=cmd_status)

    c = bsub.add_parser("cancel", help="cancel a hub job")
    c.add_argument("job_id")
    _hub_args(c)
    c.set_defaults(func=cmd_cancel)

    ls = bsub.add_parser("list", help="list hub jobs, newest first")
    ls.add_argument("--status", default=None, help="only jobs in this status")
    _hub_args(ls)
    ls.set_defaults(func=cmd_list)

    from cloud_hub.commands.schedule import register as register_schedule

    register_schedule(bsub)


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="REF: name, name@alias or name:version (or a bundle path)"
    )
    p.add_argument("--input", required=True, help="input file: .parquet, .csv or .jsonl")
    p.add_argument("--output", required=True, help="output file: .parquet, .csv or .jsonl")
    p.add_argument(
        "--id-column",
        action="append",
        default=[],
        metavar="C",
        help="column(s) copied to the output to identify rows (repeat or comma-separate)",
    )
    p.add_argument("--batch-size", type=int, default=65536, help="rows per batch (default 65536)")
    p.add_argument(
        "--rejects", default=None, help="rejected rows file (default OUTPUT-stem.rejects.jsonl)"
    )
    p.add_argument(
        "--input-format",
        choices=["parquet", "csv", "jsonl"],
        default=None,
        help="override the format guessed from the input's extension",
    )
    p.add_argument(
        "--output-format",
        choices=["parquet", "csv", "jsonl"],
        default=None,
        help="override the format guessed from the output's extension",
    )
    p.add_argument(
        "--scoring-date",
        default=None,
        help="ISO date/time written in scored_at (default: now, kept on resume)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _hub_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hub", default=None, help="hub URL (default $HUB_URL or http://127.0.0.1:8000)"
    )
    p.add_argument("--api-key", default=None, help="API key (default $HUB_API_KEY)")


def _ids(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        out += [c.strip() for c in v.split(",") if c.strip()]
    return out


def _spec(args: argparse.Namespace):
    from cloud_hub.batch.job import BatchSpec

    return BatchSpec(
        model=args.model,
        input=args.input,
        output=args.output,
        id_columns=_ids(args.id_column),
        batch_size=args.batch_size,
        engine=args.engine,
        workers=args.workers,
        rejects=args.rejects,
        input_format=args.input_format,
        output_format=args.output_format,
        scoring_date=args.scoring_date,
        overwrite=args.overwrite,
        resume=not getattr(args, "no_resume", False),
        processes=getattr(args, "processes", False),
        public_keys=getattr(args, "public_key", None) or [],
    )


def cmd_run(args: argparse.Namespace) -> int:
    from cloud_hub.batch.job import run_batch

    spec = _spec(args)
    show = not args.no_progress and sys.stderr.isatty()
    if not show:
        result = run_batch(spec)
    else:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("[bold]scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows · {task.fields[rejected]} rejected"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        ) as bar:
            task = bar.add_task("score", total=None, rejected=0)

            def start(p, model):
                bar.update(
                    task, total=p.rows_total, completed=p.rows_done, rejected=p.rows_rejected
                )

            def progress(p):
                bar.update(task, completed=p.rows_done, rejected=p.rows_rejected)

            result = run_batch(spec, on_start=start, on_progress=progress)
    d = result.to_dict()
    if args.json:
        print(json.dumps(d))
    else:
        resumed = (
            f" (resumed after batch {result.resumed_from_batch})"
            if result.resumed_from_batch
            else ""
        )
        print(
            f"{result.status}: {result.rows_in} rows in, {result.rows_out} scored, "
            f"{result.rows_rejected} rejected, {result.seconds:.1f} s "
            f"({result.rows_per_s:,.0f} rows/s){resumed}"
        )
        print(f"output: {result.output}")
        print(f"rejects: {result.rejects}")
    return 0 if result.status == "succeeded" else 1


def _client(args):
    from cloud_hub.client import HubClient

    return HubClient(args.hub, args.api_key)


def cmd_submit(args: argparse.Namespace) -> int:
    spec = _spec(args)
    body = {
        "model": spec.model,
        "input": spec.input,
        "output": spec.output,
        "id_columns": spec.id_columns,
        "batch_size": spec.batch_size,
        "engine": spec.engine,
        "workers": spec.workers,
        "rejects": spec.rejects,
        "input_format": spec.input_format,
        "output_format": spec.output_format,
        "scoring_date": spec.scoring_date,
        "overwrite": spec.overwrite,
    }
    client = _client(args)
    job = client.post("/v1/jobs", json={k: v for k, v in body.items() if v is not None})
    if args.wait:
        job = _wait(client, job["id"])
    print(json.dumps(job))
    return 0 if job["status"] in ("queued", "running", "succeeded") else 1


def _wait(client, job_id: str) -> dict:
    while True:
        job = client.get(f"/v1/jobs/{job_id}")
        if job["status"] in ("succeeded", "failed", "cancelled", "interrupted"):
            return job
        if sys.stderr.isatty():
            pct = job.get("progress")
            print(
                f"\r{job['status']}: {job['rows_done']} rows"
                + (f" ({pct * 100:.1f} %)" if pct is not None else ""),
                end="",
                file=sys.stderr,
            )
        time.sleep(0.5)


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    job = _wait(client, args.job_id) if args.wait else client.get(f"/v1/jobs/{args.job_id}")
    print(json.dumps(job))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    print(json.dumps(_client(args).post(f"/v1/jobs/{args.job_id}/cancel")))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    params = {"status": args.status} if args.status else {}
    for job in _client(args).get("/v1/jobs", params=params)["jobs"]:
        print(json.dumps(job))
    return 0
