"""Apps and a daemon for the tests of several processes (daemonapp.workers)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from twisted.logger import Logger

from daemonapp import Daemon

log = Logger(namespace="tests.workers_apps")


def pid_native(request: Any) -> bytes:
    """The pid of the process that answered."""
    return str(os.getpid()).encode()


def pid_logged(request: Any) -> bytes:
    """The pid of the process that answered, also written to the app's log."""
    log.info("answered by {pid}", pid=os.getpid())
    return str(os.getpid()).encode()


def pid_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The pid of the process that answered (WSGI)."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]


class PidRecorder(Daemon):
    """Appends the pid of the process running it to ``path`` at each run (a lock: daemon
    in the tests: it must run in one process only)."""

    run_every = 0.05

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path
        self._done = False

    def get_work(self) -> object:
        self._done = not self._done
        return None if not self._done else "run"

    def do_work(self, job: object) -> None:
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()}\n")
