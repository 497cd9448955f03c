"""The 5-field cron parser: cron semantics, names, steps, macros, refusals, time zones and DST."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from cloud_hub.batch.cron import Cron, zone
from edge_runtime.errors import ValidationError

UTC = dt.UTC


def _u(*a) -> dt.datetime:
    return dt.datetime(*a, tzinfo=UTC)


def _next(expr: str, after: dt.datetime, n: int = 3, tz: str = "UTC") -> list[str]:
    c, z = Cron.parse(expr), zone(tz)
    out, t = [], after
    for _ in range(n):
        t = c.next_after(t, z)
        out.append(t.astimezone(z).strftime("%Y-%m-%d %a %H:%M"))
    return out


@pytest.mark.parametrize(
    ("expr", "after", "want"),
    [
        ("0 6 * * *", _u(2026, 12, 2, 6, 0), ["2026-12-03 Thu 06:00", "2026-12-04 Fri 06:00"]),
        ("0 6 * * *", _u(2026, 12, 2, 5, 59, 59), ["2026-12-02 Wed 06:00", "2026-12-03 Thu 06:00"]),
        ("*/20 9-10 * * *", _u(2026, 1, 1), ["2026-01-01 Thu 09:00", "2026-01-01 Thu 09:20"]),
        ("5/20 * * * *", _u(2026, 1, 1), ["2026-01-01 Thu 00:05", "2026-01-01 Thu 00:25"]),
        ("0 0 * * mon-fri", _u(2026, 12, 4, 1), ["2026-12-07 Mon 00:00", "2026-12-08 Tue 00:00"]),
        ("0 0 * * 7", _u(2026, 12, 1), ["2026-12-06 Sun 00:00", "2026-12-13 Sun 00:00"]),
        ("0 0 1,15 * *", _u(2026, 12, 2), ["2026-12-15 Tue 00:00", "2027-01-01 Fri 00:00"]),
        # both day fields restricted: either matches (cron's OR rule)
        ("0 0 13 * fri", _u(2026, 11, 1), ["2026-11-06 Fri 00:00", "2026-11-13 Fri 00:00"]),
        # day-of-month with */ counts as '*': both must match
        ("0 0 */10 * sun", _u(2026, 11, 1), ["2027-01-31 Sun 00:00", "2027-02-21 Sun 00:00"]),
        ("0 12 29 feb *", _u(2026, 1, 1), ["2028-02-29 Tue 12:00", "2032-02-29 Sun 12:00"]),
        ("0 0 31 * *", _u(2026, 4, 1), ["2026-05-31 Sun 00:00", "2026-07-31 Fri 00:00"]),
        ("@hourly", _u(2026, 1, 1, 0, 30), ["2026-01-01 Thu 01:00", "2026-01-01 Thu 02:00"]),
        ("@weekly", _u(2026, 12, 2), ["2026-12-06 Sun 00:00", "2026-12-13 Sun 00:00"]),
        ("@yearly", _u(2026, 12, 2), ["2027-01-01 Fri 00:00", "2028-01-01 Sat 00:00"]),
        ("0 0 1 JAN,jul *", _u(2026, 2, 1), ["2026-07-01 Wed 00:00", "2027-01-01 Fri 00:00"]),
    ],
)
def test_next_firings(expr, after, want):
    assert _next(expr, after, len(want)) == want


def test_time_zone_and_daylight_saving():
    # Paris: 06:00 local is 05:00 UTC in winter, 04:00 UTC in summer
    c, paris = Cron.parse("0 6 * * *"), zone("Europe/Paris")
    assert c.next_after(_u(2026, 1, 10), paris) == _u(2026, 1, 10, 5)
    assert c.next_after(_u(2026, 7, 10), paris) == _u(2026, 7, 10, 4)
    # spring forward (29 Mar 2026, 02:00 → 03:00): 02:30 does not exist → runs at 03:00
    assert _next("30 2 * * *", _u(2026, 3, 28, 12), 2, "Europe/Paris") == [
        "2026-03-29 Sun 03:00",
        "2026-03-30 Mon 02:30",
    ]
    # fall back (25 Oct 2026, 03:00 → 02:00): 02:30 happens twice → fires once
    got = Cron.parse("30 2 * * *").firings(_u(2026, 10, 24, 12), _u(2026, 10, 26, 12), paris, 10)
    assert got == [_u(2026, 10, 25, 0, 30), _u(2026, 10, 26, 1, 30)]
    # every 15 minutes across the fall-back hour: no firing repeats, none is skipped in UTC
    q = Cron.parse("*/15 * * * *").firings(
        _u(2026, 10, 24, 23, 50), _u(2026, 10, 25, 2, 0), paris, 100
    )
    assert len(q) == len(set(q)) and q == sorted(q)
    assert all(
        (b - a) in (dt.timedelta(minutes=15), dt.timedelta(minutes=75))
        for a, b in itertools.pairwise(q)
    )


@pytest.mark.parametrize(
    "expr",
    [
        "0 6 * *",
        "0 6 * * * *",
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * * 13 *",
        "* * * * 8",
        "*/0 * * * *",
        "5-1 * * * *",
        "a * * * *",
        "1,,2 * * * *",
        "0 0 30 feb *",
        "@every_minute",
        "",
    ],
)
def test_refused(expr):
    with pytest.raises(ValidationError) as e:
        Cron.parse(expr)
    assert e.value.field == "cron" and "cron" in e.value.message


def test_unknown_zone():
    with pytest.raises(ValidationError) as e:
        zone("Mars/Olympus")
    assert e.value.field == "timezone"


# two days around each 2026 DST change of these zones (Lord Howe shifts by 30 minutes)
_DST_WINDOWS = [(3, 7), (3, 28), (4, 4), (10, 3), (10, 24), (10, 31)]


@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe"])
@pytest.mark.parametrize("expr", ["*/20 * * * *", "30 1-3 * * *", "0 2 * * sun", "15 */5 1,4 * *"])
def test_firings_in_one_pass_equal_next_after_steps(expr, tz):
    c, z = Cron.parse(expr), zone(tz)
    for month, day in _DST_WINDOWS:
        start = _u(2026, month, day)
        end = start + dt.timedelta(days=2)
        stepped, t = [], start
        while True:
            t = c.next_after(t, z)
            if t > end:
                break
            stepped.append(t)
        assert c.firings(start, end, z, 100_000) == stepped
