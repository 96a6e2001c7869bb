"""The WSGI app the CGI benchmark serves through ``daemonapp run`` (--daemon real)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

BODY = b"hello from the daemon\n"


def application(
    environ: dict[str, Any], start_response: Callable[[str, list[tuple[str, str]]], Any]
) -> Iterable[bytes]:
    """A constant answer: the benchmark measures the frontend, not the app."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]
