"""The vocabulary of a run step: what Daemon.run_step tells the scheduler, and how a
hook's result that arrives later (a Deferred, a coroutine, a thread's) is told apart."""

from __future__ import annotations

from collections.abc import Callable
from types import CoroutineType

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from daemonapp.interfaces import IScheduler

__all__ = ["AGAIN", "ENDED", "READY", "SYNC_TYPES", "WAITING", "ThreadFailure", "call_now",
           "in_thread", "is_async"]

# What Daemon.run_step tells the scheduler.
READY = 0  # the run goes on: keep the daemon in the ready queue
WAITING = 1  # waiting (a Deferred, a thread, its lock); IScheduler.wake follows
ENDED = 2  # the run ended and the daemon told the scheduler when it is due again
#: The run ended and the daemon is due again at once (a yield): run_step's caller queues
#: it behind those ready, as run_ended would, without the call (a busy daemon's every run).
AGAIN = 3

_ASYNC = (Deferred, CoroutineType)  # what a hook returns when its result comes later
# Exact types already seen not to be _ASYNC. isinstance against Deferred (an ABC via
# typing.Awaitable) goes through ABCMeta.__instancecheck__, ~0.4 us per item; a set
# lookup by type is ~40 ns. Bounded, so a program making classes on the fly stays small.
SYNC_TYPES: set[type] = {int, str, bytes, tuple, list, dict, float, bool}
_SYNC_TYPES_MAX = 1024


def is_async(value: object) -> bool:
    """True for a Deferred or a coroutine; remembers the exact types that are neither."""
    if isinstance(value, _ASYNC):
        return True
    if len(SYNC_TYPES) < _SYNC_TYPES_MAX:
        SYNC_TYPES.add(type(value))
    return False


class ThreadFailure(Exception):
    """Carries the phase and job of a hook that failed in a worker thread."""

    def __init__(self, phase: str, job: object, failure: Failure) -> None:
        super().__init__(phase)
        self.phase = phase
        self.job = job
        self.failure = failure


def call_now(function: Callable[..., object], *args: object) -> None:
    """Call at once: stands for callFromThread where the reactor (a Clock) has none."""
    function(*args)


def in_thread(app: IScheduler, item: Callable[[], object]) -> Deferred[object]:
    """``item()`` in the app's thread pool; its result (or failure) fires on the reactor."""
    d: Deferred[object] = Deferred()
    reactor = app.reactor
    # A task.Clock has no callFromThread: tests pair it with a synchronous pool.
    call_from_thread = getattr(reactor, "callFromThread", call_now)

    def on_result(ok: bool, result: object) -> None:
        call_from_thread(d.callback if ok else d.errback, result)

    app.threadpool.callInThreadWithCallback(on_result, item)
    return d
