"""CPU time of one local API request in process: the daemon's own code, without the kernel's share.

Builds the 5-64-64-2 MLP bundle of ``edge_latency.py``, starts a :class:`Daemon` with it, and
sends one keep-alive ``POST /predict`` (one row) at a time over a ``socketpair`` straight into
the local API's connection code (``LocalApi._serve``: framing, the contract, the engine,
post-processing, JSON, the answer's ``send``) — no epoll wake-up and no loopback TCP, which
``local_api_load.py`` measures with the rest. Reports µs of CPU per request (best of
``--reps`` runs of ``--requests``) and, with ``--profile``, the share of each part from one
cProfile run (cProfile inflates small calls: read the shares, not the absolute figures).

    python benchmarks/local_api_inproc.py [--requests 20000] [--reps 3] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edge_latency import build_bundle

FEATURES = ["mean_radius_z", "mean_texture_z", "mean_perimeter_z", "mean_area_z", "mean_smoothness_z"]
PARTS = {  # cProfile function name fragments → part
    "local_api.py:_simple_head": "framing", "h11": "framing",
    "contract.py": "contract", "codec.py": "contract",
    "onnxruntime": "engine", "engines/": "engine",
    "postprocess.py": "post-processing",
    "json": "JSON", "decode_json": "JSON", "_response": "JSON",
    "send": "socket send/recv", "recv": "socket send/recv",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    from edge_runtime import local_api
    from edge_runtime.daemon import Daemon
    from edge_runtime.settings import load_settings
    from edge_runtime.signing import generate_keypair

    tmp = Path(tempfile.mkdtemp(prefix="local-api-inproc-"))
    key, pub = generate_keypair(tmp / "fleet.key", tmp / "fleet.pub")
    bundle = build_bundle(tmp / "mlp", key)
    d = Daemon(load_settings(local_api={"port": 0}, store={"public_key": str(pub)},
                             device={"profile": "x86-gateway"}), bundle=bundle).start()
    api = d.api
    row = json.dumps({"rows": [{f: 0.1 * i for i, f in enumerate(FEATURES)}]}).encode()
    request = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(row)) + row
    client, server = socket.socketpair()
    server.setblocking(False)
    conn = local_api._Conn(server, time.monotonic(), 30.0)

    def one() -> bytes:
        client.send(request)
        conn.busy = True
        api._serve(conn, local_api._IN)
        return client.recv(65536)

    try:
        answer = one()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        for _ in range(2000):
            one()
        best = None
        for _ in range(args.reps):
            c0 = time.process_time()
            for _ in range(args.requests):
                one()
            us = (time.process_time() - c0) / args.requests * 1e6
            best = us if best is None else min(best, us)
        out = {"cpu_us_per_request": round(best, 1), "requests": args.requests, "reps": args.reps,
               "load_avg_1m": round(os.getloadavg()[0], 2)}
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.requests):
                one()
            prof.disable()
            stats = pstats.Stats(prof).stats
            total = sum(v[2] for v in stats.values())  # tottime
            shares: dict[str, float] = {}
            for (path, _line, name), v in stats.items():
                where = f"{path}:{name}"
                part = next((p for frag, p in PARTS.items() if frag in where), "bookkeeping")
                shares[part] = shares.get(part, 0.0) + v[2]
            out["profile_share"] = {k: round(v / total, 3) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}
        print(json.dumps(out, indent=2))
    finally:
        client.close()
        d.stop()


if __name__ == "__main__":
    main()
