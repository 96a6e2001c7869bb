"""Daemon options: how each attribute of DESIGN §1 is read and checked.

One owner for the rule of each option (a duration, a count, a lock name...), used by
``Daemon(**kw)`` and by the YAML configuration alike; a bad value is an OptionError
that config turns into ``FILE:LINE: key: message``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from daemonapp.crontimes import load_zone, shared_times
from daemonapp.durations import parse_duration

__all__ = ["CATCH_UP", "CLOCK_EXCLUDES", "DAEMON_OPTIONS", "OptionError", "clock_conflict",
           "read_options", "suggest"]

#: The catch_up choices of a clock schedule (DESIGN §8).
CATCH_UP = ("none", "once", "all")
#: The backoff options a clock schedule replaces: setting both is an error.
CLOCK_EXCLUDES = ("run_every", "increase_idle_by", "multiply_idle_by", "maximum_idle")

_UTC = load_zone("UTC")
_LOCK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


class OptionError(ValueError):
    """A bad value for a daemon option; config turns it into FILE:LINE: key: message."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def suggest(key: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for an unknown key close to one of ``choices``; else ""."""
    close = difflib.get_close_matches(str(key), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""



def _duration(key: str, value: object, *, positive: bool = False) -> float:
    try:
        return parse_duration(value, positive=positive)
    except ValueError as e:
        raise OptionError(key, str(e)) from None


def _optional_duration(key: str, value: object) -> float | None:
    return None if value is None else _duration(key, value, positive=True)


def _number(key: str, value: object, *, minimum: float, below: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise OptionError(key, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise OptionError(key, f"expected a number, got {value!r}") from None
    if math.isnan(number) or number < minimum or (below is not None and number >= below):
        bound = f"from {minimum:g} up to (not including) {below:g}" if below is not None \
            else f"of at least {minimum:g}"
        raise OptionError(key, f"expected a number {bound}, got {value!r}")
    return number


def _integer(key: str, value: object, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(key, f"expected a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise OptionError(key, f"expected a whole number of at least {minimum}, got {value!r}")
    return value


def _optional_count(key: str, value: object) -> int | None:
    return None if value is None else _integer(key, value, minimum=1)


def _flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise OptionError(key, f"expected true or false, got {value!r}")
    return value


def _lock_name(key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _LOCK_NAME.match(value):
        raise OptionError(
            key, f"expected a lock name of letters, digits, '.', '_' and '-', got {value!r}")
    return value


def clock_conflict(key: str) -> OptionError:
    """The error for ``key`` (one of CLOCK_EXCLUDES) set beside a schedule (DESIGN §8)."""
    return OptionError(key, f"schedule and {key} exclude each other: a clock schedule "
                            "replaces run_every and the idle backoff; remove one of them")


def _schedule(key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise OptionError(key, f"expected a cron expression like \"30 2 * * *\", got {value!r}")
    try:
        shared_times(value, _UTC)  # checked once per expression, shared after
    except ValueError as e:
        raise OptionError(key, str(e)) from None
    return value


def _timezone(key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise OptionError(key, f"expected a time zone name like 'Europe/Berlin', got {value!r}")
    try:
        load_zone(value)
    except ValueError as e:
        raise OptionError(key, str(e)) from None
    return value


def _catch_up(key: str, value: object) -> str:
    if value not in CATCH_UP:
        raise OptionError(key, f"expected one of {', '.join(CATCH_UP)}, got {value!r}")
    assert isinstance(value, str)
    return value


#: Every Daemon attribute of DESIGN §1 and the converter that checks it.
DAEMON_OPTIONS: dict[str, Callable[[str, object], object]] = {
    "run_every": lambda k, v: _duration(k, v, positive=True),
    "increase_idle_by": _duration,
    "multiply_idle_by": lambda k, v: _number(k, v, minimum=1.0),
    "maximum_idle": _optional_duration,
    "priority": _integer,
    "max_items": _optional_count,
    "max_seconds": _optional_duration,
    "jitter": lambda k, v: _number(k, v, minimum=0.0, below=1.0),
    "in_thread": _flag,
    "lock": _lock_name,
    "start_delay": _duration,
    "schedule": _schedule,
    "timezone": _timezone,
    "misfire_grace": lambda k, v: _duration(k, v, positive=True),
    "catch_up": _catch_up,
    "timeout": _optional_duration,
    "alert_after": _optional_count,
}


def read_options(cls: type[Any], attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Every DESIGN §1 attribute of a ``cls`` built with ``attributes``, checked.

    A keyword that is no option is a TypeError (as for any unexpected keyword); a
    missing value is the class's default; run_every is required unless a clock
    schedule decides, which the backoff options may then not be set beside.
    """
    for key in attributes:
        if key not in DAEMON_OPTIONS:
            raise TypeError(
                f"{cls.__name__}() got an unexpected keyword argument {key!r}: "
                f"it is neither a Daemon attribute nor a parameter of "
                f"{cls.__name__}.__init__")
    clock = attributes.get("schedule", cls.schedule) is not None
    values: dict[str, Any] = {}
    for key, convert in DAEMON_OPTIONS.items():
        value = attributes.get(key, getattr(cls, key))
        if key == "run_every" and not value:
            if not clock:
                raise OptionError(key, "is required: a duration above zero, like \"30s\"")
            values[key] = 0.0  # unused: a clock schedule decides
            continue
        values[key] = convert(key, value)
    if clock:
        both = [key for key in CLOCK_EXCLUDES if key in attributes]
        if both:
            raise clock_conflict(both[0])
    return values
