"""``keygen``: the one ed25519 key-pair command, shared by ``edge-runtime`` and ``edge-convert``.

    edge-runtime keygen --out fleet.key [--public-out fleet.pub] [--force]
    edge-convert keygen --out fleet.key [--public-out fleet.pub] [--force]

The private key (mode 0600) signs bundles; the ``.pub`` file goes to devices and the hub.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_runtime.errors import ValidationError


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("keygen", help="create an ed25519 key pair for signing bundles",
                       description="Write an ed25519 private key (mode 0600; it signs bundles, keep "
                       "it secret) and its public key (give it to devices and the hub).")
    p.add_argument("--out", default="fleet.key", help="private key path (default fleet.key)")
    p.add_argument("--public-out", metavar="PATH",
                   help="public key path (default: OUT with suffix .pub)")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.set_defaults(func=cmd_keygen)
    return p


def cmd_keygen(args: argparse.Namespace) -> int:
    from edge_runtime.signing import generate_keypair, key_id, load_public_key

    out = Path(args.out)
    pub = Path(args.public_out) if args.public_out else out.with_suffix(".pub")
    for p in (out, pub):
        if p.exists() and not args.force:
            field = "out" if p == out else "public_out"
            raise ValidationError(f"{p} exists; use --force to overwrite it", field=field)
    priv, pub = generate_keypair(out, pub)
    print(f"private key {priv} (keep it secret), public key {pub} "
          f"(key id {key_id(load_public_key(pub))})")
    return 0
