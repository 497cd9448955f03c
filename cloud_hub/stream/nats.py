"""NATS JetStream transport (nats-py): durable pull consumer, explicit ack.

nats-py is asyncio; the worker is not, so each endpoint runs its own event loop
on a background thread and the sync methods hand coroutines to it. Several
workers using the same durable name share the consumer (JetStream balances the
messages between them). An unacknowledged message comes back after
``ack_wait`` seconds (URL option, default 30), which is what makes a SIGKILL
lose nothing. A stream is created for a subject that no stream covers
(name: URL option ``stream`` or derived from the subject).

The source pulls continuously on its loop thread into a small local queue
(``prefetch`` messages, URL option, default 512), so fetching the next
micro-batch overlaps scoring and publishing the current one. Prefetched
messages are unacknowledged like any other: a SIGKILL loses none of them.
"""

from __future__ import annotations

import asyncio
import queue
import re
import threading
import time
from typing import Any

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from cloud_hub.stream.transport import Endpoint, InMessage, TransportError


def stream_name_for(subject: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", subject).upper()[:64]


class _Loop:
    """A private asyncio loop on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="nats-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float | None = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run_or_stop(self, coro, timeout: float | None = 60.0) -> Any:
        """``run`` a start-up coroutine; if it fails, stop the loop (no thread left behind)."""
        try:
            return self.run(coro, timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


async def _connect(ep: Endpoint):
    try:
        return await nats.connect(
            f"nats://{ep.host}:{ep.port}",
            connect_timeout=5,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            user=ep.options.get("username"),
            password=ep.options.get("password"),
        )
    except Exception as exc:  # nats raises several error types (NoServers, OSError, ...)
        raise TransportError(f"cannot reach NATS at {ep.host}:{ep.port}: {exc}") from exc


async def _ensure_stream(js, ep: Endpoint) -> str:
    try:
        return await js.find_stream_name_by_subject(ep.target)
    except NotFoundError:
        name = ep.options.get("stream") or stream_name_for(ep.target)
        await js.add_stream(name=name, subjects=[ep.target])
        return name


async def _open(ep: Endpoint) -> tuple[Any, Any, str]:
    """Connect, get the JetStream context and the stream that covers ``ep.target``."""
    nc = await _connect(ep)
    js = nc.jetstream()
    return nc, js, await _ensure_stream(js, ep)


class NatsSource:
    def __init__(self, ep: Endpoint, *, group: str) -> None:
        self.url = ep.url
        self.subject = ep.target
        self.durable = ep.options.get("durable", group)
        self.ack_wait = float(ep.options.get("ack_wait", 30))
        self.prefetch = max(1, int(ep.options.get("prefetch", 512)))
        self._q: queue.Queue = queue.Queue()
        self._closing = False
        self.pump_error: str | None = None
        self._loop = _Loop()
        self._loop.run_or_stop(self._start(ep))

    async def _start(self, ep: Endpoint) -> None:
        self.nc, self.js, self.stream = await _open(ep)
        cfg = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_ack_pending=int(ep.options.get("max_ack_pending", 20000)),
            filter_subject=self.subject,
        )
        self.sub = await self.js.pull_subscribe(
            self.subject, durable=self.durable, stream=self.stream, config=cfg
        )
        self._pump_task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        """Keep up to ``prefetch`` messages pulled ahead of the worker."""
        while not self._closing:
            room = self.prefetch - self._q.qsize()
            if room <= 0:
                await asyncio.sleep(0.001)
                continue
            try:
                msgs = await self._fetch(room, 1.0)
                self.pump_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnecting, consumer gone...: retry, keep the reason
                self.pump_error = str(exc)
                await asyncio.sleep(0.5)
                continue
            now = time.time()
            for m in msgs:
                self._q.put(InMessage(m.data, now, m))

    async def _fetch(self, n: int, timeout: float) -> list:
        # nats-py's fetch(n) in long-poll mode waits until n messages or the timeout,
        # which would hold a lone message for the whole timeout. So: wait for one,
        # then take what is already there (fetch starts with a no_wait request).
        try:
            msgs = await self.sub.fetch(1, timeout=timeout)
        except (TimeoutError, NatsTimeout):
            return []
        if n > 1:
            try:
                msgs += await self.sub.fetch(n - 1, timeout=0.002)
            except (TimeoutError, NatsTimeout):
                pass
        return msgs

    def fetch(self, max_messages: int, timeout: float) -> list[InMessage]:
        out: list[InMessage] = []
        try:
            out.append(self._q.get(timeout=timeout))
        except queue.Empty:
            return out
        while len(out) < max_messages:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                break
        return out

    async def _ack(self, msgs: list) -> None:
        for m in msgs:
            await m.ack()
        await self.nc.flush()

    def ack(self, messages: list[InMessage]) -> None:
        try:
            self._loop.run(self._ack([m.handle for m in messages]))
        except Exception as exc:  # not acked: JetStream redelivers after ack_wait
            raise TransportError(f"JetStream ack on {self.subject} failed: {exc}") from exc

    def close(self) -> None:
        self._closing = True

        async def stop() -> None:
            task = getattr(self, "_pump_task", None)
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
            await self.nc.close()

        try:
            self._loop.run(stop(), 10)
        except Exception:  # closing a broken connection must not raise
            pass
        self._loop.stop()


class NatsSink:
    def __init__(self, ep: Endpoint) -> None:
        self.url = ep.url
        self.subject = ep.target
        self._loop = _Loop()
        self._loop.run_or_stop(self._start(ep))

    async def _start(self, ep: Endpoint) -> None:
        self.nc, self.js, self.stream = await _open(ep)

    async def _publish(self, payloads: list[bytes]) -> None:
        # Concurrent publishes, each confirmed by a PubAck from the stream.
        results = await asyncio.gather(
            *(self.js.publish(self.subject, p, timeout=30) for p in payloads),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                raise TransportError(f"JetStream did not confirm a publish to {self.subject}: {r}")

    def publish(self, payloads: list[bytes]) -> None:
        if payloads:
            self._loop.run(self._publish(payloads), 60)

    def close(self) -> None:
        try:
            self._loop.run(self.nc.close(), 10)
        except Exception:
            pass
        self._loop.stop()
