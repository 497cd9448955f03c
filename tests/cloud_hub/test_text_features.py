"""Issue 12 end to end in the hub: the churn bundle (text categories, missing numbers, a
boolean) and an IsolationForest bundle (task ``anomaly``) answer like scikit-learn through
``/v1``, OIP (BYTES tensors), batch (Parquet and CSV text columns) and stream JSON."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "converters"))
from churn import FEATURES, churn_frame, churn_pipeline

from converters.export import ExportConfig, export_model

TOL = 1e-4


@pytest.fixture(scope="module")
def churn(tmp_path_factory, keypair):
    model = churn_pipeline("gboost")
    out = tmp_path_factory.mktemp("churn") / "bundle"
    export_model(model, churn_frame(), out, ExportConfig(key=keypair[0], label_column="churn",
                                                         name="churn"))
    return model, out


@pytest.fixture(scope="module")
def anomaly(tmp_path_factory, keypair, cancer_data):
    from sklearn.ensemble import IsolationForest

    x, _, names = cancer_data
    import pandas as pd

    frame = pd.DataFrame(x, columns=names)
    model = IsolationForest(n_estimators=50, random_state=0).fit(frame)
    out = tmp_path_factory.mktemp("iso") / "bundle"
    export_model(model, frame, out, ExportConfig(key=keypair[0], name="iso"))
    return model, out, frame


def _rows(n: int = 40) -> list[dict]:
    rows = json.loads(churn_frame()[FEATURES].head(n).to_json(orient="records"))
    rows[0]["contract"] = "weekly"  # a category the model never saw: ignored like sklearn
    return rows


def _want(model, rows):
    import pandas as pd

    frame = pd.DataFrame(rows, columns=FEATURES).astype({"tenure": float,
                                                         "total_charges": float})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.predict_proba(frame)[:, 1], list(model.predict(frame))


def test_v1_text_categories_and_refusals(churn, server):
    import httpx

    model, bundle = churn
    url, hub = server
    hub.registry.push(bundle)
    rows = _rows()
    r = httpx.post(url + "/v1/models/churn/predict", json={"rows": rows}, timeout=30)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    p, labels = _want(model, rows)
    np.testing.assert_allclose([g["probability"] for g in preds], p, atol=TOL)
    assert [g["label"] for g in preds] == labels
    r = httpx.post(url + "/v1/models/churn/predict",
                   json={"rows": [{**rows[1], "internet": 3}]}, timeout=30)
    assert r.status_code == 422 and r.json()["field"] == "rows[0].internet"
    r = httpx.post(url + "/v1/models/churn/predict",
                   json={"rows": [{**rows[1], "senior": "no"}]}, timeout=30)
    assert r.status_code == 422 and r.json()["field"] == "rows[0].senior"


def test_oip_bytes_tensors_per_feature(churn, server):
    import httpx

    model, bundle = churn
    url, hub = server
    hub.registry.push(bundle)
    rows = _rows(10)
    inputs = []
    for f in FEATURES:
        vals = [r[f] for r in rows]
        if f in ("contract", "internet", "payment"):
            inputs.append({"name": f, "datatype": "BYTES", "shape": [10], "data": vals})
        elif f == "senior":
            inputs.append({"name": f, "datatype": "BOOL", "shape": [10], "data": vals})
        else:
            inputs.append({"name": f, "datatype": "FP64", "shape": [10], "data": vals})
    meta = httpx.get(url + "/v2/models/churn", timeout=30).json()
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
        **{f: "FP64" for f in ("tenure", "monthly_charges", "total_charges")},
        "contract": "BYTES", "internet": "BYTES", "payment": "BYTES", "senior": "BOOL"}
    r = httpx.post(url + "/v2/models/churn/infer", json={"inputs": inputs}, timeout=30)
    assert r.status_code == 200, r.text
    out = {o["name"]: o["data"] for o in r.json()["outputs"]}
    p, labels = _want(model, rows)
    np.testing.assert_allclose(out["probability"], p, atol=TOL)
    assert out["class"] == labels
    inputs[3] = {"name": "contract", "datatype": "FP32", "shape": [10], "data": [0.0] * 10}
    r = httpx.post(url + "/v2/models/churn/infer", json={"inputs": inputs}, timeout=30)
    assert r.status_code == 400 and "BYTES" in r.json()["error"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_batch_text_columns(churn, tmp_path, keypair, fmt):
    from cloud_hub.batch import BatchSpec, run_batch

    model, bundle = churn
    df = churn_frame().head(300).copy()
    df.insert(0, "customer_id", [f"c{i}" for i in range(len(df))])
    df.loc[5, "payment"] = "cash"  # unseen: scored like the model (handle_unknown="ignore")
    src = tmp_path / f"in.{fmt}"
    table = pa.Table.from_pandas(df.drop(columns="churn"), preserve_index=False)
    if fmt == "parquet":
        pq.write_table(table, src)
    else:
        df.drop(columns="churn").to_csv(src, index=False)
    out = tmp_path / "out.parquet"
    res = run_batch(BatchSpec(str(bundle), str(src), str(out), id_columns=["customer_id"],
                              batch_size=128, public_keys=[str(keypair[1])]))
    assert res.status == "succeeded" and res.rows_rejected == 0, res
    got = pq.read_table(out).to_pandas()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = model.predict_proba(df[FEATURES])[:, 1]
    np.testing.assert_allclose(got["score"].to_numpy(), want, atol=TOL)
    assert list(got["label"].astype(str)) == list(model.predict(df[FEATURES]))


def test_stream_json_text_and_anomaly(churn, anomaly):
    from types import SimpleNamespace

    from cloud_hub.stream.transport import InMessage
    from cloud_hub.stream.worker import StreamWorker
    from edge_runtime.model import Model

    # process() is the worker's whole scoring path; the transports (tested with real brokers
    # in tests/stream) only deliver the bytes, so only the source's url is needed here
    src = SimpleNamespace(url="test://churn")
    model, bundle = churn
    rows = _rows(20)
    w = StreamWorker(Model.load(bundle), src, None, None)
    msgs = [InMessage(json.dumps({"key": f"k{i}", "features": r}).encode())
            for i, r in enumerate(rows)]
    msgs.append(InMessage(json.dumps({"key": "bad", "features": {**rows[2], "contract": 1}})
                          .encode()))
    out, dead = w.process(msgs)
    assert len(out) == 20 and len(dead) == 1
    assert json.loads(dead[0])["field"].endswith("contract")
    p, labels = _want(model, rows)
    recs = [json.loads(o) for o in out]
    np.testing.assert_allclose([r["probability"] for r in recs], p, atol=TOL)
    assert [r["label"] for r in recs] == labels

    iso, ibundle, frame = anomaly
    w = StreamWorker(Model.load(ibundle), src, None, None)
    rows = json.loads(frame.head(30).to_json(orient="records"))
    out, dead = w.process([InMessage(json.dumps({"key": i, "features": r}).encode())
                           for i, r in enumerate(rows)])
    recs = [json.loads(o) for o in out]
    want = iso.decision_function(frame.head(30))
    np.testing.assert_allclose([r["score"] for r in recs], want, atol=TOL)
    labels = ["anomaly" if v == -1 else "normal" for v in iso.predict(frame.head(30))]
    assert [r["label"] for r in recs] == labels
    assert [r["flag"] for r in recs] == [lab == "anomaly" for lab in labels]


def test_anomaly_on_v1_oip_and_batch(anomaly, server, tmp_path, keypair):
    import httpx

    from cloud_hub.batch import BatchSpec, run_batch

    iso, bundle, frame = anomaly
    url, hub = server
    hub.registry.push(bundle)
    rows = json.loads(frame.head(25).to_json(orient="records"))
    want = iso.decision_function(frame.head(25))
    labels = ["anomaly" if v == -1 else "normal" for v in iso.predict(frame.head(25))]
    assert "anomaly" in labels and "normal" in labels
    r = httpx.post(url + "/v1/models/iso/predict", json={"rows": rows}, timeout=30)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    np.testing.assert_allclose([g["score"] for g in preds], want, atol=TOL)
    assert [g["label"] for g in preds] == labels
    x = frame.head(25).to_numpy(np.float32)
    r = httpx.post(url + "/v2/models/iso/infer", json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]},
        timeout=30)
    assert r.status_code == 200, r.text
    out = {o["name"]: o["data"] for o in r.json()["outputs"]}
    np.testing.assert_allclose(out["score"], want, atol=TOL)
    assert out["class"] == labels
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pandas(frame.head(200), preserve_index=False), src)
    res = run_batch(BatchSpec(str(bundle), str(src), str(tmp_path / "o.parquet"),
                              public_keys=[str(keypair[1])]))
    assert res.status == "succeeded"
    got = pq.read_table(tmp_path / "o.parquet").to_pandas()
    np.testing.assert_allclose(got["score"], iso.decision_function(frame.head(200)), atol=TOL)
    assert list(got["label"].astype(str)) == ["anomaly" if v == -1 else "normal"
                                              for v in iso.predict(frame.head(200))]
