"""Running a shadow on mirrored requests: one function for both executors.

* ``thread`` executor (default): worker thread(s) in the hub process call
  :func:`compare_group` and hand the records to a batching writer.
* ``process`` executor (``HUB_SHADOW_EXECUTOR=process``): a separate process
  (:func:`child_main`) owns the shadow models and writes the records itself, so
  the shadow's Python work never competes with the primary for the GIL; only
  pickling the request onto a ``multiprocessing`` queue stays in the hub process.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloud_hub.shadow.segments import segment_values
from edge_runtime.errors import ValidationError

log = logging.getLogger("cloud_hub.shadow")


@dataclass
class BatchStats:
    """What one engine call of one shadow did (for Prometheus)."""

    model: str
    version: str
    requests: int
    latency_ms: float
    error: bool
    compared: int
    changed: int


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


def compare_group(models: Any, group: list) -> tuple[list[dict[str, Any]], BatchStats]:
    """Run one shadow on the rows of several mirrored requests; one record per row.

    ``group`` holds ``(MirrorItem, ShadowTarget, [SegmentSpec])`` of one (model, shadow
    version). ``shadow_latency_ms`` of each request is the time of the engine call that
    answered it: exact when the worker keeps up (one request per call), an upper bound
    when it batched queued requests.
    """
    first, target, _ = group[0]
    err: str | None = None
    shadow_out: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    try:
        _, model = models.get(f"{first.name}:{target.version}")
        if model.codec is None:
            raise ValidationError("shadow takes raw tensors, not feature rows", field="rows")
        items = [it for it, _, _ in group]
        names = items[0].feature_names
        if all(it.x is not None and it.feature_names == names for it in items):
            # the primary's checked inputs, through the shadow's own contract (by feature name)
            x = items[0].x if len(items) == 1 else np.concatenate([it.x for it in items])
            shadow_out = model.post.rows(model.score_features(x, names))
        else:
            keep = set(model.codec.names)
            rows: list[Mapping[str, Any]] = []
            for it in items:
                if it.feature_names == tuple(model.codec.names):  # same contract: rows as they are
                    rows.extend(it.rows)
                else:
                    rows.extend({k: v for k, v in r.items() if k in keep} for r in it.rows)
            shadow_out = model.predict(rows)  # (Model's single-row fast path applies to one row)
    except Exception as exc:  # noqa: BLE001  (recorded, never raised to the primary)
        err = f"{type(exc).__name__}: {getattr(exc, 'message', str(exc))}"[:300]
    latency_ms = (time.perf_counter() - t0) * 1000.0
    now = dt.datetime.now(dt.UTC)
    changed_n = compared = 0
    records = []
    k = 0
    for it, _, specs in group:
        rows = it.row_dicts() if specs else ()
        for i, p_out in enumerate(it.outputs):
            row = rows[i] if i < len(rows) else {}
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
    stats = BatchStats(first.name, target.version, len(group), latency_ms, err is not None, compared, changed_n)
    return records, stats


def group_items(items: list) -> list[list]:
    groups: dict[tuple[str, str], list] = {}
    for it in items:
        for target, specs in it.targets:
            groups.setdefault((it.name, target.version), []).append((it, target, specs))
    return list(groups.values())


def take_batch(q: Any, first: Any, max_batch: int) -> tuple[list, bool]:
    """``first`` and what is already waiting in ``q``, up to ``max_batch`` items, without
    blocking. The flag is True when the stop sentinel (``None``) was taken: stop after this batch."""
    items = [first]
    while len(items) < max_batch:
        try:
            nxt = q.get_nowait()
        except queue.Empty:
            break
        if nxt is None:
            return items, True
        items.append(nxt)
    return items, False


def child_main(settings: dict[str, Any], q: Any, processed: Any, stats_q: Any, max_batch: int) -> None:
    """Entry point of the shadow process: load shadows on demand, compare, store, count."""
    import signal

    from cloud_hub import db
    from cloud_hub.models import ModelCache
    from cloud_hub.registry import Registry
    from cloud_hub.settings import HubSettings
    from cloud_hub.shadow.tables import shadow_comparisons
    from edge_runtime.engines import EngineOptions

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the hub stops us with a sentinel
    s = HubSettings(**settings)
    engine = db.connect(s.db_url)
    registry = Registry.from_settings(engine, s)
    models = ModelCache(registry, EngineOptions(intra_op_threads=s.threads, providers=tuple(s.onnx_providers)))
    stop = False
    try:
        while not stop:
            item = q.get()
            if item is None:
                break
            items, stop = take_batch(q, item, max_batch)
            records: list[dict[str, Any]] = []
            stats = []
            for group in group_items(items):
                try:
                    recs, st = compare_group(models, group)
                except Exception:  # a bad item must not stop the shadow process
                    log.exception("shadow comparison failed")
                    continue
                records += recs
                stats.append(st)
            if records:
                try:
                    with engine.begin() as conn:
                        conn.execute(shadow_comparisons.insert(), records)
                except Exception:
                    log.exception("could not store %d shadow comparison records", len(records))
            with processed.get_lock():
                processed.value += len(items)
            if stats:
                stats_q.put(stats)
    finally:
        models.close()
        engine.dispose()
