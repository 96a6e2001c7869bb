"""A tiny WSGI app for the CGI frontend's tests: served in-process or by the daemon."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any


def application(
    environ: dict[str, Any], start_response: Callable[[str, list[tuple[str, str]]], Any]
) -> Iterable[bytes]:
    """Describe the request, the serving pid, and whether HTTP_PROXY leaked into os.environ."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    text = (
        f"pid={os.getpid()} method={environ['REQUEST_METHOD']} body={body.decode()} "
        f"environ-proxy={environ.get('HTTP_PROXY')} os-proxy={os.environ.get('HTTP_PROXY')}\n"
    ).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(text)))])
    return [text]
