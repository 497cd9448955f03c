"""``hub.shadow``: attach shadow versions and mirror requests to them off the critical path.

The predict route calls :meth:`ShadowService.mirror` after it has its answer.
``mirror`` is a dict lookup plus ``queue.put_nowait``: when the bounded queue
(``HUB_SHADOW_QUEUE_SIZE``) is full the request is dropped and counted — the
primary answer never waits for a shadow. Worker thread(s) run each shadow on
the same rows, build comparison records and hand them to a batching writer.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select

from cloud_hub.routing.writer import BatchWriter
from cloud_hub.shadow.segments import SegmentSpec, parse_segment, segment_values
from cloud_hub.shadow.tables import shadow_comparisons, shadow_targets
from edge_runtime.errors import NotFoundError, ValidationError
from edge_runtime.hashing import bucket

if TYPE_CHECKING:
    from cloud_hub.hub import Hub

log = logging.getLogger("cloud_hub.shadow")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class ShadowTarget:
    name: str
    version: str
    digest: str
    sample_rate: float
    segments: list[str]
    created_at: dt.datetime | None = None

    @property
    def specs(self) -> list[SegmentSpec]:
        return [parse_segment(s) for s in self.segments]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.digest,
                "sample_rate": self.sample_rate, "segments": list(self.segments),
                "created_at": self.created_at.isoformat() if self.created_at else None}


@dataclass
class MirrorItem:
    name: str
    request_id: str
    rows: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    primary_version: str
    primary_latency_ms: float
    tags: dict[str, Any] | None
    targets: list[tuple[ShadowTarget, list[SegmentSpec]]]
    row_ids: list[int] | None = None  # index of each row in the original request
    x: Any = None  # primary's encoded inputs (kept for observers that want them)
    feature_names: tuple[str, ...] | None = None


def bucket_of(output: Mapping[str, Any]) -> str | None:
    """Risk level when the model has them, else the score decile (probabilities)."""
    if output.get("risk_level") is not None:
        return str(output["risk_level"])
    p = output.get("probability")
    if p is None:
        return None
    return f"d{min(int(float(p) * 10), 9)}"


def decision_of(output: Mapping[str, Any]) -> str | None:
    lab = output.get("label")
    return None if lab is None else str(lab)


def score_of(output: Mapping[str, Any]) -> float | None:
    s = output.get("probability", output.get("value"))
    return None if s is None else float(s)


class ShadowService:
    def __init__(self, hub: Hub, *, queue_size: int | None = None, workers: int = 1,
                 max_batch: int = 32) -> None:
        self.hub = hub
        self.capacity = int(queue_size or getattr(hub.settings, "shadow_queue_size", 10_000))
        self._q: queue.Queue[MirrorItem | None] = queue.Queue(maxsize=self.capacity)
        self.n_workers = workers
        self.max_batch = max(1, int(max_batch))
        self.writer = BatchWriter(hub.engine, shadow_comparisons, name="shadow-writer")
        self._targets: dict[str, tuple[float, list[tuple[ShadowTarget, list[SegmentSpec]]]]] = {}
        self._ttl_s = 1.0
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.mirrored = 0
        self.dropped = 0
        self.processed = 0
        self.errors = 0
        self._busy = 0
        self.metrics = getattr(hub, "metrics", None)
        self._compared = self._changed = None
        self._metric_children: dict[tuple[str, str], tuple] = {}
        if self.metrics is not None:
            from prometheus_client import Counter, Gauge

            r = self.metrics.registry
            Gauge("hub_shadow_queue_capacity", "Size of the bounded shadow mirror queue.",
                  registry=r).set(self.capacity)
            self._compared = Counter("hub_shadow_compared", "Rows compared (primary vs shadow).",
                                     ["model", "version"], registry=r)
            self._changed = Counter("hub_shadow_decision_changed", "Compared rows whose decision changed.",
                                    ["model", "version"], registry=r)
        hub.on_close(self.close)

    def _children(self, labels: tuple[str, str]) -> tuple | None:
        """Cached metric children of one (model, shadow version): the worker's hot path."""
        if self.metrics is None:
            return None
        ch = self._metric_children.get(labels)
        if ch is None:
            m = self.metrics
            ch = (m.shadow_latency.labels(*labels), m.shadow_requests.labels(*labels),
                  m.shadow_errors.labels(*labels), self._compared.labels(*labels),
                  self._changed.labels(*labels))
            self._metric_children[labels] = ch
        return ch

    def _m(self, name: str):
        return getattr(self.metrics, name, None) if self.metrics is not None else None

    # ---- configuration -------------------------------------------------------------------
    def attach(self, name: str, ref: str, *, sample_rate: float = 1.0,
               segments: Sequence[str] = ()) -> ShadowTarget:
        """Attach version ``ref`` (``name:version`` / ``name@alias`` / version) as a shadow of ``name``."""
        if not 0.0 < sample_rate <= 1.0:
            raise ValidationError("sample_rate must be in (0, 1]", field="sample_rate")
        segs = [parse_segment(s).key for s in segments]
        if ":" not in ref and "@" not in ref:
            ref = f"{name}:{ref}"
        mv = self.hub.registry.resolve(ref)
        if mv.name != name:
            raise ValidationError(f"shadow {ref} is not a version of model {name}", field="ref")
        row = {"name": name, "version": mv.version, "digest": mv.digest, "sample_rate": sample_rate,
                   "segments": segs, "created_at": _now()}
        with self.hub.engine.begin() as conn:
            conn.execute(delete(shadow_targets).where(shadow_targets.c.name == name,
                                                      shadow_targets.c.version == mv.version))
            conn.execute(shadow_targets.insert().values(**row))
        self._targets.pop(name, None)
        self.hub.models.get(mv.ref)  # load now, not on the first mirrored request
        return ShadowTarget(**row)

    def detach(self, name: str, version: str) -> None:
        with self.hub.engine.begin() as conn:
            n = conn.execute(delete(shadow_targets).where(shadow_targets.c.name == name,
                                                          shadow_targets.c.version == version)).rowcount
        self._targets.pop(name, None)
        if not n:
            raise NotFoundError(f"model {name} has no shadow version {version}", field="version")

    def targets(self, name: str | None = None) -> list[ShadowTarget]:
        q = select(shadow_targets).order_by(shadow_targets.c.name, shadow_targets.c.version)
        if name is not None:
            q = q.where(shadow_targets.c.name == name)
        with self.hub.engine.connect() as conn:
            return [ShadowTarget(r.name, r.version, r.digest, r.sample_rate, list(r.segments or []), r.created_at)
                    for r in conn.execute(q)]

    def _cached_targets(self, name: str) -> list[tuple[ShadowTarget, list[SegmentSpec]]]:
        hit = self._targets.get(name)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self._ttl_s:
            return hit[1]
        ts = [(t, t.specs) for t in self.targets(name)]
        self._targets[name] = (now, ts)
        return ts

    # ---- hot path --------------------------------------------------------------------------
    def observe(self, result: Any) -> None:
        """Observer hook of :class:`cloud_hub.inference.PredictService`: mirror each answered part."""
        req = result.request
        if not self._cached_targets(req.name):
            return
        for p in result.parts:
            idx = None if p.target.rows is None else list(p.target.rows)
            rows = req.rows if idx is None else [req.rows[i] for i in idx]
            tags = {"group": p.target.group or "none", "endpoint": req.endpoint}
            self.mirror(req.name, req.request_id, rows, p.predictions, p.version.version,
                        p.latency_s * 1000.0, tags, row_ids=idx, x=p.x,
                        feature_names=tuple(p.model.codec.names) if p.model.codec is not None else None)

    def mirror(self, name: str, request_id: str, rows: Sequence[Mapping[str, Any]],
               outputs: Sequence[Mapping[str, Any]], primary_version: str, primary_latency_ms: float,
               tags: Mapping[str, Any] | None = None, *, row_ids: list[int] | None = None,
               x: Any = None, feature_names: tuple[str, ...] | None = None) -> bool:
        """Queue the request for the shadows of ``name``; never blocks. False = nothing queued."""
        targets = self._cached_targets(name)
        if not targets:
            return False
        chosen = [(t, s) for t, s in targets if t.version != primary_version
                  and (t.sample_rate >= 1.0 or bucket(request_id, f"shadow:{name}:{t.version}") < t.sample_rate)]
        if not chosen:
            return False
        self._ensure_workers()
        item = MirrorItem(name, request_id, list(rows), list(outputs), primary_version, primary_latency_ms,
                          dict(tags) if tags else None, chosen, row_ids, x, feature_names)
        try:
            self._q.put_nowait(item)
        except queue.Full:
            with self._lock:
                self.dropped += 1
            if (c := self._m("shadow_dropped")) is not None:
                c.labels(name).inc()
            return False
        with self._lock:
            self.mirrored += 1
        if (g := self._m("shadow_queue_depth")) is not None:
            g.set(self._q.qsize())
        return True

    # ---- workers ---------------------------------------------------------------------------
    def _ensure_workers(self) -> None:
        if self._threads:
            return
        with self._lock:
            if self._threads:
                return
            for i in range(self.n_workers):
                t = threading.Thread(target=self._work, name=f"shadow-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def _work(self) -> None:
        stop = False
        while not stop:
            item = self._q.get()
            if item is None:
                break
            items = [item]
            # Under load, take what else is queued and run each shadow once for all of it:
            # one engine call and one lock round-trip per batch instead of per request, so the
            # worker holds the GIL (shared with the primary) for less time per mirrored request.
            while len(items) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                items.append(nxt)
            with self._lock:
                self._busy += 1
            if (g := self._m("shadow_queue_depth")) is not None:
                g.set(self._q.qsize())
            try:
                groups: dict[tuple[str, str], list] = {}
                for it in items:
                    for target, specs in it.targets:
                        groups.setdefault((it.name, target.version), []).append((it, target, specs))
                for group in groups.values():
                    self._compare(group)
            except Exception:
                log.exception("shadow comparison failed for %s", item.name)
            finally:
                with self._lock:
                    self._busy -= 1
                    self.processed += len(items)

    def _compare(self, group: list[tuple[MirrorItem, ShadowTarget, list[SegmentSpec]]]) -> None:
        """Run one shadow on the rows of several mirrored requests; store one record per row.

        ``shadow_latency_ms`` of each request is the time of the engine call that answered it:
        exact when the worker keeps up (one request per call), an upper bound when it batched.
        """
        first, target, _ = group[0]
        err: str | None = None
        shadow_out: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        try:
            _, model = self.hub.models.get(f"{first.name}:{target.version}")
            if model.codec is None:
                raise ValidationError("shadow takes raw tensors, not feature rows", field="rows")
            names = tuple(model.codec.names)
            keep = set(names)
            rows: list[Mapping[str, Any]] = []
            for it, _, _ in group:
                if it.feature_names == names:  # same contract: the rows are valid as they are
                    rows.extend(it.rows)
                else:
                    rows.extend({k: v for k, v in r.items() if k in keep} for r in it.rows)
            shadow_out = model.predict(rows)  # (Model's single-row fast path applies to one row)
        except Exception as exc:  # noqa: BLE001  (recorded, never raised to the primary)
            err = f"{type(exc).__name__}: {getattr(exc, 'message', str(exc))}"[:300]
        latency_ms = (time.perf_counter() - t0) * 1000.0
        ch = self._children((first.name, target.version))
        if ch is not None:
            for _ in group:
                ch[0].observe(latency_ms / 1000.0)
            ch[1].inc(len(group))
        if err:
            if ch is not None:
                ch[2].inc(len(group))
            with self._lock:
                self.errors += len(group)
        now = _now()
        changed_n = compared = 0
        records = []
        k = 0
        for it, _, specs in group:
            for i, (row, p_out) in enumerate(zip(it.rows, it.outputs)):
                s_out = shadow_out[k] if k < len(shadow_out) else {}
                k += 1
                ps, ss = score_of(p_out), score_of(s_out)
                pd_, sd = decision_of(p_out), decision_of(s_out)
                changed = err is None and pd_ is not None and sd is not None and pd_ != sd
                changed_n += changed
                compared += err is None
                records.append({
                    "request_id": it.request_id, "row": it.row_ids[i] if it.row_ids else i,
                    "name": it.name, "primary_version": it.primary_version,
                    "shadow_version": target.version, "primary_score": ps, "shadow_score": ss,
                    "divergence": abs(ps - ss) if ps is not None and ss is not None else None,
                    "primary_decision": pd_, "shadow_decision": sd, "decision_changed": bool(changed),
                    "primary_bucket": bucket_of(p_out), "shadow_bucket": bucket_of(s_out) if s_out else None,
                    "primary_latency_ms": it.primary_latency_ms, "shadow_latency_ms": latency_ms,
                    "shadow_error": err, "segment": segment_values(specs, row, it.tags), "created_at": now})
        self.writer.put_many(records)
        if ch is not None and compared:
            ch[3].inc(compared)
            if changed_n:
                ch[4].inc(changed_n)

    # ---- status / reading ------------------------------------------------------------------
    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until the queue is empty, the workers idle and the records stored (tests, reports)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                idle = self._busy == 0
            if self._q.empty() and idle:
                return self.writer.flush(max(0.1, deadline - time.monotonic()))
            time.sleep(0.01)
        return False

    def status(self) -> dict[str, Any]:
        return {"queue_depth": self._q.qsize(), "queue_capacity": self.capacity, "mirrored": self.mirrored,
                "dropped": self.dropped, "processed": self.processed, "shadow_errors": self.errors,
                "records_written": self.writer.written, "records_dropped": self.writer.dropped,
                "workers": self.n_workers}

    def records(self, name: str, shadow_version: str | None = None, since: dt.datetime | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
        self.writer.flush()
        c = shadow_comparisons.c
        q = select(shadow_comparisons).where(c.name == name).order_by(c.id)
        if shadow_version:
            q = q.where(c.shadow_version == shadow_version)
        if since is not None:
            q = q.where(c.created_at >= since)
        if limit:
            q = q.limit(limit)
        with self.hub.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def report(self, name: str, *, shadow_version: str | None = None, since: dt.datetime | None = None,
               criteria: Mapping[str, Any] | None = None) -> dict[str, Any]:
        from pydantic import ValidationError as PydanticValidationError

        from cloud_hub.shadow.report import ReportCriteria, build_report

        try:
            crit = ReportCriteria(**(criteria or {}))
        except PydanticValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err.get("loc", ())) or "criteria"
            raise ValidationError(f"{field}: {err.get('msg')}", field=field) from exc
        recs = self.records(name, shadow_version, since)
        versions = sorted({r["shadow_version"] for r in recs})
        if shadow_version is None and not versions:
            attached = [t.version for t in self.targets(name)]
            if not attached:
                raise NotFoundError(f"model {name} has no shadow and no comparison records", field="name")
            versions = attached
        shadows = [build_report([r for r in recs if r["shadow_version"] == v], crit, shadow_version=v)
                   for v in (versions or [shadow_version])]
        verdict = ("PASS" if shadows and all(s["verdict"] == "PASS" for s in shadows)
                   else "FAIL" if any(s["verdict"] == "FAIL" for s in shadows) else "NOT_ENOUGH_DATA")
        return {"name": name, "since": since.isoformat() if since else None, "verdict": verdict,
                "criteria": crit.model_dump(), "shadows": shadows,
                "queue": self.status(), "generated_at": _now().isoformat()}

    def close(self) -> None:
        if self._threads:
            self.drain(timeout=5.0)
            self._stop.set()
            for _ in self._threads:
                try:
                    self._q.put(None, timeout=1.0)
                except queue.Full:
                    pass
            for t in self._threads:
                t.join(timeout=5.0)
        self.writer.close()

