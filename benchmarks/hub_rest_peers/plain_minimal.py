"""The minimal hand-written endpoint of issue 17: a list of floats → ``session.run`` → probabilities.

Usage: python plain_minimal.py MODEL.onnx PORT [WORKERS]
Body ``{"features": [f1, f2, ...]}`` → ``{"probabilities": [...]}``. No auth, no metrics, no
access log, no request id, no input contract: the floor a framework-free service sets.
Same FastAPI, uvicorn, uvloop and httptools as the hub.
"""

import os
import sys

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

MODEL = os.environ.get("PLAIN_MODEL") or sys.argv[1]
so = ort.SessionOptions()
so.intra_op_num_threads = 1
sess = ort.InferenceSession(MODEL, sess_options=so, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0].name
app = FastAPI()


class Features(BaseModel):
    features: list[float]


@app.post("/predict")
async def predict(req: Features) -> dict:
    _label, proba = sess.run(None, {inp: np.array([req.features], dtype=np.float32)})
    return {"probabilities": proba[0].tolist()}


if __name__ == "__main__":
    import uvicorn

    port, workers = int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1
    os.environ["PLAIN_MODEL"] = MODEL
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    uvicorn.run(
        "plain_minimal:app" if workers > 1 else app,
        host="127.0.0.1",
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
