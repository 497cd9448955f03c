"""One contract, one data plane: the same rows through every path give the same answer or the
same refusal (``code`` and the refused row/feature).

Paths: hub ``/v1`` (HTTP), OIP JSON (packed ``X`` tensor), OIP binary (one FP64/BOOL tensor per
feature, so NaN, ±inf and 1e39 are expressible), batch (Parquet → Parquet), stream (MQTT,
Mosquitto), the device's local API (HTTP) and in-process ``Model.predict``.

Each request holds two rows: a valid one, then the case's row, so a refusal must name row 1.
Request paths answer ``field == "rows[1].<feature>"``; per-row records (batch rejects, stream
dead letters) name the feature in ``field`` and the row by ``row_number`` / the message itself.
A Parquet column has one type for the whole file: a text, boolean or missing column refuses
the file up front (``code`` and ``field`` = the feature) — the batch case for those rows.
"""

from __future__ import annotations

import json
import math
import struct
import threading
import uuid

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edge_runtime import Model
from edge_runtime.errors import EdgeError

pytestmark = pytest.mark.timeout(240)

MISSING = object()


@pytest.fixture(scope="module")
def nan_bundle(tmp_path_factory, cancer_data, keypair):
    """The cancer model behind a mean imputer, its second feature declared ``nan: allow``."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edge_runtime.bundle import sign_bundle
    from tests.conftest import build_sklearn_bundle

    x, y, names = cancer_data
    est = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    out = build_sklearn_bundle(tmp_path_factory.mktemp("nan") / "b", est, x, names, key=keypair[0],
                               name="nanmodel")
    m = json.loads((out / "manifest.json").read_text())
    m["inputs"]["features"][1]["nan"] = "allow"
    (out / "manifest.json").write_text(json.dumps(m))
    sign_bundle(out, keypair[0])
    return out


def _cases(names):
    a, n = names[0], names[1]  # a refuses NaN, n allows it
    return {  # case → (feature, value, expected refusal: (feature, reason fragment) or None)
        "valid": (a, None, None),
        "nan_where_allowed": (n, math.nan, None),
        "nan_where_refused": (a, math.nan, (a, "missing value (null/NaN)")),
        "1e39": (a, 1e39, (a, "1e+39 is not allowed for this feature (not a finite float32)")),
        "+inf": (a, math.inf, (a, "inf is not allowed")),
        "-inf": (a, -math.inf, (a, "-inf is not allowed")),
        "string": (a, "12.5", (a, "expected a number, got str")),
        "missing": (a, MISSING, (a, "missing feature(s)")),
        "boolean": (a, True, (a, "expected a number, got bool")),
    }


# what each transport can carry (JSON has no ±inf; binary tensors and Parquet columns are typed)
JSON_CASES = {"valid", "nan_where_allowed", "nan_where_refused", "1e39", "string", "missing", "boolean"}
BINARY_CASES = {"valid", "nan_where_allowed", "nan_where_refused", "1e39", "+inf", "-inf", "missing",
                "boolean"}


def _rows(x, names, feature, value):
    good = dict(zip(names, map(float, x[0])))
    row = dict(zip(names, map(float, x[1])))
    if value is MISSING:
        del row[feature]
    elif value is not None:
        row[feature] = value
    return [good, row]


def _json_value(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def _json_rows(rows):
    return [{k: _json_value(v) for k, v in r.items()} for r in rows]


# ---- the paths: each returns ("ok", [(probability, label, risk)...]) or ("refused", code, row, feature, reason)
def _refused_field(body):
    field = body.get("field") or ""
    if field == "rows":
        return ("refused", body["code"], None, None, body["error"])
    row, _, feat = field.partition("].")
    return ("refused", body["code"], int(row.removeprefix("rows[")), feat, body["error"])


def _answers(preds):
    return ("ok", [(p["probability"], p["label"], p.get("risk_level")) for p in preds])


def path_model(model, rows):
    try:
        return _answers(model.predict(rows))
    except EdgeError as exc:
        return _refused_field(exc.to_dict())


def path_v1(http, rows):
    r = http.post("/v1/models/nanmodel/predict", json={"rows": _json_rows(rows)})
    return _answers(r.json()["predictions"]) if r.status_code == 200 else _refused_field(r.json())


def path_local_api(local, rows):
    r = local.post("/predict", json={"rows": _json_rows(rows)})
    return _answers(r.json()["predictions"]) if r.status_code == 200 else _refused_field(r.json())


def _oip_answer(outs):
    p, c, risk = outs["probability"], outs["class"], outs["risk_level"]
    return ("ok", [(float(a), b, r or None) for a, b, r in zip(p, c, risk)])


def path_oip_json(http, names, rows):
    if rows and any(set(r) != set(names) for r in rows):  # packed X: a missing feature is a tensor
        data = None  # of another shape; send one tensor per feature instead
        inputs = [{"name": f, "shape": [len(rows)], "datatype": "FP64",
                   "data": [_json_value(r[f]) for r in rows]} for f in names if all(f in r for r in rows)]
    else:
        data = [[_json_value(r[f]) for f in names] for r in rows]
        inputs = [{"name": "X", "shape": [len(rows), len(names)], "datatype": "FP32", "data": data}]
    r = http.post("/v2/models/nanmodel/infer", json={"inputs": inputs})
    if r.status_code != 200:
        return _refused_field(r.json())
    return _oip_answer({o["name"]: o["data"] for o in r.json()["outputs"]})


def path_oip_binary(http, names, rows):
    """Triton's binary extension, one tensor per feature (FP64; BOOL for a boolean column)."""
    header_inputs, blobs = [], []
    for f in names:
        if not all(f in r for r in rows):
            continue
        vals = [r[f] for r in rows]
        if any(isinstance(v, bool) for v in vals):
            arr = np.array([bool(v) for v in vals])
            dtype = "BOOL"
        else:
            arr, dtype = np.array(vals, dtype=np.float64), "FP64"
        raw = arr.tobytes()
        header_inputs.append({"name": f, "shape": [len(rows)], "datatype": dtype,
                              "parameters": {"binary_data_size": len(raw)}})
        blobs.append(raw)
    header = json.dumps({"inputs": header_inputs, "parameters": {"binary_data_output": True}}).encode()
    r = http.post("/v2/models/nanmodel/infer", content=header + b"".join(blobs),
                  headers={"Inference-Header-Content-Length": str(len(header)),
                           "Content-Type": "application/octet-stream"})
    if r.status_code != 200:
        return _refused_field(r.json())
    n = int(r.headers["Inference-Header-Content-Length"])
    head, tail = json.loads(r.content[:n]), r.content[n:]
    outs, off = {}, 0
    for o in head["outputs"]:
        size = o["parameters"]["binary_data_size"]
        raw = tail[off:off + size]
        off += size
        if o["datatype"] == "BYTES":
            vals, i = [], 0
            while i < len(raw):
                (k,) = struct.unpack_from("<I", raw, i)
                vals.append(raw[i + 4:i + 4 + k].decode())
                i += 4 + k
            outs[o["name"]] = vals
        else:
            dt = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64}[o["datatype"]]
            outs[o["name"]] = np.frombuffer(raw, dtype=dt).tolist()
    return _oip_answer(outs)


def path_batch(tmp, names, rows, keypair, bundle):
    from cloud_hub.batch import BatchSpec, run_batch

    cols = {}
    for f in names:
        vals = [r.get(f, MISSING) for r in rows]
        if any(v is MISSING for v in vals):
            continue
        if any(isinstance(v, bool) for v in vals):
            cols[f] = pa.array([bool(v) for v in vals])
        elif any(isinstance(v, str) for v in vals):
            cols[f] = pa.array([str(v) for v in vals])
        else:
            cols[f] = pa.array(vals, pa.float64())
    src = tmp / f"in-{uuid.uuid4().hex[:6]}.parquet"
    pq.write_table(pa.table(cols) if cols else pa.table({f: pa.array([], pa.float64()) for f in names}), src)
    out = tmp / f"out-{uuid.uuid4().hex[:6]}.parquet"
    try:
        res = run_batch(BatchSpec(str(bundle), str(src), str(out), public_keys=[str(keypair[1])]))
    except EdgeError as exc:  # the file is refused up front: the feature is the column
        return ("refused", exc.code, None, exc.field, exc.message)
    with open(res.rejects) as fh:
        rejects = [json.loads(ln) for ln in fh]
    if rejects:
        r = rejects[0]
        return ("refused", r["code"], r["row_number"], r["field"], r["reason"])
    t = pq.read_table(out).to_pylist()
    return ("ok", [(o["score"], o["label"], o["risk_level"]) for o in t])


@pytest.fixture(scope="module")
def local_api(nan_bundle, keypair):
    from edge_runtime.daemon import Daemon
    from edge_runtime.settings import load_settings

    settings = load_settings(local_api={"port": 0}, store={"public_key": str(keypair[1])})
    d = Daemon(settings, bundle=nan_bundle).start()
    with httpx.Client(base_url=f"http://{d.api.host}:{d.api.port}", timeout=30) as c:
        yield c
    d.stop()


@pytest.fixture
def stream(mosquitto, nan_bundle):
    """A stream worker on MQTT (Mosquitto); send(rows) → per row ("ok", pred) / dead letter."""
    from cloud_hub.stream.service import build_worker
    from cloud_hub.stream.worker import StreamOptions
    from tests.stream.conftest import MqttCollector, mqtt_forget_session, mqtt_publish, wait_until

    host, port = mosquitto
    base = f"test/contract-{uuid.uuid4().hex[:10]}"
    url = f"mqtt://{host}:{port}/"
    col = MqttCollector(host, port, [f"{base}/out", f"{base}/dlq"])
    w = build_worker(Model.load(nan_bundle), url + f"{base}/in", url + f"{base}/out", url + f"{base}/dlq",
                     StreamOptions(batch_size=16, max_wait_ms=1), group=base.replace("/", "_"), name="c")
    th = threading.Thread(target=w.run, daemon=True)
    th.start()
    sent = [0]

    def send(rows):
        keys = [f"m{sent[0] + i}" for i in range(len(rows))]
        sent[0] += len(rows)
        msgs = []
        for k, r in zip(keys, rows):
            try:
                msgs.append(json.dumps({"key": k, "features": _json_rows([r])[0]}, allow_nan=False).encode())
            except ValueError:
                return None  # not expressible in JSON (±inf)
        mqtt_publish(host, port, f"{base}/in", msgs)
        wait_until(lambda: sum(1 for d in col.decoded(f"{base}/out") + col.decoded(f"{base}/dlq")
                               if d.get("key") in keys or json.loads(d.get("payload", "{}")).get("key") in keys)
                   >= len(keys), 30, "stream answers")
        outs = {d["key"]: d for d in col.decoded(f"{base}/out") if d["key"] in keys}
        dead = {json.loads(d["payload"])["key"]: d for d in col.decoded(f"{base}/dlq")
                if json.loads(d["payload"]).get("key") in keys}
        for i, k in enumerate(keys):
            if k in dead:
                d = dead[k]
                return ("refused", d["code"], i, d["field"], d["reason"])
        return ("ok", [(outs[k]["probability"], outs[k]["label"], outs[k]["risk_level"]) for k in keys])

    yield send
    w.stop()
    th.join(timeout=10)
    w.close()
    col.close()
    mqtt_forget_session(host, port, f"cloudhub-{base.replace('/', '_')}-c")


def _row_of(path: str, case: str) -> int:
    """The refused row: 1, except where the transport carries a feature as one typed tensor
    for all rows (OIP: a missing feature tensor, a BOOL tensor) — then every row has the
    problem and the first one is named, as /v1 names the first bad row."""
    if path.startswith("oip") and case == "missing" or path == "oip_binary" and case == "boolean":
        return 0
    return 1


def test_same_rows_same_answer_or_same_refusal_on_every_path(server, nan_bundle, cancer_data, keypair,
                                                           local_api, stream, tmp_path):
    url, hub = server
    hub.registry.push(nan_bundle, aliases=["champion"])
    x, _, names = cancer_data
    model = Model.load(nan_bundle)
    with httpx.Client(base_url=url, timeout=30) as http:
        for case, (feature, value, refusal) in _cases(names).items():
            rows = _rows(x, names, feature, value)
            got = {"Model.predict": path_model(model, rows),
                   "oip_binary": path_oip_binary(http, names, rows) if case in BINARY_CASES else None,
                   "batch": path_batch(tmp_path, names, rows, keypair, nan_bundle)}
            if case in JSON_CASES:
                got.update({"/v1": path_v1(http, rows), "oip_json": path_oip_json(http, names, rows),
                            "local_api": path_local_api(local_api, rows), "stream": stream(rows)})
            got = {k: v for k, v in got.items() if v is not None}
            if refusal is None:
                want = got["Model.predict"]
                assert want[0] == "ok" and len(want[1]) == 2, (case, want)
                for path, g in got.items():
                    assert g[0] == "ok", (case, path, g)
                    for (p, lab, risk), (wp, wlab, wrisk) in zip(g[1], want[1]):
                        assert p == pytest.approx(wp, abs=1e-6) and str(lab) == str(wlab) and risk == wrisk, \
                            (case, path, g, want)
                continue
            want_feature, reason = refusal
            for path, g in got.items():
                assert g[0] == "refused", (case, path, g)
                _, code, row, feat, message = g
                assert code == "invalid_input", (case, path, g)
                assert feat == want_feature, (case, path, g)
                if path == "batch" and row is None:  # the typed column refuses the whole file
                    assert case in ("string", "missing", "boolean"), (case, g)
                    continue
                assert row == _row_of(path, case), (case, path, g)
                assert reason in message, (case, path, g)


def test_an_empty_batch_is_refused_alike(server, nan_bundle, cancer_data, local_api, keypair, tmp_path):
    url, hub = server
    hub.registry.push(nan_bundle, aliases=["champion"])
    _, _, names = cancer_data
    with httpx.Client(base_url=url, timeout=30) as http:
        got = {"Model.predict": path_model(Model.load(nan_bundle), []), "/v1": path_v1(http, []),
               "oip_json": path_oip_json(http, names, []), "oip_binary": path_oip_binary(http, names, []),
               "local_api": path_local_api(local_api, [])}
    for path, g in got.items():
        assert g[:4] == ("refused", "invalid_input", None, None), (path, g)
        assert "rows is empty" in g[4], (path, g)
    # a file with no rows: the job is refused, naming the input file
    assert path_batch(tmp_path, names, [], keypair, nan_bundle)[:4] == ("refused", "invalid_input", None, "input")
