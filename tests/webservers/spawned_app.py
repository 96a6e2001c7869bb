"""The app the web-server tests spawn: a WSGI application and two daemons.

Standalone on purpose (stdlib + daemonapp only): the Apache tests copy it next to a
configuration that user www-data can read.

- ``application``: ``GET /`` answers ``hello pid=<pid>``; ``POST /echo`` answers the
  body's length and SHA-256; ``GET /big`` answers 1 MiB; ``GET /ticks`` answers how
  many runs the Ticker daemon of this process has made (it runs between hits).
- ``Ticker``: counts its runs in this process.
- ``Exclusive``: a daemon meant to hold a highlander lock; each run appends
  ``start <pid> <time>`` and ``end <pid> <time>`` lines to ``log_file``, so a test
  can check that two processes never overlapped.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from daemonapp import Daemon

BIG = 1024 * 1024
TICKS = [0]


class Ticker(Daemon):
    """Counts its own runs; always idle."""

    run_every = 0.1

    def get_work(self) -> None:
        """Count this run; there is never work (so it stays idle)."""
        TICKS[0] += 1


class Exclusive(Daemon):
    """Logs the start and end of each run's work to ``log_file`` (one line each)."""

    run_every = 0.05
    max_items = 1

    def __init__(self, *, log_file: str, hold: float = 0.05, **kw: Any) -> None:
        super().__init__(**kw)
        self.log_file = log_file
        self.hold = hold

    def get_work(self) -> bool:
        return True

    def do_work(self, job: bool) -> None:
        with open(self.log_file, "a") as out:
            out.write(f"start {os.getpid()} {time.time():.6f}\n")
            out.flush()
            time.sleep(self.hold)  # the work: holding the lock for a while
            out.write(f"end {os.getpid()} {time.time():.6f}\n")


def application(environ: dict[str, Any],
                start_response: Callable[..., Any]) -> Iterable[bytes]:
    """See the module docstring."""
    path = environ.get("PATH_INFO", "") or "/"
    if path.endswith("/echo"):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        out = f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode()
    elif path.endswith("/big"):
        out = b"x" * BIG
    elif path.endswith("/ticks"):
        out = f"{TICKS[0]}\n".encode()
    else:
        out = f"hello pid={os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(out)))])
    return [out]
