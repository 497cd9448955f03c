"""The classic hand-written service: FastAPI + pydantic input model + onnxruntime.

Usage: python plain_fastapi.py MODEL.onnx FEATURES.json PORT
(what a team writes by hand, as in the deployment guide's churn API).
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from pydantic import create_model

model_path, features_path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(features_path) as fh:
    features = json.load(fh)
so = ort.SessionOptions()
so.intra_op_num_threads = 1
sess = ort.InferenceSession(model_path, sess_options=so, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0].name
Row = create_model("Row", **{f: (float, ...) for f in features})
app = FastAPI()


@app.post("/predict")
async def predict(row: Row):
    x = np.array([[getattr(row, f) for f in features]], dtype=np.float32)
    label, proba = sess.run(None, {inp: x})
    p = float(proba[0, 1])
    risk = "high" if p >= 0.7 else "medium" if p >= 0.4 else "low"
    return {"probability": p, "label": int(label[0]), "risk_level": risk, "model_version": "1.0.0",
            "prediction_timestamp": time.time()}


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
