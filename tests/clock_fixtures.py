"""A daemon for the real-process clock schedule tests: each run appends its time."""

from __future__ import annotations

import time
from typing import Any

from daemonapp import Daemon


class Stamp(Daemon):
    """One item per run: the run's wall-clock time, appended to ``path``."""

    def __init__(self, *, path: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.path = path
        self._stamped_run = -1

    def get_work(self) -> Any:
        if self._stamped_run == self.stats["runs"]:
            return None
        self._stamped_run = self.stats["runs"]
        return time.time()

    def do_work(self, job: Any) -> None:
        with open(self.path, "a", encoding="ascii") as f:
            f.write(f"{job:.3f}\n")
