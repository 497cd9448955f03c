"""Exponential backoff with jitter: the one retry delay for every loop that waits on a peer.

Device reconnects (``edge_runtime.link``), bundle downloads (``edge_runtime.reconcile``), the
hub's broker reconnects (``cloud_hub.fleet.ingest``) and stream workers (``cloud_hub.stream``)
all retry with this. Without jitter a fleet that lost its broker reconnects in lockstep: every
device fails at the same instant, doubles the same delay and hits the broker again together.

The n-th delay (n = 0, 1, …) is drawn uniformly from ``[min_s, min(max_s, min_s · factor^(n+1))]``
("full jitter" with a floor): never shorter than ``min_s`` (no busy loop), growing up to ``max_s``,
and spread over the whole interval so a thousand devices arrive over it rather than at once.
"""

from __future__ import annotations

import random


class Backoff:
    """``next()`` returns the next delay in seconds; ``reset()`` after a success."""

    def __init__(
        self,
        min_s: float = 0.5,
        max_s: float = 30.0,
        *,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if min_s <= 0 or max_s < min_s or factor < 1:
            raise ValueError(
                f"backoff needs 0 < min_s <= max_s and factor >= 1 (got {min_s}, {max_s}, {factor})"
            )
        self.min_s = float(min_s)
        self.max_s = float(max_s)
        self.factor = float(factor)
        self.attempts = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The upper end of the interval the next delay is drawn from."""
        return min(self.max_s, self.min_s * self.factor ** min(self.attempts + 1, 64))

    def next(self) -> float:
        delay = self._rng.uniform(self.min_s, self.ceiling())
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0


def spread_delay(max_s: float, rng: random.Random | None = None) -> float:
    """A one-off delay drawn uniformly from ``[0, max_s]`` (0 when ``max_s <= 0``): spreads work
    that a whole fleet is told to do at the same instant (e.g. the reconciler's install jitter,
    ``[hub] install_jitter_s``) over ``max_s`` seconds instead of every device starting at once."""
    if max_s <= 0:
        return 0.0
    return (rng or random).uniform(0.0, float(max_s))
