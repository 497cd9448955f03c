"""``cloud-hub`` command line: parses and prints; the library does the work.

Each area adds a module in ``cloud_hub/commands/`` exposing
``register(subparsers)``; every subcommand sets ``func(args) -> int``.
Domain errors become one line on stderr (``edge_runtime.errors.error_line``) and exit
code 1 (2 for usage).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from edge_runtime.errors import run_cli

# Command modules (cloud_hub/commands/*.py). Add yours here.
COMMAND_MODULES: list[str] = [
    "cloud_hub.commands.batch",
    "cloud_hub.commands.stream",
    "cloud_hub.commands.devices",
    "cloud_hub.commands.fleet",
    "cloud_hub.commands.rollout",
    "cloud_hub.commands.demo",
    "cloud_hub.commands.serve",
    "cloud_hub.commands.models",
    "cloud_hub.commands.split",
    "cloud_hub.commands.evaluate",
    "cloud_hub.commands.shadow",
    "cloud_hub.commands.artifacts",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloud-hub", description="edgefleet hub: registry, online/"
                                     "batch/stream inference, fleet telemetry and canary rollouts.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_cli("cloud-hub", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
