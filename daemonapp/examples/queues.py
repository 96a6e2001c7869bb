"""Example queue daemons for etc/daemons.yaml: a queue that logs its jobs, a feeder,
and a WSGI page that shows the queues.

``PrintQueue`` is what a ``dir_queue_manager``'s ``queue:`` section builds for each
queue directory; ``Feeder`` drops a job into each queue now and then, so that the
example shows work flowing on a fresh checkout; ``application`` answers with the
number of jobs waiting in each queue.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.logger import Logger

from daemonapp.daemon import Daemon, OptionError
from daemonapp.daemons.dir_queue import DirQueue, enqueue

__all__ = ["Feeder", "PrintQueue", "application"]

log = Logger()

#: How much of a job file PrintQueue logs.
PREVIEW_BYTES = 200


class PrintQueue(DirQueue):
    """Logs the start of each job file; the file is removed once handled."""

    def handle(self, path: str) -> None:
        with open(path, "rb") as f:
            preview = f.read(PREVIEW_BYTES)
        log.info("{daemon} handled {job}: {text}", daemon=self.name,
                 job=os.path.basename(path), text=preview.decode("utf-8", "replace").rstrip())


class Feeder(Daemon):
    """Each run puts one job into each of ``queues`` under ``base_directory``."""

    run_every = 15.0
    in_thread = True  # enqueue() fsyncs: blocking work belongs in the thread pool

    def __init__(self, *, base_directory: str, queues: Sequence[str] = ("mail", "print"),
                 **kw: Any) -> None:
        super().__init__(**kw)
        if not isinstance(base_directory, str) or not base_directory:
            raise OptionError("base_directory",
                              f"expected a directory path, got {base_directory!r}")
        if isinstance(queues, str) or not all(isinstance(q, str) and q and "/" not in q
                                               for q in queues):
            raise OptionError("queues", f"expected a list of queue names, got {queues!r}")
        self.base_directory = base_directory
        self.queues = tuple(queues)
        self.fed = 0
        self._pending = False

    def get_work(self) -> int | None:
        # One item per run: the second call of a run finds nothing to do.
        self._pending = not self._pending
        return self.fed + 1 if self._pending else None

    def do_work(self, job: int) -> None:
        for queue in self.queues:
            enqueue(os.path.join(self.base_directory, queue),
                    f"job {job} for {queue}, made at {time.strftime('%H:%M:%S')}\n".encode())
        self.fed = job


#: Where ``application`` looks for queues: $DAEMONAPP_EXAMPLE_QUEUES, else var/queues
#: under the current directory (the checkout, for ./dev example).
QUEUES_ENV = "DAEMONAPP_EXAMPLE_QUEUES"


def application(environ: dict[str, Any],
                start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A WSGI page: the jobs waiting in new/ and cur/ of each queue."""
    base = os.environ.get(QUEUES_ENV, os.path.join("var", "queues"))
    lines = [f"daemonapp example: queues under {os.path.abspath(base)}"]
    try:
        names = sorted(entry.name for entry in os.scandir(base)
                       if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."))
    except FileNotFoundError:
        names = []
    for name in names:
        counts = []
        for sub in ("new", "cur"):
            try:
                counts.append(len(os.listdir(os.path.join(base, name, sub))))
            except FileNotFoundError:
                counts.append(0)
        lines.append(f"{name}: {counts[0]} waiting, {counts[1]} being handled")
    body = ("\n".join(lines) + "\n").encode()
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]
