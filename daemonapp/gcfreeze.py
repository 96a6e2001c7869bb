"""While an app runs, the objects made before it started are left out of the cyclic
garbage collector's passes (``gc.freeze``).

A busy app allocates: each yielded run queues an entry that lives until the daemon's
next turn, long enough to reach the oldest generation, so full collections come
every few tens of thousands of runs, and each walks every object the process holds,
10,000 daemons' worth in a big app. Frozen, the daemons, their schedules and
everything imported before the start are not walked again: at 10,000 busy daemons
that is a fifth to a quarter of the CPU (bench/scheduler.py, row 1i). Reference
counting still frees what dies; only cycles among frozen objects would wait until the
app ends, when the objects are handed back to the collector (`thaw`). A daemon removed
while the app runs (a reload, ``app.remove``) is such a cycle: its removal hands every
object back (`release`), and the freeze is made again right after the collector's next
full pass of its own, which frees the daemon (no pass is forced: no stall on the
reactor). See docs/decisions.md.

Only apps on the process's installed reactor freeze (a test's ``task.Clock`` or
``MemoryReactorClock`` leaves the collector alone); apps in one process count as one
holder each, and the last to end thaws.
"""

from __future__ import annotations

import gc
import sys

__all__ = ["freeze", "frozen", "owns_process", "release", "thaw"]

_holders = 0
_pending = False  # a removal unfroze: freeze again after the next full pass


def owns_process(reactor: object) -> bool:
    """Whether ``reactor`` is the process's installed reactor (twistd's, ``app.run()``'s)."""
    module = sys.modules.get("twisted.internet.reactor")
    return module is not None and reactor is module


def freeze() -> None:
    """An app starts: move every object the collector tracks to the permanent generation."""
    global _holders
    _holders += 1
    gc.freeze()


def thaw() -> None:
    """An app ended: once no app holds the freeze, hand the objects back to the collector."""
    global _holders
    if _holders == 0:
        return
    _holders -= 1
    if _holders == 0:
        gc.unfreeze()
        _stop_waiting()


def release() -> None:
    """A daemon was removed: hand the frozen objects back to the collector, and freeze
    again once its next full pass (the oldest generation) has freed what died."""
    global _pending
    if _holders == 0:
        return
    gc.unfreeze()
    _pending = True
    if _refreeze not in gc.callbacks:
        gc.callbacks.append(_refreeze)


def _refreeze(phase: str, info: dict[str, int]) -> None:
    # It stays in gc.callbacks until the freeze ends (`thaw`): the collector walks that
    # list by index as it calls it, so a removal from here would rob the next callback
    # of this call.
    global _pending
    if _pending and phase == "stop" and info.get("generation") == 2:
        _pending = False
        if _holders:
            gc.freeze()


def _stop_waiting() -> None:
    global _pending
    _pending = False
    if _refreeze in gc.callbacks:
        gc.callbacks.remove(_refreeze)


def frozen() -> bool:
    """Whether a running app holds the freeze."""
    return _holders > 0
