"""Open Inference Protocol v2 (KServe/Triton REST): metadata, readiness and ``infer``.

``{name}`` accepts the same references as the rest of the hub (``name``,
``name@alias``); ``/versions/{v}`` pins a version. Supported: the JSON tensor
format (``data`` flat or nested, row-major) and Triton's binary tensor data
extension (``Inference-Header-Content-Length``; ``binary_data_size`` on
inputs, ``binary_data`` / ``binary_data_output`` for outputs) which
``tritonclient.http`` uses by default.

A feature model takes either its packed input tensor (e.g. ``X``, FP32,
``[n, n_features]``) or one tensor per feature named like the features
(shape ``[n]`` or ``[n, 1]``). It answers with the engine's raw outputs plus
post-processed ``probability`` (FP64), ``class`` (BYTES/INT64) and
``risk_level`` (BYTES) — the same numbers as ``/v1/.../predict``. Errors are
``{"error": "...", "code", "field"}`` with 400 (bad tensor) or 404 (unknown
model/version).
"""

from __future__ import annotations

import struct
import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloud_hub.api.deps import HubDep, Viewer
from cloud_hub.api.predict import ORJSONResponse, authorize
from cloud_hub.inference import PartResult, PredictRequest, PredictResult, Target, _utc_now
from edge_runtime.errors import EdgeError, ValidationError

router = APIRouter(tags=["open inference protocol v2"])

SERVER_NAME = "edgefleet-hub"
HEADER_LEN = "inference-header-content-length"

OIP_TO_NP = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
             "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
             "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
NP_TO_OIP = {np.dtype(v).str: k for k, v in OIP_TO_NP.items()}
CONTRACT_TO_OIP = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32",
                   "int8": "INT8", "uint8": "UINT8", "bool": "BOOL", "float16": "FP16"}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad tensor (name, datatype, shape, data)", "content": {"application/json": {
        "example": {"error": "input X: datatype FP64 does not match the model's FP32", "code": "invalid_tensor",
                    "field": "inputs[0].datatype"}}}},
    401: {"description": "Missing or invalid API key"}, 403: {"description": "Role not allowed"},
    404: {"description": "Unknown model or version"}, 413: {"description": "Body too large"},
}


class TensorError(ValidationError):
    status_code = 400
    code = "invalid_tensor"


# ---- metadata ------------------------------------------------------------------------------
@router.get("/v2", summary="OIP: server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": _version(), "extensions": ["binary_tensor_data"]}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgefleet")
    except PackageNotFoundError:
        return "0"


def _ref(name: str, version: str | None) -> str:
    if version is None:
        return name
    if "@" in name or ":" in name:
        raise TensorError("give either a model reference with @alias or /versions/{v}, not both",
                          field="version")
    return f"{name}:{version}"


def _metadata(mv, model) -> dict[str, Any]:
    eng = model.engine
    if model.codec is not None:
        spec = next(t for t in eng.inputs if t.name == model._feed_name)
        inputs = [{"name": spec.name, "datatype": CONTRACT_TO_OIP.get(spec.dtype, "FP32"),
                   "shape": [-1, model.codec.n]}]
    else:
        inputs = [{"name": t.name, "datatype": CONTRACT_TO_OIP.get(t.dtype, "FP32"),
                   "shape": [-1 if d is None else d for d in t.shape]} for t in model.contract.tensors]
    outputs = [{"name": o.name, "datatype": CONTRACT_TO_OIP.get(o.dtype, "FP32"),
                "shape": [-1 if d is None else d for d in o.shape] or [-1]} for o in eng.outputs]
    for name, dtype in _extra_outputs(model):
        if name not in {o["name"] for o in outputs}:
            outputs.append({"name": name, "datatype": dtype, "shape": [-1]})
    return {"name": mv.name, "versions": [mv.version], "platform": f"{mv.format}",
            "inputs": inputs, "outputs": outputs,
            "parameters": {"sha256": mv.digest, "task": mv.task, "aliases": mv.aliases,
                           "features": model.codec.names if model.codec is not None else []}}


def _extra_outputs(model) -> list[tuple[str, str]]:
    if model.codec is None:
        return []
    task = model.task
    out = []
    if task in ("binary_classification", "multiclass_classification"):
        out.append(("probability", "FP64"))
        ints = model.classes and all(isinstance(c, int) for c in model.classes)
        out.append(("class", "INT64" if (ints or not model.classes) else "BYTES"))
        if model.risk_levels:
            out.append(("risk_level", "BYTES"))
    elif task == "regression":
        out.append(("value", "FP64"))
    return out


@router.get("/v2/models/{name}", responses=ERRORS, summary="OIP: model metadata")
async def model_metadata(name: str, hub: HubDep, _: Viewer) -> dict[str, Any]:
    mv, model = await hub.inference.pair(_ref(name, None))
    meta = _metadata(mv, model)
    meta["versions"] = [v.version for v in hub.registry.versions(mv.name)]
    return meta


@router.get("/v2/models/{name}/versions/{version}", responses=ERRORS, summary="OIP: model version metadata")
async def version_metadata(name: str, version: str, hub: HubDep, _: Viewer) -> dict[str, Any]:
    mv, model = await hub.inference.pair(_ref(name, version))
    return _metadata(mv, model)


@router.get("/v2/models/{name}/ready", responses=ERRORS, summary="OIP: model ready (loads it if needed)")
async def model_ready(name: str, hub: HubDep, _: Viewer) -> dict[str, Any]:
    mv, _m = await hub.inference.pair(_ref(name, None))
    return {"name": mv.name, "version": mv.version, "ready": True}


@router.get("/v2/models/{name}/versions/{version}/ready", responses=ERRORS, summary="OIP: model version ready")
async def version_ready(name: str, version: str, hub: HubDep, _: Viewer) -> dict[str, Any]:
    mv, _m = await hub.inference.pair(_ref(name, version))
    return {"name": mv.name, "version": mv.version, "ready": True}


# ---- infer ---------------------------------------------------------------------------------
_INFER_DOC = {"requestBody": {"required": True, "content": {"application/json": {"example": {
    "id": "42", "inputs": [{"name": "X", "shape": [1, 3], "datatype": "FP32", "data": [0.1, 0.2, 0.3]}],
    "outputs": [{"name": "probability"}]}}}}}


@router.post("/v2/models/{name}/infer", responses=ERRORS, summary="OIP: inference",
             response_class=ORJSONResponse, openapi_extra=_INFER_DOC)
async def infer(name: str, request: Request) -> Response:
    hub = request.app.state.hub
    await authorize(request, hub, "client")
    return await _infer(hub, request, _ref(name, None))


@router.post("/v2/models/{name}/versions/{version}/infer", responses=ERRORS,
             summary="OIP: inference on a version", response_class=ORJSONResponse, openapi_extra=_INFER_DOC)
async def infer_version(name: str, version: str, request: Request) -> Response:
    hub = request.app.state.hub
    await authorize(request, hub, "client")
    return await _infer(hub, request, _ref(name, version))


async def _infer(hub, request: Request, ref: str) -> Response:
    svc = hub.inference
    started = time.perf_counter()
    model_name = ref.split("@")[0].split(":")[0]
    mv = None
    try:
        raw = await request.body()
        header, binary = _split_body(raw, request.headers.get(HEADER_LEN))
        mv, model = await svc.pair(ref)
        arrays = _decode_inputs(header, binary)
        t0 = time.perf_counter()
        if model.codec is not None:
            x = _feature_matrix(model, arrays)
            scores = await svc.score(mv, model, x)
            outs = _feature_outputs(model, scores, _wanted(header))
        else:
            x = None
            feeds = _tensor_feeds(model, arrays)
            raw_outs = model.engine.run(feeds)
            scores = model._scores(raw_outs)
            outs = {o.name: a for o, a in zip(model.engine.outputs, raw_outs)}
        latency = time.perf_counter() - t0
        body, tail = _encode_outputs(header, outs)
    except Exception as exc:  # counted, then the app's handlers answer (4xx JSON / opaque 500)
        code = exc.code if isinstance(exc, EdgeError) else "internal_error"
        svc.metrics.observe_error(model_name, "oip", code)
        if not isinstance(exc, EdgeError) or exc.status_code >= 500:  # the model's failure, not the caller's
            svc.metrics.observe_model_error(model_name, "" if mv is None else mv.version, "", "oip", code)
        raise
    resp: dict[str, Any] = {"model_name": mv.name, "model_version": mv.version, "outputs": body}
    if "id" in header:
        resp["id"] = header["id"]
    n = len(next(iter(outs.values()))) if outs else 0
    svc.metrics.observe_predict(mv.name, mv.version, "", "oip", n, time.perf_counter() - started)
    if svc.observers and x is not None:
        req = PredictRequest(ref=ref, name=mv.name, rows=[], keys=None, key_field=None,
                             request_id=request.scope["state"]["request_id"], endpoint="oip",
                             started=started)
        part = PartResult(Target(ref), mv, model, x, scores, [], latency)
        svc.notify(PredictResult(req, [part], [], _utc_now()))
    js = orjson.dumps(resp)
    if not tail:
        return Response(js, media_type="application/json")
    return Response(js + b"".join(tail), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(js))})


def _split_body(raw: bytes, header_len: str | None) -> tuple[dict[str, Any], bytes]:
    if not raw:
        raise TensorError("empty body: send an inference request object", field="body")
    if header_len is not None:
        try:
            n = int(header_len)
        except ValueError:
            n = -1
        if n < 0 or n > len(raw):
            raise TensorError(f"Inference-Header-Content-Length {header_len!r} does not fit the body "
                              f"of {len(raw)} bytes", field="Inference-Header-Content-Length")
        js, binary = raw[:n], raw[n:]
    else:
        js, binary = raw, b""
    try:
        header = orjson.loads(js)
    except orjson.JSONDecodeError as exc:
        raise TensorError(f"body is not valid JSON: {exc}", field="body") from exc
    if not isinstance(header, dict):
        raise TensorError("inference request must be a JSON object", field="body")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise TensorError("'inputs' must be a non-empty list of tensors", field="inputs")
    return header, binary


def _decode_inputs(header: dict[str, Any], binary: bytes) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(header["inputs"]):
        f = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise TensorError(f"{f} must be an object with name, shape, datatype, data", field=f)
        name, shape, dtype = t.get("name"), t.get("shape"), t.get("datatype")
        if not isinstance(name, str) or not name:
            raise TensorError(f"{f}.name is missing", field=f"{f}.name")
        if name in arrays:
            raise TensorError(f"input {name} is given twice", field=f"{f}.name")
        if dtype not in OIP_TO_NP:
            if dtype == "BYTES":
                raise TensorError(f"input {name}: BYTES tensors are not accepted by this model",
                                  field=f"{f}.datatype")
            raise TensorError(f"input {name}: unknown datatype {dtype!r} (one of "
                              f"{', '.join(OIP_TO_NP)})", field=f"{f}.datatype")
        if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                   and d >= 0 for d in shape)):
            raise TensorError(f"input {name}: shape must be a list of non-negative integers",
                              field=f"{f}.shape")
        count = int(np.prod(shape)) if shape else 1
        np_dtype = np.dtype(OIP_TO_NP[dtype])
        params = t.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise TensorError(f"input {name}: binary_data_size {size!r} does not fit the binary "
                                  "part of the body", field=f"{f}.parameters.binary_data_size")
            if size != count * np_dtype.itemsize:
                raise TensorError(f"input {name}: {size} bytes of binary data, shape {shape} of "
                                  f"{dtype} needs {count * np_dtype.itemsize}", field=f"{f}.shape")
            arr = np.frombuffer(binary, dtype=np_dtype, count=count, offset=offset).reshape(shape)
            offset += size
        else:
            if "data" not in t:
                raise TensorError(f"input {name}: 'data' is missing", field=f"{f}.data")
            try:
                raw = np.asarray(t["data"])  # numbers only: numpy would parse "1.5" into a float
            except (TypeError, ValueError) as exc:  # ragged nesting
                raise TensorError(f"input {name}: data is not a regular array: {exc}", field=f"{f}.data") from exc
            if raw.dtype.kind not in "fiub" or (raw.dtype.kind == "b" and np_dtype.kind != "b"):
                raise TensorError(f"input {name}: data must be {'booleans' if dtype == 'BOOL' else 'numbers'}",
                                  field=f"{f}.data")
            try:
                arr = raw.astype(np_dtype, copy=False)
            except (TypeError, ValueError, OverflowError) as exc:
                raise TensorError(f"input {name}: data is not {dtype}: {exc}", field=f"{f}.data") from exc
            if arr.size != count:
                raise TensorError(f"input {name}: {arr.size} values do not fill shape {shape} "
                                  f"({count} values)", field=f"{f}.shape")
            arr = arr.reshape(shape)
        arrays[name] = arr
    return arrays


def _feature_matrix(model, arrays: dict[str, np.ndarray]) -> np.ndarray:
    codec = model.codec
    feed = model._feed_name
    if feed in arrays:
        if len(arrays) != 1:
            extra = sorted(set(arrays) - {feed})
            raise TensorError(f"unknown input(s) {', '.join(extra)} next to {feed}", field=f"inputs.{extra[0]}")
        x = arrays[feed]
        want = np.dtype(codec.dtype)
        if x.dtype != want:
            raise TensorError(f"input {feed}: datatype {NP_TO_OIP.get(x.dtype.str, x.dtype.name)} does "
                              f"not match the model's {NP_TO_OIP.get(want.str, want.name)}",
                              field=f"inputs.{feed}.datatype")
        if x.ndim != 2 or x.shape[1] != codec.n or x.shape[0] == 0:
            raise TensorError(f"input {feed}: expected shape [n, {codec.n}] with n >= 1, got "
                              f"{list(x.shape)}", field=f"inputs.{feed}.shape")
    else:
        missing = [n for n in codec.names if n not in arrays]
        unknown = sorted(set(arrays) - set(codec.names))
        if unknown:
            raise TensorError(f"unknown input(s) {', '.join(unknown[:5])}: send {feed} "
                              f"[n, {codec.n}] or one tensor per feature", field=f"inputs.{unknown[0]}")
        if missing:
            raise TensorError(f"missing feature tensor(s) {', '.join(missing[:5])}",
                              field=f"inputs.{missing[0]}")
        cols = []
        n = None
        for name in codec.names:
            a = arrays[name]
            if a.dtype.kind not in "fiub":
                raise TensorError(f"input {name}: datatype must be numeric", field=f"inputs.{name}.datatype")
            if a.ndim == 2 and a.shape[1] == 1:
                a = a[:, 0]
            if a.ndim != 1 or a.shape[0] == 0:
                raise TensorError(f"input {name}: expected shape [n] or [n, 1], got {list(a.shape)}",
                                  field=f"inputs.{name}.shape")
            if n is None:
                n = a.shape[0]
            elif a.shape[0] != n:
                raise TensorError(f"input {name}: {a.shape[0]} rows, other features have {n}",
                                  field=f"inputs.{name}.shape")
            cols.append(a.astype(np.float64, copy=False))
        x = np.stack(cols, axis=1)
    _check_contract(codec, x, feed)
    return np.ascontiguousarray(x, dtype=codec.dtype)


def _check_contract(codec, x: np.ndarray, feed: str) -> None:
    """The same NaN and range rules the row codec applies to JSON rows."""
    if x.dtype.kind != "f":
        return
    if codec.any_reject_nan:
        bad = np.argwhere(np.isnan(x) & codec.reject_nan)
        if len(bad):
            r, c = bad[0]
            raise TensorError(f"{feed}[{r}][{c}] ({codec.names[c]}): NaN is not allowed for this feature",
                              field=f"inputs.{codec.names[c]}")
    if codec.has_range:
        with np.errstate(invalid="ignore"):
            out = (x < codec.mins) | (x > codec.maxs)
        if out.any():
            r, c = np.argwhere(out)[0]
            raise TensorError(f"{feed}[{r}][{c}] ({codec.names[c]}): {x[r, c]:g} is outside "
                              f"[{codec.mins[c]:g}, {codec.maxs[c]:g}]", field=f"inputs.{codec.names[c]}")


def _tensor_feeds(model, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from edge_runtime.codec import check_shape

    specs = model.contract.tensors
    known = {s.name for s in specs}
    unknown = sorted(set(arrays) - known)
    if unknown:
        raise TensorError(f"unknown input(s) {', '.join(unknown)}", field=f"inputs.{unknown[0]}")
    feeds = {}
    for spec in specs:
        if spec.name not in arrays:
            raise TensorError(f"missing input {spec.name}", field=f"inputs.{spec.name}")
        a = arrays[spec.name]
        if a.dtype != np.dtype(spec.dtype):
            raise TensorError(f"input {spec.name}: datatype {NP_TO_OIP.get(a.dtype.str)} does not match the "
                              f"model's {CONTRACT_TO_OIP.get(spec.dtype)}", field=f"inputs.{spec.name}.datatype")
        try:
            check_shape(spec, a.shape, f"inputs.{spec.name}.shape")
        except ValidationError as exc:
            raise TensorError(exc.message, field=exc.field) from exc
        feeds[spec.name] = a
    return feeds


def _feature_outputs(model, s, wanted: set[str] | None) -> dict[str, Any]:
    """Raw engine outputs, plus post-processed ones; only what the request asks for is built."""
    outs: dict[str, Any] = {o.name: a for o, a in zip(model.engine.outputs, s.raw)}

    def want(name: str) -> bool:
        return name not in outs and (wanted is None or name in wanted)

    if s.probability is not None:
        if want("probability"):
            outs["probability"] = s.probability.astype(np.float64, copy=False)
        if want("class"):
            idx = s.label_index
            if model.classes:
                classes = np.asarray(model.classes, dtype=object)
                ints = all(isinstance(c, int) for c in model.classes)
                outs["class"] = classes[idx].astype(np.int64) if ints else classes[idx]
            else:
                outs["class"] = np.asarray(idx, dtype=np.int64)
        if model.risk_levels and want("risk_level"):
            outs["risk_level"] = np.asarray([model.risk_level(p) or "" for p in s.probability.tolist()],
                                            dtype=object)
    elif s.value is not None and want("value"):
        outs["value"] = s.value.astype(np.float64, copy=False)
    return outs


def _wanted(header: dict[str, Any]) -> set[str] | None:
    w = header.get("outputs")
    if not isinstance(w, list):
        return None
    return {o.get("name") for o in w if isinstance(o, dict)}


def _encode_outputs(header: dict[str, Any], outs: dict[str, np.ndarray]) -> tuple[list[dict], list[bytes]]:
    params = header.get("parameters") or {}
    binary_all = bool(params.get("binary_data_output")) if isinstance(params, dict) else False
    wanted = header.get("outputs")
    if wanted is None:
        order = [(n, binary_all) for n in outs]
    else:
        if not isinstance(wanted, list):
            raise TensorError("'outputs' must be a list of {name}", field="outputs")
        order = []
        for i, o in enumerate(wanted):
            name = o.get("name") if isinstance(o, dict) else None
            if name not in outs:
                raise TensorError(f"unknown output {name!r} (outputs: {', '.join(outs)})",
                                  field=f"outputs[{i}].name")
            p = o.get("parameters") or {}
            order.append((name, bool(p.get("binary_data", binary_all)) if isinstance(p, dict) else binary_all))
    body, tail = [], []
    for name, binary in order:
        a = np.asarray(outs[name])
        if a.dtype == object or a.dtype.kind in "US":
            dtype = "BYTES"
        else:
            dtype = NP_TO_OIP.get(a.dtype.str, "FP64")
            if dtype == "FP64" and a.dtype.kind not in "f":
                a = a.astype(np.float64)
        entry: dict[str, Any] = {"name": name, "datatype": dtype, "shape": list(a.shape)}
        if binary:
            if dtype == "BYTES":
                raw = b"".join(struct.pack("<I", len(b)) + b for b in
                               (str(v).encode() for v in a.reshape(-1).tolist()))
            else:
                raw = np.ascontiguousarray(a).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = [str(v) for v in a.reshape(-1).tolist()] if dtype == "BYTES" else a.reshape(-1).tolist()
        body.append(entry)
    return body, tail
