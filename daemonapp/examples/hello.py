"""A first daemon: a Hello daemon that greets while it has names and backs off when idle.

Run it: ``python -m daemonapp.examples.hello`` — it logs each run (see the delay grow
from 1 s to 1.5 s, 2 s, 2.5 s, ...) and exits by its own deadline after ~10 s.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import Any

from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from daemonapp.app import DaemonApp
from daemonapp.daemon import Daemon

log = Logger()


class Hello(Daemon):
    """Greets a few names, one per item, then idles with a growing delay."""

    run_every = 1.0
    increase_idle_by = 0.5
    maximum_idle = 3.0
    max_items = 2

    def __init__(self, *, names: list[str] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.names: deque[str] = deque(names or ["Ada", "Grace", "Linus", "Guido", "Barbara"])

    def get_work(self) -> str | None:
        return self.names.popleft() if self.names else None

    def do_work(self, job: str) -> None:
        log.info("hello, {who}!", who=job)


class Reporter(Daemon):
    """Logs the Hello daemon's outcome and next delay after each of its runs."""

    run_every = 1.0

    def __init__(self, *, watch: Hello, **kw: Any) -> None:
        super().__init__(**kw)
        self.watch = watch
        self.seen = 0

    def get_work(self) -> dict[str, Any] | None:
        stats = self.watch.stats
        if stats["runs"] == self.seen:
            return None
        self.seen = stats["runs"]
        return stats

    def do_work(self, stats: dict[str, Any]) -> None:
        log.info("{name}: run {runs} {outcome}, next in {delay:.1f} s", name=self.watch.name,
                 runs=stats["runs"], outcome=stats["last_outcome"], delay=stats["current_delay"])


def main() -> int:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    app = DaemonApp(shutdown_after=10)
    hello = Hello(name="hello")
    app.add(hello)
    app.add(Reporter(name="reporter", watch=hello, priority=-1, run_every=0.25))
    return app.run()


if __name__ == "__main__":
    raise SystemExit(main())
