"""What bench/fastcgi_server.py serves: a native hello world and an always-busy daemon."""

from __future__ import annotations

from daemonapp.daemon import Daemon
from daemonapp.listeners.native import Request

BODY = b"Hello, world!\n"


def hello(request: Request) -> bytes:
    """The native twin of anchors/hello_wsgi.py: 200, text/plain, 14 bytes."""
    return BODY


class Busy(Daemon):
    """Always has work that costs nothing (the scheduler's worst case)."""

    run_every = 1.0
    max_items = 10

    def get_work(self) -> int:
        return 1

    def do_work(self, job: int) -> None:
        """Nothing: the cost measured is the scheduler's."""
