"""Cohort selectors and stable stage membership.

A selector is a comma-separated list of terms, all of which must hold (AND):

    region=eu,profile=rpi4          tag region is eu and profile is rpi4
    region in (eu,us)               tag value is one of the listed values
    region!=us                      tag absent or different
    site                            tag present        !site   tag absent
    id=dev-001                      device id (also ``id in (a,b)``)
    *  or empty                     every device

``profile`` and ``id`` refer to the device's profile and id; any other key is a
tag. A cohort is re-evaluated at every controller tick, so devices registering
mid-rollout join it.

Stage membership uses ``bucket(device_id, rollout_id)``: a device is in a stage
of fraction ``f`` when its bucket is below ``f`` (plus the ``min_devices``
lowest buckets), so a device of the 1 % stage stays in the 5 % stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from edge_runtime.errors import ValidationError
from edge_runtime.hashing import bucket

_KEY = r"[A-Za-z_][A-Za-z0-9_.\-/]*"
_IN = re.compile(rf"^({_KEY})\s+(not\s+in|in)\s*\((.*)\)$", re.IGNORECASE)
_CMP = re.compile(rf"^({_KEY})\s*(!=|==|=)\s*(.+)$")
_EXISTS = re.compile(rf"^(!?)\s*({_KEY})$")
_VALUE = re.compile(r"^[A-Za-z0-9_.:\-/@+*]+$")


@dataclass(frozen=True)
class Term:
    key: str
    op: str  # eq, ne, in, notin, exists, absent
    values: tuple[str, ...] = ()

    def matches(self, device_id: str, tags: Mapping[str, Any], profile: str | None) -> bool:
        if self.key == "id":
            present, value = True, device_id
        elif self.key == "profile":
            present, value = bool(profile), profile or ""
        else:
            present = self.key in (tags or {})
            value = str((tags or {}).get(self.key, ""))
        if self.op == "exists":
            return present
        if self.op == "absent":
            return not present
        if self.op == "eq":
            return present and value == self.values[0]
        if self.op == "ne":
            return not present or value != self.values[0]
        if self.op == "in":
            return present and value in self.values
        return not present or value not in self.values  # notin

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "absent":
            return f"!{self.key}"
        if self.op in ("eq", "ne"):
            return f"{self.key}{'=' if self.op == 'eq' else '!='}{self.values[0]}"
        return f"{self.key} {'in' if self.op == 'in' else 'notin'} ({','.join(self.values)})"


@dataclass(frozen=True)
class Selector:
    terms: tuple[Term, ...]

    def matches(self, device_id: str, tags: Mapping[str, Any] | None = None,
                profile: str | None = None) -> bool:
        return all(t.matches(device_id, tags or {}, profile) for t in self.terms)

    def match_record(self, rec: Any) -> bool:
        return self.matches(rec.id, getattr(rec, "tags", None) or {}, getattr(rec, "profile", None))

    def __str__(self) -> str:
        return ",".join(str(t) for t in self.terms) or "*"


def _split_terms(text: str) -> list[str]:
    out, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValidationError(f"cohort selector {text!r}: unbalanced ')'", field="cohort")
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise ValidationError(f"cohort selector {text!r}: unbalanced '('", field="cohort")
    out.append("".join(cur))
    return [t.strip() for t in out]


def parse_selector(text: str | None) -> Selector:
    """Parse a selector; raise :class:`ValidationError` (field ``cohort``) naming the bad term."""
    text = (text or "").strip()
    if text in ("", "*", "all"):
        return Selector(())
    terms: list[Term] = []
    for raw in _split_terms(text):
        if not raw:
            raise ValidationError(f"cohort selector {text!r}: empty term (stray comma?)", field="cohort")
        if m := _IN.match(raw):
            vals = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            if not vals or not all(_VALUE.match(v) for v in vals):
                raise ValidationError(f"cohort selector term {raw!r}: 'in' needs a list of plain values",
                                      field="cohort")
            op = "in" if m.group(2).lower() == "in" else "notin"
            terms.append(Term(m.group(1), op, vals))
        elif m := _CMP.match(raw):
            value = m.group(3).strip()
            if not _VALUE.match(value):
                raise ValidationError(f"cohort selector term {raw!r}: value {value!r} has characters "
                                      f"other than letters, digits and _.:-/@+*", field="cohort")
            terms.append(Term(m.group(1), "ne" if m.group(2) == "!=" else "eq", (value,)))
        elif m := _EXISTS.match(raw):
            terms.append(Term(m.group(2), "absent" if m.group(1) else "exists"))
        else:
            raise ValidationError(f"cohort selector term {raw!r} is not key=value, key!=value, "
                                  f"key in (a,b), key or !key", field="cohort")
    return Selector(tuple(terms))


def stage_members(device_ids: Iterable[str], rollout_id: str, fraction: float,
                  min_devices: int = 1, bucket_of: Any = None) -> set[str]:
    """Devices in a stage of ``fraction``: bucket below it, plus the lowest ``min_devices`` buckets.
    ``bucket_of(device_id)``, when given, must return ``bucket(device_id, rollout_id)`` (a memo)."""
    b_of = bucket_of or (lambda d: bucket(d, rollout_id))
    ranked = sorted((b_of(d), d) for d in device_ids)
    chosen = {d for b, d in ranked if b < fraction}
    for _, d in ranked[:min_devices]:
        chosen.add(d)
    return chosen
