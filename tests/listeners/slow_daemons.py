"""Daemons for the health tests that run `daemonapp run`: a run that stays in flight."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import deferLater

from daemonapp import Daemon


class SlowOnce(Daemon):
    """One run with one item that takes ``seconds``; it touches ``marker`` as it starts."""

    run_every = 3600.0

    def __init__(self, *, marker: str, seconds: float = 4.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.marker = marker
        self.seconds = seconds
        self.done = False

    def get_work(self) -> Any:
        return None if self.done else "job"

    def do_work(self, job: Any) -> Any:
        self.done = True
        with open(self.marker, "w"):
            pass
        assert self.app is not None
        return deferLater(self.app.reactor, self.seconds, lambda: None)
