"""The hub's batch job service (``hub.jobs``): submit, status with progress, cancel, resume.

Jobs are rows in ``batch_jobs`` (SQLite or PostgreSQL) and run on a small
thread pool of the hub replica that accepted them. Progress is written to the
row at most every half second; cancel is a flag in the row, so any replica
can cancel a job another replica runs. When the hub stops, running jobs are
interrupted with their checkpoint kept; ``resume`` (or a restarted hub's
``resume``) continues them after the last checkpointed batch. Jobs found
``running`` under a runner that no longer exists are marked ``interrupted``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import desc, select, update

from cloud_hub.batch.job import BatchSpec, Progress, ResolvedModel, run_batch
from cloud_hub.batch.tables import batch_jobs
from edge_runtime.errors import ConflictError, EdgeError, NotFoundError, ValidationError

log = logging.getLogger("cloud_hub.batch")

FINAL = ("succeeded", "failed", "cancelled", "interrupted")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(t: dt.datetime | None) -> str | None:
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.isoformat()


class JobService:
    def __init__(self, hub: Any, *, max_running: int = 2) -> None:
        self.hub = hub
        self.engine = hub.engine
        self.runner = f"hub-{uuid.uuid4().hex[:12]}"
        self._pool = ThreadPoolExecutor(max_workers=max_running, thread_name_prefix="batch-job")
        self._stopping = False
        self._mark_orphans()

    @classmethod
    def of(cls, hub: Any) -> JobService:
        """The hub's job service, created on first use."""
        return hub.service("jobs", cls)

    # ---- queries -------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(batch_jobs).where(batch_jobs.c.id == job_id)).mappings().first()
            )
        if row is None:
            raise NotFoundError(f"unknown job {job_id}", field="job_id")
        return self._to_dict(row)

    def list(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = (
            select(batch_jobs)
            .order_by(desc(batch_jobs.c.created_at))
            .limit(max(1, min(limit, 1000)))
        )
        if status:
            q = q.where(batch_jobs.c.status == status)
        with self.engine.connect() as conn:
            return [self._to_dict(r) for r in conn.execute(q).mappings()]

    @staticmethod
    def _to_dict(r) -> dict[str, Any]:
        total = r["rows_total"]
        progress = None
        if total:
            progress = min(1.0, r["rows_done"] / total)
        elif r["status"] == "succeeded":
            progress = 1.0
        out = {
            "id": r["id"],
            "status": r["status"],
            "model": r["model_ref"],
            "model_name": r["model_name"],
            "model_version": r["model_version"],
            "model_sha256": r["model_digest"],
            "engine": r["engine"],
            "input": r["input"],
            "output": r["output"],
            "rejects": r["rejects"],
            "rows_total": total,
            "rows_done": r["rows_done"],
            "rows_out": r["rows_out"],
            "rows_rejected": r["rows_rejected"],
            "progress": progress,
            "resumed_from_batch": r["resumed_from_batch"],
            "error": r["error"],
            "error_code": r["error_code"],
            "cancel_requested": bool(r["cancel_requested"]),
            "created_at": _iso(r["created_at"]),
            "started_at": _iso(r["started_at"]),
            "finished_at": _iso(r["finished_at"]),
            "updated_at": _iso(r["updated_at"]),
        }
        out["result"] = (
            {"output": r["output"], "rejects": r["rejects"]} if r["status"] == "succeeded" else None
        )
        return out

    # ---- commands ------------------------------------------------------------------
    def submit(self, spec: BatchSpec, *, created_by: str | None = None) -> dict[str, Any]:
        spec.check()
        if not Path(spec.input).is_file():
            raise ValidationError(
                f"input file {spec.input!r} does not exist on the hub", field="input"
            )
        if not Path(spec.output).absolute().parent.is_dir():
            raise ValidationError(
                f"output directory of {spec.output!r} does not exist on the hub", field="output"
            )
        if Path(spec.output).exists() and not spec.overwrite:
            raise ConflictError(
                f"output {spec.output!r} already exists; set overwrite to replace it",
                field="output",
            )
        mv = self.hub.registry.resolve(spec.model)  # NotFoundError names the model/alias/version
        from cloud_hub.batch.output import default_rejects_path

        rejects = spec.rejects or str(default_rejects_path(Path(spec.output).absolute()))
        job_id = uuid.uuid4().hex[:16]
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(
                batch_jobs.insert().values(
                    id=job_id,
                    status="queued",
                    model_ref=spec.model,
                    model_name=mv.name,
                    model_version=mv.version,
                    model_digest=mv.digest,
                    engine=spec.engine,
                    input=str(Path(spec.input).absolute()),
                    output=str(Path(spec.output).absolute()),
                    rejects=rejects,
                    spec=json.dumps(asdict(spec)),
                    rows_done=0,
                    rows_out=0,
                    rows_rejected=0,
                    resumed_from_batch=0,
                    cancel_requested=False,
                    runner=self.runner,
                    created_by=created_by,
                    created_at=now,
                    updated_at=now,
                )
            )
        self._pool.submit(self._run, job_id, spec)
        return self.get(job_id)

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        if job["status"] in FINAL:
            raise ConflictError(f"job {job_id} is already {job['status']}", field="job_id")
        with self.engine.begin() as conn:
            conn.execute(
                update(batch_jobs)
                .where(batch_jobs.c.id == job_id)
                .values(cancel_requested=True, updated_at=_now())
            )
            if job["status"] == "queued":
                conn.execute(
                    update(batch_jobs)
                    .where((batch_jobs.c.id == job_id) & (batch_jobs.c.status == "queued"))
                    .values(status="cancelled", finished_at=_now())
                )
        return self.get(job_id)

    def resume(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        if job["status"] not in ("interrupted", "failed"):
            raise ConflictError(
                f"job {job_id} is {job['status']}; only interrupted or failed jobs resume",
                field="job_id",
            )
        with self.engine.connect() as conn:
            spec_json = conn.execute(
                select(batch_jobs.c.spec).where(batch_jobs.c.id == job_id)
            ).scalar()
        spec = BatchSpec(**json.loads(spec_json))
        with self.engine.begin() as conn:
            conn.execute(
                update(batch_jobs)
                .where(batch_jobs.c.id == job_id)
                .values(
                    status="queued",
                    error=None,
                    error_code=None,
                    cancel_requested=False,
                    runner=self.runner,
                    finished_at=None,
                    updated_at=_now(),
                )
            )
        self._pool.submit(self._run, job_id, spec)
        return self.get(job_id)

    # ---- running ---------------------------------------------------------------------
    def _set(self, job_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(batch_jobs)
                .where(batch_jobs.c.id == job_id)
                .values(updated_at=_now(), **values)
            )

    def _cancel_flag(self, job_id: str) -> bool:
        with self.engine.connect() as conn:
            return bool(
                conn.execute(
                    select(batch_jobs.c.cancel_requested).where(batch_jobs.c.id == job_id)
                ).scalar()
            )

    def _run(self, job_id: str, spec: BatchSpec) -> None:
        if self._cancel_flag(job_id) or self._stopping:
            if self._stopping:
                self._set(job_id, status="interrupted", finished_at=_now())
            return
        self._set(job_id, status="running", started_at=_now(), runner=self.runner)
        state = {"t": 0.0, "cancel": False}

        def cancelled() -> bool | str:
            if self._stopping:
                return "interrupt"
            return state["cancel"]

        def on_start(p: Progress, model: dict) -> None:
            self._set(
                job_id,
                rows_total=p.rows_total,
                rows_done=p.rows_done,
                rows_out=p.rows_out,
                rows_rejected=p.rows_rejected,
                model_name=model["name"],
                model_version=model["version"],
                model_digest=model["sha256"],
            )

        def on_progress(p: Progress) -> None:
            now = time.monotonic()
            if now - state["t"] < 0.5:
                return
            state["t"] = now
            self._set(
                job_id, rows_done=p.rows_done, rows_out=p.rows_out, rows_rejected=p.rows_rejected
            )
            state["cancel"] = self._cancel_flag(job_id)

        try:
            mv, model = self.hub.models.get(spec.model)
            resolved = ResolvedModel(model, Path(self.hub.registry.artifact_path(mv)), spec.model)
            result = run_batch(
                spec,
                resolved=resolved,
                on_start=on_start,
                on_progress=on_progress,
                cancelled=cancelled,
            )
        except EdgeError as exc:
            log.warning("batch job %s failed: %s", job_id, exc.message)
            self._set(
                job_id, status="failed", error=exc.message, error_code=exc.code, finished_at=_now()
            )
            return
        except Exception as exc:  # never let a job kill the hub; keep the reason
            log.exception("batch job %s crashed", job_id)
            self._set(
                job_id,
                status="failed",
                error=f"{type(exc).__name__}: {exc}",
                error_code="internal_error",
                finished_at=_now(),
            )
            return
        self._set(
            job_id,
            status=result.status,
            rows_done=result.rows_in,
            rows_out=result.rows_out,
            rows_rejected=result.rows_rejected,
            resumed_from_batch=result.resumed_from_batch,
            rejects=result.rejects,
            finished_at=_now(),
        )

    def _mark_orphans(self) -> None:
        """Jobs left queued/running by a hub that is gone cannot finish: mark them interrupted.

        With several replicas sharing one database, only jobs whose runner has
        not written progress for a minute are considered gone.
        """
        cutoff = _now() - dt.timedelta(seconds=60)
        with self.engine.begin() as conn:
            conn.execute(
                update(batch_jobs)
                .where(
                    batch_jobs.c.status.in_(("queued", "running"))
                    & (batch_jobs.c.updated_at < cutoff)
                )
                .values(
                    status="interrupted",
                    error="the hub running this job stopped",
                    finished_at=_now(),
                    updated_at=_now(),
                )
            )

    def close(self) -> None:
        self._stopping = True
        self._pool.shutdown(wait=True, cancel_futures=False)
