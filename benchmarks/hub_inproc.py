"""CPU time per request of the hub's ``/v1`` predict and ``/v2`` infer routes, in process.

The ASGI app is called directly on one event loop (no socket, no HTTP client, access log
off), so what is measured is the code a request runs: routing, decoding, the bundle's
contract, the engine, post-processing, encoding. CPU time (``time.process_time``) is far less
disturbed by other work on a shared machine than wall time; to compare two code trees, run
them at the same time (same load), e.g.::

    (cd /tmp/base && PYTHONPATH=/tmp/base python benchmarks/hub_inproc.py --json before.json) &
    (cd /tmp/after && PYTHONPATH=/tmp/after python benchmarks/hub_inproc.py --json after.json) &
    wait

Model (``--model``): the ``benchmarks/hub_rest.py`` ones — ``cancer`` (StandardScaler +
LogisticRegression, 30 float features) or ``gbdt`` (GradientBoosting, 100 trees, 5 features,
issue 17). Bodies: one row and 64 rows, ``/v1`` JSON rows and ``/v2`` JSON tensors (``X``,
FP32). The hub runs with API keys on (every call sends ``Authorization: Bearer``), metrics
and request ids; ``plain`` is the minimal hand-written endpoint
(``benchmarks/hub_rest_peers/plain_minimal.py``: ``{"features": [...]}`` → ``session.run``)
called the same way, one row. Reported: the best of ``--reps`` runs of ``--requests``
requests, µs of CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.hub_rest import build_bundle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests per timed run")
    ap.add_argument("--reps", type=int, default=5, help="timed runs per body (the best counts)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--model", choices=["cancer", "gbdt"], default="cancer")
    args = ap.parse_args()

    from cloud_hub.app import create_app
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings

    work = Path(tempfile.mkdtemp(prefix="hub-inproc-"))
    from benchmarks.hub_rest import API_KEY

    m = args.model
    bundle, names, x = build_bundle(work, m)
    k = len(names)
    hub = Hub(HubSettings(data_dir=work / "hub", admin_keys=[API_KEY], trusted_keys=[work / "keys" / "bench.pub"]))
    hub.registry.push(bundle, aliases=["champion"])
    app = create_app(hub)
    import os

    os.environ["PLAIN_MODEL"] = str(bundle / "model.onnx")
    sys.path.insert(0, str(Path(__file__).resolve().parent / "hub_rest_peers"))
    import plain_minimal

    logging.disable(logging.INFO)
    rows = [dict(zip(names, map(float, r))) for r in x[:64]]
    bodies = {
        "v1": (app, f"/v1/models/{m}/predict", {"rows": rows[:1]}),
        "v2": (app, f"/v2/models/{m}/infer", {"inputs": [{"name": "X", "shape": [1, k], "datatype": "FP32",
                                                          "data": x[0].tolist()}],
                                              "outputs": [{"name": "label"}, {"name": "probabilities"}]}),
        "v1_64rows": (app, f"/v1/models/{m}/predict", {"rows": rows}),
        "v2_64rows": (app, f"/v2/models/{m}/infer", {"inputs": [{"name": "X", "shape": [64, k],
                                                                 "datatype": "FP32", "data": x[:64].tolist()}]}),
        "plain": (plain_minimal.app, "/predict", {"features": x[0].tolist()}),
    }

    async def call(target, path: str, body: bytes) -> int:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "headers": [(b"content-type", b"application/json"),
                                              (b"content-length", str(len(body)).encode()),
                                              (b"host", b"bench"),
                                              (b"authorization", f"Bearer {API_KEY}".encode())],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}
        sent = False

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        status: list[int] = []

        async def send(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                status.append(msg["status"])

        await target(scope, receive, send)
        return status[0]

    async def run() -> dict[str, float]:
        out = {}
        async with app.router.lifespan_context(app):
            for name, (target, path, obj) in bodies.items():
                body = json.dumps(obj).encode()
                for _ in range(300):  # warm up (and check the answer is a 200)
                    assert await call(target, path, body) == 200, name
                best = None
                for _ in range(args.reps):
                    t0 = time.process_time()
                    for _ in range(args.requests):
                        await call(target, path, body)
                    us = (time.process_time() - t0) / args.requests * 1e6
                    best = us if best is None else min(best, us)
                out[name] = round(best, 1)
        return out

    try:
        res = asyncio.run(run())
    finally:
        hub.close()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res))
    if args.json:
        args.json.write_text(json.dumps(res))


if __name__ == "__main__":
    main()
