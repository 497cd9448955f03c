"""The JetStream scoring worker a user writes by hand: nats-py pull consumer → JSON → ONNX Runtime →
results published to a JetStream subject (each confirmed) → inputs acknowledged.

Usage: python plain_nats.py MODEL.onnx NATS_URL IN_SUBJECT OUT_SUBJECT BATCH FEATURE [FEATURE ...]

The same delivery rule as ``cloud-hub stream`` (an input is acknowledged only after its result is
stored), nothing else: no contract check (a missing or non-numeric feature crashes the batch), no
dead letters, no metrics. Prints "ready" once subscribed.
"""

import asyncio
import json
import sys

import nats
import numpy as np
import onnxruntime as ort


async def main() -> None:
    model, url, subj_in, subj_out, batch = sys.argv[1:6]
    names = sys.argv[6:]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(subj_in, durable="plain")
    print("ready", flush=True)
    while True:
        try:
            msgs = await sub.fetch(int(batch), timeout=1)
        except nats.errors.TimeoutError:
            continue
        rows = [json.loads(m.data) for m in msgs]
        x = np.array([[r["features"][f] for f in names] for r in rows], dtype=np.float32)
        proba = sess.run(None, {feed: x})[-1][:, 1]
        await asyncio.gather(*(
            js.publish(subj_out, json.dumps({"key": r["key"], "probability": float(p), "ts": r.get("ts")}).encode())
            for r, p in zip(rows, proba)))
        await asyncio.gather(*(m.ack() for m in msgs))


if __name__ == "__main__":
    asyncio.run(main())
