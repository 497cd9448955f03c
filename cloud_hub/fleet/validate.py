"""Telemetry window validation: a window that cannot be right never reaches the gates.

A rollout decision is only as good as the numbers it is computed from, and one device with a
broken clock, a patched runtime or a bug must not be able to roll back (or advance) a rollout
— nor, by making the merge raise, stop every controller tick. The ingest therefore checks each
window before storing it, and refuses (counts per device, keeps the last reason, shows both in
``cloud-hub devices show``) a window with:

* negative counts, or counts that contradict each other (errors > requests, errored calls >
  calls, changed decisions > compared rows, a changed share outside [0, compared calls]);
* NaN or ±inf anywhere (times, CPU, the sketch's sum/min/max, the changed share);
* a latency sketch with another relative accuracy ``alpha`` (its buckets cannot be merged
  exactly), bucket counts that do not add up to its count, or min > max;
* a score or divergence histogram with other edges than this hub's (it would be skipped by
  the merge, silently biasing the distribution the divergence gate sees), or a wrong length.

:func:`slot_problem` works on stored rows too: :mod:`cloud_hub.fleet.aggregate` uses it to skip
(and count) rows stored before this check existed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edge_runtime.protocol import TelemetryWindow
from edge_runtime.sketch import DEFAULT_ALPHA
from edge_runtime.telemetry import DIVERGENCE_EDGES, score_histogram

log = logging.getLogger("cloud_hub.fleet.validate")

SCORE_EDGES = score_histogram().edges
_COUNTS = (
    "requests",
    "errors",
    "calls",
    "errored_calls",
    "compared",
    "decision_changed",
    "compared_calls",
    "dropped",
)
_PAIRS = (
    ("errors", "requests"),
    ("errored_calls", "calls"),
    ("decision_changed", "compared"),
    ("compared_calls", "compared"),
    ("compared", "requests"),
)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _bins_total(bins: Mapping[str, Any], zeros: int) -> int | None:
    """``zeros`` + the bucket counts when every key converts with ``int`` and every count is a
    plain int >= 0 (what the per-bucket loop of :func:`sketch_problem` accepts, checked in C-level
    passes: the loop was most of the ingest's validation), else None (the loop then runs)."""
    counts = bins.values()
    if not set(map(type, counts)) <= {int} or (counts and min(counts) < 0):
        return None
    try:
        list(map(int, bins))
    except (TypeError, ValueError):
        return None
    return zeros + sum(counts)


def _all_type(values: Any, types: set) -> bool:
    return set(map(type, values)) <= types


def _hist_ok(got: Any, counts: Any, edges: Sequence[float]) -> bool:
    """The common case of :func:`histogram_problem` in C-level passes: exactly this hub's edges
    (int/float values, no bool) and plain int counts >= 0. False: the full check runs."""
    return (
        isinstance(got, (list, tuple))
        and isinstance(counts, (list, tuple))
        and len(got) == len(edges)
        and len(counts) == len(edges) - 1
        and _all_type(got, {float, int})
        and list(got) == list(edges)
        and _all_type(counts, {int})
        and min(counts) >= 0
    )


def sketch_problem(data: Mapping[str, Any] | None) -> str | None:
    """Why a serialized latency sketch cannot be merged, or None."""
    if not data:
        return None
    alpha = data.get("alpha", DEFAULT_ALPHA)
    if not _finite(alpha) or abs(float(alpha) - DEFAULT_ALPHA) > 1e-12:
        return f"latency sketch alpha {alpha!r} differs from the hub's {DEFAULT_ALPHA} (cannot merge exactly)"
    count, zeros = data.get("count", 0), data.get("zeros", 0)
    if not _count(count) or not _count(zeros):
        return f"latency sketch count {count!r} / zeros {zeros!r} must be integers >= 0"
    bins = data.get("bins") or {}
    if not isinstance(bins, Mapping):
        return "latency sketch bins must be a mapping"
    total = _bins_total(bins, zeros)
    if total is None:  # something is wrong: the loop below names the first bad bucket
        total = zeros
        for k, c in bins.items():
            try:
                int(k)
            except (TypeError, ValueError):
                return f"latency sketch bucket key {k!r} is not an integer"
            if not _count(c):
                return f"latency sketch bucket {k} count {c!r} must be an integer >= 0"
            total += c
    if total != count:
        return f"latency sketch buckets hold {total} samples but count says {count}"
    if not _finite(data.get("sum", 0.0)):
        return "latency sketch sum is not finite"
    if count:
        lo, hi = data.get("min"), data.get("max")
        if not (_finite(lo) and _finite(hi)) or lo > hi or lo < 0:
            return f"latency sketch min/max {lo!r}/{hi!r} must be finite, >= 0 and min <= max"
    return None


def histogram_problem(
    name: str, data: Mapping[str, Any] | None, edges: Sequence[float]
) -> str | None:
    """Why a serialized histogram cannot be merged with this hub's ``edges``, or None."""
    if not data:
        return None
    got, counts = data.get("edges"), data.get("counts")
    if _hist_ok(got, counts, edges):
        return None
    if (
        not isinstance(got, (list, tuple))
        or len(got) != len(edges)
        or any(not _finite(a) or abs(float(a) - b) > 1e-12 for a, b in zip(got, edges))
    ):
        return (
            f"{name} histogram has other edges than the hub's ({len(edges) - 1} bins from {edges[0]} to "
            f"{edges[-1]})"
        )
    if (
        not isinstance(counts, (list, tuple))
        or len(counts) != len(edges) - 1
        or not all(_count(c) for c in counts)
    ):
        return f"{name} histogram needs {len(edges) - 1} integer counts >= 0"
    return None


def slot_problem(s: Mapping[str, Any], *, hub_edges: bool = True) -> str | None:
    """Why one slot's statistics (a ``SlotStats`` dump or a stored ``fleet_slot_stats`` row) are
    impossible, or None when they are consistent. ``hub_edges=False`` accepts histograms with any
    (well-formed) edges — the aggregate then checks that the rows it merges agree."""
    for f in _COUNTS:
        v = s.get(f) or 0
        if not _count(v):
            return f"{f}={v!r} must be an integer >= 0"
    for small, big in _PAIRS:
        a, b = s.get(small) or 0, s.get(big) or 0
        if a > b:
            return f"{small}={a} exceeds {big}={b}"
    share = s.get("changed_share") or 0.0
    if not _finite(share) or share < 0 or share > (s.get("compared_calls") or 0) + 1e-9:
        return f"changed_share={share!r} must be finite and within [0, compared_calls]"
    for k, v in (s.get("decisions") or {}).items():
        if not _count(v):
            return f"decisions[{k}]={v!r} must be an integer >= 0"
    problem = sketch_problem(s.get("latency"))
    for name, key, edges in (
        ("score", "scores", SCORE_EDGES),
        ("divergence", "divergence", DIVERGENCE_EDGES),
    ):
        data = s.get(key)
        if problem is None and data:
            own = data.get("edges") if isinstance(data, Mapping) else None
            if (
                not hub_edges
                and isinstance(own, (list, tuple))
                and len(own) >= 2
                and all(map(_finite, own))
            ):
                edges = list(own)
            problem = histogram_problem(name, data, edges)
    return problem


class _Fields:
    """``model.model_dump()`` as :func:`slot_problem` reads it (``.get``), without the deep copy:
    SlotStats' fields are plain values, dicts and lists, so the values are the same."""

    __slots__ = ("_m",)

    def __init__(self, model: Any) -> None:
        self._m = model

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self._m, key, default)


def window_problem(w: TelemetryWindow) -> str | None:
    """Why a telemetry window is refused, or None."""
    if w.seq < 0:
        return f"seq={w.seq} must be >= 0"
    for f in ("start", "end", "cpu_percent"):
        if not _finite(getattr(w, f)):
            return f"{f}={getattr(w, f)!r} is not finite"
    if w.end < w.start:
        return f"end={w.end} is before start={w.start}"
    if w.cpu_percent < 0 or w.rss_bytes < 0 or w.dropped_windows < 0:
        return "cpu_percent, rss_bytes and dropped_windows must be >= 0"
    for s in w.slots:
        problem = slot_problem(_Fields(s))
        if problem:
            return f"slot {s.slot} {s.name}:{s.version}: {problem}"
    return None


def split_windows(
    windows: Iterable[tuple[TelemetryWindow, float]],
) -> tuple[list[tuple[TelemetryWindow, float]], list[tuple[TelemetryWindow, str, float]]]:
    """(windows to store, refused as (window, reason, received at)). A refused window is refused
    for good — resending it cannot change that — so the ingest acknowledges it like a stored one."""
    good, refused = [], []
    for w, at in windows:
        problem = window_problem(w)
        if problem is None:
            good.append((w, at))
        else:
            log.warning("hub ingest: window %s of %s refused: %s", w.seq, w.device_id, problem)
            refused.append((w, f"window {w.seq}: {problem}", at))
    return good, refused


def record_rejections(engine: Any, refused: Sequence[tuple[TelemetryWindow, str, float]]) -> None:
    """Count refused windows per device (``fleet_device_state.rejected_windows``) and keep the last reason."""
    if not refused:
        return
    from sqlalchemy import select

    from cloud_hub.fleet import tables as T

    per: dict[str, tuple[int, str, float]] = {}
    for w, reason, at in refused:
        n, _, last = per.get(w.device_id, (0, "", 0.0))
        per[w.device_id] = (n + 1, reason[:500], max(last, at))
    st = T.device_state
    with engine.begin() as conn:
        have = set(
            conn.execute(select(st.c.device_id).where(st.c.device_id.in_(list(per)))).scalars()
        )
        for dev, (n, reason, at) in per.items():
            if dev in have:
                conn.execute(
                    st.update()
                    .where(st.c.device_id == dev)
                    .values(
                        rejected_windows=st.c.rejected_windows + n,
                        rejected_reason=reason,
                        last_seen=at,
                    )
                )
            else:
                conn.execute(
                    st.insert().values(
                        device_id=dev,
                        online=False,
                        state={"device_id": dev, "online": False},
                        last_seen=at,
                        rejected_windows=n,
                        rejected_reason=reason,
                    )
                )
