"""The dashboard's fleet table with many stored devices: page load and filter over HTTP.

Seeds N devices straight into a hub database (registry, reported state with the active
bundle, a few telemetry gaps, failed installs and rejected windows), starts the hub's HTTP
server on loopback and times what the Fleet page requests: ``/ui/data/overview`` and one
page of ``/v1/devices`` (200 rows), then filtered pages (tag selector, profile, version,
status, problems, a sort). Prints one line per request (median of --repeat) and the load.

    .venv/bin/python benchmarks/dashboard_devices.py --devices 10000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REGIONS, PROFILES = ("eu", "us", "ap"), ("rpi4", "jetson", "x86")


def seed(engine: Any, n: int, *, prefix: str = "dev") -> dict[str, Any]:
    """Store ``n`` devices; returns what was seeded (counts the checks can compare with)."""
    from cloud_hub.fleet import tables as T

    now = time.time()
    regs, states, wins, events = [], [], [], []
    expect = {"eu": 0, "rpi4": 0, "v2": 0, "online": 0, "problems": set()}
    for i in range(n):
        dev = f"{prefix}-{i:05d}"
        region, profile = REGIONS[i % 3], PROFILES[(i // 3) % 3]
        version = "2.0.0" if i % 10 == 0 else "1.0.0"
        online = i % 5 != 0
        rejected = 3 if i % 997 == 0 else 0
        expect["eu"] += region == "eu"
        expect["rpi4"] += profile == "rpi4"
        expect["v2"] += version == "2.0.0"
        expect["online"] += online
        regs.append({"id": dev, "tags": {"region": region, "ring": "canary" if i % 20 == 0 else "main"},
                     "profile": profile, "credentials_hash": None, "registered": True, "created_at": now})
        states.append({"device_id": dev, "online": online, "applied_desired_id": None,
                       "last_seen": now - i, "last_window_at": now - i, "last_seq": 3,
                       "state": {"device_id": dev, "bundles": [{"slot": "active", "name": "cancer-risk",
                                                                "version": version, "sha256": "ab" * 32}],
                                 "runtime_version": "0.1.0"},
                       "dropped_windows": 0, "rejected_windows": rejected,
                       "rejected_reason": "bad window" if rejected else None})
        if rejected:
            expect["problems"].add(dev)
        if i % 501 == 0:  # seqs 0, 1, 3: one window missing
            for seq in (0, 1, 3):
                wins.append({"device_id": dev, "seq": seq, "start": now - 60, "end": now - 30,
                             "rss_bytes": 0, "cpu_percent": 0.0, "dropped_windows": 0, "received_at": now})
            expect["problems"].add(dev)
        if i % 1999 == 0:
            events.append({"event_id": f"{dev}-e1", "device_id": dev, "step": "failed", "slot": "active",
                           "bundle": None, "desired_id": "d1", "rollout_id": None,
                           "reason": "self-test failed", "ts": now, "received_at": now})
            expect["problems"].add(dev)
    with engine.begin() as conn:
        for table, rows in ((T.devices, regs), (T.device_state, states), (T.windows, wins), (T.events, events)):
            for k in range(0, len(rows), 2000):
                conn.execute(table.insert(), rows[k:k + 2000])
    expect["problems"] = len(expect["problems"])
    return expect


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--database-url", default=None, help="default: SQLite in a temporary directory")
    args = ap.parse_args()

    import httpx

    from cloud_hub.demo.runtime import LocalHub

    with tempfile.TemporaryDirectory() as tmp:
        hub = LocalHub(Path(tmp) / "hub", database_url=args.database_url, controller=False)
        hub.start()
        try:
            t = time.perf_counter()
            expect = seed(hub.hub.engine, args.devices)
            print(f"seeded {args.devices} devices in {time.perf_counter() - t:.1f} s")
            cases = [("page load: overview", "/ui/data/overview", None),
                     ("page load: first 200 devices", "/v1/devices?limit=200", args.devices),
                     ("page 26 (offset 5000)", "/v1/devices?limit=200&offset=5000", args.devices),
                     ("filter tag region=eu", "/v1/devices?limit=200&selector=region%3Deu", expect["eu"]),
                     ("filter profile rpi4", "/v1/devices?limit=200&profile=rpi4", expect["rpi4"]),
                     ("filter version 2.0.0", "/v1/devices?limit=200&version=cancer-risk%3A2.0.0", expect["v2"]),
                     ("filter online", "/v1/devices?limit=200&online=true", expect["online"]),
                     ("filter problems", "/v1/devices?limit=200&problems=true", expect["problems"]),
                     ("sort last_seen desc", "/v1/devices?limit=200&sort=last_seen&order=desc", args.devices)]
            with httpx.Client(base_url=hub.url, timeout=60) as c:
                for label, path, total in cases:
                    times = []
                    for _ in range(args.repeat):
                        t = time.perf_counter()
                        r = c.get(path)
                        times.append(time.perf_counter() - t)
                        r.raise_for_status()
                    body = r.json()
                    if total is not None and body["total"] != total:
                        raise SystemExit(f"{label}: total {body['total']} != seeded {total}")
                    print(f"{label:<32} median {statistics.median(times) * 1000:7.1f} ms  "
                          f"max {max(times) * 1000:7.1f} ms  rows {len(body.get('devices', []))}")
        finally:
            hub.stop()
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
