"""Parse durations ("10s", "5m", "1h30m", 2.5) and sizes ("512MiB") into numbers.

Parsed once, at the edge (config and constructors), into float seconds or int bytes.
"""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mi": 1024**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gi": 1024**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "ti": 1024**4, "tib": 1024**4,
}


def parse_duration(value: object, *, positive: bool = False) -> float:
    """Seconds as a float from a number or a string like "1h30m", "250ms", "10".

    With ``positive`` zero is refused too. Raises ValueError with a message fit for users.
    """
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "30s", got {value!r}')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            pos = 0
            seconds = 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(
                    f'expected a duration like "30s", "5m" or "1h30m", got {value!r}'
                ) from None
    else:
        raise ValueError(f'expected a duration like "30s", got {value!r}')
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected a finite duration of zero or more seconds, got {value!r}")
    if positive and seconds == 0:
        raise ValueError(f"expected a duration above zero, got {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes as an int from a number or a string like "512MiB", "64k", "1GB"."""
    if isinstance(value, bool):
        raise ValueError(f'expected a size like "512MiB", got {value!r}')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a size of zero or more bytes, got {value!r}")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            unit = (match.group(2) or "").lower()
            return int(float(match.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f'expected a size like "512MiB" or a number of bytes, got {value!r}')
