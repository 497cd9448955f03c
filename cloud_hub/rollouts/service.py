"""``RolloutService``: start, observe, advance, pause, resume, abort and roll back rollouts.

State machine (persisted in ``rollouts.status``)::

    running ──gate fail──► rolling_back ──devices back on champion──► rolled_back
       │  ▲                                       (offline ones converge on return)
  pause│  │resume
       ▼  │
    paused ──abort──► aborting ──► aborted        running ──last stage passes──► completed
                                                                    (alias champion ← candidate)

One :meth:`tick` observes every active rollout: it re-evaluates the cohort
(devices registered mid-rollout join), assigns stage devices by stable hash,
writes their desired state (retained on the broker, so an offline device
converges when it returns), classifies devices (verified, installing, failed,
unknown), aggregates the stage's telemetry against the champion's and applies
the verdict of :func:`cloud_hub.rollouts.gates.evaluate`. Ticks are idempotent:
a hub killed between two of them resumes from the database.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from typing import Any, Iterable

from sqlalchemy import Text, bindparam, cast, select, text

from cloud_hub.fleet.service import _loads  # a JSON column: orjson, json.loads for NaN/huge ints
from cloud_hub.rollouts import tables as T
from cloud_hub.rollouts.cohort import Selector, parse_selector, stage_members
from cloud_hub.rollouts.gates import Aggregate, StageView, Verdict, evaluate
from cloud_hub.rollouts.plan import Plan, build_plan
from edge_runtime.errors import ConflictError, EdgeError, NotFoundError, ValidationError
from edge_runtime.hashing import bucket
from edge_runtime.protocol import DesiredBundle, DesiredState

log = logging.getLogger("cloud_hub.rollouts")

ACTIVE = ("running", "paused", "rolling_back", "aborting")
FINAL = ("completed", "rolled_back", "aborted")
CHAMPION_ALIAS = "champion"


def rollout_service(hub: Any) -> "RolloutService":
    """The hub's rollout service, created on first use (``hub.rollouts``)."""
    return hub.service("rollouts", RolloutService)


class RolloutService:
    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.engine = hub.engine
        self.settings = hub.settings
        self._lock = threading.RLock()
        self.controller = None
        self._agg_cache: dict[tuple, tuple] = {}
        self._cohort_memo: dict[tuple, dict] = {}
        self._in_sync: dict[str, dict[str, tuple]] = {}
        self._stage_memo: dict[str, tuple] = {}
        self._baseline_written: dict[str, tuple] = {}
        self._bucket_memo: dict[str, dict[str, float]] = {}

    # ---- collaborators ----------------------------------------------------------------
    @property
    def fleet(self) -> Any:
        return self.hub.fleet

    @property
    def registry(self) -> Any:
        return self.hub.registry

    def start_controller(self, interval: float | None = None, **kw: Any):
        """Run the decision loop in a background thread (one controller per database via a lease)."""
        from cloud_hub.rollouts.controller import Controller

        if self.controller is None:
            self.controller = Controller(self, interval=interval or self.settings.rollout_tick_s, **kw)
            self.controller.start()
            self.hub.on_close(self.stop_controller)
        return self.controller

    def stop_controller(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    # ---- start --------------------------------------------------------------------------
    def start(self, model: str, cohort: str, plan: Plan | dict | None = None, *,
              rollout_id: str | None = None) -> dict[str, Any]:
        if not isinstance(model, str) or ":" not in model or model.startswith(":") or model.endswith(":"):
            raise ValidationError(f"model must be NAME:VERSION (got {model!r})", field="model")
        selector = parse_selector(cohort)
        if plan is None or isinstance(plan, dict):
            plan = build_plan(plan)
        try:
            mv = self.registry.resolve(model)
        except NotFoundError as exc:
            raise NotFoundError(f"unknown model {model!r}: {exc.message}", field="model") from exc
        champion = self._champion(mv.name)
        if champion is not None and champion.digest == mv.digest:
            raise ConflictError(f"{mv.name}:{mv.version} is already the champion", field="model")
        if champion is None and plan.stages[0].kind == "shadow":
            raise ValidationError(f"{mv.name} has no champion (alias @{CHAMPION_ALIAS}) to compare a shadow "
                                  f"stage against; drop the shadow stage for a first deployment",
                                  field="plan.shadow")
        records = self.fleet.devices()
        cohort_ids = {r.id for r in records if selector.match_record(r)}
        if not cohort_ids:
            raise ValidationError(f"cohort {str(selector)!r} matches none of the {len(records)} known devices",
                                  field="cohort")
        now = time.time()
        rid = rollout_id or f"ro-{secrets.token_hex(4)}"
        with self._lock, self.engine.begin() as conn:
            for other in conn.execute(select(T.rollouts).where(T.rollouts.c.status.in_(ACTIVE))):
                if other.model_name == mv.name:
                    raise ConflictError(f"rollout {other.id} of {mv.name} is still {other.status}; abort it or "
                                        f"wait for it to finish", field="model")
                overlap = cohort_ids & {r.id for r in records if parse_selector(other.cohort).match_record(r)}
                if overlap:
                    raise ConflictError(f"cohort overlaps rollout {other.id} ({other.status}) on "
                                        f"{len(overlap)} devices, e.g. {sorted(overlap)[0]}", field="cohort")
            if conn.execute(select(T.rollouts.c.id).where(T.rollouts.c.id == rid)).first():
                raise ConflictError(f"rollout {rid} already exists", field="id")
            conn.execute(T.rollouts.insert().values(
                id=rid, model_name=mv.name, candidate_version=mv.version, candidate_digest=mv.digest,
                champion_version=champion.version if champion else None,
                champion_digest=champion.digest if champion else None, cohort=str(selector),
                plan=plan.to_dict(), status="running", stage_index=0, stage_started_at=now,
                created_at=now, updated_at=now))
            self._event(conn, rid, "started", plan.stages[0].name,
                        f"rollout of {mv.name}:{mv.version} to cohort {selector} ({len(cohort_ids)} devices); "
                        f"champion {champion.version if champion else 'none'}; stages "
                        + " → ".join(s.name for s in plan.stages),
                        {"cohort_devices": len(cohort_ids), "plan": plan.to_dict()})
        self.tick_one(rid)
        return self.get(rid)

    def _champion(self, name: str) -> Any:
        try:
            return self.registry.resolve(f"{name}@{CHAMPION_ALIAS}")
        except NotFoundError:
            return None

    # ---- reads --------------------------------------------------------------------------
    def _row(self, rid: str, conn=None) -> Any:
        # every column but the champion baseline (per-device score histograms: megabytes of JSON
        # at 100,000 devices), read by _baseline only when a stage needs it
        q = select(*_ROW_COLS).where(T.rollouts.c.id == rid)
        if conn is not None:
            row = conn.execute(q).first()
        else:
            with self.engine.connect() as c:
                row = c.execute(q).first()
        if row is None:
            raise NotFoundError(f"unknown rollout {rid!r}", field="id")
        return row

    def _baseline(self, rid: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            return c.execute(select(T.rollouts.c.baseline).where(T.rollouts.c.id == rid)).scalar()

    def get(self, rid: str) -> dict[str, Any]:
        return self._summary(self._row(rid))

    def list(self, status: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        q = select(T.rollouts).order_by(T.rollouts.c.created_at.desc())
        if status:
            q = q.where(T.rollouts.c.status == status)
        if model:
            q = q.where(T.rollouts.c.model_name == model)
        with self.engine.connect() as conn:
            return [self._summary(r) for r in conn.execute(q)]

    def events(self, rid: str, limit: int = 1000) -> list[dict[str, Any]]:
        self._row(rid)
        e = T.rollout_events
        with self.engine.connect() as conn:
            rows = conn.execute(select(e).where(e.c.rollout_id == rid).order_by(e.c.id).limit(limit))
            return [{"id": r.id, "ts": r.ts, "kind": r.kind, "stage": r.stage, "message": r.message,
                     "data": r.data} for r in rows]

    def _summary(self, r: Any) -> dict[str, Any]:
        plan = Plan.model_validate(r.plan)
        idx = min(r.stage_index, len(plan.stages) - 1)
        st = plan.stages[idx]
        return {
            "id": r.id, "model": r.model_name,
            "candidate": {"version": r.candidate_version, "sha256": r.candidate_digest},
            "champion": ({"version": r.champion_version, "sha256": r.champion_digest}
                         if r.champion_version else None),
            "cohort": r.cohort, "status": r.status, "reason": r.reason,
            "stage": {"index": idx, "name": st.name, "kind": st.kind, "percent": st.percent,
                      "started_at": r.stage_started_at, "min_duration_s": st.min_duration_s,
                      "min_samples": st.min_samples, "timeout_s": st.timeout_s},
            "stages": [s.name for s in plan.stages], "plan": r.plan,
            "created_at": r.created_at, "updated_at": r.updated_at, "finished_at": r.finished_at,
            "last_evaluation": r.last_evaluation,
        }

    def status(self, rid: str) -> dict[str, Any]:
        """Summary + live device states, gate values and the decision the next tick would take."""
        row = self._row(rid)
        out = self._summary(row)
        obs = self._observe(row, time.time(), persist=False)
        out["devices"] = obs["counts"]
        out["device_states"] = obs["states"]
        if obs.get("verdict") is not None:
            v: Verdict = obs["verdict"]
            out["gates"] = [g.to_dict() for g in v.gates]
            out["candidate_stats"] = obs["candidate"].summary()
            out["champion_stats"] = obs["champion"].summary() if obs["champion"] else None
            out["next_decision"] = {"decision": v.decision, "reason": v.reason}
        else:
            out["gates"] = (row.last_evaluation or {}).get("gates", [])
            out["next_decision"] = {"decision": obs.get("next", "none"), "reason": obs.get("next_reason", "")}
        return out

    # ---- actions ------------------------------------------------------------------------
    def pause(self, rid: str, reason: str | None = None) -> dict[str, Any]:
        with self._lock:
            row = self._row(rid)
            if row.status != "running":
                raise ConflictError(f"rollout {rid} is {row.status}; only a running rollout can be paused",
                                    field="status")
            self._transition(row, "paused", reason=reason or "paused by an operator",
                             kind="paused", message=f"paused by an operator: {reason or 'no reason given'}")
        return self.get(rid)

    def resume(self, rid: str) -> dict[str, Any]:
        with self._lock:
            row = self._row(rid)
            if row.status != "paused":
                raise ConflictError(f"rollout {rid} is {row.status}; only a paused rollout can be resumed",
                                    field="status")
            # fresh stage clock: the gates judge telemetry gathered after the resume
            self._transition(row, "running", reason=None, stage_started_at=time.time(), kind="resumed",
                             message=f"resumed at stage {self._stage(row).name} (stage clock restarted)")
        self.tick_one(rid)
        return self.get(rid)

    def abort(self, rid: str, reason: str | None = None) -> dict[str, Any]:
        with self._lock:
            row = self._row(rid)
            if row.status not in ("running", "paused"):
                raise ConflictError(f"rollout {rid} is {row.status}; only a running or paused rollout can "
                                    f"be aborted", field="status")
            self._transition(row, "aborting", reason=f"aborted: {reason or 'by an operator'}", kind="aborted",
                             message=f"aborted by an operator ({reason or 'no reason given'}); every device "
                                     f"of the rollout goes back to the champion")
        self.tick_one(rid)
        return self.get(rid)

    def advance(self, rid: str, reason: str | None = None) -> dict[str, Any]:
        """Operator override: go to the next stage (or complete) without waiting for the gates."""
        with self._lock:
            row = self._row(rid)
            if row.status not in ("running", "paused"):
                raise ConflictError(f"rollout {rid} is {row.status}; only a running or paused rollout can "
                                    f"be advanced", field="status")
            self._advance(row, time.time(), forced=reason or "forced by an operator", evaluation=None)
        self.tick_one(rid)
        return self.get(rid)

    # ---- the decision loop --------------------------------------------------------------
    def tick(self, now: float | None = None) -> list[dict[str, Any]]:
        """Observe and act on every running / rolling-back rollout; returns what was decided."""
        with self.engine.connect() as conn:
            ids = list(conn.execute(select(T.rollouts.c.id).where(
                T.rollouts.c.status.in_(("running", "rolling_back", "aborting"))).order_by(T.rollouts.c.created_at))
                .scalars())
        live = set(ids)  # forget the memos of rollouts no longer ticked
        self._cohort_memo = {k: v for k, v in self._cohort_memo.items() if k[0] in live}
        self._bucket_memo = {k: v for k, v in self._bucket_memo.items() if k in live}
        self._in_sync = {k: v for k, v in self._in_sync.items() if k in live}
        self._stage_memo = {k: v for k, v in self._stage_memo.items() if k in live}
        self._baseline_written = {k: v for k, v in self._baseline_written.items() if k in live}
        out = []
        for rid in ids:
            try:
                out.append(self.tick_one(rid, now))
            except ConflictError as exc:  # another writer acted first; the next tick sees its state
                log.info("rollout %s: %s", rid, exc.message)
            except Exception as exc:  # one broken rollout must not stop the others, nor decide blind
                log.exception("rollout %s: tick failed", rid)
                self._pause_after_error(rid, exc)
        return out

    def _pause_after_error(self, rid: str, exc: Exception) -> None:
        """A running rollout whose tick raised is paused with the error as the reason: it neither
        decides on data it could not read nor stays silently stuck (resume retries)."""
        what = exc.message if isinstance(exc, EdgeError) else f"{type(exc).__name__}: {exc}"
        try:
            with self._lock:
                row = self._row(rid)
                if row.status != "running":
                    return  # a rollback / abort in progress keeps going on the next tick
                self._transition(row, "paused", reason=f"tick failed: {what}"[:1000], kind="paused",
                                 message=f"paused at {self._stage(row).name}: the tick failed ({what}); "
                                         f"resume to retry")
        except Exception:  # the database itself may be what failed
            log.exception("rollout %s: could not pause after a failed tick", rid)

    def tick_one(self, rid: str, now: float | None = None) -> dict[str, Any]:
        with self._lock:
            row = self._row(rid)
            now = time.time() if now is None else now
            if row.status not in ("running", "rolling_back", "aborting"):
                return {"id": rid, "status": row.status, "decision": "none"}
            obs = self._observe(row, now, persist=True)
            if row.status in ("rolling_back", "aborting"):
                return self._finish_rollback(row, obs, now)
            verdict: Verdict = obs["verdict"]
            evaluation = {**verdict.to_dict(), "ts": now, "stage": self._stage(row).name,
                          "candidate": obs["candidate"].summary(),
                          "champion": obs["champion"].summary() if obs["champion"] else None,
                          "devices": obs["counts"]}
            if verdict.decision == "rollback":
                self._rollback(row, now, verdict.reason, evaluation, obs)
            elif verdict.decision == "pause":
                self._transition(row, "paused", reason=verdict.reason, last_evaluation=evaluation,
                                 kind="paused", message=f"paused at {self._stage(row).name}: {verdict.reason}",
                                 data=evaluation)
            elif verdict.decision == "advance":
                self._advance(row, now, forced=None, evaluation=evaluation)
            else:
                signature = sorted(g.name for g in verdict.gates if g.status == "wait")
                prev = (row.last_evaluation or {}).get("signature")
                evaluation["signature"] = signature
                with self.engine.begin() as conn:
                    conn.execute(T.rollouts.update().where(T.rollouts.c.id == rid)
                                 .values(last_evaluation=evaluation, updated_at=now))
                    if signature != prev:
                        self._event(conn, rid, "waiting", self._stage(row).name,
                                    f"waiting at {self._stage(row).name}: {verdict.reason}", evaluation)
            return {"id": rid, "status": self._row(rid).status, "decision": verdict.decision,
                    "reason": verdict.reason}

    # ---- internals ----------------------------------------------------------------------
    def _stage(self, row: Any):
        plan = Plan.model_validate(row.plan)
        return plan.stages[min(row.stage_index, len(plan.stages) - 1)]

    def _desired_for(self, row: Any, target: str) -> DesiredState:
        cand = DesiredBundle(name=row.model_name, version=row.candidate_version, sha256=row.candidate_digest,
                             url=self.fleet.bundle_url(row.candidate_digest))
        champ = (DesiredBundle(name=row.model_name, version=row.champion_version, sha256=row.champion_digest,
                               url=self.fleet.bundle_url(row.champion_digest))
                 if row.champion_digest else None)
        if target == "candidate":
            bundles = {"active": cand, "shadow": None}
        elif target == "shadow":
            bundles = {"active": champ, "shadow": cand}
        else:
            bundles = {"active": champ, "shadow": None}
        key = f"{row.id}|{target}|{bundles['active'].sha256 if bundles['active'] else '-'}|" \
              f"{bundles['shadow'].sha256 if bundles['shadow'] else '-'}"
        did = f"{row.id}-{target}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
        return DesiredState(id=did, bundles=bundles, rollout_id=row.id)

    @staticmethod
    def _desired_digests(desired: dict[str, Any] | None) -> tuple[str | None, str | None]:
        if not desired:
            return (None, None)
        b = desired.get("bundles") or {}
        return tuple((b.get(s) or {}).get("sha256") for s in ("active", "shadow"))  # type: ignore[return-value]

    def _cohort(self, rid: str, selector: Selector, records: list[Any]) -> list[str]:
        """Ids of the records the selector matches. A record object seen at the previous tick
        keeps its answer (the device index replaces a changed device's record, never edits it);
        any other record is matched again."""
        key = (rid, str(selector))
        memo = self._cohort_memo.get(key)
        if memo is None or len(memo) > 2 * len(records) + 1000:  # (ids of deleted devices pile up)
            self._cohort_memo = {k: v for k, v in self._cohort_memo.items() if k[0] != rid}
            memo = self._cohort_memo[key] = {}
        out = []
        # updated in place, only for changed records: a new dict of 100,000 entries per tick was
        # promoted to the oldest GC generation and made full collections (≈1.5 s) frequent
        for r in records:
            hit = memo.get(r.id)
            if hit is not None and hit[0] is r:
                ok = hit[1]
            else:
                ok = selector.match_record(r)
                memo[r.id] = (r, ok)
            if ok:
                out.append(r.id)
        return out

    def _stage_members(self, rid: str, cohort: list[str], fraction: float, min_devices: int) -> set[str]:
        """:func:`stage_members`, reused while the cohort (same ids, same order), the fraction and
        the minimum are those of the previous tick (sorting 100,000 buckets per tick otherwise)."""
        last = self._stage_memo.get(rid)
        if last is not None and last[1] == fraction and last[2] == min_devices and last[0] == cohort:
            return set(last[3])
        want = stage_members(cohort, rid, fraction, min_devices, bucket_of=self._buckets(rid))
        self._stage_memo[rid] = (list(cohort), fraction, min_devices, frozenset(want))
        return want

    def _buckets(self, rid: str):
        """``bucket(device, rid)`` remembered per rollout (a hash per device per tick otherwise)."""
        memo = self._bucket_memo.setdefault(rid, {})

        def bucket_of(device_id: str) -> float:
            b = memo.get(device_id)
            if b is None:
                b = memo[device_id] = bucket(device_id, rid)
            return b
        return bucket_of

    def _members(self, rid: str) -> dict[str, Any]:
        m = T.rollout_devices
        with self.engine.connect() as conn:
            return {r.device_id: r for r in conn.execute(select(m).where(m.c.rollout_id == rid))}

    def _failed_devices(self, row: Any, members: dict[str, Any]) -> dict[str, str]:
        """Devices whose install/self-test of the candidate failed since they joined the stage."""
        failed: dict[str, str] = {}
        for ev in self.fleet.events(rollout_id=row.id, since=row.created_at - 60, limit=100_000):
            if ev.step != "failed":
                continue
            sha = (ev.bundle or {}).get("sha256")
            if sha not in (None, row.candidate_digest):
                continue
            m = members.get(ev.device_id)
            if m is None or m.target not in ("shadow", "candidate") or ev.ts < m.assigned_at - 5:
                continue
            failed[ev.device_id] = ev.reason or "failed"
        return failed

    def _observe(self, row: Any, now: float, *, persist: bool) -> dict[str, Any]:
        """Assign stage devices (persist=True writes them and their desired state), classify, aggregate."""
        plan = Plan.model_validate(row.plan)
        idx = min(row.stage_index, len(plan.stages) - 1)
        stage = plan.stages[idx]
        gates = plan.gates
        selector: Selector = parse_selector(row.cohort)
        records = self.fleet.cached_devices()  # only devices changed since the last tick are re-read
        by_id = {r.id: r for r in records}
        cohort = self._cohort(row.id, selector, records)
        members = self._members(row.id)
        rolling_back = row.status in ("rolling_back", "aborting")
        target = "shadow" if stage.kind == "shadow" else "candidate"
        if row.status == "running":
            want = self._stage_members(row.id, cohort, stage.fraction, plan.min_devices)
            changes: list[tuple[str, str]] = []
            for did in want:
                m = members.get(did)
                if m is None or m.target != target:
                    changes.append((did, target))
            for did, m in members.items():  # shadow devices that are not in the canary stage go back
                if did not in want and m.target != "champion":
                    changes.append((did, "champion"))
            if changes:
                members = self._assign(row, changes, idx, now, members, persist)
        elif rolling_back:
            changes = [(did, "champion") for did, m in members.items() if m.target != "champion"]
            if changes:
                members = self._assign(row, changes, idx, now, members, persist)
        if persist and row.status != "paused":
            self._push_desired(row, members, by_id)

        silent_after = gates.silent_after_s if gates.silent_after_s is not None \
            else self.settings.device_silent_after_s
        failed = self._failed_devices(row, members) if not rolling_back else {}
        states: dict[str, list[str]] = {"verified": [], "installing": [], "failed": [], "unknown": [],
                                        "champion": [], "reverting": []}
        stage_ids: list[str] = []
        why: dict[str, str] = {}
        for did, m in members.items():
            rec = by_id.get(did)
            silent = rec is None or not rec.online or rec.last_seen is None or now - rec.last_seen > silent_after
            if m.target == "champion":
                running = (rec.running("active") or {}).get("sha256") if rec else None
                shadow = (rec.running("shadow") or {}).get("sha256") if rec else None
                back = running == row.champion_digest and shadow != row.candidate_digest
                states["champion" if back else "reverting"].append(did)
                continue
            stage_ids.append(did)
            slot = "shadow" if m.target == "shadow" else "active"
            running = (rec.running(slot) or {}).get("sha256") if rec else None
            if silent:
                why[did] = ("unknown to the fleet" if rec is None else "offline" if not rec.online
                            else f"silent for {now - (rec.last_seen or 0):.0f}s")
            if running == row.candidate_digest:
                states["unknown" if silent else "verified"].append(did)
            elif did in failed:
                states["failed"].append(did)
            elif silent or now - m.assigned_at > gates.install_timeout_s:
                why.setdefault(did, f"not running the candidate {now - m.assigned_at:.0f}s after assignment")
                states["unknown"].append(did)
            else:
                states["installing"].append(did)
        others = [d for d in cohort if d not in members]
        counts = {"cohort": len(cohort), "stage": len(stage_ids),
                  **{k: len(v) for k, v in states.items()},
                  "champion": len(states["champion"]) + len(others)}
        out: dict[str, Any] = {"counts": counts, "states": {k: sorted(v)[:50] for k, v in states.items()},
                               "all_states": states, "online": {d for d, r in by_id.items() if r.online},
                               "failed_reasons": failed, "unknown_reasons": why, "verdict": None, "candidate": Aggregate(),
                               "champion": None, "members": members}
        if rolling_back:
            out["next"] = "wait"
            pending = [d for d in states["reverting"] if (by_id.get(d) and by_id[d].online)]
            out["next_reason"] = (f"{len(pending)} online devices still going back to the champion"
                                  if pending else "every online device is back on the champion")
            return out
        if row.status != "running" and row.status != "paused":
            out["next"] = "none"
            out["next_reason"] = f"rollout {row.status}"
            return out
        since = row.stage_started_at
        slot = "shadow" if stage.kind == "shadow" else "active"
        cand = Aggregate.from_fleet(self._window_stats(row, stage_ids, row.candidate_version, slot, since)) \
            if stage_ids else Aggregate()
        champion: Aggregate | None = None
        label = "champion"
        if row.champion_version:
            if stage.kind == "shadow":
                champion = Aggregate.from_fleet(self._window_stats(row, stage_ids, row.champion_version,
                                                                   "active", since))
                label = "champion (same devices, same requests)"
            else:
                in_stage = set(stage_ids)
                champ_ids = [d for d in cohort if d not in in_stage]
                if champ_ids:
                    champion = Aggregate.from_fleet(self._window_stats(row, champ_ids, row.champion_version,
                                                                       "active", since))
                    label = "champion devices"
                if champion is None or not champion.scores or sum(champion.scores) < stage.min_samples:
                    baseline = self._baseline(row.id)
                    if baseline:
                        champion = Aggregate(**baseline)
                        label = "champion baseline (earlier stage)"
                elif champion is not None and persist and champion.scores \
                        and sum(champion.scores) >= stage.min_samples:
                    # written again only when the champion's aggregate folded in new rows (or is
                    # another one) since this process wrote it: the same rows give the same baseline
                    key = (row.id, row.stage_index, row.stage_started_at, row.champion_version, "active")
                    fold = self._agg_cache.get(key)
                    last = self._baseline_written.get(row.id)
                    if fold is None or last is None or last[0] != key or last[1] is not fold[1] \
                            or last[2] != fold[5]:
                        with self.engine.begin() as conn:
                            conn.execute(T.rollouts.update().where(T.rollouts.c.id == row.id)
                                         .values(baseline=_agg_dict(champion)))
                        if fold is not None:
                            self._baseline_written[row.id] = (key, fold[1], fold[5])
        view = StageView(stage=stage, elapsed_s=max(0.0, now - row.stage_started_at),
                         stage_devices=len(stage_ids), verified=counts["verified"],
                         pending=counts["installing"], failed=counts["failed"], unknown=counts["unknown"],
                         candidate=cand, champion=champion, champion_label=label)
        verdict = evaluate(view, gates)
        for g in verdict.gates:  # name the devices behind the device gates
            if g.name == "unknown_devices" and why:
                g.data["devices"] = dict(sorted(why.items())[:20])
            elif g.name == "install" and failed:
                g.data["reasons"] = dict(sorted(failed.items())[:20])
        out["verdict"] = verdict
        out["candidate"], out["champion"] = cand, champion
        return out

    def _window_stats(self, row: Any, device_ids: list[str], version: str, slot: str, since: float) -> Any:
        """``fleet.window_stats`` made incremental: each tick folds in only the windows stored since
        the previous tick (by row id), so a tick stays cheap however long the stage runs. The cache
        is keyed on the stage and the exact device set; any change recomputes from scratch."""
        from sqlalchemy import and_

        from cloud_hub.fleet import tables as FT
        from cloud_hub.fleet.aggregate import SlotAggregate

        ids = frozenset(device_ids)
        key = (row.id, row.stage_index, row.stage_started_at, version, slot)
        cached = self._agg_cache.get(key)
        if cached is None or cached[0] != ids:
            cached = (ids, SlotAggregate(), 0, None, {}, 0)
        members, agg, last_id, mark, recent, folded = cached
        t = FT.slot_stats
        # PostgreSQL: row ids come from a sequence, and with several writers (hub replicas, ingest
        # workers) a row can commit after a row with a higher id was already read. Rows carry the
        # writing transaction's id (``xid``); every transaction below the snapshot xmin taken before
        # a read had finished by then, so a late row has xid >= that mark and is read at the next
        # tick; rows folded since the mark are remembered (``recent``) and not folded twice.
        pg = self.engine.dialect.name == "postgresql"
        new_rows = t.c.id > last_id
        if pg and mark is not None:
            new_rows = new_rows | (t.c.xid >= mark)
        # the JSON columns as text, decoded only for the rows of these devices (the other side's
        # rows of the same version — e.g. stage vs champion devices — are skipped undecoded)
        plain = [c for c in t.c if c.name not in _SLOT_JSON]
        cols = plain + [cast(t.c[n], Text).label(n) for n in _SLOT_JSON]
        q = select(*cols).where(and_(t.c.name == row.model_name, t.c.version == version, t.c.slot == slot,
                                     t.c.end >= float(since), new_rows)).order_by(t.c.id)
        names = [c.name for c in plain] + list(_SLOT_JSON)
        i_id, i_dev, i_xid, n_plain = names.index("id"), names.index("device_id"), names.index("xid"), len(plain)
        with self.engine.connect() as conn:
            new_mark = int(conn.execute(text("SELECT txid_snapshot_xmin(txid_current_snapshot())")).scalar_one()) \
                if pg else None
            for r in conn.execute(q):
                if r[i_id] in recent:
                    continue
                last_id = max(last_id, r[i_id])
                if r[i_dev] in members:
                    d = dict(zip(names[:n_plain], r[:n_plain]))
                    for n, raw in zip(_SLOT_JSON, r[n_plain:]):
                        d[n] = _loads(raw)
                    agg.add_row(d)
                    folded += 1
                    if pg:
                        recent[r[i_id]] = r[i_xid]
        if pg:
            recent = {i: x for i, x in recent.items() if x >= new_mark}
        self._agg_cache = {k: v for k, v in self._agg_cache.items() if k[0] != row.id or k[1:3] == key[1:3]}
        self._agg_cache[key] = (members, agg, last_id, new_mark, recent, folded)
        return agg

    def _assign(self, row: Any, changes: list[tuple[str, str]], idx: int, now: float,
                members: dict[str, Any], persist: bool) -> dict[str, Any]:
        from types import SimpleNamespace

        m = T.rollout_devices
        new = dict(members)
        updates: list[dict[str, Any]] = []
        inserts: list[dict[str, Any]] = []
        bucket_of = self._buckets(row.id)
        with self.engine.begin() as conn:
            for did, target in changes:
                vals = {"target": target, "assigned_at": now}
                if did in members:
                    updates.append({"b_did": did, "b_target": target, "b_at": now})
                    new[did] = SimpleNamespace(**{**members[did]._asdict(), **vals}) \
                        if hasattr(members[did], "_asdict") else SimpleNamespace(**{**vars(members[did]), **vals})
                else:
                    full = {"rollout_id": row.id, "device_id": did, "bucket": bucket_of(did),
                            "stage_index": idx, "desired_id": None, **vals}
                    inserts.append(full)
                    new[did] = SimpleNamespace(**full)
            # one statement each (a statement per device was most of assigning 50,000 devices)
            if persist and updates:
                conn.execute(m.update().where((m.c.rollout_id == row.id) & (m.c.device_id == bindparam("b_did")))
                             .values(target=bindparam("b_target"), assigned_at=bindparam("b_at")), updates)
            if persist and inserts:
                conn.execute(m.insert(), inserts)
            if persist and changes:
                moved = {t: sum(1 for _, x in changes if x == t) for t in {x for _, x in changes}}
                self._event(conn, row.id, "assigned", self._stage(row).name,
                            ", ".join(f"{n} device(s) → {t}" for t, n in sorted(moved.items())),
                            {"devices": {t: sorted(d for d, x in changes if x == t)[:100] for t in moved}})
        return new

    def _push_desired(self, row: Any, members: dict[str, Any], by_id: dict[str, Any]) -> None:
        m = T.rollout_devices
        docs: dict[str, tuple[DesiredState, tuple]] = {}
        todo: list[tuple[str, DesiredState]] = []
        # devices found up to date at the previous tick whose record object is still the same (the
        # device index replaces a record whose rows changed) are up to date now: not checked again
        in_sync = self._in_sync.setdefault(row.id, {})  # updated in place (see _cohort)
        for did, mem in members.items():
            hit = docs.get(mem.target)
            if hit is None:
                doc = self._desired_for(row, mem.target)
                hit = docs[mem.target] = (doc, (doc.bundles["active"].sha256 if doc.bundles.get("active") else None,
                                                doc.bundles["shadow"].sha256 if doc.bundles.get("shadow") else None))
            doc, want = hit
            rec = by_id.get(did)
            seen = in_sync.get(did)
            if rec is not None and seen is not None and seen[0] is rec and seen[1] == doc.id:
                continue
            current = self._desired_digests(rec.desired if rec else None)
            if rec is not None and current == want and (rec.desired or {}).get("id") == doc.id:
                in_sync[did] = (rec, doc.id)
                continue
            in_sync.pop(did, None)
            todo.append((did, doc))
        if len(in_sync) > 2 * len(members) + 1000:
            for did in [d for d in in_sync if d not in members]:
                del in_sync[did]
        if not todo:
            return
        # one transaction for every document, then one for the members (a transaction per device
        # was most of the fan-out time of a 1,000-device rollback; issue 14)
        try:
            self.fleet.set_desired_many(todo)
            done = todo
        except EdgeError:
            done = []
            for did, doc in todo:
                try:
                    self.fleet.set_desired(did, doc)
                    done.append((did, doc))
                except EdgeError as exc:
                    log.warning("rollout %s: cannot set desired state of %s: %s", row.id, did, exc.message)
        with self.engine.begin() as conn:
            conn.execute(m.update().where((m.c.rollout_id == row.id) & (m.c.device_id == bindparam("b_did")))
                         .values(desired_id=bindparam("b_desired")),
                         [{"b_did": did, "b_desired": doc.id} for did, doc in done])

    def _advance(self, row: Any, now: float, *, forced: str | None, evaluation: dict | None) -> None:
        plan = Plan.model_validate(row.plan)
        cur = plan.stages[min(row.stage_index, len(plan.stages) - 1)]
        data = evaluation or {}
        if row.stage_index + 1 >= len(plan.stages):
            try:
                self.registry.set_alias(row.model_name, CHAMPION_ALIAS, row.candidate_version)
            except EdgeError as exc:
                self._transition(row, "paused", reason=f"cannot switch the champion alias: {exc.message}",
                                 kind="paused", message=f"stage {cur.name} passed but the alias switch failed: "
                                                        f"{exc.message}", data=data)
                return
            self._transition(row, "completed", reason=forced, finished_at=now, last_evaluation=evaluation,
                             kind="completed",
                             message=(f"{cur.name} {'skipped (' + forced + ')' if forced else 'passed'}: "
                                      f"{row.model_name}@{CHAMPION_ALIAS} → {row.candidate_version} "
                                      f"(was {row.champion_version or 'none'})"), data=data)
            return
        nxt = plan.stages[row.stage_index + 1]
        why = f"forced ({forced})" if forced else "all gates passed"
        self._transition(row, "running", reason=None, stage_index=row.stage_index + 1, stage_started_at=now,
                         last_evaluation=evaluation, kind="advanced",
                         message=f"{cur.name} → {nxt.name}: {why}", data=data, allow_same=True)

    def _rollback(self, row: Any, now: float, reason: str, evaluation: dict, obs: dict) -> None:
        self._transition(row, "rolling_back", reason=reason, last_evaluation=evaluation, kind="rollback",
                         message=f"automatic rollback at {self._stage(row).name}: {reason}", data=evaluation)
        fresh = self._row(row.id)
        obs2 = self._observe(fresh, now, persist=True)  # every device of the rollout → champion now
        self._finish_rollback(fresh, obs2, now)

    def _finish_rollback(self, row: Any, obs: dict, now: float) -> dict[str, Any]:
        counts = obs["counts"]
        online_reverting = [d for d in obs["all_states"]["reverting"] if d in obs["online"]]
        # offline devices keep the retained desired state and converge when they return
        done = not online_reverting
        final = "rolled_back" if row.status == "rolling_back" else "aborted"
        if done:
            offline = len(obs["all_states"]["reverting"])
            self._transition(row, final, reason=row.reason, finished_at=now, kind=final,
                             message=f"every online device of the rollout runs the champion "
                                     f"{row.champion_version or '(none)'} again"
                                     + (f"; {offline} offline device(s) converge when they return"
                                        if offline else ""),
                             data={"devices": counts})
        return {"id": row.id, "status": final if done else row.status, "decision": "rollback",
                "reason": row.reason, "reverting": online_reverting}

    def _transition(self, row: Any, status: str, *, kind: str, message: str, data: dict | None = None,
                    allow_same: bool = False, **values: Any) -> None:
        """Compare-and-set on (status, stage_index) so two writers cannot both act on one state."""
        now = time.time()
        r = T.rollouts
        with self.engine.begin() as conn:
            res = conn.execute(r.update().where((r.c.id == row.id) & (r.c.status == row.status)
                                                & (r.c.stage_index == row.stage_index))
                               .values(status=status, updated_at=now, **values))
            if res.rowcount != 1:
                raise ConflictError(f"rollout {row.id} changed while deciding; retry", field="status")
            stage_idx = values.get("stage_index", row.stage_index)
            plan = Plan.model_validate(row.plan)
            self._event(conn, row.id, kind, plan.stages[min(stage_idx, len(plan.stages) - 1)].name,
                        message, data)
        log.info("rollout %s: %s", row.id, message)

    @staticmethod
    def _event(conn: Any, rid: str, kind: str, stage: str | None, message: str, data: Any = None) -> None:
        conn.execute(T.rollout_events.insert().values(rollout_id=rid, ts=time.time(), kind=kind, stage=stage,
                                                      message=message, data=_jsonable(data)))


_SLOT_JSON = ("latency", "scores", "decisions", "divergence")  # fleet_slot_stats' JSON columns
_ROW_COLS = [c for c in T.rollouts.c if c.name != "baseline"]




def _agg_dict(a: Aggregate) -> dict[str, Any]:
    # the champion baseline of later stages: the divergence gate needs the scores per device too
    return {"requests": a.requests, "errors": a.errors, "p99_ms": a.p99_ms, "p50_ms": a.p50_ms,
            "scores": a.scores, "score_edges": a.score_edges, "compared": a.compared,
            "decision_changed": a.decision_changed, "devices_reporting": a.devices_reporting,
            "calls": a.calls, "errored_calls": a.errored_calls, "device_scores": a.device_scores}


def _jsonable(obj: Any) -> Any:
    import math

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def selected_devices(device_ids: Iterable[str], rollout_id: str, fraction: float, min_devices: int = 1) -> set[str]:
    """Public helper (benchmarks, UI): the devices a stage of ``fraction`` holds."""
    return stage_members(device_ids, rollout_id, fraction, min_devices)
