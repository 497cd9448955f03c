"""Online inference data plane: resolve a reference, run the Model, tell observers.

Transport-neutral (REST ``/predict``, Open Inference Protocol and anything
else call :class:`PredictService`), with two hooks for champion/challenger and
shadow deployments (``cloud_hub/routing``, ``cloud_hub/shadow``):

* a **router** (``set_router``): ``route(request) -> list[Target] | None``
  decides which reference (and group name) answers which rows, e.g. by a
  stable hash of the entity key. ``None`` means "the reference as given".
* **observers** (``add_observer``): ``fn(result)`` is called after the answer
  is computed, on the event loop, with the encoded inputs and vectorised
  scores; it must not block (the shadow mirror puts the result on a bounded
  queue and returns). An observer that raises is logged and counted, never
  seen by the client.
* **error observers** (``add_error_observer``): ``fn(failure)`` is called when
  the model a request was routed to fails (:class:`PredictFailure`: request,
  target with its group, version when known, exception, error code), so the
  champion/challenger stats and the per-group Prometheus counter
  ``hub_predict_model_errors`` see a failing challenger. What counts as a model
  failure: any error with HTTP status >= 500 (engine run failure, model load
  failure, an unexpected exception), and for a *routed* target (one with a
  group) a failure before its rows reach the model (its alias cannot be
  resolved or its bundle loaded, or it takes raw tensors): the client asked for
  the bare model name and cannot fix that. Client errors (4xx: a bad row, a
  missing feature, an unknown model asked for directly) are the caller's fault
  and only go to ``hub_predict_errors``. Nothing of this runs on success.

Small models run inline on the event loop (a thread hop costs more than the
model); a model whose recent calls average above ``inline_max_ms`` runs in a
worker thread so it cannot stall other requests. With ``microbatch`` on,
concurrent requests for the same bundle are merged into one engine call
(adaptive: a lone request never waits).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edge_runtime.contract import Refusal
from edge_runtime.errors import EdgeError, ValidationError
from edge_runtime.model import Model, Scores

if TYPE_CHECKING:
    from cloud_hub.hub import Hub
    from cloud_hub.registry import ModelVersion

log = logging.getLogger("cloud_hub.inference")


@dataclass
class Target:
    """Who answers: a model reference, the group name reported to clients, which rows."""

    ref: str
    group: str | None = None
    rows: list[int] | None = None  # indices into the request's rows; None = all


@dataclass
class PredictRequest:
    """One request, decoded by its transport: JSON ``rows`` (``/v1``), or a numeric feature
    matrix ``x`` with its column ``names`` and the refusals its decoder found (OIP
    tensors), or raw ``tensors`` (OIP, raw-tensor models). The contract check runs in
    :meth:`PredictService.predict`, against the model each row is routed to."""

    ref: str                       # the reference the client asked for
    name: str                      # model name part of ref
    rows: list[dict[str, Any]]     # feature rows (entity key removed); [] for matrix/tensor input
    keys: list[Any] | None         # entity key value per row (None when no key field)
    key_field: str | None
    request_id: str
    endpoint: str = "predict"      # predict | oip
    started: float = field(default_factory=time.perf_counter)
    x: np.ndarray | None = None    # decoded feature matrix (columns: names), not yet checked
    names: list[str] | None = None
    decoded: dict[int, Refusal] | None = None  # refusals found while decoding x
    tensors: dict[str, np.ndarray] | None = None  # raw-tensor input

    @property
    def n_rows(self) -> int:
        if self.x is not None:
            return len(self.x)
        if self.tensors is not None:
            return len(next(iter(self.tensors.values()))) if self.tensors else 0
        return len(self.rows)

    def row_dicts(self, idx: list[int] | None = None) -> list[dict[str, Any]]:
        """The rows as feature dicts (segments of shadow records); built from x for matrix input."""
        if self.x is None:
            return self.rows if idx is None else [self.rows[i] for i in idx]
        x = self.x if idx is None else self.x[idx]
        names = self.names or []
        return [dict(zip(names, r)) for r in x.tolist()]


@dataclass
class PartResult:
    """The answer of one target for its rows."""

    target: Target
    version: ModelVersion
    model: Model
    x: np.ndarray | None   # encoded inputs, contract order (reusable by a shadow); None: raw tensors
    scores: Scores
    latency_s: float
    _predictions: list[dict[str, Any]] | None = None

    @property
    def predictions(self) -> list[dict[str, Any]]:
        """One dict per row (built on first use: OIP answers from the scores directly)."""
        if self._predictions is None:
            self._predictions = self.model.post.rows(self.scores)
        return self._predictions

    @property
    def n(self) -> int:
        return len(self.scores.raw[0]) if self.scores.raw else 0


@dataclass
class PredictResult:
    request: PredictRequest
    parts: list[PartResult]
    timestamp: str
    _predictions: list[dict[str, Any]] | None = None

    @property
    def primary(self) -> PartResult:
        return self.parts[0]

    @property
    def predictions(self) -> list[dict[str, Any]]:
        """One dict per request row, in request order (group and version when split)."""
        if self._predictions is not None:
            return self._predictions
        req, parts = self.request, self.parts
        if len(parts) == 1 and parts[0].target.rows is None:
            predictions = parts[0].predictions
        else:
            predictions = [None] * req.n_rows  # type: ignore[list-item]
            for p in parts:
                idx = range(req.n_rows) if p.target.rows is None else p.target.rows
                for i, pred in zip(idx, p.predictions):
                    pred["group"] = p.target.group
                    pred["model_version"] = p.version.version
                    predictions[i] = pred
        if req.keys is not None:
            kf = req.key_field
            for pred, k in zip(predictions, req.keys):
                if k is not None:
                    pred[kf] = k
        self._predictions = predictions
        return predictions

    def to_dict(self) -> dict[str, Any]:
        p = self.parts[0]
        mv = p.version
        return {"request_id": self.request.request_id, "timestamp": self.timestamp,
                "model": {"name": mv.name, "version": mv.version, "sha256": mv.digest},
                "group": p.target.group, "predictions": self.predictions}


@dataclass
class PredictFailure:
    """The routed model failed for a request (see the module docstring for what counts)."""

    request: PredictRequest
    target: Target
    version: ModelVersion | None   # None when the reference could not be resolved
    error: BaseException
    code: str                      # EdgeError code, or "internal_error"
    latency_s: float               # from the target's start to the failure


class Router(Protocol):
    def route(self, request: PredictRequest) -> list[Target] | None: ...


Observer = Callable[[PredictResult], None]
ErrorObserver = Callable[[PredictFailure], None]


_RID_PREFIX = os.urandom(6).hex()
_rid_counter = itertools.count(1)


def new_request_id() -> str:
    """Unique per process (random prefix) and cheap: no syscall per request."""
    return f"{_RID_PREFIX}{next(_rid_counter):012x}"


def _timed_score(model: Model, x: np.ndarray) -> tuple[Scores, float]:
    t0 = time.perf_counter()
    s = model.score_array(x)
    return s, time.perf_counter() - t0


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class PredictService:
    def __init__(self, hub: Hub, *, inline_max_ms: float = 2.0) -> None:
        self.hub = hub
        self.models = hub.models
        self.metrics = hub.metrics
        self.router: Router | None = None
        self.observers: list[Observer] = []
        self.error_observers: list[ErrorObserver] = []
        self.inline_max_s = inline_max_ms / 1000.0
        self._cost: dict[str, float] = {}  # digest -> EWMA seconds per engine call
        s = hub.settings
        self.microbatch = bool(s.microbatch)
        self._batchers: dict[str, MicroBatcher] = {}
        self._turn_busy = False
        self._mb_size = max(1, int(s.microbatch_max_size))
        self._mb_wait = max(0.0, float(s.microbatch_max_wait_ms)) / 1000.0

    # ---- hooks ---------------------------------------------------------------------------
    def set_router(self, router: Router | None) -> None:
        self.router = router

    def add_observer(self, fn: Observer) -> None:
        self.observers.append(fn)

    def remove_observer(self, fn: Observer) -> None:
        if fn in self.observers:
            self.observers.remove(fn)

    def add_error_observer(self, fn: ErrorObserver) -> None:
        self.error_observers.append(fn)

    def remove_error_observer(self, fn: ErrorObserver) -> None:
        if fn in self.error_observers:
            self.error_observers.remove(fn)

    # ---- request parsing -----------------------------------------------------------------
    def parse(self, ref: str, body: Any, *, key_field: str | None = None,
              request_id: str | None = None) -> PredictRequest:
        """A JSON body ({"rows": [...]} or one row object) → PredictRequest."""
        from cloud_hub.registry import parse_ref

        name = parse_ref(ref).name
        if isinstance(body, dict) and "rows" in body:
            rows = body["rows"]
            for k in body:
                if k not in ("rows", "entity_key"):
                    raise ValidationError(f"unknown field {k!r}: send {{\"rows\": [...], "
                                          f"\"entity_key\": \"field\"}} or one row object", field=k)
            if "entity_key" in body:
                key_field = body["entity_key"]
            if isinstance(rows, dict):
                rows = [rows]
            elif not isinstance(rows, list):
                raise ValidationError("rows must be a list of objects", field="rows")
        elif isinstance(body, dict):
            rows = [body]
        else:
            raise ValidationError("body must be a JSON object: {\"rows\": [...]} or one row", field="body")
        if not rows:
            raise ValidationError("rows is empty: send at least one row", field="rows")
        if key_field is None and self.router is not None:
            key_field = getattr(self.router, "key_field", lambda _n: None)(name)
        keys = None
        if key_field is not None:
            if not isinstance(key_field, str) or not key_field:
                raise ValidationError("entity_key must name a field of the rows", field="entity_key")
            keys = []
            stripped = []
            for i, row in enumerate(rows):
                if not isinstance(row, dict):
                    raise ValidationError(f"rows[{i}] must be an object of feature values",
                                          field=f"rows[{i}]")
                if key_field in row:
                    row = dict(row)
                    keys.append(row.pop(key_field))
                else:
                    keys.append(None)
                stripped.append(row)
            rows = stripped
        return PredictRequest(ref=ref, name=name, rows=rows, keys=keys, key_field=key_field,
                              request_id=request_id or new_request_id())

    # ---- the data plane -------------------------------------------------------------------
    async def pair(self, ref: str) -> tuple[ModelVersion, Model]:
        hit = self.models.peek(ref)
        if hit is not None:
            return hit
        loaded = len(self.models.loaded())
        pair = await asyncio.to_thread(self.models.get, ref)
        if len(self.models.loaded()) != loaded:
            self.metrics.models_loaded.set(len(self.models.loaded()))
            self.metrics.model_loads.labels(pair[0].name, pair[0].version).inc()
        return pair

    async def score(self, mv: ModelVersion, model: Model, x: np.ndarray) -> Scores:
        """Encoded rows → Scores: inline, in a worker thread, or micro-batched."""
        if self.microbatch:
            b = self._batchers.get(mv.digest)
            if b is None:
                b = self._batchers[mv.digest] = MicroBatcher(
                    model, self._mb_size, self._mb_wait, self.metrics.microbatch_size.labels(mv.name, mv.version),
                    inline_max_s=self.inline_max_s)
            # The first request of an event-loop turn, with no batch queued or running, goes
            # straight to the engine (below); requests that become ready in the same turn, or
            # while a batch runs, are concurrent: they queue and share the next engine call.
            if self._turn_busy or not b.idle():
                return await b.submit(x)
            self._turn_busy = True
            asyncio.get_running_loop().call_soon(self._end_turn)
        cost = self._cost.get(mv.digest, 0.0)
        if cost <= self.inline_max_s:
            s, dt_s = _timed_score(model, x)
        else:
            s, dt_s = await asyncio.to_thread(_timed_score, model, x)
        # engine time only (not the thread hop), so a loaded machine does not push
        # small models off the inline path
        self._cost[mv.digest] = dt_s if cost == 0.0 else 0.9 * cost + 0.1 * dt_s
        return s

    async def predict(self, req: PredictRequest) -> PredictResult:
        """Run a decoded request through the router, the contract, the model(s), the
        post-processing and the observers — the same for every transport."""
        targets = None
        if self.router is not None:
            targets = self.router.route(req)
        if not targets:
            targets = [Target(req.ref)]
        parts: list[PartResult] = []
        t = mv = None
        t0 = req.started
        encoding = False  # True once the rows are the model's business (client errors possible)
        try:
            for t in targets:
                mv, encoding = None, False
                mv, model = await self.pair(t.ref)
                t0 = time.perf_counter()
                if req.tensors is not None:
                    if model.codec is not None or t.rows is not None:
                        raise ValidationError(f"{mv.name}:{mv.version} takes named features, not raw "
                                              "tensors", field="inputs")
                    encoding = True
                    s = await self.score_tensors(mv, model, req.tensors)
                    parts.append(PartResult(t, mv, model, None, s, time.perf_counter() - t0))
                    continue
                if model.codec is None:
                    raise ValidationError(f"{mv.name}:{mv.version} takes raw tensors; call "
                                          f"/v2/models/{mv.name}/infer instead", field="rows")
                encoding = True
                x = self._encode(req, model, t.rows)
                s = await self.score(mv, model, x)
                parts.append(PartResult(t, mv, model, x, s, time.perf_counter() - t0))
        except Exception as exc:
            self._failed(req, t, mv, exc, encoding, t0)
            raise
        total = time.perf_counter() - req.started
        for p in parts:
            self.metrics.observe_predict(p.version.name, p.version.version, p.target.group or "",
                                         req.endpoint, p.n, total)
        result = PredictResult(req, parts, _utc_now())
        self.notify(result)
        return result

    @staticmethod
    def _encode(req: PredictRequest, model: Model, idx: list[int] | None) -> np.ndarray:
        """The target's rows → the model's contract check → its input matrix."""
        if req.x is None:
            return model.codec.encode(req.rows if idx is None else [req.rows[i] for i in idx])
        if idx is None:
            return model.codec.check(req.x, req.names, req.decoded)
        decoded = None
        if req.decoded:
            pos = {r: j for j, r in enumerate(idx)}
            decoded = {pos[r]: ref for r, ref in req.decoded.items() if r in pos}
            decoded = {j: Refusal(j, ref.feature, ref.reason, ref.whole_row) for j, ref in decoded.items()}
        return model.codec.check(req.x[idx], req.names, decoded)

    async def score_tensors(self, mv: ModelVersion, model: Model, feeds: dict[str, np.ndarray]) -> Scores:
        """Raw tensors → Scores (inline for a fast model, else in a worker thread)."""
        def run() -> tuple[Scores, float]:
            t0 = time.perf_counter()
            s = model.post.scores(model.engine.run(feeds))
            return s, time.perf_counter() - t0

        cost = self._cost.get(mv.digest, 0.0)
        s, dt_s = run() if cost <= self.inline_max_s else await asyncio.to_thread(run)
        self._cost[mv.digest] = dt_s if cost == 0.0 else 0.9 * cost + 0.1 * dt_s
        return s

    def count_failure(self, ref: str, endpoint: str, exc: BaseException) -> None:
        """A request that failed before :meth:`predict` (decoding, its model's load): counted
        like a failure inside it (``hub_predict_errors``; a 5xx also as the model's error)."""
        is_edge = isinstance(exc, EdgeError)
        code = exc.code if is_edge else "internal_error"
        name = ref.split("@")[0].split(":")[0]
        self.metrics.observe_error(name, endpoint, code)
        if not is_edge or exc.status_code >= 500:
            version = ""
            try:
                version = self.models.resolve(ref).version
            except EdgeError:  # the failure being counted may be this one
                version = ""
            self.metrics.observe_model_error(name, version, "", endpoint, code)

    def _failed(self, req: PredictRequest, target: Target | None, mv: ModelVersion | None,
                exc: Exception, encoding: bool, t0: float) -> None:
        """Error path (never on success): count the failure and, when the model is at fault, tell
        the error observers with the group and version."""
        is_edge = isinstance(exc, EdgeError)
        code = exc.code if is_edge else "internal_error"
        self.metrics.observe_error(req.name, req.endpoint, code)
        status = exc.status_code if is_edge else 500
        if target is None or not (status >= 500 or (target.group is not None and not encoding)):
            return  # the caller's fault (bad rows, unknown model asked for directly)
        if mv is None:
            try:  # a load failure after a good resolve still names its version
                mv = self.models.resolve(target.ref)
            except EdgeError:
                mv = None
        self.metrics.observe_model_error(req.name, "" if mv is None else mv.version, target.group or "",
                                         req.endpoint, code)
        if not self.error_observers:
            return
        failure = PredictFailure(req, target, mv, exc, code, time.perf_counter() - t0)
        for fn in self.error_observers:
            try:
                fn(failure)
            except Exception:  # observers never change the error the client gets
                log.exception("predict error observer failed")

    def notify(self, result: PredictResult) -> None:
        for fn in self.observers:
            try:
                fn(result)
            except Exception:  # observers never break the primary answer
                log.exception("predict observer failed")

    async def predict_body(self, ref: str, body: Any, *, key_field: str | None = None,
                           request_id: str | None = None) -> PredictResult:
        try:
            req = self.parse(ref, body, key_field=key_field, request_id=request_id)
        except EdgeError as exc:
            self.count_failure(ref, "predict", exc)
            raise
        return await self.predict(req)

    def predict_sync(self, ref: str, rows: Any, *, key_field: str | None = None) -> PredictResult:
        """Blocking convenience for scripts and tests (runs its own event loop)."""
        return asyncio.run(self.predict_body(ref, rows if isinstance(rows, dict) else {"rows": rows},
                                             key_field=key_field))

    def _end_turn(self) -> None:
        self._turn_busy = False

    def close(self) -> None:
        for b in self._batchers.values():
            b.close()
        self._batchers.clear()


def slice_scores(s: Scores, a: int, b: int) -> Scores:
    return s.slice(a, b)


class MicroBatcher:
    """Merge concurrent ``submit(x)`` calls for one model into one engine call.

    Adaptive, without idling: the worker takes whatever is queued when it wakes, then
    lets the event loop run while each of its turns adds requests (requests the loop has
    already read reach ``submit`` a turn or two later) — at most ``max_wait`` — and stops
    at the first two turns that add nothing. Clients that wait for their answer before
    sending again (most HTTP clients) send nothing more until answered, so a timer wait
    would only leave the CPU idle. A batch whose estimated engine time (a per-row EWMA)
    is within ``inline_max_s`` runs inline, on the event loop: for a small model the
    thread hop costs more than the model; a slower batch runs in a worker thread so the
    loop keeps parsing (and queueing) the next requests meanwhile.
    """

    def __init__(self, model: Model, max_size: int, max_wait: float, size_metric=None, *,
                 inline_max_s: float = 0.002) -> None:
        self.model = model
        self.inline_max_s = inline_max_s
        self._cost = 0.0  # EWMA of the engine time of a lone request
        self.max_size = max_size
        self.max_wait = max_wait
        self.size_metric = size_metric
        self.queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._row_cost = 0.0  # EWMA of the engine time per row of a batch
        self._running = False

    def idle(self) -> bool:
        """Nothing queued and no batch running."""
        return not self._running and (self.queue is None or self.queue.empty())

    async def submit(self, x: np.ndarray) -> Scores:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self.queue = asyncio.Queue()
            self._loop = loop
            self._task = loop.create_task(self._run())
        fut = loop.create_future()
        self.queue.put_nowait((x, fut))
        return await fut

    async def _run(self) -> None:
        q = self.queue
        loop = asyncio.get_running_loop()
        while True:
            items = [await q.get()]
            self._running = True  # collecting: a request arriving meanwhile joins this batch
            rows = len(items[0][0])
            deadline = loop.time() + self.max_wait
            idle_turns = 0
            while rows < self.max_size:
                if not q.empty():
                    it = q.get_nowait()
                    items.append(it)
                    rows += len(it[0])
                    idle_turns = 0
                    continue
                if idle_turns >= 2 or loop.time() >= deadline:
                    break
                idle_turns += 1
                await asyncio.sleep(0)  # one loop turn: parsed requests join this batch
            xs = [it[0] for it in items]
            try:
                if len(xs) == 1 and self._cost <= self.inline_max_s:
                    # a lone request on a small model: no thread hop (it costs more than the model)
                    s, took = _timed_score(self.model, xs[0])
                    self._cost = took if self._cost == 0.0 else 0.9 * self._cost + 0.1 * took
                else:
                    x = xs[0] if len(xs) == 1 else np.concatenate(xs, axis=0)
                    if self._cost <= self.inline_max_s and 0.0 < self._row_cost * rows <= self.inline_max_s:
                        s, took = _timed_score(self.model, x)  # small batch, fast model: inline
                    else:  # the engine runs while the event loop parses the next requests
                        s, took = await asyncio.to_thread(_timed_score, self.model, x)
                    per_row = took / rows
                    self._row_cost = per_row if self._row_cost == 0.0 else 0.9 * self._row_cost + 0.1 * per_row
            except BaseException as exc:  # hand the error to every waiter
                self._running = False
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            self._running = False
            if self.size_metric is not None:
                self.size_metric.observe(rows)
            a = 0
            for xi, fut in items:
                b = a + len(xi)
                if not fut.done():
                    fut.set_result(s if len(items) == 1 else slice_scores(s, a, b))
                a = b

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

