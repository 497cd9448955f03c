"""A hub in its own process for the kill -9 test: HTTP API + ingest + rollout controller."""

from __future__ import annotations

import argparse
import sys

from cloud_hub.demo.runtime import LocalHub


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mqtt-url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--trusted", required=True)
    p.add_argument("--push", nargs="*", default=[])
    args = p.parse_args()
    hub = LocalHub(args.data_dir, mqtt_url=args.mqtt_url, trusted_keys=[args.trusted], tick_s=0.3,
                   silent_after_s=8, port=args.port, mqtt_prefix=args.prefix)
    hub.start()
    for i, path in enumerate(args.push):
        hub.hub.registry.push(path, aliases=["champion"] if i == 0 else None)
    print("READY", hub.hub_public_key, flush=True)
    hub.serve_until_terminated()


if __name__ == "__main__":
    sys.exit(main())
