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
from cloud_hub.shadow.segments import SegmentSpec, parse_segment
from cloud_hub.shadow.tables import shadow_comparisons, shadow_targets
from cloud_hub.shadow.worker import BatchStats, child_main, compare_group, group_items, take_batch
from edge_runtime.errors import NotFoundError, ValidationError, field_path
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
    feature_names: tuple[str, ...] | None = None
    x: Any = None  # the primary's checked input matrix (columns: feature_names); the shadow
    # scores these values through its own contract, so OIP requests (no JSON rows) mirror too

    def row_dicts(self) -> list[Mapping[str, Any]]:
        """The rows (for segment values): as sent, or built from x for matrix input."""
        if self.rows or self.x is None:
            return self.rows
        return [dict(zip(self.feature_names or (), r)) for r in self.x.tolist()]




class ShadowService:
    def __init__(self, hub: Hub, *, queue_size: int | None = None, workers: int = 1,
                 max_batch: int = 32, executor: str | None = None) -> None:
        self.hub = hub
        self.capacity = int(queue_size or getattr(hub.settings, "shadow_queue_size", 10_000))
        self.executor = executor or getattr(hub.settings, "shadow_executor", "thread")
        if self.executor not in ("thread", "process"):
            raise ValidationError("shadow executor must be thread or process", field="shadow_executor")
        self._q: Any = None  # queue.Queue (thread) or multiprocessing Queue (process), made on first use
        if self.executor == "thread":
            self._q = queue.Queue(maxsize=self.capacity)
        self._proc: Any = None
        self._processed_shared: Any = None
        self._stats_q: Any = None
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
            if p.x is None:  # raw tensors: no named features for a shadow to take
                continue
            idx = None if p.target.rows is None else list(p.target.rows)
            # JSON rows keep their extra fields for segments; matrix input (OIP) has only x
            rows = [] if req.x is not None else req.rows if idx is None else [req.rows[i] for i in idx]
            tags = {"group": p.target.group or "none", "endpoint": req.endpoint}
            self.mirror(req.name, req.request_id, rows, p.predictions, p.version.version,
                        p.latency_s * 1000.0, tags, row_ids=idx, x=p.x,
                        feature_names=tuple(p.model.codec.names))

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
                          dict(tags) if tags else None, chosen, row_ids, feature_names, x)
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
            g.set(self._depth())
        return True

    # ---- workers ---------------------------------------------------------------------------
    def _ensure_workers(self) -> None:
        if self._threads:
            if self._proc is None or self._proc.is_alive():
                return
            log.error("shadow process exited (code %s); starting a new one", self._proc.exitcode)
        with self._lock:
            if self._threads and (self._proc is None or self._proc.is_alive()):
                return
            if self.executor == "process":
                self._start_process()
                return
            for i in range(self.n_workers):
                t = threading.Thread(target=self._work, name=f"shadow-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def _start_process(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # never fork a process holding ONNX Runtime / DB state
        if self._q is None:
            self._q = ctx.Queue(maxsize=self.capacity)
            self._processed_shared = ctx.Value("q", 0)
            self._stats_q = ctx.Queue()
        settings = self.hub.settings.model_dump(mode="json")
        self._proc = ctx.Process(target=child_main, name="edgefleet-shadow", daemon=True,
                                 args=(settings, self._q, self._processed_shared, self._stats_q, self.max_batch))
        self._proc.start()
        if not self._threads:
            t = threading.Thread(target=self._read_stats, name="shadow-stats", daemon=True)
            t.start()
            self._threads.append(t)

    def _read_stats(self) -> None:
        """Process executor: apply the child's per-batch stats to this process's Prometheus series."""
        while not self._stop.is_set():
            try:
                batch = self._stats_q.get(timeout=0.5)
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return
            for st in batch:
                self._apply(st)
            if (g := self._m("shadow_queue_depth")) is not None:
                g.set(self._depth())

    def _apply(self, st: BatchStats) -> None:
        ch = self._children((st.model, st.version))
        if ch is not None:
            for _ in range(st.requests):
                ch[0].observe(st.latency_ms / 1000.0)
            ch[1].inc(st.requests)
            if st.error:
                ch[2].inc(st.requests)
            if st.compared:
                ch[3].inc(st.compared)
            if st.changed:
                ch[4].inc(st.changed)
        if st.error:
            with self._lock:
                self.errors += st.requests

    def _work(self) -> None:
        """Thread executor: take a request, plus whatever else is queued, and compare them."""
        stop = False
        while not stop:
            item = self._q.get()
            if item is None:
                break
            # Under load, run each shadow once for everything queued: one engine call and one
            # writer hand-over per batch, so the worker holds the GIL (shared with the primary)
            # for less time per mirrored request.
            items, stop = take_batch(self._q, item, self.max_batch)
            with self._lock:
                self._busy += 1
            if (g := self._m("shadow_queue_depth")) is not None:
                g.set(self._q.qsize())
            try:
                for group in group_items(items):
                    records, st = compare_group(self.hub.models, group)
                    self.writer.put_many(records)
                    self._apply(st)
            except Exception:
                log.exception("shadow comparison failed for %s", item.name)
            finally:
                with self._lock:
                    self._busy -= 1
                    self.processed += len(items)

    def _depth(self) -> int:
        try:
            return self._q.qsize() if self._q is not None else 0
        except NotImplementedError:  # multiprocessing qsize on macOS
            return 0

    # ---- status / reading ------------------------------------------------------------------
    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every queued request is compared and its records are stored (tests, reports)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.executor == "process":
                done = self._processed_shared is None or self._processed_shared.value >= self.mirrored
                if done:
                    return True
            else:
                with self._lock:
                    idle = self._busy == 0
                if self._q.empty() and idle:
                    return self.writer.flush(max(0.1, deadline - time.monotonic()))
            time.sleep(0.01)
        return False

    def status(self) -> dict[str, Any]:
        processed = self.processed
        if self._processed_shared is not None:
            processed = self._processed_shared.value
        return {"queue_depth": self._depth(), "queue_capacity": self.capacity, "mirrored": self.mirrored,
                "dropped": self.dropped, "processed": processed, "shadow_errors": self.errors,
                "executor": self.executor,
                "records_written": self.writer.written, "records_dropped": self.writer.dropped,
                "workers": 1 if self.executor == "process" else self.n_workers}

    def records(self, name: str, shadow_version: str | None = None, since: dt.datetime | None = None,
                limit: int | None = None, after_id: int | None = None) -> list[dict[str, Any]]:
        """Comparison records, oldest first (page with ``after_id`` = the last id seen)."""
        self.writer.flush()
        c = shadow_comparisons.c
        q = select(shadow_comparisons).where(c.name == name).order_by(c.id)
        if after_id is not None:
            q = q.where(c.id > after_id)
        if shadow_version:
            q = q.where(c.shadow_version == shadow_version)
        if since is not None:
            q = q.where(c.created_at >= since)
        if limit:
            q = q.limit(limit)
        with self.hub.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def prune(self, name: str, before: dt.datetime) -> int:
        """Delete the comparison records of ``name`` older than ``before``; return how many."""
        self.writer.flush()
        before = before if before.tzinfo else before.replace(tzinfo=dt.UTC)
        c = shadow_comparisons.c
        with self.hub.engine.begin() as conn:
            n = conn.execute(delete(shadow_comparisons).where(c.name == name, c.created_at < before)).rowcount
        log.info("pruned %d shadow comparison records of %s older than %s", n, name, before.isoformat())
        return int(n or 0)

    def report(self, name: str, *, shadow_version: str | None = None, since: dt.datetime | None = None,
               criteria: Mapping[str, Any] | None = None) -> dict[str, Any]:
        from pydantic import ValidationError as PydanticValidationError

        from cloud_hub.shadow.report import ReportCriteria, build_report

        try:
            crit = ReportCriteria(**(criteria or {}))
        except PydanticValidationError as exc:
            err = exc.errors()[0]
            field = field_path(*err.get("loc", ())) or "criteria"
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
            if self._proc is not None:
                try:
                    self._q.put(None, timeout=1.0)
                except queue.Full:
                    pass
                self._proc.join(timeout=10.0)
                if self._proc.is_alive():
                    self._proc.terminate()
                    self._proc.join(timeout=5.0)
                self._q.close()
                self._stats_q.close()
            else:
                for _ in self._threads:
                    try:
                        self._q.put(None, timeout=1.0)
                    except queue.Full:
                        pass
            for t in self._threads:
                t.join(timeout=5.0)
        self.writer.close()
