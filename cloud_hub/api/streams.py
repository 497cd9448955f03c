"""Managed stream worker routes: create (start), list, status with counters, stop, delete."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from cloud_hub.api.deps import Admin, HubDep, Viewer
from cloud_hub.stream.service import StreamService, check_name
from cloud_hub.stream.worker import StreamOptions


@asynccontextmanager
async def _restore_workers(app) -> AsyncIterator[None]:
    """At hub start, restart the stream workers whose desired state is running."""
    hub = getattr(app.state, "hub", None)
    if hub is not None:
        import asyncio

        await asyncio.to_thread(StreamService.of(hub).restore)
    yield


router = APIRouter(tags=["stream workers"], lifespan=_restore_workers)


class StreamRequest(BaseModel):
    name: str = Field(min_length=1, max_length=128, description="Unique worker name (also its MQTT client id suffix).")
    model: str = Field(min_length=1, max_length=401, description="REF: name, name@alias or name:version.")
    source: str = Field(min_length=1, max_length=2048, description="mqtt://host:port/topic, nats://host:port/subject or kafka://host:port/topic")
    sink: str = Field(min_length=1, max_length=2048, description="mqtt://host:port/topic, nats://host:port/subject or kafka://host:port/topic")
    dead_letter: str | None = Field(
        None, max_length=2048, description="Dead-letter URL (default derived from sink)."
    )
    batch_size: int = Field(256, ge=1, le=100_000)
    max_wait_ms: float = Field(5.0, ge=0, le=10_000)
    key_field: str = Field("key", min_length=1, max_length=200)


@router.post("/v1/streams", status_code=201, summary="Start a managed stream worker")
def create_stream(body: StreamRequest, hub: HubDep, _: Admin) -> dict[str, Any]:
    check_name(body.name)
    opts = StreamOptions(
        batch_size=body.batch_size, max_wait_ms=body.max_wait_ms, key_field=body.key_field
    )
    return StreamService.of(hub).create(
        body.name, body.model, body.source, body.sink, body.dead_letter, opts
    )


@router.get("/v1/streams", summary="List managed stream workers")
def list_streams(hub: HubDep, _: Viewer) -> dict[str, Any]:
    return {"streams": StreamService.of(hub).list()}


@router.get("/v1/streams/{stream_id}", summary="A stream worker with its counters")
def get_stream(stream_id: str, hub: HubDep, _: Viewer) -> dict[str, Any]:
    return StreamService.of(hub).get(stream_id)


@router.post("/v1/streams/{stream_id}/stop", summary="Stop a stream worker (stays stopped)")
def stop_stream(stream_id: str, hub: HubDep, _: Admin) -> dict[str, Any]:
    return StreamService.of(hub).stop(stream_id)


@router.post("/v1/streams/{stream_id}/start", summary="Start a stopped stream worker again")
def start_stream(stream_id: str, hub: HubDep, _: Admin) -> dict[str, Any]:
    return StreamService.of(hub).start(stream_id)


@router.delete(
    "/v1/streams/{stream_id}", status_code=204, summary="Stop and forget a stream worker"
)
def delete_stream(stream_id: str, hub: HubDep, _: Admin) -> None:
    StreamService.of(hub).delete(stream_id)
