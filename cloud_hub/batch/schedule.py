"""Scheduled batch jobs (``hub.schedules``): a cron expression that creates normal batch jobs.

Each firing creates one job through :class:`~cloud_hub.batch.service.JobService`
(same resume, rejects, progress), exactly once across hub replicas sharing the
database:

1. a replica's scheduler thread finds a due schedule (``next_fire_at <= now``);
2. in one transaction it moves ``next_fire_at`` forward *only if it still holds
   the value it read* (compare-and-set) and inserts the firing rows, which are
   unique per (schedule, scheduled time) — a replica that loses either race
   does nothing;
3. after the commit it resolves the model reference (``churn@champion`` → the
   version the alias points at *now*), pins the job to that version, renders
   ``{date}``/``{datetime}`` in the paths with the firing's time in the
   schedule's zone, and submits the job; the firing row records the job id
   and the resolved version, or the error when the job could not be created
   (missing input, existing output…).

A replica that stops between 2 and 3 leaves a firing ``claimed`` without a job:
another replica takes it over after :data:`LEASE_S` seconds.

Missed firings (the hub was down): a firing more than ``grace`` seconds in the
past is *late*. ``catch_up="run_once"`` runs the latest late firing once when
no on-time firing is due, ``"skip"`` runs none; skipped firings are recorded
(count) in a ``skipped`` firing row. Pausing stops firings; resuming starts
from the next firing after the resume (paused periods are not caught up).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import desc, select, update
from sqlalchemy.exc import IntegrityError

from cloud_hub.batch.cron import Cron, zone
from cloud_hub.batch.job import BatchSpec
from cloud_hub.batch.schedule_tables import batch_schedule_firings, batch_schedules
from cloud_hub.batch.service import JobService
from cloud_hub.batch.tables import batch_jobs
from edge_runtime.errors import ConflictError, EdgeError, NotFoundError, ValidationError

log = logging.getLogger("cloud_hub.schedules")

LEASE_S = 60.0  # a claimed firing without a job is taken over after this
MAX_COUNTED = 10_000  # missed firings counted one by one (a week of a per-minute cron)
CATCH_UP = ("run_once", "skip")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_KNOWN = {"date", "datetime"}
# BatchSpec fields a schedule may set (the rest come from the firing)
SPEC_FIELDS = (
    "id_columns",
    "batch_size",
    "engine",
    "workers",
    "processes",
    "input_format",
    "output_format",
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(t: dt.datetime | None) -> dt.datetime | None:
    if t is None:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)  # SQLite returns naive UTC


def _iso(t: dt.datetime | None) -> str | None:
    t = _aware(t)
    return t.isoformat() if t else None


def render(template: str, fire_at: dt.datetime, tz: dt.tzinfo) -> str:
    """``{date}`` → 2026-12-02, ``{datetime}`` → 2026-12-02T0600, in the schedule's zone."""
    local = fire_at.astimezone(tz)
    values = {"date": local.strftime("%Y-%m-%d"), "datetime": local.strftime("%Y-%m-%dT%H%M")}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def check_template(template: str, field: str) -> None:
    for name in _PLACEHOLDER.findall(template):
        if name not in _KNOWN:
            raise ValidationError(
                f"{field} has an unknown placeholder {{{name}}}: use {{date}} or {{datetime}}",
                field=field,
            )


class ScheduleService:
    def __init__(self, hub: Any, *, tick_s: float = 5.0) -> None:
        self.hub = hub
        self.engine = hub.engine
        self.runner = f"hub-{uuid.uuid4().hex[:12]}"
        self.tick_s = tick_s
        self.grace_s = max(60.0, 3 * tick_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def of(cls, hub: Any) -> ScheduleService:
        return hub.service("schedules", cls)

    # ---- queries -------------------------------------------------------------------------
    def _row(self, sid: str):
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(batch_schedules).where(
                        (batch_schedules.c.id == sid) | (batch_schedules.c.name == sid)
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NotFoundError(f"unknown schedule {sid}", field="schedule_id")
        return row

    def _firings(self, sid: str, limit: int) -> list[dict[str, Any]]:
        q = (
            select(batch_schedule_firings, batch_jobs.c.status.label("job_status"))
            .select_from(
                batch_schedule_firings.outerjoin(
                    batch_jobs, batch_jobs.c.id == batch_schedule_firings.c.job_id
                )
            )
            .where(batch_schedule_firings.c.schedule_id == sid)
            .order_by(desc(batch_schedule_firings.c.claimed_at))
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [
            {
                "fire_at": _iso(r["fire_at"]),
                "kind": r["kind"],
                "status": r["status"],
                "job_id": r["job_id"],
                "job_status": r["job_status"],
                "model_ref": r["model_ref"],
                "model_version": r["model_version"],
                "output": r["output"],
                "skipped": int(r["skipped"]) if r["skipped"] else None,
                "error": r["error"],
                "error_code": r["error_code"],
            }
            for r in rows
        ]

    def _to_dict(self, r, firings: int = 5) -> dict[str, Any]:
        spec = json.loads(r["spec"])
        return {
            "id": r["id"],
            "name": r["name"],
            "cron": r["cron"],
            "timezone": r["timezone"],
            "model": r["model_ref"],
            "input": r["input"],
            "output": r["output"],
            **{k: spec.get(k) for k in SPEC_FIELDS},
            "catch_up": r["catch_up"],
            "paused": bool(r["paused"]),
            "next_fire_at": None if r["paused"] else _iso(r["next_fire_at"]),
            "last_fire_at": _iso(r["last_fire_at"]),
            "created_by": r["created_by"],
            "created_at": _iso(r["created_at"]),
            "firings": self._firings(r["id"], firings),
        }

    def get(self, sid: str, firings: int = 20) -> dict[str, Any]:
        return self._to_dict(self._row(sid), firings)

    def list(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = (
                conn.execute(select(batch_schedules).order_by(batch_schedules.c.name))
                .mappings()
                .all()
            )
        return [self._to_dict(r) for r in rows]

    # ---- commands ------------------------------------------------------------------------
    def create(
        self,
        *,
        name: str,
        cron: str,
        model: str,
        input: str,
        output: str,
        timezone: str = "UTC",
        catch_up: str = "run_once",
        created_by: str | None = None,
        **spec_fields: Any,
    ) -> dict[str, Any]:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name):
            raise ValidationError("name: letters, digits, '_', '.', '-' only (1-100)", field="name")
        c = Cron.parse(cron)
        tz = zone(timezone)
        if catch_up not in CATCH_UP:
            raise ValidationError("catch_up must be run_once or skip", field="catch_up")
        unknown = set(spec_fields) - set(SPEC_FIELDS)
        if unknown:
            raise ValidationError(f"unknown option {min(unknown)}", field=min(unknown))
        check_template(input, "input")
        check_template(output, "output")
        now = _now()
        upcoming = c.firings(now, now + dt.timedelta(days=3660), tz, 50)
        outs = [render(output, t, tz) for t in upcoming]
        if len(set(outs)) < len(outs):
            raise ValidationError(
                f"output {output!r} names the same file for two firings of {cron!r}: "
                "add {date} (daily or rarer) or {datetime}",
                field="output",
            )
        if render(input, upcoming[0], tz) == outs[0]:
            raise ValidationError("the output must not overwrite the input", field="output")
        if not Path(outs[0]).absolute().parent.is_dir():
            raise ValidationError(
                f"output directory of {outs[0]!r} does not exist on the hub", field="output"
            )
        spec = BatchSpec(model=model, input=render(input, now, tz), output=outs[0], **spec_fields)
        spec.check()
        self.hub.registry.resolve(model)  # 404 naming the model/alias/version
        with self.engine.connect() as conn:
            if conn.execute(
                select(batch_schedules.c.id).where(batch_schedules.c.name == name)
            ).first():
                raise ConflictError(f"a schedule named {name!r} exists", field="name")
        sid = uuid.uuid4().hex[:16]
        stored = {k: v for k, v in asdict(spec).items() if k in SPEC_FIELDS}
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    batch_schedules.insert().values(
                        id=sid,
                        name=name,
                        cron=cron,
                        timezone=timezone,
                        model_ref=model,
                        input=input,
                        output=output,
                        spec=json.dumps(stored),
                        catch_up=catch_up,
                        paused=False,
                        next_fire_at=upcoming[0],
                        created_by=created_by,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError as exc:  # a concurrent create with the same name
            raise ConflictError(f"a schedule named {name!r} exists", field="name") from exc
        return self.get(sid)

    def _set(self, sid: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(batch_schedules)
                .where(batch_schedules.c.id == sid)
                .values(updated_at=_now(), **values)
            )

    def pause(self, sid: str) -> dict[str, Any]:
        r = self._row(sid)
        self._set(r["id"], paused=True)
        return self.get(r["id"])

    def resume(self, sid: str) -> dict[str, Any]:
        r = self._row(sid)
        if r["paused"]:  # from the next firing after now: paused periods are not caught up
            nxt = Cron.parse(r["cron"]).next_after(_now(), zone(r["timezone"]))
            self._set(r["id"], paused=False, next_fire_at=nxt)
        return self.get(r["id"])

    def delete(self, sid: str) -> None:
        r = self._row(sid)
        with self.engine.begin() as conn:
            conn.execute(
                batch_schedule_firings.delete().where(
                    batch_schedule_firings.c.schedule_id == r["id"]
                )
            )
            conn.execute(batch_schedules.delete().where(batch_schedules.c.id == r["id"]))

    def run_now(self, sid: str, *, created_by: str | None = None) -> dict[str, Any]:
        """One firing now (paused or not); the schedule's own firings are unchanged."""
        r = self._row(sid)
        now = _now()
        fid = self._claim_manual(r["id"], now)
        return self._submit(r, fid, now, created_by=created_by)

    # ---- firing --------------------------------------------------------------------------
    def _claim_manual(self, sid: str, fire_at: dt.datetime) -> str:
        fid = uuid.uuid4().hex[:16]
        with self.engine.begin() as conn:
            conn.execute(
                batch_schedule_firings.insert().values(
                    id=fid,
                    schedule_id=sid,
                    fire_at=fire_at,
                    kind="manual",
                    status="claimed",
                    runner=self.runner,
                    claimed_at=fire_at,
                    updated_at=fire_at,
                )
            )
        return fid

    def _plan(self, r, now: dt.datetime):
        """→ (firings to run as (time, kind), missed firings skipped, next firing)."""
        c, tz = Cron.parse(r["cron"]), zone(r["timezone"])
        first = _aware(r["next_fire_at"])
        due = [first, *c.firings(first, now, tz, MAX_COUNTED)]
        if len(due) > MAX_COUNTED:  # down for very long: the last day decides what runs
            tail = c.firings(now - dt.timedelta(days=1), now, tz, MAX_COUNTED)
            due += [t for t in tail if t > due[-1]]
        on_time = [t for t in due if (now - t).total_seconds() <= self.grace_s]
        late = [t for t in due if (now - t).total_seconds() > self.grace_s]
        fire = [(t, "cron") for t in on_time]
        if late and not on_time and r["catch_up"] == "run_once":
            fire.append((late[-1], "catch_up"))
            late = late[:-1]
        return fire, late, c.next_after(now, tz)

    def tick(self, now: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Fire what is due at ``now``; returns the firings this replica made."""
        now = now or _now()
        self._take_over_stale(now)
        with self.engine.connect() as conn:
            due = (
                conn.execute(
                    select(batch_schedules).where(
                        (batch_schedules.c.paused.is_(False))
                        & (batch_schedules.c.next_fire_at <= now)
                    )
                )
                .mappings()
                .all()
            )
        made = []
        for r in due:
            try:
                made += self._fire_due(r, now)
            except Exception:  # one schedule must not stop the others
                log.exception("schedule %s: firing failed", r["name"])
        return made

    def _fire_due(self, r, now: dt.datetime) -> list[dict[str, Any]]:
        fire, skipped, nxt = self._plan(r, now)
        claimed: list[tuple[str, dt.datetime]] = []
        try:
            with self.engine.begin() as conn:
                moved = conn.execute(
                    update(batch_schedules)
                    .where(
                        (batch_schedules.c.id == r["id"])
                        & (batch_schedules.c.next_fire_at == r["next_fire_at"])
                        & (batch_schedules.c.paused.is_(False))
                    )
                    .values(
                        next_fire_at=nxt,
                        last_fire_at=fire[-1][0] if fire else r["last_fire_at"],
                        updated_at=now,
                    )
                ).rowcount
                if moved != 1:
                    return []  # another replica fired it (or it was paused/changed)
                for t, kind in fire:
                    fid = uuid.uuid4().hex[:16]
                    conn.execute(
                        batch_schedule_firings.insert().values(
                            id=fid,
                            schedule_id=r["id"],
                            fire_at=t,
                            kind=kind,
                            status="claimed",
                            runner=self.runner,
                            claimed_at=now,
                            updated_at=now,
                        )
                    )
                    claimed.append((fid, t))
                if skipped:
                    conn.execute(
                        batch_schedule_firings.insert().values(
                            id=uuid.uuid4().hex[:16],
                            schedule_id=r["id"],
                            fire_at=skipped[-1],
                            kind="cron",
                            status="skipped",
                            skipped=str(len(skipped)),
                            error=f"{len(skipped)}{'+' if len(skipped) >= MAX_COUNTED else ''} "
                            "firing(s) missed while no hub was running "
                            f"(catch_up={r['catch_up']})",
                            runner=self.runner,
                            claimed_at=now,
                            updated_at=now,
                        )
                    )
        except IntegrityError:
            return []  # the unique firing row exists: another replica owns this firing
        return [self._submit(r, fid, t) for fid, t in claimed]

    def _submit(
        self, r, fid: str, fire_at: dt.datetime, *, created_by: str | None = None
    ) -> dict[str, Any]:
        tz = zone(r["timezone"])
        spec_fields = json.loads(r["spec"])
        values: dict[str, Any] = {"model_ref": r["model_ref"]}
        try:
            mv = self.hub.registry.resolve(r["model_ref"])  # the version the alias names now
            values.update(model_version=mv.version, model_digest=mv.digest)
            spec = BatchSpec(
                model=f"{mv.name}:{mv.version}",
                input=render(r["input"], fire_at, tz),
                output=render(r["output"], fire_at, tz),
                scoring_date=fire_at.isoformat(),
                **spec_fields,
            )
            values["output"] = spec.output
            job = JobService.of(self.hub).submit(
                spec, created_by=created_by or r["created_by"] or f"schedule:{r['name']}"
            )
            values.update(status="submitted", job_id=job["id"])
        except EdgeError as exc:
            log.warning("schedule %s: firing at %s failed: %s", r["name"], fire_at, exc.message)
            values.update(status="failed", error=exc.message, error_code=exc.code)
        except Exception as exc:  # recorded, never raised into the scheduler loop
            log.exception("schedule %s: firing at %s crashed", r["name"], fire_at)
            values.update(
                status="failed", error=f"{type(exc).__name__}: {exc}", error_code="internal_error"
            )
        with self.engine.begin() as conn:
            conn.execute(
                update(batch_schedule_firings)
                .where(batch_schedule_firings.c.id == fid)
                .values(updated_at=_now(), **values)
            )
        return {"schedule": r["name"], "fire_at": _iso(fire_at), **values}

    def _take_over_stale(self, now: dt.datetime) -> None:
        """Submit firings another replica claimed but did not submit within LEASE_S."""
        cutoff = now - dt.timedelta(seconds=LEASE_S)
        with self.engine.connect() as conn:
            stale = (
                conn.execute(
                    select(batch_schedule_firings).where(
                        (batch_schedule_firings.c.status == "claimed")
                        & (batch_schedule_firings.c.claimed_at < cutoff)
                    )
                )
                .mappings()
                .all()
            )
        for f in stale:
            with self.engine.begin() as conn:
                took = conn.execute(
                    update(batch_schedule_firings)
                    .where(
                        (batch_schedule_firings.c.id == f["id"])
                        & (batch_schedule_firings.c.status == "claimed")
                        & (batch_schedule_firings.c.claimed_at == f["claimed_at"])
                    )
                    .values(runner=self.runner, claimed_at=now, updated_at=now)
                ).rowcount
            if took == 1:
                try:
                    r = self._row(f["schedule_id"])
                except NotFoundError:
                    continue
                log.warning("schedule %s: taking over firing %s", r["name"], f["fire_at"])
                self._submit(r, f["id"], _aware(f["fire_at"]))

    # ---- the scheduler thread ------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="schedules", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the database may be briefly unavailable: try again next tick
                log.exception("scheduler tick failed")
            self._stop.wait(self.tick_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
