"""A configuration file's errors: collected as ``FILE:LINE: dotted.key: message``.

The YAML reader (daemonapp.configfile) keeps the line and source text of each key;
this module finds them for a message, quotes a value as the user wrote it (YAML 1.1
reads ``on`` as True and ``0660`` as 432) and bounds what a hostile file can make a
message show.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from daemonapp.configfile import LineMapping, LineSequence
from daemonapp.options import suggest

__all__ = [
    "MAX_MESSAGE",
    "MAX_SHOWN_KEY",
    "MAX_SHOWN_VALUE",
    "Checker",
    "as_written",
    "clip",
    "dotted_line",
    "line_of",
    "raw_value",
    "start_line",
    "suggest",
]

#: How much of a value, a key and a whole message an error shows (hostile files).
MAX_SHOWN_VALUE = 200
MAX_SHOWN_KEY = 200
MAX_MESSAGE = 2000


def line_of(mapping: Mapping[Any, Any], key: object) -> int:
    if isinstance(mapping, LineMapping):
        return mapping.key_lines.get(key, mapping.line)
    return 0


def dotted_line(mapping: Mapping[Any, Any], dotted: str, default: int) -> int:
    """The line of a dotted key ("queue.run_every") inside nested mappings."""
    line = default
    for part in dotted.split("."):
        if not isinstance(mapping, LineMapping) or part not in mapping:
            break
        line = mapping.key_lines.get(part, line)
        mapping = mapping[part]
    return line


def start_line(value: object) -> int:
    return value.line if isinstance(value, LineMapping | LineSequence) else 0


def raw_value(mapping: Mapping[Any, Any], key: str) -> object:
    """The value of ``key``; for a mode (``mode``, ``*_mode``) its source text.

    YAML 1.1 reads ``0660`` as the number 432: the text is what the user meant.
    """
    value = mapping[key]
    if (key == "mode" or key.endswith("_mode")) and isinstance(mapping, LineMapping) \
            and key in mapping.texts and value is not None:
        return mapping.texts[key]
    return value


_INDEX = re.compile(r"^(.*?)\[(\d+)\]$")


def as_written(root: Mapping[Any, Any] | None, dotted: str, message: str) -> str:
    """Quote a scalar as the user wrote it, not as YAML 1.1 read it.

    ``run_every: on`` reads as True and ``0660`` as 432: a message saying "got True"
    would puzzle; "got 'on'" does not.
    """
    parent: object = root
    parts = dotted.split(".")
    for part in parts[:-1]:
        match = _INDEX.match(part)
        name, index = (match.group(1), int(match.group(2))) if match else (part, None)
        if not isinstance(parent, Mapping) or name not in parent:
            return message
        parent = parent[name]
        if index is not None:
            if not isinstance(parent, list) or index >= len(parent):
                return message
            parent = parent[index]
    last = parts[-1]
    if not isinstance(parent, LineMapping) or last not in parent.texts:
        return message
    value, text = parent[last], parent.texts[last]
    if isinstance(value, str) or text == str(value):
        return message
    return message.replace(f"got {value!r}", f"got {text!r}")



def clip(text: str, limit: int = 0) -> str:
    """``text``, cut to about ``limit`` characters (MAX_MESSAGE by default) with a note."""
    limit = limit or MAX_MESSAGE
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters in all)"


class Checker:
    """Collects the errors of one file."""

    def __init__(self, path: str, base_dir: str) -> None:
        self.path = path
        self.base_dir = base_dir
        self.messages: list[tuple[int, str]] = []
        self.root: Mapping[Any, Any] | None = None

    def error(self, line: int, key: str, message: str) -> None:
        message = as_written(self.root, key, message)
        # A value quoted in a message ("got ...") is shown in part: a 1 MiB scalar or a
        # mapping reached through aliases must not become a 1 MiB line of output.
        head, got, value = message.rpartition("got ")
        if got:
            message = head + got + clip(value, MAX_SHOWN_VALUE)
        self.messages.append((line, f"{self.path}:{line}: {clip(key, MAX_SHOWN_KEY)}: "
                                    f"{clip(message, MAX_MESSAGE)}"))

    def mapping(self, value: object, line: int, key: str) -> Mapping[Any, Any] | None:
        if value is None:
            return LineMapping()
        if not isinstance(value, dict):
            self.error(line, key, f"expected a mapping of keys to values, got {value!r}")
            return None
        if isinstance(value, LineMapping):
            for dup, dup_line in value.duplicates:
                self.error(dup_line, f"{key}.{dup}", "duplicate key: each key may appear once")
        return value

    def unknown(self, mapping: Mapping[Any, Any], prefix: str, known: Iterable[str],
                what: str) -> None:
        known = tuple(known)
        for key in mapping:
            if key not in known:
                self.error(line_of(mapping, key), f"{prefix}.{key}",
                           f"unknown {what}{suggest(key, known)}; expected one of "
                           f"{', '.join(known)}")

    def convert(self, mapping: Mapping[Any, Any], key: str, prefix: str,
                convert: Callable[[Any], Any], default: Any) -> Any:
        if key not in mapping:
            return default
        try:
            return convert(raw_value(mapping, key))
        except ValueError as e:
            self.error(line_of(mapping, key), f"{prefix}.{key}", str(e))
            return default
