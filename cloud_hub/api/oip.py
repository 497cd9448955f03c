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
``risk_level`` (BYTES) — the same numbers as ``/v1/.../predict``.

A thin adapter: tensors are decoded here, then the request goes through
:class:`cloud_hub.inference.PredictService` like ``/v1`` (routing, the bundle's
contract check, engine, post-processing, shadow mirroring, metrics and error
observers with endpoint ``oip``). Errors are ``{"error": "...", "code", "field"}``:
400 for a bad tensor (name, datatype, shape), 422 for a value the contract
refuses — the same ``code`` and ``field`` (``rows[3].tenure``) as ``/v1`` —
and 404 for an unknown model/version.
"""

from __future__ import annotations

import math
import struct
import time
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloud_hub.api.deps import HubDep, Viewer
from cloud_hub.api.predict import ORJSONResponse, authorize
from cloud_hub.inference import PredictRequest, PredictResult, new_request_id
from cloud_hub.registry import parse_ref
from edge_runtime.contract import Refusal
from edge_runtime.errors import ValidationError

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
    if model.codec is not None and any(k.name == "string" for k in model.codec.kinds):
        # text features: one tensor per feature (BYTES for text, issue 12)
        oip_of = {"string": "BYTES", "bool": "BOOL"}
        inputs = [{"name": f.name, "datatype": oip_of.get(f.dtype, "FP64"), "shape": [-1]}
                  for f in model.manifest.inputs.features]
    elif model.codec is not None:
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
    return [] if model.codec is None else model.post.column_types()


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
    body, media_type, headers = await infer_bytes(
        hub, ref, await request.body(), header_len=request.headers.get(HEADER_LEN),
        request_id=request.scope["state"].get("request_id") or new_request_id())
    return Response(body, media_type=media_type, headers=headers)


async def infer_bytes(hub, ref: str, raw: bytes, *, header_len: str | None, request_id: str,
                      started: float | None = None) -> tuple[bytes, str, dict[str, str] | None]:
    """decode (tensors) → PredictService (routing, contract, engine, post-processing,
    observers, metrics: the same as ``/v1``) → encode (tensors). Returns the body, its media type
    and the extra headers; shared by the routes and the app's fast path."""
    svc = hub.inference
    started = time.perf_counter() if started is None else started
    try:
        header, binary = _split_body(raw, header_len)
        arrays = _decode_inputs(header, binary)
        _mv, model = await svc.pair(ref)  # the model whose inputs the tensors describe
        req = PredictRequest(ref=ref, name=parse_ref(ref).name, rows=[], keys=None, key_field=None,
                             request_id=request_id, endpoint="oip", started=started)
        if model.codec is not None:
            req.x, req.decoded = _feature_matrix(model, arrays)
            req.names = model.codec.names
        else:
            req.tensors = _tensor_feeds(model, arrays)
    except Exception as exc:  # counted like /v1, then the app's handlers answer (4xx JSON / opaque 500)
        svc.count_failure(ref, "oip", exc)
        raise
    result = await svc.predict(req)
    try:
        body, tail = _encode_outputs(header, _outputs(result, _wanted(header)))
    except Exception as exc:
        svc.count_failure(ref, "oip", exc)
        raise
    mv = result.primary.version
    resp: dict[str, Any] = {"model_name": mv.name, "model_version": mv.version, "outputs": body}
    if "id" in header:
        resp["id"] = header["id"]
    js = orjson.dumps(resp)
    if not tail:
        return js, "application/json", None
    return (js + b"".join(tail), "application/octet-stream",
            {"Inference-Header-Content-Length": str(len(js))})


def _outputs(result: PredictResult, wanted: set[str] | None) -> dict[str, np.ndarray]:
    """Raw engine outputs plus the post-processed columns, in request row order."""
    parts = result.parts
    if len(parts) == 1 and parts[0].target.rows is None:
        return _part_outputs(parts[0], wanted)
    n = result.request.n_rows
    merged: dict[str, np.ndarray] = {}
    for p in parts:
        outs = _part_outputs(p, wanted)
        if merged and set(outs) != set(merged):
            raise TensorError("the routed models answer with different outputs; ask for the ones "
                              "they share with 'outputs'", field="outputs")
        for name, a in outs.items():
            a = np.asarray(a)
            if name not in merged:
                merged[name] = np.empty((n, *a.shape[1:]), dtype=a.dtype)
            merged[name][p.target.rows] = a
    return merged


def _part_outputs(p, wanted: set[str] | None) -> dict[str, np.ndarray]:
    model = p.model
    outs: dict[str, Any] = {o.name: a for o, a in zip(model.engine.outputs, p.scores.raw)}
    if model.codec is not None:
        extra = model.post.columns(p.scores, lambda n: n not in outs and (wanted is None or n in wanted))
        outs.update(extra)
    return outs


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


@dataclass
class Tensor:
    """One decoded input: its values, the datatype the client declared, and the values it
    could not hold (JSON data: a string, a boolean in a numeric tensor; flat index → reason)."""

    array: np.ndarray
    datatype: str
    bad: dict[int, str] = field(default_factory=dict)


def _decode_inputs(header: dict[str, Any], binary: bytes) -> dict[str, Tensor]:
    """Input tensors by name. JSON data of a floating datatype stays float64 (1e39 is not
    silently inf before the contract sees it); null is NaN (the contract's NaN policy)."""
    arrays: dict[str, Tensor] = {}
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
        if dtype == "BYTES":  # text: one tensor per text feature (issue 12)
            arrays[name], offset = _bytes_tensor(t, name, f, shape, binary, offset)
            continue
        if dtype not in OIP_TO_NP:
            raise TensorError(f"input {name}: unknown datatype {dtype!r} (one of "
                              f"{', '.join(OIP_TO_NP)})", field=f"{f}.datatype")
        if (not isinstance(shape, list) or len(shape) > 32
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 2**31 - 1
                           for d in shape)):
            raise TensorError(f"input {name}: shape must be a list of at most 32 integers in "
                              "[0, 2^31-1]", field=f"{f}.shape")
        count = math.prod(shape)  # exact: np.prod wraps around on int64 overflow
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
            arrays[name] = Tensor(np.frombuffer(binary, dtype=np_dtype, count=count, offset=offset)
                                  .reshape(shape), dtype)
            offset += size
        else:
            if "data" not in t:
                raise TensorError(f"input {name}: 'data' is missing", field=f"{f}.data")
            arrays[name] = _json_data(t["data"], name, f, dtype, np_dtype, count, shape)
    return arrays


def _bytes_tensor(t: dict[str, Any], name: str, f: str, shape: Any, binary: bytes,
                  offset: int) -> tuple[Tensor, int]:
    """A BYTES tensor (JSON strings, or the binary form: 4-byte little-endian length + bytes
    per element) → an object array of str; the contract decides if the model takes text."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise TensorError(f"input {name}: shape must be a list of integers", field=f"{f}.shape")
    count = math.prod(shape)
    params = t.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise TensorError(f"input {name}: binary_data_size {size!r} does not fit the binary "
                              "part of the body", field=f"{f}.parameters.binary_data_size")
        chunk, vals, pos = binary[offset:offset + size], [], 0
        while pos + 4 <= len(chunk) and len(vals) < count:
            k = int.from_bytes(chunk[pos:pos + 4], "little")
            vals.append(chunk[pos + 4:pos + 4 + k].decode("utf-8", "replace"))
            pos += 4 + k
        if len(vals) != count or pos != len(chunk):
            raise TensorError(f"input {name}: binary BYTES data does not hold {count} elements",
                              field=f"{f}.shape")
        return Tensor(np.array(vals, dtype=object).reshape(shape), "BYTES"), offset + size
    if "data" not in t:
        raise TensorError(f"input {name}: 'data' is missing", field=f"{f}.data")
    flat, _types = _flatten(t["data"], name, f)
    if len(flat) != count:
        raise TensorError(f"input {name}: {len(flat)} values do not fill shape {shape} "
                          f"({count} values)", field=f"{f}.shape")
    return Tensor(np.array(flat, dtype=object).reshape(shape), "BYTES"), offset


def _json_data(data: Any, name: str, f: str, dtype: str, np_dtype: np.dtype, count: int,
               shape: list[int]) -> Tensor:
    flat, types = _flatten(data, name, f)
    if len(flat) != count:
        raise TensorError(f"input {name}: {len(flat)} values do not fill shape {shape} "
                          f"({count} values)", field=f"{f}.shape")
    if np_dtype.kind == "b":
        if not types <= {bool}:
            raise TensorError(f"input {name}: data must be booleans", field=f"{f}.data")
        return Tensor(np.array(flat, dtype=bool).reshape(shape), dtype)
    target = np.float64 if np_dtype.kind == "f" else np_dtype  # narrowed after the contract check
    if types <= {int, float}:
        try:
            arr = np.array(flat, dtype=target)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TensorError(f"input {name}: data is not {dtype}: {exc}", field=f"{f}.data") from exc
        return Tensor(arr.reshape(shape), dtype)
    # nulls, strings, booleans: NaN in the array, the reason per value for the contract
    arr = np.full(count, np.nan)
    bad: dict[int, str] = {}
    for i, v in enumerate(flat):
        t = type(v)
        if t is int or t is float:
            arr[i] = v
        elif v is not None:
            bad[i] = f"expected a number, got {_JSON_TYPE.get(t, t.__name__)}"
    return Tensor(arr.reshape(shape), dtype, bad)


_JSON_TYPE = {bool: "bool", str: "str", dict: "object"}


def _flatten(data: Any, name: str, f: str) -> tuple[list[Any], set[type]]:
    """Nested JSON lists → one flat row-major list and the set of its element types (the
    shape is checked by the caller). One C-level pass per nesting level."""
    if not isinstance(data, list):
        return [data], {type(data)}
    flat = data
    for _ in range(32):
        types = set(map(type, flat))
        if list not in types:
            return flat, types
        if len(types) != 1:  # lists next to numbers: not a regular array
            raise TensorError(f"input {name}: data is not a regular array", field=f"{f}.data")
        flat = list(chain.from_iterable(flat))
    raise TensorError(f"input {name}: data is nested too deeply", field=f"{f}.data")


def _empty() -> ValidationError:
    """An empty batch: the same refusal as ``/v1`` gives ``{"rows": []}``."""
    return ValidationError("rows is empty: send at least one row", field="rows")


_OIP_OF_DTYPE: dict[np.dtype, str] = {}


def _oip_datatype(dtype: np.dtype) -> str:
    """The OIP datatype of a contract's numpy dtype (``dtype.name`` is a slow property: cached)."""
    got = _OIP_OF_DTYPE.get(dtype)
    if got is None:
        got = _OIP_OF_DTYPE[dtype] = CONTRACT_TO_OIP.get(dtype.name, dtype.name)
    return got


def _feature_matrix(model, arrays: dict[str, Tensor]) -> tuple[np.ndarray, dict[int, Refusal]]:
    """Feature tensors → (n, k) numeric matrix in contract order and the refusals of values
    the tensors could not hold (type problems). The contract check itself runs in
    PredictService, for the model each row is routed to."""
    codec = model.codec
    feed = model._feed_name
    decoded: dict[int, Refusal] = {}
    if feed in arrays:
        if len(arrays) != 1:
            extra = sorted(set(arrays) - {feed})
            raise TensorError(f"unknown input(s) {', '.join(extra)} next to {feed}", field=f"inputs.{extra[0]}")
        t = arrays[feed]
        x = t.array
        want = _oip_datatype(codec.dtype)
        if t.datatype != want:
            raise TensorError(f"input {feed}: datatype {t.datatype} does not match the model's {want}",
                              field=f"inputs.{feed}.datatype")
        if x.ndim != 2 or x.shape[1] != codec.n:
            raise TensorError(f"input {feed}: expected shape [n, {codec.n}], got "
                              f"{list(x.shape)}", field=f"inputs.{feed}.shape")
        if x.shape[0] == 0:
            raise _empty()
        for i, why in sorted(t.bad.items(), reverse=True):  # the first bad value of a row wins
            r, c = divmod(i, codec.n)
            decoded[r] = Refusal(r, codec.names[c], why)
        return x, decoded
    missing = [n for n in codec.names if n not in arrays]
    unknown = sorted(set(arrays) - set(codec.names))
    if unknown:
        raise TensorError(f"unknown input(s) {', '.join(unknown[:5])}: send {feed} "
                          f"[n, {codec.n}] or one tensor per feature", field=f"inputs.{unknown[0]}")
    if missing:  # every row lacks the feature: the contract's refusal, like /v1
        raise Refusal(0, missing[0], f"missing feature(s) {', '.join(missing)}", True).error()
    cols = []
    n = None
    for j, name in enumerate(codec.names):
        t = arrays[name]
        a = t.array
        if a.ndim == 2 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim != 1:
            raise TensorError(f"input {name}: expected shape [n] or [n, 1], got {list(a.shape)}",
                              field=f"inputs.{name}.shape")
        if a.shape[0] == 0:
            raise _empty()
        if n is None:
            n = a.shape[0]
        elif a.shape[0] != n:
            raise TensorError(f"input {name}: {a.shape[0]} rows, other features have {n}",
                              field=f"inputs.{name}.shape")
        problems = dict(t.bad)
        kind = codec.kinds[j]
        if kind.name == "string":  # text → its category code; unknown / not text refused
            if t.datatype != "BYTES":
                raise TensorError(f"input {name}: a text feature takes a BYTES tensor, got "
                                  f"{t.datatype}", field=f"inputs.{name}.datatype")
            a, text_bad = kind.decode_column(a)
            problems.update(text_bad)
        elif t.datatype == "BYTES":
            raise TensorError(f"input {name}: BYTES tensors are only for text features",
                              field=f"inputs.{name}.datatype")
        bad, why = kind.refused_in(a) if a.dtype.kind == "b" else (None, "")
        if bad is not None:  # a BOOL tensor for a number feature
            problems.update((int(r), why) for r in np.flatnonzero(bad))
        for r, reason in problems.items():
            decoded.setdefault(r, Refusal(r, name, reason))  # per row, the first feature wins
        cols.append(a.astype(np.float64, copy=False))
    return np.stack(cols, axis=1), decoded


def _tensor_feeds(model, arrays: dict[str, Tensor]) -> dict[str, np.ndarray]:
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
        t = arrays[spec.name]
        if t.datatype != CONTRACT_TO_OIP.get(spec.dtype):
            raise TensorError(f"input {spec.name}: datatype {t.datatype} does not match the "
                              f"model's {CONTRACT_TO_OIP.get(spec.dtype)}", field=f"inputs.{spec.name}.datatype")
        if t.bad:
            i, why = min(t.bad.items())
            raise TensorError(f"input {spec.name}: value {i}: {why}", field=f"inputs.{spec.name}.data")
        a = t.array
        if a.dtype != np.dtype(spec.dtype):
            if a.dtype.kind == "f" and np.isnan(a).any():
                raise TensorError(f"input {spec.name}: null is not a {spec.dtype} value",
                                  field=f"inputs.{spec.name}.data")
            with np.errstate(over="ignore", invalid="ignore"):
                a = a.astype(spec.dtype)
        try:
            check_shape(spec, a.shape, f"inputs.{spec.name}.shape")
        except ValidationError as exc:
            raise TensorError(exc.message, field=exc.field) from exc
        feeds[spec.name] = a
    return feeds


def _wanted(header: dict[str, Any]) -> set[str] | None:
    w = header.get("outputs")
    if not isinstance(w, list):
        return None
    return {o["name"] for o in w if isinstance(o, dict) and isinstance(o.get("name"), str)}


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
            if not isinstance(name, str):
                raise TensorError(f"outputs[{i}].name must be a string", field=f"outputs[{i}].name")
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
