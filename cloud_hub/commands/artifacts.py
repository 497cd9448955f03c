"""``cloud-hub artifacts``: maintenance of the bundle artifact store (run next to the database)."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("artifacts", help="artifact store maintenance: gc, check",
                       description="Maintenance of the bundle artifact store. Reads HUB_* settings "
                       "(HUB_DATABASE_URL, HUB_DATA_DIR, HUB_ARTIFACTS) like `cloud-hub serve`.")
    asub = p.add_subparsers(dest="artifacts_command", metavar="ACTION", required=True)
    g = asub.add_parser("gc", help="remove artifacts no model version references",
                        description="Remove stored bundle artifacts that no model version references "
                        "(left by failed pushes of older hub versions or a crash), if older than "
                        "--min-age-s (a push in flight keeps its artifact).")
    g.add_argument("--min-age-s", type=float, default=3600.0, help="only remove artifacts at least this "
                   "old (default 3600)")
    g.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    g.add_argument("--json", action="store_true", help="print JSON")
    g.set_defaults(func=cmd_gc)
    c = asub.add_parser("check", help="check that every referenced artifact is in the store",
                        description="Exit 1 naming the model versions whose artifact this hub's store "
                        "lacks (what a replica checks at start).")
    c.set_defaults(func=cmd_check)


def _registry():
    from cloud_hub import db
    from cloud_hub.commands.serve import load_settings
    from cloud_hub.registry import Registry

    s = load_settings()
    engine = db.connect(s.db_url)
    db.migrate(engine)
    return Registry.from_settings(engine, s)


def cmd_gc(args: argparse.Namespace) -> int:
    from cloud_hub.artifact_gc import gc

    if args.min_age_s < 0:
        from edge_runtime.errors import ValidationError

        raise ValidationError("--min-age-s must be >= 0", field="min_age_s")
    rep = gc(_registry(), min_age_s=args.min_age_s, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"removed": rep.removed, "kept": rep.kept, "young": rep.young,
                          "freed_bytes": rep.freed_bytes, "dry_run": args.dry_run}))
    else:
        verb = "would remove" if args.dry_run else "removed"
        print(f"{verb} {len(rep.removed)} unreferenced artifact(s) ({rep.freed_bytes} bytes); kept "
              f"{rep.kept} referenced, {rep.young} younger than {args.min_age_s:g} s")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from cloud_hub.startup import check_artifacts

    check_artifacts(_registry())
    print("ok: every artifact the database references is in the store")
    return 0
