"""Five-field cron expressions (Vixie cron / cronie semantics), evaluated in a time zone.

Why not croniter: it was declared unmaintained in late 2024 and later adopted by
pallets-eco; its DST handling has a history of bugs, and we only need the
standard five fields. This module is small enough to be exact and tested.

Fields: ``minute hour day-of-month month day-of-week``; each a ``*``, a number,
a range ``a-b``, a step ``*/n``, ``a-b/n`` or ``a/n`` (from a to the maximum),
or a comma list of those. Months accept ``jan``–``dec``, days of week
``sun``–``sat`` (0 and 7 are both Sunday). Macros: ``@yearly`` (``@annually``),
``@monthly``, ``@weekly``, ``@daily`` (``@midnight``), ``@hourly``.
Day matching as in cron: when both day-of-month and day-of-week are restricted
(neither starts with ``*``) a day matches if *either* does, otherwise both must.

Time zones (IANA names, ``zoneinfo``): firing times are wall-clock times in the
schedule's zone. A wall time skipped by a daylight-saving jump (02:30 on a
spring-forward night) fires at the first minute after the jump (cronie does the
same); a wall time that happens twice (fall back) fires once, at its first
occurrence.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge_runtime.errors import ValidationError

UTC = dt.UTC
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# (name, low, high, names for low..)
_FIELDS = [
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
]
_DAYS_IN_MONTH = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]  # most a month can have
_HORIZON_DAYS = 366 * 9  # Feb 29 can be 8 years away (2096 → 2104)


def _bad(expr: str, why: str) -> ValidationError:
    return ValidationError(f"cron {expr!r}: {why}", field="cron")


def _value(tok: str, name: str, lo: int, hi: int, names: list[str] | None, expr: str) -> int:
    t = tok.lower()
    if names and t in names:
        return names.index(t) + (1 if name == "month" else 0)
    if not re.fullmatch(r"\d{1,2}", t):
        raise _bad(expr, f"{name} value {tok!r} is not a number")
    v = int(t)
    if not lo <= v <= hi:
        raise _bad(expr, f"{name} value {v} is outside {lo}-{hi}")
    return v


def _field(text: str, name: str, lo: int, hi: int, names: list[str] | None, expr: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        rng, _, step_s = part.partition("/")
        if _ and not re.fullmatch(r"\d{1,2}", step_s):
            raise _bad(expr, f"{name} step {step_s!r} is not a number")
        step = int(step_s) if _ else 1
        if step < 1:
            raise _bad(expr, f"{name} step must be at least 1")
        if rng == "*":
            a, b = lo, hi
        elif "-" in rng:
            a_s, b_s = rng.split("-", 1)
            a = _value(a_s, name, lo, hi, names, expr)
            b = _value(b_s, name, lo, hi, names, expr)
            if a > b:
                raise _bad(expr, f"{name} range {rng!r} runs backwards")
        elif rng:
            a = _value(rng, name, lo, hi, names, expr)
            b = hi if _ else a
        else:
            raise _bad(expr, f"empty {name} item")
        out.update(range(a, b + 1, step))
    return out


@dataclass(frozen=True)
class Cron:
    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday … 6
    dom_star: bool
    dow_star: bool

    @classmethod
    def parse(cls, expr: str) -> Cron:
        text = _MACROS.get(expr.strip().lower(), expr.strip())
        parts = text.split()
        if len(parts) != 5:
            raise _bad(
                expr,
                f"needs 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}",
            )
        sets = [_field(p, *spec, expr) for p, spec in zip(parts, _FIELDS)]
        weekdays = {d % 7 for d in sets[4]}
        c = cls(
            expr,
            frozenset(sets[0]),
            frozenset(sets[1]),
            frozenset(sets[2]),
            frozenset(sets[3]),
            frozenset(weekdays),
            parts[2].startswith("*"),
            parts[4].startswith("*"),
        )
        if (
            not c.dom_star
            and c.dow_star
            and not any(d <= _DAYS_IN_MONTH[m - 1] for m in c.months for d in c.days)
        ):
            raise _bad(expr, "no month in it has such a day: it would never fire")
        return c

    def day_matches(self, d: dt.date) -> bool:
        if d.month not in self.months:
            return False
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.dom_star or self.dow_star:
            return dom and dow
        return dom or dow

    def _walls_from(self, start: dt.datetime):
        """Matching wall-clock times (naive) at or after ``start``, ascending."""
        day = start.date()
        hours = sorted(self.hours)
        minutes = sorted(self.minutes)
        for _ in range(_HORIZON_DAYS):
            if self.day_matches(day):
                for h in hours:
                    for m in minutes:
                        w = dt.datetime.combine(day, dt.time(h, m))
                        if w >= start:
                            yield w
            day += dt.timedelta(days=1)

    def next_after(self, t: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
        """The first firing strictly after ``t`` (aware), as an aware UTC datetime."""
        start = t.astimezone(tz).replace(tzinfo=None, second=0, microsecond=0, fold=0)
        # around a DST change wall order and UTC order differ: start a little earlier and
        # let ``u > t`` pick the first real firing
        start -= dt.timedelta(hours=3)
        for w in self._walls_from(start):
            u = to_utc(w, tz)
            if u > t:
                return u
        raise _bad(self.expr, "it never fires")  # excluded by parse; kept as a guard

    def firings(self, after: dt.datetime, until: dt.datetime, tz: dt.tzinfo, limit: int):
        """Firings in ``(after, until]``, at most ``limit`` of them (ascending): one pass over
        the wall times (their UTC times never go backwards, see :func:`to_utc`)."""
        out: list[dt.datetime] = []
        start = after.astimezone(tz).replace(tzinfo=None, second=0, microsecond=0, fold=0)
        for w in self._walls_from(start - dt.timedelta(hours=3)):
            u = to_utc(w, tz)
            if u <= after or (out and u <= out[-1]):
                continue
            if u > until or len(out) >= limit:
                break
            out.append(u)
        return out


def to_utc(wall: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """A naive wall time in ``tz`` → UTC: a skipped time → the first valid minute after it;
    a repeated time → its first occurrence."""
    u = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if u.astimezone(tz).replace(tzinfo=None) == wall:
        return u
    w = wall
    for _ in range(24 * 60):  # inside a gap: walk to its end
        w += dt.timedelta(minutes=1)
        u = w.replace(tzinfo=tz, fold=0).astimezone(UTC)
        if u.astimezone(tz).replace(tzinfo=None) == w:
            return u
    raise ValueError(f"no valid time after {wall} in {tz}")


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(
            f"unknown time zone {name!r} (an IANA name such as Europe/Paris or UTC)",
            field="timezone",
        ) from exc
