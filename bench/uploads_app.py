"""The WSGI app of bench/uploads.sh: reads a whole request body and answers its digest.

Every server of the benchmark (daemonapp's three listeners, gunicorn's workers) serves
this same callable, ``uploads_app:app``. It reads the body the way Django's
``request.body`` does, ``environ["wsgi.input"].read(int(CONTENT_LENGTH))`` in one call,
or, with the query string ``read=chunks``, in 64 KiB pieces (what a streaming upload
handler does), so the body really flows through the server and into the app. The answer
is small: ``LENGTH SHA256-HEX`` and a newline, which the load generator checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

CHUNK = 64 * 1024


def digest_line(length: int, sha256_hex: str) -> bytes:
    """The answer for a body: ``b"LENGTH HEX\\n"`` (shared with the load generator)."""
    return f"{length} {sha256_hex}\n".encode("ascii")


def app(environ: dict[str, Any],
        start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Read the whole body (at once or in chunks), answer its length and SHA-256."""
    stream = environ["wsgi.input"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    digest = hashlib.sha256()
    received = 0
    if "read=chunks" in environ.get("QUERY_STRING", ""):
        while received < length:
            piece = stream.read(min(CHUNK, length - received))
            if not piece:
                break
            digest.update(piece)
            received += len(piece)
    else:
        body = stream.read(length)  # Django: HttpRequest.body
        digest.update(body)
        received = len(body)
    if received != length:
        answer = f"short body: {received} of {length} bytes\n".encode("ascii")
        start_response("400 Bad Request", [("Content-Type", "text/plain"),
                                           ("Content-Length", str(len(answer)))])
        return [answer]
    answer = digest_line(received, digest.hexdigest())
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(answer)))])
    return [answer]
