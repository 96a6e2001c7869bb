"""Daemons for the health tests that run `daemonapp run`: a run that stays in flight, a
daemon that fails until told otherwise."""

from __future__ import annotations

import os
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


class FailsWhile(Daemon):
    """Each run fails while the file ``broken`` exists, and does one item otherwise."""

    def __init__(self, *, broken: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.broken = broken
        self.done = False

    def get_work(self) -> Any:
        if os.path.exists(self.broken):
            raise RuntimeError(f"{self.broken} exists")
        if self.done:
            return None
        self.done = True
        return "job"

    def do_work(self, job: Any) -> Any:
        return None
