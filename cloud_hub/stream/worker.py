"""The stream worker: micro-batches in, scores, publishes, then acknowledges.

Loop: fetch up to ``batch_size`` messages (waiting at most ``max_wait_ms``
after the first) → decode each JSON message → score all valid rows in one
vectorised call (the same :class:`Model` and codec as ``/predict``) → publish
the results, and the bad messages with their reason to the dead-letter
destination, waiting for the broker's confirmation → only then acknowledge
the inputs. A crash anywhere before the ack means the broker delivers the
messages again: at-least-once, nothing lost (a consumer deduplicates on
``key`` + ``msg_id`` if it needs exactly-once effects).

Input message: a JSON object, either ``{"key": ..., "features": {...}}`` or a
flat object of features plus the key field; an optional ``ts`` (event time)
is echoed. Output message::

    {"key", "score", "flag", "probability", "label", "risk_level",
     "model": {"name", "version", "sha256"}, "threshold", "ts",
     "received_at", "scored_at"}
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from cloud_hub.stream.transport import InMessage, KeyedPayload, Sink, Source, TransportError
from edge_runtime.backoff import Backoff
from edge_runtime.contract import Refusal
from edge_runtime.errors import EdgeError, ValidationError
from edge_runtime.model import Model

log = logging.getLogger("cloud_hub.stream")


@dataclass
class StreamOptions:
    batch_size: int = 256
    max_wait_ms: float = 5.0
    key_field: str = "key"
    retry_s: float = 1.0  # first retry delay; later ones grow with jitter (edge_runtime.backoff)
    retry_max_s: float = 30.0


@dataclass
class StreamStats:
    received: int = 0
    published: int = 0
    dead_lettered: int = 0
    batches: int = 0
    publish_retries: int = 0
    errors: int = 0
    started_at: float = field(default_factory=time.time)
    last_batch_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _out_key(m: InMessage, key: Any) -> bytes | None:
    """The result's transport key: the input's own key, else the message's key field."""
    if m.key is not None:
        return m.key
    return None if key is None else str(key).encode()


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


class StreamWorker:
    def __init__(
        self,
        model: Model,
        source: Source,
        sink: Sink,
        dead_letter: Sink,
        options: StreamOptions | None = None,
        *,
        follow: Callable[[], Model] | None = None,
    ) -> None:
        """``follow``: asked before every micro-batch for the model to score it with (a stream
        on ``name@alias`` follows the alias: the hub's model cache answers from memory and
        drops its answer when the alias moves); ``None`` scores with ``model`` throughout."""
        self.source, self.sink, self.dead_letter = source, sink, dead_letter
        self.opt = options or StreamOptions()
        self.stats = StreamStats()
        self.stop_event = threading.Event()
        self.follow = follow
        self._use(model)

    def _use(self, model: Model) -> None:
        """Score the next micro-batches with ``model``; its outputs name its version."""
        if model.codec is None:
            raise ValidationError(
                f"model {model.name}:{model.version} takes raw tensors; stream "
                "scoring needs named features",
                field="model",
            )
        if getattr(self, "model", None) is not None and self.model.digest != model.digest:
            log.info(
                "stream worker: now scoring with %s:%s (was %s)",
                model.name,
                model.version,
                self.model.version,
            )
        self.model = model
        self._model_info = {"name": model.name, "version": model.version, "sha256": model.digest}

    # ---- decoding -------------------------------------------------------------------
    def _decode(self, m: InMessage) -> tuple[Any, dict[str, Any], Any]:
        """→ (key, feature row, event ts); raises ValidationError with the reason."""
        try:
            obj = json.loads(m.data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValidationError(f"message is not valid JSON: {exc}", field="message") from exc
        if not isinstance(obj, dict):
            raise ValidationError("message is not a JSON object", field="message")
        key = obj.get(self.opt.key_field)
        if key is None and m.key is not None:  # the transport's key (Kafka record key)
            key = m.key.decode("utf-8", "replace")
        feats = obj.get("features")
        if isinstance(feats, dict):
            row = feats
        elif feats is not None:
            raise ValidationError("features must be an object of feature values", field="features")
        else:
            row = {k: v for k, v in obj.items() if k not in (self.opt.key_field, "ts")}
        return key, row, obj.get("ts")

    def _dead(self, m: InMessage, exc: EdgeError | Refusal) -> bytes:
        """A dead letter: the message and why (``field`` names the feature, as a batch
        reject does: the message is the row)."""
        try:
            payload: Any = m.data.decode()
        except UnicodeDecodeError:
            payload = m.data.hex()
        if isinstance(exc, Refusal):
            reason, fld = exc.row_reason, exc.feature or "message"
        else:
            reason, fld = exc.message, exc.field
        body = json.dumps(
            {
                "reason": reason,
                "code": exc.code,
                "field": fld,
                "source": self.source.url,
                "key": m.key.decode("utf-8", "replace") if m.key is not None else None,
                "payload": payload,
                "received_at": _iso(m.received_at),
                "model": self._model_info,
            }
        ).encode()
        return KeyedPayload(body, m.key)

    # ---- one micro-batch ------------------------------------------------------------
    def process(self, msgs: list[InMessage]) -> tuple[list[bytes], list[bytes]]:
        """Messages → (result payloads, dead-letter payloads), in input order."""
        decoded: list[tuple[InMessage, Any, dict, Any]] = []
        dead: list[bytes] = []
        for m in msgs:
            try:
                key, row, ts = self._decode(m)
                decoded.append((m, key, row, ts))
            except ValidationError as exc:
                dead.append(self._dead(m, exc))
        if not decoded:
            return [], dead
        # the bundle's contract (the same refusals as /predict), then engine and post-processing
        x, keep, refused = self.model.codec.encode_valid([d[2] for d in decoded])
        for i, ref in refused.items():
            dead.append(self._dead(decoded[i][0], ref))
        if not keep:
            return [], dead
        good = decoded if len(keep) == len(decoded) else [decoded[i] for i in keep]
        scores = self.model.score_array(x)
        preds = self.model.post.rows(scores)
        score = scores.score
        threshold = self.model.threshold
        now = time.time()
        scored_at = _iso(now)
        out = []
        anomaly = self.model.task == "anomaly"  # a score below the threshold is the flag
        for (m, key, _, ts), p, s in zip(good, preds, score.tolist()):
            rec = {
                "key": key,
                "score": s,
                "flag": bool(s < threshold) if anomaly else bool(s >= threshold),
                **p,
                "model": self._model_info,
                "threshold": threshold,
                "ts": ts,
                "received_at": _iso(m.received_at),
                "scored_at": scored_at,
            }
            out.append(KeyedPayload(json.dumps(rec).encode(), _out_key(m, key)))
        return out, dead

    def _process_safely(self, msgs: list[InMessage]) -> tuple[list[bytes], list[bytes]]:
        """``process``, but a message that makes scoring itself fail (a poison message,
        an engine error) is dead-lettered alone instead of blocking the stream."""
        try:
            return self.process(msgs)
        except Exception:
            log.exception("micro-batch of %d failed; scoring its messages one by one", len(msgs))
        out: list[bytes] = []
        dead: list[bytes] = []
        for m in msgs:
            try:
                o, d = self.process([m])
            except EdgeError as exc:
                o, d = [], [self._dead(m, exc)]
            except Exception as exc:  # never let one message stop the worker
                o, d = (
                    [],
                    [self._dead(m, EdgeError(f"scoring failed: {type(exc).__name__}: {exc}"))],
                )
            out += o
            dead += d
        return out, dead

    # ---- loop -------------------------------------------------------------------------
    def run_once(self, timeout: float = 0.5) -> int:
        msgs = self.source.fetch(self.opt.batch_size, timeout)
        if not msgs:
            return 0
        wait = self.opt.max_wait_ms / 1000
        if wait > 0 and len(msgs) < self.opt.batch_size:
            more = self.source.fetch(self.opt.batch_size - len(msgs), wait)
            msgs += more
        self.stats.received += len(msgs)
        if self.follow is not None:  # before scoring: a failure leaves the batch unacked
            model = self.follow()
            if model is not self.model:
                self._use(model)
        out, dead = self._process_safely(msgs)
        backoff = Backoff(self.opt.retry_s, max(self.opt.retry_s, self.opt.retry_max_s))
        while True:  # publish until confirmed; never ack what is not published
            try:
                if out:
                    self.sink.publish(out)
                if dead:
                    self.dead_letter.publish(dead)
                break
            except (TransportError, OSError, RuntimeError, ValueError) as exc:
                self.stats.publish_retries += 1
                delay = backoff.next()
                log.warning("publish failed (%s); retrying in %.1f s", exc, delay)
                if self.stop_event.wait(delay):
                    return 0  # not acked: the broker redelivers to the next worker
        self.source.ack(msgs)
        self.stats.published += len(out)
        self.stats.dead_lettered += len(dead)
        self.stats.batches += 1
        self.stats.last_batch_at = time.time()
        return len(msgs)

    def run(self) -> None:
        log.info(
            "stream worker: %s → %s with %s:%s",
            self.source.url,
            self.sink.url,
            self.model.name,
            self.model.version,
        )
        backoff = Backoff(self.opt.retry_s, max(self.opt.retry_s, self.opt.retry_max_s))
        while not self.stop_event.is_set():
            try:
                self.run_once()
                backoff.reset()
            except TransportError as exc:
                delay = backoff.next()
                log.warning("transport error: %s; retrying in %.1f s", exc.message, delay)
                self.stop_event.wait(delay)
            except Exception:  # a worker never dies of one bad batch; unacked = redelivered
                self.stats.errors += 1
                log.exception("stream batch failed; its messages will be redelivered")
                self.stop_event.wait(backoff.next())

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        self.stop()
        for t in (self.source, self.sink, self.dead_letter):
            try:
                t.close()
            except Exception:  # closing one must not keep the others open
                log.exception("error closing %s", getattr(t, "url", t))
