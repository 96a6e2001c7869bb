"""What a run says of itself when it goes wrong: a job's bounded repr, a failure's
one-line summary for the history and alerts, and the lines of a run that timed out,
with its stack (a coroutine's, or a thread's: PHP-FPM's slowlog)."""

from __future__ import annotations

import sys
import traceback
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp.schedules import TIMED_OUT

__all__ = ["ERROR_MAX", "JOB_REPR_MAX", "coroutine_stack", "error_summary", "log_timed_out",
           "safe_repr", "thread_stack", "timed_out_error"]

# The namespace of these lines when they were written in daemon.py: filters keep matching.
log = Logger(namespace="daemonapp.daemon")

JOB_REPR_MAX = 1000
#: The longest error summary a run keeps for its history and alerts.
ERROR_MAX = 500


def error_summary(failure: Failure, phase: str) -> str:
    """One line for the run history and alerts: ``phase: Type: message``, bounded."""
    try:
        text = f"{phase}: {type(failure.value).__name__}: {failure.getErrorMessage()}"
    except Exception:
        text = f"{phase}: {safe_repr(failure.value)}"
    text = " ".join(text.split())
    return text if len(text) <= ERROR_MAX else text[:ERROR_MAX] + "..."


def coroutine_stack(coro: Any) -> str:
    """Where a suspended coroutine (and what it awaits, inner last) is, as a traceback."""
    frames: list[tuple[Any, int]] = []
    while coro is not None and len(frames) < 100:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append((frame, frame.f_lineno))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return "".join(traceback.StackSummary.extract(frames).format())


def thread_stack(ident: int | None) -> str:
    """The current stack of thread ``ident`` (PHP-FPM's slowlog), or "" when it is gone."""
    frame = sys._current_frames().get(ident) if ident is not None else None
    return "".join(traceback.format_stack(frame)) if frame is not None else ""


def safe_repr(value: object, limit: int = JOB_REPR_MAX) -> str:
    """``repr(value)`` cut to ``limit`` characters; never raises.

    A job's ``__repr__`` is user code: when it raises, the failure being logged must
    still be logged (and the run still ended), not replaced by the repr's exception.
    """
    try:
        text = repr(value)
    except Exception as e:
        text = f"<{type(value).__name__} object; repr() raised {type(e).__name__}>"
    if not isinstance(text, str):
        text = f"<{type(value).__name__} object>"
    if len(text) > limit:
        text = text[:limit] + "..."
    return text


def log_timed_out(daemon: str, elapsed: float, timeout: float | None, doing: str,
                  **fields: Any) -> None:
    """The line of a run that passed its timeout: ``doing`` (a format of ``fields``) says
    what it was doing then."""
    log.error("daemon {daemon} timed out after {elapsed:.3f} s (timeout {timeout:g} s) "
              + doing, daemon=daemon, elapsed=elapsed, timeout=timeout, outcome=TIMED_OUT,
              **fields)


def timed_out_error(daemon: str, timeout: float | None, failure: Failure | None = None,
                    phase: str = "", job: object = None) -> str:
    """A timed-out run's error for its history and alerts (bounded), with what the hook it
    waited on (``phase``) ended with once cancelled: a failure but the cancel is logged."""
    error = f"timed out after {timeout:g} s" if timeout is not None else "timed out"
    if failure is not None and failure.check(CancelledError):
        error = f"{error} in {phase}"
    elif failure is not None:
        # What the cancel (or the kill) left: a command's exit, a hook's own error.
        log.failure("daemon {daemon} timed out in {phase} (job {job})", failure,
                    daemon=daemon, phase=phase, job=safe_repr(job), outcome=TIMED_OUT)
        error = f"{error}; {error_summary(failure, phase)}"
    return error[:ERROR_MAX]
