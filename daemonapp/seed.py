"""SeedDaemon: a daemon whose work is to decide which other daemons exist.

It uses the public Daemon API only; daemonapp.daemon re-exports it (lazily: this
module imports that one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from inspect import iscoroutine
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from daemonapp.daemon import Daemon

__all__ = ["SeedDaemon"]

# The namespace of the module SeedDaemon was written in, so log filters keep matching.
log = Logger(namespace="daemonapp.daemon")


class SeedDaemon(Daemon):
    """A daemon whose work is to decide which other daemons exist.

    :meth:`reconcile` returns the wanted children as a mapping of key to a
    zero-argument factory (or a Deferred of one). New keys are built and added
    to the app as ``"<seed name>/<key>"``; keys that vanished are stopped and
    removed. A run that changes nothing is idle, so the seed backs off.
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.children: dict[str, Daemon] = {}
        self._reconciled_run = -1  # stats["runs"] when reconcile() last ran

    def reconcile(self) -> Any:
        """Return {key: factory} of the children that should run now."""
        return {}

    def get_work(self) -> Any:
        # Once per run: a failed reconcile() still counts as this run's try.
        if self._reconciled_run == self.stats["runs"]:
            return None
        self._reconciled_run = self.stats["runs"]
        wanted = self.reconcile()
        if isinstance(wanted, Deferred) or iscoroutine(wanted):
            d = Deferred.fromCoroutine(wanted) if iscoroutine(wanted) else wanted
            return d.addCallback(self._changes)
        return self._changes(wanted)

    def _changes(self, wanted: Mapping[str, Callable[[], Daemon]]) -> Any:
        return None if set(wanted) == set(self.children) else wanted

    def stop(self) -> Deferred[None]:
        """Stop the seed, and stop and remove its children too."""
        d = super().stop()
        children, self.children = list(self.children.values()), {}
        if self.app is None or not children:
            return d
        removals: list[Deferred[Any]] = [d]
        removals += [self.app.remove(child) for child in children]  # type: ignore[misc]
        return gatherResults(removals, consumeErrors=True).addCallback(lambda _: None)

    def do_work(self, wanted: Mapping[str, Callable[[], Daemon]]) -> Any:
        app = self.app
        assert app is not None
        stops: list[Deferred[None]] = []
        for key in sorted(set(self.children) - set(wanted)):
            child = self.children.pop(key)
            log.info("seed {daemon} stops {child}", daemon=self.name, child=child.name)
            stops.append(app.remove(child))  # type: ignore[arg-type]
        for key in sorted(set(wanted) - set(self.children)):
            try:
                child = wanted[key]()
            except Exception:
                log.failure("seed {daemon} could not build child {key}",
                            daemon=self.name, key=key)
                continue
            child.name = f"{self.name}/{key}"
            self.children[key] = child
            log.info("seed {daemon} starts {child}", daemon=self.name, child=child.name)
            app.add(child)
        if stops:
            return gatherResults(stops)
        return None
