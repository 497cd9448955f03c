"""Stable bucketing shared by cloud and edge.

``bucket(key, salt)`` maps a key to [0, 1) with SHA-256, so the same entity or
device lands in the same bucket in every process, host and restart (Python's
``hash()`` is salted per process and must never be used for routing).
"""

from __future__ import annotations

import hashlib

_SCALE = float(1 << 64)


def bucket(key: str, salt: str = "") -> float:
    """Return a stable number in [0, 1) for ``key`` under ``salt``."""
    digest = hashlib.sha256(f"{salt}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def in_fraction(key: str, salt: str, fraction: float) -> bool:
    """True when ``key`` falls in the first ``fraction`` of buckets.

    Nested by construction: a key inside 1 % is also inside 5 %.
    """
    return bucket(key, salt) < fraction


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
