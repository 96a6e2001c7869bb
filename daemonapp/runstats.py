"""A daemon's stats (DESIGN §10: what the status, metrics, alerts and /healthz read)
and the alerts of its streak of failed runs, as functions of the values handed in."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from daemonapp.schedules import OUTCOMES

__all__ = ["new_stats", "send_alert", "streak_ended", "streak_grew"]

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


def streak_grew(stats: dict[str, Any], streak: int, alert_after: int | None, name: str,
                error: str | None) -> dict[str, Any] | None:
    """``streak`` failed or timed-out runs in a row: the alert to send at alert_after."""
    stats["consecutive_failures"] = streak
    if streak != alert_after:
        return None
    stats["in_alert"] = True
    return {"event": "alert", "daemon": name, "count": streak, "error": error}


def streak_ended(stats: dict[str, Any], streak: int, name: str) -> dict[str, Any] | None:
    """A run worked after ``streak`` failed ones: the recovery to send if it alerted."""
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
