"""Fire times of cron expressions in zones, with the DST rules of DESIGN §8.

Every expected time is written out by hand (ISO 8601 with the offset in force), never
computed by the cron library under test. 2026's transitions: Europe/Berlin skips
02:00-03:00 on 29 March and repeats 02:00-03:00 on 25 October; America/New_York skips
02:00-03:00 on 8 March and repeats 01:00-02:00 on 1 November.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from daemonapp.crontimes import CronTimes, load_zone, shared_times


def fire_times(expression: str, zone: str, start: str, count: int) -> list[str]:
    """The next ``count`` fire times after ``start``, as ISO 8601 in the zone."""
    tz = load_zone(zone)
    times = CronTimes(expression, tz)
    t = datetime.fromisoformat(start).timestamp()
    out = []
    for _ in range(count):
        t = times.next_after(t)
        out.append(datetime.fromtimestamp(t, tz).isoformat())
    return out


TABLE = [
    # Plain expressions.
    ("*/15 * * * *", "UTC", "2026-01-01T00:07:00+00:00",
     ["2026-01-01T00:15:00+00:00", "2026-01-01T00:30:00+00:00", "2026-01-01T00:45:00+00:00",
      "2026-01-01T01:00:00+00:00"]),
    ("0 9 * * 1-5", "UTC", "2026-01-02T10:00:00+00:00",  # a Friday, after 09:00
     ["2026-01-05T09:00:00+00:00", "2026-01-06T09:00:00+00:00"]),
    ("@daily", "Asia/Kolkata", "2026-01-01T00:00:00+00:00",
     ["2026-01-02T00:00:00+05:30", "2026-01-03T00:00:00+05:30"]),
    ("@hourly", "UTC", "2026-01-01T00:00:00+00:00",
     ["2026-01-01T01:00:00+00:00", "2026-01-01T02:00:00+00:00"]),
    # Europe/Berlin, a fixed time: 02:30 in the skipped hour runs at 03:00; in the
    # repeated hour it runs once, at its first occurrence.
    ("30 2 * * *", "Europe/Berlin", "2026-03-27T12:00:00+00:00",
     ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]),
    ("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00+00:00",
     ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]),
    ("*/20 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00+00:00",
     ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"]),
    # Europe/Berlin, hour field *: every real hour, none skipped or doubled.
    ("30 * * * *", "Europe/Berlin", "2026-03-28T23:00:00+00:00",
     ["2026-03-29T00:30:00+01:00", "2026-03-29T01:30:00+01:00", "2026-03-29T03:30:00+02:00",
      "2026-03-29T04:30:00+02:00"]),
    ("30 * * * *", "Europe/Berlin", "2026-10-24T23:00:00+00:00",
     ["2026-10-25T01:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00+01:00",
      "2026-10-25T03:30:00+01:00"]),
    # America/New_York, a fixed time.
    ("30 2 * * *", "America/New_York", "2026-03-07T12:00:00+00:00",
     ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
    ("30 1 * * *", "America/New_York", "2026-10-31T12:00:00+00:00",
     ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
    # America/New_York, hourly.
    ("0 * * * *", "America/New_York", "2026-03-08T05:30:00+00:00",
     ["2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T04:00:00-04:00"]),
    ("0 * * * *", "America/New_York", "2026-11-01T04:30:00+00:00",
     ["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00", "2026-11-01T02:00:00-05:00",
      "2026-11-01T03:00:00-05:00"]),
]


@pytest.mark.parametrize(("expression", "zone", "start", "expected"), TABLE)
def test_fire_times_written_out(expression: str, zone: str, start: str,
                                expected: list[str]) -> None:
    """Fire times match the written-out table, DST days included."""
    assert fire_times(expression, zone, start, len(expected)) == expected


@pytest.mark.parametrize(("expression", "field"), [
    ("61 * * * *", "minute"), ("* 24 * * *", "hour"), ("* * 32 * *", "day of month"),
    ("* * * 13 *", "month"), ("* * * * 8", "day of week"), ("x * * * *", "minute"),
])
def test_a_bad_field_is_named(expression: str, field: str) -> None:
    """A bad expression is a ValueError that names the field."""
    with pytest.raises(ValueError, match=f"{field} field"):
        CronTimes(expression, load_zone("UTC"))


def test_wrong_number_of_fields_and_unknown_nickname() -> None:
    """Four fields, or an unknown @ form, are ValueErrors that say what is expected."""
    with pytest.raises(ValueError, match="expected 5 fields"):
        CronTimes("* * * *", load_zone("UTC"))
    with pytest.raises(ValueError, match="unknown nickname"):
        CronTimes("@often", load_zone("UTC"))


def test_unknown_zone() -> None:
    """An unknown zone is a ValueError naming it."""
    with pytest.raises(ValueError, match="Mars/Olympus"):
        load_zone("Mars/Olympus")


def test_between_lists_the_missed_times() -> None:
    """between(start, end) gives the fire times in (start, end], in order."""
    times = CronTimes("*/15 * * * *", load_zone("UTC"))
    start = datetime.fromisoformat("2026-01-01T00:15:00+00:00").timestamp()
    end = datetime.fromisoformat("2026-01-01T01:00:00+00:00").timestamp()
    assert [t - start for t in times.between(start, end)] == [900.0, 1800.0, 2700.0]


def test_shared_times_one_instance_per_expression_and_zone() -> None:
    """shared_times gives one CronTimes per (expression, zone); bad input still raises."""
    berlin = shared_times("*/5 * * * *", load_zone("Europe/Berlin"))
    assert shared_times("*/5 * * * *", load_zone("Europe/Berlin")) is berlin
    assert shared_times("*/5 * * * *", load_zone("UTC")) is not berlin
    assert shared_times("0 * * * *", load_zone("Europe/Berlin")) is not berlin
    with pytest.raises(ValueError, match="hour field"):
        shared_times("0 25 * * *", load_zone("UTC"))
