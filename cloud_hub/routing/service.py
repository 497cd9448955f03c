"""``hub.routing``: persisted splits, the prediction log, feedback, evaluation, promotion.

The predict path calls :meth:`RoutingService.plan` for a bare model name (a
``name@alias`` or ``name:version`` ref bypasses the split) and
:meth:`RoutingService.record` after answering; ``record`` only hands rows to a
:class:`~cloud_hub.routing.writer.BatchWriter` and bumps Prometheus counters, so
the answer never waits for the database.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Integer, and_, delete, func, select, update

from cloud_hub.routing.evaluation import PROMOTE, EvaluationConfig, GroupData, evaluate, make_config
from cloud_hub.routing.split import CHALLENGER, CHAMPION, GROUPS, RoutePart, SplitConfig
from cloud_hub.routing.tables import routing_feedback, routing_predictions, routing_splits
from cloud_hub.routing.writer import BatchWriter
from edge_runtime.errors import ConflictError, EdgeError, NotFoundError, ValidationError

if TYPE_CHECKING:
    from cloud_hub.hub import Hub

log = logging.getLogger("cloud_hub.routing")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _outcome_str(value: Any, field: str) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value in (0, 1):
            return str(int(value))
        raise ValidationError("outcome must be 0/1, true/false or a class label", field=field)
    if isinstance(value, str) and value.strip():
        v = value.strip()
        return {"true": "1", "false": "0"}.get(v.lower(), v)
    raise ValidationError("outcome must be 0/1, true/false or a class label", field=field)


def positive_of(model: Any, output: dict[str, Any]) -> bool | None:
    """Was this answer a positive decision? (label == positive class, or score >= threshold)."""
    label = output.get("label")
    pp = getattr(getattr(model, "manifest", None), "postprocess", None)
    pos = getattr(pp, "positive_class", None) if pp is not None else None
    if label is not None and pos is not None:
        return str(label) == str(pos)
    score = output.get("probability", output.get("value"))
    if score is None:
        return None
    return float(score) >= float(getattr(model, "threshold", 0.5) or 0.5)


def score_of(output: dict[str, Any]) -> float | None:
    s = output.get("probability", output.get("value"))
    return None if s is None else float(s)


ENTITY_KEY_MAX = 200  # routing_predictions.entity_key

class RoutingService:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.log_writer = BatchWriter(hub.engine, routing_predictions, name="routing-log")
        self._cache: dict[str, tuple[float, SplitConfig | None]] = {}
        self._cache_ttl_s = 1.0
        self._lock = threading.Lock()
        hub.on_close(self.close)

    # ---- split config ------------------------------------------------------------------
    def _row_to_config(self, r: Any) -> SplitConfig:
        return SplitConfig(name=r.name, split_id=r.split_id, challenger_fraction=r.challenger_fraction,
                           entity_key=r.entity_key, enabled=r.enabled, evaluation=dict(r.evaluation or {}),
                           created_at=r.created_at, updated_at=r.updated_at, history=list(r.history or []))

    def get_split(self, name: str, *, required: bool = True) -> SplitConfig | None:
        with self.hub.engine.connect() as conn:
            r = conn.execute(select(routing_splits).where(routing_splits.c.name == name)).first()
        if r is None and required:
            raise NotFoundError(f"model {name!r} has no champion/challenger split", field="name")
        return self._row_to_config(r) if r is not None else None

    def list_splits(self) -> list[SplitConfig]:
        with self.hub.engine.connect() as conn:
            return [self._row_to_config(r) for r in conn.execute(select(routing_splits).order_by(routing_splits.c.name))]

    def cached_split(self, name: str) -> SplitConfig | None:
        """Split for the hot path; re-read at most once a second (other replicas may change it)."""
        hit = self._cache.get(name)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self._cache_ttl_s:
            return hit[1]
        cfg = self.get_split(name, required=False)
        self._cache[name] = (now, cfg)
        return cfg

    def set_split(self, name: str, challenger_fraction: float, *, entity_key: str | None = None,
                  reset: bool = False, enabled: bool = True,
                  evaluation: dict[str, Any] | None = None) -> SplitConfig:
        if not 0.0 <= challenger_fraction <= 1.0:
            raise ValidationError("challenger_fraction must be between 0 and 1", field="challenger_fraction")
        if evaluation is not None:
            evaluation = make_config(evaluation, "evaluation.").model_dump()
        if entity_key is not None and (not isinstance(entity_key, str) or not entity_key.strip()):
            raise ValidationError("entity_key must name a field of the request rows", field="entity_key")
        if enabled:
            self._check_aliases(name)
        now = _now()
        with self.hub.engine.begin() as conn:
            cur = conn.execute(select(routing_splits).where(routing_splits.c.name == name)
                               .with_for_update()).first()
            if cur is None:
                row = {"name": name, "split_id": uuid.uuid4().hex[:12], "challenger_fraction": challenger_fraction,
                           "entity_key": entity_key or "customer_id", "enabled": enabled,
                           "evaluation": evaluation or EvaluationConfig().model_dump(),
                           "created_at": now, "updated_at": now,
                           "history": [{"at": now.isoformat(), "action": "create", "fraction": challenger_fraction}]}
                conn.execute(routing_splits.insert().values(**row))
            else:
                history = list(cur.history or [])
                # After a promotion the next experiment compares other versions: start it on a new
                # split id so its evaluation never mixes in the promoted experiment's rows.
                after_promotion = bool(history) and history[-1].get("action") == "promote"
                reset = reset or (enabled and not cur.enabled and after_promotion)
                split_id = uuid.uuid4().hex[:12] if reset else cur.split_id
                history.append({"at": now.isoformat(), "action": "reset" if reset else "update",
                                "fraction": challenger_fraction, "split_id": split_id})
                conn.execute(update(routing_splits).where(routing_splits.c.name == name).values(
                    split_id=split_id, challenger_fraction=challenger_fraction,
                    entity_key=entity_key or cur.entity_key, enabled=enabled,
                    evaluation=evaluation if evaluation is not None else cur.evaluation,
                    updated_at=now, history=history[-100:]))
        self._cache.pop(name, None)
        return self.get_split(name)

    def _check_aliases(self, name: str) -> None:
        """A split needs both aliases, else its requests would fail: refuse it up front."""
        reg = getattr(self.hub, "registry", None)
        if reg is None:
            return
        aliases = reg.aliases(name)  # NotFoundError for an unknown model
        missing = [g for g in GROUPS if g not in aliases]
        if missing:
            raise ConflictError(f"model {name} has no {' / '.join(missing)} alias; set them first "
                                f"(cloud-hub models alias {name} {missing[0]} VERSION)", field=missing[0])
        if aliases[CHAMPION] == aliases[CHALLENGER]:
            raise ConflictError(f"champion and challenger of {name} are the same version "
                                f"{aliases[CHAMPION]}; point the challenger alias at the version to test",
                                field=CHALLENGER)

    def disable(self, name: str) -> SplitConfig:
        cfg = self.get_split(name)
        return self.set_split(name, cfg.challenger_fraction, enabled=False)

    def delete_split(self, name: str) -> None:
        self.get_split(name)
        with self.hub.engine.begin() as conn:
            conn.execute(delete(routing_splits).where(routing_splits.c.name == name))
        self._cache.pop(name, None)

    # ---- hot path: the PredictService router ----------------------------------------------
    def key_field(self, name: str) -> str | None:
        """Field of the rows holding the entity key (stripped before the model sees the rows)."""
        cfg = self.cached_split(name)  # also when disabled: clients keep sending the key field
        return cfg.entity_key if cfg is not None else None

    def route(self, req: Any) -> list[Any] | None:
        """Router hook of :class:`cloud_hub.inference.PredictService`.

        ``None`` (the reference as given) for ``name@alias`` / ``name:version`` refs and
        models without an enabled split; otherwise one Target per group with its rows.
        """
        from cloud_hub.inference import Target

        parts = self.plan(req.ref, req.n_rows, req.keys)
        if parts is None:
            return None
        if len(parts) == 1:  # whole request in one group: top-level group/model are exact
            return [Target(parts[0].ref, parts[0].group, None)]
        return [Target(p.ref, p.group, p.indices) for p in parts]

    def plan(self, ref: str, n_rows: int, keys: Sequence[Any] | None) -> list[RoutePart] | None:
        """Split ``n_rows`` rows (entity ``keys[i]``) between champion and challenger."""
        if "@" in ref or ":" in ref:
            return None
        cfg = self.cached_split(ref)
        if cfg is None or not cfg.enabled:
            return None
        parts: dict[str, RoutePart] = {}
        for i in range(n_rows):
            key = keys[i] if keys is not None and i < len(keys) else None
            key = None if key is None or key == "" else str(key)
            if key is not None and (len(key) > ENTITY_KEY_MAX or "\x00" in key):
                # the prediction log could not store it: refuse rather than answer unlogged
                raise ValidationError(f"row {i}: entity key {cfg.entity_key!r} must be at most "
                                      f"{ENTITY_KEY_MAX} characters without NUL (got {len(key)})",
                                      field=f"rows.{i}.{cfg.entity_key}")
            g = cfg.group_of(key)
            part = parts.setdefault(g, RoutePart(g, cfg.ref(g), [], []))
            part.indices.append(i)
            part.entity_keys.append(key)
        return [parts[g] for g in GROUPS if g in parts]

    def observe(self, result: Any) -> None:
        """Observer hook: log every routed part (buffered; never blocks the answer)."""
        req = result.request
        for p in result.parts:
            if p.target.group not in GROUPS:
                continue
            idx = list(range(req.n_rows)) if p.target.rows is None else list(p.target.rows)
            keys = [None if req.keys is None else req.keys[i] for i in idx]
            self.record(request_id=req.request_id, name=req.name,
                        part=RoutePart(p.target.group, p.target.ref, idx,
                                       [None if k is None else str(k) for k in keys]),
                        version=p.version.version, model=p.model, outputs=p.predictions,
                        latency_ms=p.latency_s * 1000.0)

    def observe_error(self, failure: Any) -> None:
        """Error-observer hook: log the failed group's rows as errors (its version when known).

        Only the failing target's rows are logged: when a request split between both groups
        fails on one, the client gets the error and no answer, so the other group's rows (if
        already scored) are not predictions and are not logged.
        """
        t = failure.target
        if t.group not in GROUPS:
            return
        req = failure.request
        idx = list(range(req.n_rows)) if t.rows is None else list(t.rows)
        keys = [None if req.keys is None or req.keys[i] is None else str(req.keys[i]) for i in idx]
        version = failure.version.version if failure.version is not None else "unknown"
        self.record(request_id=req.request_id, name=req.name, part=RoutePart(t.group, t.ref, idx, keys),
                    version=version, model=None, outputs=None, latency_ms=failure.latency_s * 1000.0,
                    error=True)

    def record(self, *, request_id: str, name: str, part: RoutePart, version: str, model: Any,
               outputs: Sequence[dict[str, Any]] | None, latency_ms: float, error: bool = False) -> None:
        """Log the part's rows (buffered) and count them per group; never blocks."""
        cfg = self.cached_split(name)
        split_id = cfg.split_id if cfg else ""
        now = _now()
        rows = []
        for j, (i, key) in enumerate(zip(part.indices, part.entity_keys)):
            out = outputs[j] if outputs is not None and j < len(outputs) else {}
            label = out.get("label")
            rows.append({
                "request_id": request_id, "row": i, "name": name, "split_id": split_id, "grp": part.group, "version": version,
                "entity_key": key, "score": score_of(out), "decision": None if label is None else str(label),
                "positive": positive_of(model, out) if out else None, "latency_ms": latency_ms,
                "error": error, "created_at": now})
        self.log_writer.put_many(rows)

    # ---- stored counters -----------------------------------------------------------------
    def group_stats(self, name: str, all_splits: bool = False) -> dict[str, Any]:
        cfg = self.get_split(name)
        self.log_writer.flush()
        p = routing_predictions
        cond = p.c.name == name if all_splits else and_(p.c.name == name, p.c.split_id == cfg.split_id)
        q = (select(p.c.grp, p.c.version, func.count(), func.sum(p.c.error.cast(Integer)),
                    func.avg(p.c.latency_ms), func.avg(p.c.score),
                    func.sum(p.c.positive.cast(Integer)))
             .where(cond).group_by(p.c.grp, p.c.version))
        groups: dict[str, Any] = {g: {"requests": 0, "errors": 0, "versions": {}} for g in GROUPS}
        with self.hub.engine.connect() as conn:
            for grp, version, n, errs, lat, score, pos in conn.execute(q):
                g = groups.setdefault(grp, {"requests": 0, "errors": 0, "versions": {}})
                g["requests"] += int(n)
                g["errors"] += int(errs or 0)
                g["versions"][version] = {"rows": int(n), "errors": int(errs or 0),
                                          "mean_latency_ms": None if lat is None else float(lat),
                                          "mean_score": None if score is None else float(score),
                                          "positive_rate": None if pos is None else float(pos) / int(n)}
        total = sum(g["requests"] for g in groups.values())
        for g in groups.values():
            g["share"] = g["requests"] / total if total else None
            g["error_rate"] = g["errors"] / g["requests"] if g["requests"] else None
            for v in g["versions"].values():
                v["error_rate"] = v["errors"] / v["rows"] if v["rows"] else None
        return {"name": name, "split_id": cfg.split_id, "challenger_fraction": cfg.challenger_fraction,
                "rows": total, "groups": groups}

    # ---- feedback ------------------------------------------------------------------------
    def add_feedback(self, name: str, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Store true outcomes; each item has ``outcome`` and ``request_id`` (+ ``row``) or ``entity_key``."""
        if not items:
            raise ValidationError("feedback is empty", field="feedback")
        reg = getattr(self.hub, "registry", None)
        if reg is not None:
            reg.versions(name)  # 404 for an unknown model
        rows = []
        now = _now()
        for i, it in enumerate(items):
            rid, key = it.get("request_id"), it.get("entity_key")
            if not rid and (key is None or key == ""):
                raise ValidationError("each feedback item needs request_id or entity_key",
                                      field=f"feedback[{i}].request_id")
            if "outcome" not in it:
                raise ValidationError("outcome is required", field=f"feedback[{i}].outcome")
            row = it.get("row")
            if row is not None and (not isinstance(row, int) or isinstance(row, bool) or row < 0):
                raise ValidationError("row must be a non-negative integer", field=f"feedback[{i}].row")
            rows.append({"name": name, "request_id": str(rid) if rid else None, "row": row,
                             "entity_key": None if key is None else str(key),
                             "outcome": _outcome_str(it["outcome"], f"feedback[{i}].outcome"), "created_at": now})
        self.log_writer.flush()
        matched = self._count_matches(name, rows)
        with self.hub.engine.begin() as conn:
            conn.execute(routing_feedback.insert(), rows)
        return {"stored": len(rows), "matched": matched, "unmatched": len(rows) - matched}

    def _count_matches(self, name: str, rows: list[dict[str, Any]]) -> int:
        p = routing_predictions
        rids = {r["request_id"] for r in rows if r["request_id"]}
        keys = {r["entity_key"] for r in rows if not r["request_id"]}
        found_r, found_k = set(), set()
        with self.hub.engine.connect() as conn:
            for chunk in _chunks(sorted(rids), 500):
                found_r |= set(conn.execute(select(p.c.request_id).where(p.c.name == name,
                                                                        p.c.request_id.in_(chunk))).scalars())
            for chunk in _chunks(sorted(keys), 500):
                found_k |= set(conn.execute(select(p.c.entity_key).where(p.c.name == name,
                                                                        p.c.entity_key.in_(chunk))).scalars())
        return sum(1 for r in rows if (r["request_id"] in found_r if r["request_id"] else r["entity_key"] in found_k))

    def prune(self, name: str, before: dt.datetime) -> dict[str, int]:
        """Delete the prediction log and feedback of ``name`` older than ``before``."""
        self.log_writer.flush()
        before = before if before.tzinfo else before.replace(tzinfo=dt.UTC)
        p, f = routing_predictions, routing_feedback
        with self.hub.engine.begin() as conn:
            n_p = conn.execute(delete(p).where(p.c.name == name, p.c.created_at < before)).rowcount
            n_f = conn.execute(delete(f).where(f.c.name == name, f.c.created_at < before)).rowcount
        return {"predictions": int(n_p or 0), "feedback": int(n_f or 0)}

    # ---- evaluation ------------------------------------------------------------------------
    def group_data(self, name: str) -> dict[str, GroupData]:
        """Predictions of the current split id per group, joined with their feedback.

        Feedback by request id joins that row (row 0 when no row is given); feedback by
        entity key joins the entity's latest prediction made before the feedback arrived.
        The latest feedback for a prediction wins.
        """
        cfg = self.get_split(name)
        self.log_writer.flush()
        p, f = routing_predictions, routing_feedback
        with self.hub.engine.connect() as conn:
            preds = conn.execute(select(p.c.request_id, p.c.row, p.c.grp, p.c.version, p.c.entity_key, p.c.score,
                                        p.c.decision, p.c.positive, p.c.error, p.c.created_at)
                                 .where(p.c.name == name, p.c.split_id == cfg.split_id)
                                 .order_by(p.c.created_at, p.c.id)).all()
            fb = conn.execute(select(f.c.request_id, f.c.row, f.c.entity_key, f.c.outcome, f.c.created_at)
                              .where(f.c.name == name).order_by(f.c.id)).all()
        positive_labels = {r.decision for r in preds if r.positive and r.decision is not None}
        by_req = {(r.request_id, r.row): k for k, r in enumerate(preds)}  # a reused request id: latest wins
        by_entity: dict[str, list[int]] = {}
        for k, r in enumerate(preds):
            if r.entity_key is not None and not r.error:
                by_entity.setdefault(r.entity_key, []).append(k)
        outcome: dict[int, bool] = {}
        for fr in fb:
            if fr.request_id:
                k = by_req.get((fr.request_id, fr.row or 0))
            else:
                cands = by_entity.get(fr.entity_key or "", [])
                before = [c for c in cands if _aware(preds[c].created_at) <= _aware(fr.created_at)]
                k = (before or cands or [None])[-1]
            if k is None:
                continue
            o = fr.outcome
            outcome[k] = o == "1" if o in ("0", "1") else o in positive_labels
        data: dict[str, GroupData] = {}
        for g in GROUPS:
            idx = [k for k, r in enumerate(preds) if r.grp == g and not r.error and r.score is not None]
            lab = [k for k in idx if k in outcome and preds[k].positive is not None]
            data[g] = GroupData(
                scores=np.array([preds[k].score for k in idx], dtype=np.float64),
                positives=np.array([bool(preds[k].positive) for k in idx], dtype=bool),
                versions=[preds[k].version for k in idx],
                errors=sum(1 for r in preds if r.grp == g and r.error),
                labelled_scores=np.array([preds[k].score for k in lab], dtype=np.float64),
                labelled_positives=np.array([bool(preds[k].positive) for k in lab], dtype=bool),
                outcomes=np.array([outcome[k] for k in lab], dtype=bool))
        return data

    def evaluate(self, name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        cfg = self.get_split(name)
        if overrides is not None and not isinstance(overrides, dict):
            raise ValidationError("evaluation overrides must be a JSON object", field="body")
        make_config(overrides)  # name the caller's bad field before merging with the stored config
        ecfg = make_config({**(cfg.evaluation or {}), **(overrides or {})})
        data = self.group_data(name)
        res = evaluate(ecfg, data[CHAMPION], data[CHALLENGER])
        res.update(name=name, split_id=cfg.split_id, challenger_fraction=cfg.challenger_fraction,
                   aliases=self._aliases(name), evaluated_at=_now().isoformat())
        return res

    # ---- promotion -------------------------------------------------------------------------
    def _aliases(self, name: str) -> dict[str, str]:
        reg = getattr(self.hub, "registry", None)
        if reg is None:
            return {}
        try:
            return {k: str(v) for k, v in dict(reg.aliases(name)).items()}
        except EdgeError:  # unknown model: no aliases to show
            return {}

    def promote(self, name: str, *, require_verdict: bool = True,
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """champion ← challenger's version (one alias move), old champion kept as ``previous``.

        With ``require_verdict`` the evaluation must answer PROMOTE. The split is then
        disabled: every request goes to the new champion until a new challenger is set.
        """
        reg = self.hub.registry
        evaluation = None
        if require_verdict:
            evaluation = self.evaluate(name, overrides)
            if evaluation["verdict"] != PROMOTE:
                raise ConflictError(f"evaluation answered {evaluation['verdict']}: "
                                    + "; ".join(evaluation.get("reasons", [])), field="verdict")
        old = reg.resolve(f"{name}@{CHAMPION}")
        new = reg.resolve(f"{name}@{CHALLENGER}")
        if old.version == new.version:
            raise ConflictError(f"challenger and champion are the same version {new.version}", field="name")
        swap = getattr(reg, "swap_aliases", None) or getattr(reg, "set_aliases", None)
        if swap is not None:
            swap(name, {CHAMPION: new.version, "previous": old.version})
        else:
            reg.set_alias(name, CHAMPION, new.version)
            reg.set_alias(name, "previous", old.version)
        cfg = self.get_split(name, required=False)
        if cfg is not None:
            with self.hub.engine.begin() as conn:
                history = list(cfg.history) + [{"at": _now().isoformat(), "action": "promote",
                                                "champion": new.version, "previous": old.version}]
                conn.execute(update(routing_splits).where(routing_splits.c.name == name)
                             .values(enabled=False, updated_at=_now(), history=history[-100:]))
            self._cache.pop(name, None)
        log.info("promoted %s: champion %s -> %s", name, old.version, new.version)
        return {"name": name, "champion": new.version, "previous": old.version,
                "evaluation": evaluation, "aliases": self._aliases(name)}

    def close(self) -> None:
        self.log_writer.close()


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _chunks(xs: list, n: int):
    for i in range(0, len(xs), n):
        yield xs[i:i + n]
