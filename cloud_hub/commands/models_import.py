"""``cloud-hub models import``: a model version from an MLflow registry → a signed bundle in the hub."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path


def register(msub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = msub.add_parser(
        "import",
        parents=[common],
        help="import a model version from an MLflow registry (models:/NAME@ALIAS)",
        description="Resolve MODEL_URI (models:/NAME@ALIAS, models:/NAME/VERSION or "
        "models:/NAME/STAGE) through the MLflow server's REST API, download the version, load "
        "its scikit-learn / XGBoost / LightGBM (or ONNX) flavour, export a signed bundle (sample "
        "rows: the logged input example or --sample; the export refuses a conversion that does "
        "not answer like the model), push it to the hub as NAME:VERSION and point the alias at "
        "it (--alias, default the MLflow alias). Provenance records the MLflow URI, run id, "
        "version and source alias. The logged pickle is loaded here: import from registries "
        "you trust. MLflow credentials: MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/"
        "PASSWORD.",
    )
    p.add_argument(
        "model_uri", help="models:/NAME@ALIAS, models:/NAME/VERSION or models:/NAME/STAGE"
    )
    p.add_argument(
        "--tracking-uri", required=True, help="MLflow server URL, e.g. http://mlflow:5000"
    )
    p.add_argument("--alias", default=None, help="hub alias to set (default: the MLflow alias)")
    p.add_argument("--name", default=None, help="hub model name (default: the MLflow name)")
    p.add_argument(
        "--sample", default=None, help="CSV/Parquet rows for the export when no input example"
    )
    p.add_argument("--key", default=None, help="ed25519 signing key (default $EDGE_CONVERT_KEY)")
    p.add_argument(
        "--watch",
        type=float,
        default=None,
        metavar="SECONDS",
        help="keep running: every SECONDS, import the version the alias points at when it is new",
    )
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from cloud_hub.commands.models import _client, _tar_bytes
    from cloud_hub.mlflow_import import bundle_name, parse_model_uri, run_import, watch
    from edge_runtime.errors import ValidationError

    mlflow_name, _, _ = parse_model_uri(args.model_uri)
    name = args.name or bundle_name(mlflow_name)
    if args.watch is not None and args.watch < 1:
        raise ValidationError("--watch must be at least 1 second", field="watch")
    c = _client(args)

    def push(bundle: Path, aliases: list[str]) -> dict:
        return c.post(
            "/v1/models",
            content=_tar_bytes(bundle),
            params=[("alias", a) for a in aliases],
            headers={"Content-Type": "application/x-tar"},
        )

    def in_hub() -> set[str]:
        from cloud_hub.client import HubClientError

        try:
            return {v["version"] for v in c.get(f"/v1/models/{name}/versions")["versions"]}
        except HubClientError as exc:
            if exc.status_code == 404:
                return set()
            raise

    def step(seen: set[str]) -> dict | None:
        got = run_import(
            args.model_uri,
            args.tracking_uri,
            push,
            alias=args.alias,
            key=args.key,
            sample=args.sample,
            name=name,
            skip_versions=seen | in_hub() if args.watch is not None else None,
        )
        if got is not None:
            _print(args, got)
        return got

    try:
        if args.watch is None:
            step(set())
            return 0
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        watch(args.model_uri, args.watch, step, stop.is_set)
        return 0
    finally:
        c.close()


def _print(args: argparse.Namespace, mv: dict) -> None:
    if args.json:
        print(json.dumps(mv, indent=2), flush=True)
        return
    al = f" aliases: {', '.join(mv['aliases'])}" if mv.get("aliases") else ""
    src = mv["mlflow"]
    print(
        f"imported {src['name']} version {src['version']} (run {src['run_id']}) as "
        f"{mv['name']}:{mv['version']} sha256={mv['sha256']}{al}",
        flush=True,
    )
