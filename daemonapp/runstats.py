"""A daemon's stats (DESIGN §10: what the status, metrics, alerts and /healthz read)
and the alerts of its streak of failed runs, as functions of the values handed in.

A run's end does not write the stats dict: it counts into a `RunTally` (a few slot
stores, where a dozen dict stores cost a quarter of a busy daemon's run), and the
dict takes what was counted whenever someone reads it (`Daemon.stats`).
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.logger import Logger

from daemonapp.schedules import FAILED, OUTCOMES, TIMED_OUT, WORKED, YIELDED

__all__ = ["RunTally", "new_stats", "send_alert", "streak_ended", "streak_grew"]

# The namespace these lines had when they were written in daemon.py: filters keep matching.
log = Logger(namespace="daemonapp.daemon")


def new_stats() -> dict[str, Any]:
    """The stats of a daemon that has not run yet."""
    return {
        "runs": 0,
        "items": 0,
        "failures": 0,
        "last_outcome": None,
        "last_run_at": None,
        "next_run_at": None,
        "current_delay": None,
        "last_duration": None,  # seconds of the last run
        "run_seconds": 0.0,  # seconds of all runs (the duration summary's sum)
        # DESIGN §10: what supervision (alerts, metrics, /healthz) reads.
        "consecutive_failures": 0,
        "in_alert": False,
        "last_success_at": None,
        "outcomes": dict.fromkeys(OUTCOMES, 0),
    }


#: Taken while counts move into a stats dict (`RunTally.apply`).
_APPLYING = threading.Lock()


class RunTally:
    """A daemon's stats dict, and what the runs that ended since it was last read add.

    A run's end sets ``last`` (start, end, outcome, items, trigger, error: the run as
    the history keeps it) and ``delay`` (the delay chosen after it) and adds to the counts;
    `apply` moves them into ``stats``. Counts are added, not copied, so that a key the
    daemon's own code or a test sets keeps its value plus the runs since. A run like the
    one before it (the common case) only adds to ``same``: the streak of ``outcome``;
    any other run goes through `count`, which moves the streak to the dict. A failed or
    timed-out run is never a streak: each one goes through `count` (its daemon minds
    its streak of failures and alerts there).
    """

    __slots__ = ("delay", "items", "last", "outcome", "runs", "same", "seconds", "stats",
                 "success_at")

    #: The outcomes whose end is a daemon's last success (DESIGN §10).
    SUCCESS = (WORKED, YIELDED)
    #: The outcomes counted one by one (``outcome`` None after them).
    FAILURES = (FAILED, TIMED_OUT)

    def __init__(self) -> None:
        self.stats = new_stats()
        self.outcome: str | None = None
        self.same = 0  # runs of ``outcome`` not yet in the stats
        self.runs = 0  # other runs not yet in the stats
        self.items = 0
        self.seconds = 0.0
        self.last: tuple[float, float, str, int, str | None, str | None] | None = None
        self.delay: float | None = None
        self.success_at: float | None = None

    def count(self, run: tuple[Any, ...], delay: float | None, alert_after: int | None = None,
              name: str = "") -> dict[str, Any] | None:
        """A run (start, end, outcome, items, trigger, error) of another outcome than the
        last one's, or a failed one, and the delay chosen after it: counted; the alert or
        recovery its daemon ``name`` sends, if any, with the stats holding the run."""
        outcome = run[2]
        outcomes = self.stats["outcomes"]
        if self.same:
            outcomes[self.outcome] += self.same
            self.runs += self.same
        last = self.last  # the run before this one, unless the stats were read since
        if last is not None and last[2] in self.SUCCESS:
            self.success_at = last[1]
        self.last = run
        self.delay = delay
        if outcome in self.FAILURES:
            outcomes[outcome] += 1
            self.runs += 1
            self.outcome = None
            self.same = 0
            return streak_grew(self.apply(), alert_after, name, run[5])
        self.outcome = outcome
        self.same = 1
        if outcome in self.SUCCESS and self.stats["consecutive_failures"]:
            return streak_ended(self.apply(), name)
        return None

    def apply(self) -> dict[str, Any]:
        """The stats, with the runs counted since the last call in them.

        A read moves counts, so two reads at once (an in_thread daemon's hook in its
        thread, a status snapshot on the reactor's) take turns: none is counted twice.
        """
        stats = self.stats
        if self.last is None:
            return stats
        with _APPLYING:
            return self._apply(stats)

    def _apply(self, stats: dict[str, Any]) -> dict[str, Any]:
        last = self.last
        if last is None:  # (another reader's, just now)
            return stats
        self.last = None
        started, ended, outcome = last[0], last[1], last[2]
        delay = self.delay
        if self.same:
            stats["outcomes"][self.outcome] += self.same
        stats["runs"] += self.runs + self.same
        stats["items"] += self.items
        stats["run_seconds"] += self.seconds
        self.runs = self.items = self.same = 0
        self.seconds = 0.0
        stats["last_outcome"] = outcome
        stats["last_run_at"] = started
        stats["current_delay"] = delay
        stats["last_duration"] = ended - started
        if delay is not None:  # (else the daemon stopped: next_run_at is None already)
            stats["next_run_at"] = ended + delay if delay else ended
        if outcome in self.SUCCESS:
            stats["last_success_at"] = ended
        elif self.success_at is not None:
            stats["last_success_at"] = self.success_at
        self.success_at = None
        return stats


def streak_grew(stats: dict[str, Any], alert_after: int | None, name: str,
                error: str | None) -> dict[str, Any] | None:
    """One more failed or timed-out run in a row: the alert to send at alert_after."""
    streak = stats["consecutive_failures"] = stats["consecutive_failures"] + 1
    if streak != alert_after:
        return None
    stats["in_alert"] = True
    return {"event": "alert", "daemon": name, "count": streak, "error": error}


def streak_ended(stats: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A run worked after failed ones: the streak ends; the recovery to send if it
    alerted."""
    streak = stats["consecutive_failures"]
    stats["consecutive_failures"] = 0
    if not stats["in_alert"]:
        return None
    stats["in_alert"] = False
    return {"event": "recovery", "daemon": name, "count": streak, "error": None}


def send_alert(app: object, event: dict[str, Any]) -> None:
    """Hand ``event`` to the app's ``alert`` (the log where the app has none); never raises."""
    alert = getattr(app, "alert", None)
    if alert is None:
        log.warn("daemon {daemon}: {event} ({count} failed run(s) in a row): {error}",
                 **event)
        return
    try:
        alert(event)
    except Exception:
        log.failure("daemon {daemon}: its {event} could not be sent", daemon=event["daemon"],
                    event=event["event"])
