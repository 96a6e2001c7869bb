"""Fire times of a cron expression in a time zone, with DESIGN §8's DST rules.

croniter (a maintained library) reads the expression and walks the *local wall-clock*
times that match it; turning those into real instants is ours:

- a local time inside a skipped hour (spring forward) fires at the first instant after
  the gap (02:30 on the day Berlin skips 02:00-03:00 fires at 03:00);
- a local time inside a repeated hour (fall back) fires once, at its first occurrence;
- an expression whose hour field is ``*`` runs by elapsed time instead: every real
  hour, none skipped or doubled (both passes of a repeated hour fire; a skipped hour
  has no times).

Instants are epoch seconds (``reactor.seconds()``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

__all__ = ["FIELDS", "NICKNAMES", "CronTimes", "load_zone", "shared_times", "system_zone"]

#: The five fields of an expression, in order (errors name them).
FIELDS = ("minute", "hour", "day of month", "month", "day of week")
#: The @ forms and the 5-field expressions they stand for.
NICKNAMES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
# Wider than any DST shift there is (Lord Howe's is 30 min, the largest 2 h).
_WINDOW = timedelta(hours=3)
_CACHE_SIZE = 256
# Distinct (expression, zone) pairs kept by shared_times(); an app has a few dozen.
_SHARED_SIZE = 1024


def load_zone(name: str | None) -> tzinfo:
    """A zone by IANA name (None: the system's zone); ValueError when unknown."""
    if name is None:
        return system_zone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise ValueError(f"unknown time zone {shown!r}: use an IANA name like "
                         "'Europe/Berlin' or 'UTC'") from None


def system_zone() -> tzinfo:
    """The system's zone with its DST rules: $TZ, else /etc/localtime, else UTC."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    try:
        target = os.path.realpath("/etc/localtime")
        if "/zoneinfo/" in target:
            return ZoneInfo(target.split("/zoneinfo/", 1)[1])
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError, ZoneInfoNotFoundError):
        return ZoneInfo("UTC")


def shared_times(expression: str, zone: tzinfo) -> CronTimes:
    """The one CronTimes of ``expression`` in ``zone`` that daemons share.

    Its next_after is memoized, so 10,000 daemons on the same schedule and zone cost one
    croniter walk per fire time instead of 10,000 (bench/clock.py: croniter's parse
    and walk were 95 % of the CPU per fire). A bad expression raises ValueError each time.
    """
    if not isinstance(expression, str):
        return CronTimes(expression, zone)  # raises the usual ValueError
    return _shared(expression, zone)


@lru_cache(maxsize=_SHARED_SIZE)
def _shared(expression: str, zone: tzinfo) -> CronTimes:
    # Keyed by the zone object: zoneinfo hands out one ZoneInfo per name.
    return CronTimes(expression, zone)


class CronTimes:
    """The fire instants of ``expression`` in ``zone``; ValueError names a bad field."""

    def __init__(self, expression: str, zone: tzinfo) -> None:
        if not isinstance(expression, str) or not expression.strip():
            raise ValueError("expected a cron expression like \"30 2 * * *\" or \"@daily\"")
        self.expression = expression
        text = " ".join(expression.split())
        text = NICKNAMES.get(text.lower(), text)
        fields = text.split(" ")
        if text.startswith("@"):
            raise ValueError(f"unknown nickname {expression!r}; expected one of "
                             f"{', '.join(sorted(set(NICKNAMES) - {'@midnight', '@annually'}))}")
        if len(fields) != 5:
            raise ValueError(f"expected 5 fields (minute hour day-of-month month "
                             f"day-of-week), got {len(fields)} in {expression!r}")
        for index, field in enumerate(fields):
            probe = ["*"] * 5
            probe[index] = field
            if not croniter.is_valid(" ".join(probe)):
                raise ValueError(f"{FIELDS[index]} field {field!r} is not valid "
                                 f"in {expression!r}")
        if not croniter.is_valid(text):
            raise ValueError(f"{expression!r} is not a valid cron expression")
        self.fields = tuple(fields)
        self.zone = zone
        #: True when the hour field is ``*``: such schedules run by elapsed time.
        self.elapsed = fields[1] == "*"
        self._text = text
        self._cache: OrderedDict[float, float] = OrderedDict()

    def __repr__(self) -> str:
        return f"<CronTimes {self.expression!r} in {self.zone}>"

    def next_after(self, t: float) -> float:
        """The first fire instant strictly after ``t`` (memoized: daemons share it)."""
        cache = self._cache
        found = cache.get(t)
        if found is None:
            found = self._next_after(t)
            cache[t] = found
            if len(cache) > _CACHE_SIZE:
                cache.popitem(last=False)
        return found

    def between(self, start: float, end: float, limit: int = 100_000) -> list[float]:
        """The fire instants in ``(start, end]``, at most ``limit`` of them (the latest)."""
        times: list[float] = []
        t = start
        while True:
            t = self.next_after(t)
            if t > end:
                return times[-limit:]
            times.append(t)
            if len(times) > 2 * limit:
                del times[:limit]

    # ----------------------------------------------------------------------

    def _next_after(self, t: float) -> float:
        zone = self.zone
        here = datetime.fromtimestamp(t, zone)
        if (here - _WINDOW).utcoffset() == (here + 2 * _WINDOW).utcoffset():
            # No transition near: local times map one to one, in order.
            walk = croniter(self._text, here.replace(tzinfo=None))
            while True:
                naive: datetime = walk.get_next(datetime)
                first = naive.replace(tzinfo=zone, fold=0)
                if first.utcoffset() != naive.replace(tzinfo=zone, fold=1).utcoffset():
                    break  # this candidate falls in a DST change: the careful way
                instant = first.timestamp()
                if instant > t:
                    return instant
        return self._next_near_transition(t, here)

    def _next_near_transition(self, t: float, here: datetime) -> float:
        """Near a DST change: collect the candidates' instants, keep the first after t."""
        zone = self.zone
        walk = croniter(self._text, here.replace(tzinfo=None) - _WINDOW)
        best: float | None = None
        best_naive: datetime | None = None
        for _ in range(100_000):
            naive: datetime = walk.get_next(datetime)
            if best_naive is not None and naive > best_naive + _WINDOW:
                break
            for instant in self._instants(naive, zone):
                if instant > t and (best is None or instant < best):
                    best, best_naive = instant, naive
        assert best is not None
        return best

    def _instants(self, naive: datetime, zone: tzinfo) -> list[float]:
        """The real instants of one local wall-clock time, by the DST rules above."""
        first = naive.replace(tzinfo=zone, fold=0)
        second = naive.replace(tzinfo=zone, fold=1)
        if first.utcoffset() == second.utcoffset():
            return [first.timestamp()]
        exists = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive
        if exists:  # a repeated hour: first occurrence, or both by elapsed time
            if self.elapsed:
                return [first.timestamp(), second.timestamp()]
            return [first.timestamp()]
        if self.elapsed:
            return []  # a skipped hour has no times; elapsed time goes on around it
        return [_gap_end(second.timestamp(), first.timestamp(), zone)]


def _gap_end(low: float, high: float, zone: tzinfo) -> float:
    """The instant the wall clock jumps forward, between ``low`` and ``high``."""
    before = datetime.fromtimestamp(low, zone).utcoffset()
    while high - low > 0.5:
        middle = (low + high) / 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    return float(round(high))
