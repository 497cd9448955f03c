"""Which group answers an entity: a stable hash bucket under a persisted salt.

``bucket(entity_key, salt=f"{name}:{split_id}") < challenger_fraction`` →
challenger. SHA-256 based (``edge_runtime.hashing``), so the same customer gets
the same group in every process, replica and restart; changing the fraction
keeps the split id, so growing 10 % → 20 % keeps the first 10 % in the
challenger group (nested). A new split id (``reset``) reshuffles everyone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from edge_runtime.hashing import bucket

CHAMPION, CHALLENGER = "champion", "challenger"
GROUPS = (CHAMPION, CHALLENGER)


@dataclass
class SplitConfig:
    name: str
    split_id: str
    challenger_fraction: float
    entity_key: str = "customer_id"
    enabled: bool = True
    evaluation: dict[str, Any] = field(default_factory=dict)
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def salt(self) -> str:
        return f"{self.name}:{self.split_id}"

    def group_of(self, entity_key: Any) -> str:
        """Group of one entity; rows without a key always go to the champion."""
        if not self.enabled or entity_key is None or entity_key == "":
            return CHAMPION
        return CHALLENGER if bucket(str(entity_key), self.salt) < self.challenger_fraction else CHAMPION

    def ref(self, group: str) -> str:
        return f"{self.name}@{group}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("created_at", "updated_at"):
            d[k] = d[k].isoformat() if d[k] else None
        d["salt"] = self.salt
        return d


@dataclass
class RoutePart:
    """Rows ``indices`` of a request answered by ``group`` (model ref ``ref``)."""

    group: str
    ref: str
    indices: list[int]
    entity_keys: list[str | None]
