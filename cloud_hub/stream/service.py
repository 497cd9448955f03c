"""Managed stream workers (``hub.streams``): the hub runs and restarts stream workers.

A worker is a row in ``stream_workers`` (desired ``running``/``stopped``) and,
while running, a thread in the hub. ``restore()`` restarts the workers whose
desired state is ``running`` when the hub starts, so workers survive a hub
restart; because inputs are acknowledged only after their results are
published, a hub crash loses no message either.

A worker follows its model reference: before each micro-batch it asks the hub's
model cache for ``REF`` (``name``, ``name@alias``, ``name:version``). An alias
moved through this hub reaches the next micro-batch; one moved through another
replica within the cache's ``resolve_ttl_s`` (1 s) plus one micro-batch. Each
output names the version that scored it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update

from cloud_hub.stream.tables import stream_workers
from cloud_hub.stream.transport import default_dead_letter, open_sink, open_source, parse_url
from cloud_hub.stream.worker import StreamOptions, StreamWorker
from edge_runtime.errors import ConflictError, EdgeError, NotFoundError, ValidationError
from edge_runtime.model import Model

log = logging.getLogger("cloud_hub.stream")


def build_worker(
    model: Model,
    source: str,
    sink: str,
    dead_letter: str | None,
    options: StreamOptions,
    *,
    group: str = "cloudhub",
    name: str = "0",
    follow: Callable[[], Model] | None = None,
) -> StreamWorker:
    """Open the transports and the worker (``follow``: see :class:`StreamWorker`)."""
    dlq_url = dead_letter or default_dead_letter(sink)
    opened = []
    try:
        src = open_source(source, group=group, name=name)
        opened.append(src)
        snk = open_sink(sink, name=name)
        opened.append(snk)
        dlq = open_sink(dlq_url, "dead_letter", name=name)
        opened.append(dlq)
    except BaseException:
        for t in opened:
            t.close()
        raise
    try:
        return StreamWorker(model, src, snk, dlq, options, follow=follow)
    except BaseException:
        for t in opened:
            t.close()
        raise


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class StreamService:
    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.engine = hub.engine
        self.runner = f"hub-{uuid.uuid4().hex[:12]}"
        self._workers: dict[str, tuple[StreamWorker, threading.Thread]] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, hub: Any) -> StreamService:
        return hub.service("streams", cls)

    def _row(self, wid: str):
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(stream_workers).where(
                        (stream_workers.c.id == wid) | (stream_workers.c.name == wid)
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NotFoundError(f"unknown stream worker {wid}", field="stream_id")
        return row

    def _to_dict(self, r) -> dict[str, Any]:
        live = self._workers.get(r["id"])
        stats = live[0].stats.to_dict() if live else json.loads(r["stats"] or "{}")
        return {
            "id": r["id"],
            "name": r["name"],
            "model": r["model_ref"],
            "source": r["source"],
            "sink": r["sink"],
            "dead_letter": r["dead_letter"],
            "options": json.loads(r["options"]),
            "desired": r["desired"],
            "status": r["status"],
            "error": r["error"],
            "stats": stats,
            "created_at": r["created_at"].isoformat() if r["created_at"] else None,
        }

    def get(self, wid: str) -> dict[str, Any]:
        return self._to_dict(self._row(wid))

    def list(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = (
                conn.execute(select(stream_workers).order_by(stream_workers.c.created_at))
                .mappings()
                .all()
            )
        return [self._to_dict(r) for r in rows]

    def create(
        self,
        name: str,
        model: str,
        source: str,
        sink: str,
        dead_letter: str | None,
        options: StreamOptions,
    ) -> dict[str, Any]:
        parse_url(source, "source")
        parse_url(sink, "sink")
        dlq = dead_letter or default_dead_letter(sink)
        parse_url(dlq, "dead_letter")
        self.hub.registry.resolve(model)  # 404 naming the model/alias/version
        with self.engine.connect() as conn:
            if conn.execute(
                select(stream_workers.c.id).where(stream_workers.c.name == name)
            ).first():
                raise ConflictError(f"a stream worker named {name!r} exists", field="name")
        wid = uuid.uuid4().hex[:16]
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(
                stream_workers.insert().values(
                    id=wid,
                    name=name,
                    model_ref=model,
                    source=source,
                    sink=sink,
                    dead_letter=dlq,
                    options=json.dumps(options.__dict__),
                    desired="running",
                    status="starting",
                    runner=self.runner,
                    created_at=now,
                    updated_at=now,
                )
            )
        self._launch(wid)
        return self.get(wid)

    def _set(self, wid: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(stream_workers)
                .where(stream_workers.c.id == wid)
                .values(updated_at=_now(), **values)
            )

    def start(self, wid: str) -> dict[str, Any]:
        """Start a stopped worker again (desired state ``running``); a running one is left as is."""
        r = self._row(wid)
        self._set(r["id"], desired="running")
        if r["id"] not in self._workers:
            self._launch(r["id"])
        return self.get(r["id"])

    def _launch(self, wid: str) -> None:
        r = self._row(wid)
        ref = r["model_ref"]
        try:
            _, model = self.hub.models.get(ref)
            # MQTT client id cloudhub-cloudhub-NAME-HOST: stable across restarts of this
            # hub (its session and unacked messages come back), distinct per replica host.
            worker = build_worker(
                model,
                r["source"],
                r["sink"],
                r["dead_letter"],
                StreamOptions(**json.loads(r["options"])),
                group="cloudhub",
                name=f"{r['name']}-{socket.gethostname()}",
                follow=lambda: self.hub.models.get(ref)[1],
            )
        except EdgeError as exc:
            self._set(wid, status="failed", error=exc.message)
            return
        t = threading.Thread(
            target=self._run, args=(wid, worker), name=f"stream-{r['name']}", daemon=True
        )
        with self._lock:
            self._workers[wid] = (worker, t)
        self._set(wid, status="running", error=None, runner=self.runner)
        t.start()

    def _run(self, wid: str, worker: StreamWorker) -> None:
        try:
            worker.run()
        except Exception as exc:  # keep the hub alive; record why the worker stopped
            log.exception("stream worker %s crashed", wid)
            self._set(wid, status="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            worker.close()

    def stop(self, wid: str) -> dict[str, Any]:
        r = self._row(wid)
        self._halt(r["id"])
        self._set(r["id"], desired="stopped", status="stopped")
        return self.get(r["id"])

    def delete(self, wid: str) -> None:
        r = self._row(wid)
        self._halt(r["id"])
        with self.engine.begin() as conn:
            conn.execute(stream_workers.delete().where(stream_workers.c.id == r["id"]))

    def _halt(self, wid: str) -> None:
        with self._lock:
            live = self._workers.pop(wid, None)
        if live:
            worker, t = live
            worker.stop()
            t.join(timeout=10)
            self._set(wid, stats=json.dumps(worker.stats.to_dict()))

    def restore(self) -> int:
        """Start the workers whose desired state is running (at hub start)."""
        with self.engine.connect() as conn:
            ids = (
                conn.execute(
                    select(stream_workers.c.id).where(stream_workers.c.desired == "running")
                )
                .scalars()
                .all()
            )
        for wid in ids:
            if wid not in self._workers:
                self._launch(wid)
        return len(ids)

    def close(self) -> None:
        for wid in list(self._workers):
            self._halt(wid)
            self._set(wid, status="stopped")  # desired stays running: restored at next start


def check_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name):
        raise ValidationError("name: letters, digits, '_', '.', '-' only (1-100)", field="name")
