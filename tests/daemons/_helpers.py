"""Helpers shared by the tests of the bundled daemons."""

from __future__ import annotations

import os
import time
from typing import Any


def failures(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The log events that carry a failure (a failed run)."""
    return [e for e in events if "log_failure" in e]


def write(path: Any, data: bytes = b"x", *, age: float = 0.0) -> str:
    """Create the file ``path`` with ``data`` and an mtime ``age`` seconds ago."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


def age_link(path: Any, age: float) -> None:
    """Set the mtime of the symlink ``path`` itself to ``age`` seconds ago."""
    then = time.time() - age
    os.utime(path, (then, then), follow_symlinks=False)
