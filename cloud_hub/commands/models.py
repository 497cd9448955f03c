"""``cloud-hub models``: push bundles, list/show versions, move aliases (through the hub API)."""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

from edge_runtime.errors import ValidationError


def register(sub) -> None:
    p = sub.add_parser("models", help="model registry: push, list, show, alias, import",
                       description="Model registry commands; they call the hub API at --url / HUB_URL "
                       "with --api-key / HUB_API_KEY.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="hub URL (default HUB_URL or http://127.0.0.1:8000)")
    common.add_argument("--api-key", help="API key (default HUB_API_KEY)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    push = msub.add_parser("push", parents=[common], help="upload a bundle directory or tar",
                           description="Upload a bundle (directory or .tar). The hub checks file hashes, "
                           "the signature (trusted keys) and the golden vectors, then re-signs it.")
    push.add_argument("path", type=Path, help="bundle directory or .tar")
    push.add_argument("--alias", action="append", default=[], help="point this alias at the pushed "
                      "version (repeatable), e.g. --alias challenger")
    push.set_defaults(func=cmd_push)

    ls = msub.add_parser("list", parents=[common], help="list models (or the versions of one)",
                         description="List models with their aliases, or all versions of NAME.")
    ls.add_argument("name", nargs="?", help="model name: list its versions")
    ls.set_defaults(func=cmd_list)

    show = msub.add_parser("show", parents=[common], help="show one version (REF = name, name@alias, name:version)",
                           description="Show a version with its manifest.")
    show.add_argument("ref", help="name, name@alias or name:version")
    show.set_defaults(func=cmd_show)

    al = msub.add_parser("alias", parents=[common], help="point an alias at a version (or remove it)",
                         description="Point ALIAS of model NAME at VERSION (atomic); --delete removes it.")
    al.add_argument("name", help="model name")
    al.add_argument("alias", help="alias, e.g. champion, challenger")
    al.add_argument("version", nargs="?", help="version the alias should point at")
    al.add_argument("--delete", action="store_true", help="remove the alias")
    al.set_defaults(func=cmd_alias)

    from cloud_hub.commands.models_import import register as register_import

    register_import(msub, common)


def _client(args):
    from cloud_hub.client import HubClient

    return HubClient(args.url, args.api_key)


def _tar_bytes(path: Path) -> bytes:
    if path.is_dir():
        if not (path / "manifest.json").is_file():
            raise ValidationError(f"{path} is not a bundle directory (no manifest.json)", field="path")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(path / "manifest.json", arcname="manifest.json")
            for p in sorted(path.rglob("*")):
                if p.is_file() and p.name != "manifest.json":
                    tar.add(p, arcname=str(p.relative_to(path)))
        return buf.getvalue()
    if path.is_file():
        return path.read_bytes()
    raise ValidationError(f"bundle not found: {path}", field="path")


def cmd_push(args: argparse.Namespace) -> int:
    data = _tar_bytes(args.path)
    c = _client(args)
    try:
        mv = c.post("/v1/models", content=data, params=[("alias", a) for a in args.alias],
                    headers={"Content-Type": "application/x-tar"})
    finally:
        c.close()
    if args.json:
        print(json.dumps(mv, indent=2))
    else:
        al = f" aliases: {', '.join(mv['aliases'])}" if mv.get("aliases") else ""
        print(f"pushed {mv['name']}:{mv['version']} sha256={mv['sha256']} ({mv['self_test']}){al}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    c = _client(args)
    try:
        if args.name:
            data = c.get(f"/v1/models/{args.name}/versions")
        else:
            data = c.get("/v1/models")
    finally:
        c.close()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if args.name:
        print(f"{'VERSION':<16} {'SHA256':<14} {'FORMAT':<7} {'SIZE':>9} {'ALIASES':<24} CREATED")
        for v in data["versions"]:
            print(f"{v['version']:<16} {v['sha256'][:12]:<14} {v['format']:<7} {v['size']:>9} "
                  f"{','.join(v['aliases']) or '-':<24} {v['created_at'][:19]}")
    else:
        print(f"{'NAME':<24} {'VERSIONS':>8} {'LATEST':<14} ALIASES")
        for m in data["models"]:
            al = ", ".join(f"{a}={v}" for a, v in sorted(m["aliases"].items())) or "-"
            print(f"{m['name']:<24} {len(m['versions']):>8} {m['latest_version']:<14} {al}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    c = _client(args)
    try:
        mv = c.get(f"/v1/models/{args.ref}")
    finally:
        c.close()
    if args.json:
        print(json.dumps(mv, indent=2))
        return 0
    m = mv["manifest"]
    print(f"{mv['name']}:{mv['version']}  ({mv['format']}, {mv['task']})")
    print(f"  sha256        {mv['sha256']}")
    print(f"  aliases       {', '.join(mv['aliases']) or '-'}")
    print(f"  size          {mv['size']} bytes")
    print(f"  created       {mv['created_at']}")
    print(f"  signed by     {mv['signer_key_id'] or 'unsigned upload'}; hub key {mv['hub_key_id']}")
    print(f"  self test     {mv['self_test']}")
    feats = [f["name"] for f in m.get("inputs", {}).get("features", [])]
    if feats:
        print(f"  features      {len(feats)}: {', '.join(feats[:8])}{' …' if len(feats) > 8 else ''}")
    if m.get("provenance"):
        print(f"  provenance    {json.dumps(m['provenance'])}")
    print(f"  download      {mv['download_url']}")
    return 0


def cmd_alias(args: argparse.Namespace) -> int:
    if args.delete == (args.version is not None):
        print("cloud-hub: error: give VERSION, or --delete (not both)", file=sys.stderr)
        return 2
    c = _client(args)
    try:
        if args.delete:
            data = c.request("DELETE", f"/v1/models/{args.name}/aliases/{args.alias}")
        else:
            data = c.request("PUT", f"/v1/models/{args.name}/aliases/{args.alias}",
                             json={"version": args.version})
    finally:
        c.close()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        al = ", ".join(f"{a}={v}" for a, v in sorted(data["aliases"].items())) or "(no aliases)"
        print(f"{args.name}: {al}")
    return 0
