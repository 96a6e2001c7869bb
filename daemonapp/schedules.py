"""Schedules: the policies that pick when a daemon runs next, and what they keep.

A schedule answers two questions, asked through the daemon that owns it: how long
after its start the first run is due, and how long after the end of a run (with that
run's outcome) the next one is. `BackoffSchedule` is DESIGN §1's run_every with the
idle backoff; clock schedules (§8) are the next policy. A daemon gets its schedule
from `Daemon.make_schedule()`, so a new policy needs no change to the daemon or the
scheduler.
"""

from __future__ import annotations

import json
import os
import random
from collections import deque
from datetime import datetime, tzinfo
from functools import lru_cache
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from daemonapp.crontimes import load_zone, shared_times
from daemonapp.interfaces import ISchedule
from daemonapp.state_dir import write_private_file

__all__ = [
    "FAILED",
    "IDLE",
    "LOCKED_OUT",
    "OUTCOMES",
    "TIMED_OUT",
    "TRIGGERS",
    "WORKED",
    "YIELDED",
    "BackoffSchedule",
    "ClockSchedule",
    "ScheduleState",
    "default_maximum_idle",
    "idle_delays",
    "next_idle_delay",
    "yield_delay_of",
]

WORKED = "worked"
YIELDED = "yielded"
IDLE = "idle"
FAILED = "failed"
LOCKED_OUT = "locked-out"
TIMED_OUT = "timed-out"
#: Every outcome of a run (DESIGN §1, and §10's timed-out), in their order.
OUTCOMES = (WORKED, YIELDED, IDLE, FAILED, LOCKED_OUT, TIMED_OUT)
#: Why a run starts (DESIGN §10, the run history): its schedule, an idle backoff, an
#: operator's ``daemonapp trigger``, a catch-up of missed fire times.
TRIGGERS = ("schedule", "backoff", "manual", "catch-up")


def default_maximum_idle(run_every: float, increase_idle_by: float,
                         multiply_idle_by: float) -> float:
    """The cap on the idle delay when maximum_idle is not set (DESIGN §1)."""
    if multiply_idle_by > 1:
        return 8 * run_every
    return run_every + 3 * increase_idle_by


def next_idle_delay(previous: float | None, run_every: float, increase_idle_by: float,
                    multiply_idle_by: float, maximum_idle: float) -> float:
    """The delay after one more idle (or failed, or locked-out) run.

    ``previous`` is the delay chosen after the last run of the idle streak, None
    when the streak starts: d1 = min(max, run_every * mult + inc), then
    dk = min(max, dk-1 * mult + inc).
    """
    base = run_every if previous is None else previous
    return min(maximum_idle, base * multiply_idle_by + increase_idle_by)


def idle_delays(run_every: float, increase_idle_by: float = 0.0, multiply_idle_by: float = 1.0,
                maximum_idle: float | None = None, count: int = 5) -> list[float]:
    """The first ``count`` delays of an idle streak (for `daemonapp check` and docs)."""
    if maximum_idle is None:
        maximum_idle = default_maximum_idle(run_every, increase_idle_by, multiply_idle_by)
    delays: list[float] = []
    previous: float | None = None
    for _ in range(count):
        previous = next_idle_delay(previous, run_every, increase_idle_by, multiply_idle_by,
                                   maximum_idle)
        delays.append(previous)
    return delays


def yield_delay_of(schedule: Any) -> float | None:
    """A policy's optional ``yield_delay`` (ISchedule), where it speaks for the
    ``next_delay`` in use: on the policy itself, or on its class or a base class below
    the one that defines ``next_delay``. A subclass that overrides next_delay without
    declaring one inherits none, so it hears of every run."""
    declared = getattr(schedule, "__dict__", {}).get("yield_delay")
    if declared is not None:
        return float(declared)
    for klass in type(schedule).__mro__:
        own = vars(klass)
        if "yield_delay" in own:
            return None if own["yield_delay"] is None else float(own["yield_delay"])
        if "next_delay" in own:
            return None
    return None


@implementer(ISchedule)
class BackoffSchedule:
    """run_every after a run that worked, 0 after a yield, the idle backoff otherwise.

    It reads the daemon's attributes (run_every, increase_idle_by, multiply_idle_by,
    maximum_idle, jitter, start_delay) at each decision, so a change to them applies
    from the next run on; it keeps the idle streak itself.
    """

    __slots__ = ("daemon", "idle_delay", "trigger")

    #: A yield after a yield: 0.0, and the state is already a yield's (ISchedule).
    yield_delay = 0.0

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        #: The un-jittered delay after the last run of the idle streak; None: no streak.
        self.idle_delay: float | None = None
        #: Why the next run starts: "backoff" after a run that did no work, else "schedule".
        self.trigger = "schedule"

    def first_delay(self, now: float) -> float:
        """start_delay: start times are not spread by themselves (DESIGN §1)."""
        delay: float = self.daemon.start_delay
        return delay

    def next_delay(self, outcome: str, now: float) -> float:
        """The delay after a run with ``outcome``: jittered, except after a yield."""
        if outcome == YIELDED:  # a busy daemon's every run: due again at once, unjittered
            self.idle_delay = None
            self.trigger = "schedule"
            return 0.0
        daemon = self.daemon
        if outcome == WORKED:
            self.idle_delay = None
            self.trigger = "schedule"
            delay: float = daemon.run_every
        else:
            self.trigger = "backoff"
            # next_idle_delay(), inline: this is every idle run's path.
            previous = self.idle_delay
            delay = ((daemon.run_every if previous is None else previous)
                     * daemon.multiply_idle_by + daemon.increase_idle_by)
            maximum = daemon.maximum_idle
            if delay > maximum:  # noqa: PLR1730 - no min() call on the hot path
                delay = maximum
            self.idle_delay = delay
        jitter = daemon.jitter
        if jitter:
            delay *= 1.0 + jitter * (2.0 * random.random() - 1.0)  # noqa: S311
        return delay


#: Longest the scheduler sleeps while clock schedules exist (DESIGN §8): a suspend or a
#: clock change is noticed within this, whatever the reactor's poll timeout does.
CLOCK_MAX_SLEEP = 60.0
#: At most this many catch-up runs for catch_up "all".
CATCH_UP_MAX = 100

_log = Logger(namespace="daemonapp.schedules")


@lru_cache(maxsize=4096)
def iso(instant: float, zone: tzinfo) -> str:
    """An instant as ISO 8601 in ``zone``, with its offset (seconds only when set).

    Cached: every daemon on a schedule publishes the same next fire time at each fire,
    and formatting it was the largest cost per fire left (bench/clock.py).
    """
    moment = datetime.fromtimestamp(instant, zone)
    return moment.isoformat(timespec="seconds" if moment.microsecond == 0 else "milliseconds")


@implementer(ISchedule)
class ClockSchedule:
    """Runs at the fire times of ``daemon.schedule`` (DESIGN §8).

    A yielded run continues at once; any other run waits for the next fire time after
    it ends. Fire times that pass while a run is in flight are made up by one run
    right after it ("overrun"), within misfire_grace. At the first start, fire times
    missed since the last one kept in the app's schedule state ("downtime") are made
    up as catch_up says (none, once, all). Every missed fire time counts in
    ``stats["misfires"]`` under its reason, run or not.
    """

    #: A yield continues at once and touches nothing (ISchedule).
    yield_delay = 0.0

    def __init__(self, daemon: Any) -> None:
        app = daemon.app
        zone_name = daemon.timezone or getattr(app, "timezone", None)
        self.zone = load_zone(zone_name)
        self.times = shared_times(daemon.schedule, self.zone)
        self.daemon = daemon
        self.grace: float = daemon.misfire_grace
        self.catch_up: str = daemon.catch_up
        self.state: Any = getattr(app, "schedule_state", None)
        #: The fire time the run in flight (or the last run) serves.
        self.serving: float | None = None
        self.next_fire: float | None = None
        self.misfires: dict[str, int] = {}
        #: Why the next run starts: "catch-up" for a missed fire time, else "schedule".
        self.trigger = "schedule"
        self._pending: deque[float] = deque()  # fire times to make up, at once
        self._watching = False
        self._paused_at: float | None = None  # paused (daemonapp pause) since then
        self._manual_at: float | None = None  # the run in flight is a manual one (trigger)
        stats = daemon.stats
        stats["schedule"] = daemon.schedule
        stats["next_fire"] = None
        stats["misfires"] = self.misfires

    def first_delay(self, now: float) -> float:
        watch = getattr(self.daemon.app, "watch_clock", None)
        if watch is not None and not self._watching:
            watch(self._clock_changed, CLOCK_MAX_SLEEP)
            self._watching = True
        last = self.state.last_fire(self.daemon.name) if self.state is not None else None
        if last is not None:
            self.serving = last
            if last < now:
                missed = self.times.between(last, now)
                if missed:
                    self._missed(missed, ["downtime"] * len(missed), now, self.catch_up)
        return self._arm(now)

    def next_delay(self, outcome: str, now: float) -> float:
        if outcome == YIELDED:
            return 0.0
        if self._manual_at is not None:
            return self._manual_run_ended(now)
        served = self.serving
        if served is not None and self.state is not None:
            self.state.record(self.daemon.name, served)
        if served is not None and served < now and not self._pending:  # else none passed
            passed = self.times.between(served, now)
            if passed:
                self._missed(passed, ["overrun"] * len(passed), now, "once")
        return self._arm(now)

    def _clock_changed(self, events: list[tuple[str, float, float]], now: float) -> None:
        """The machine slept or the clock jumped: fire times it skipped are misfires.

        A run in flight sees them when it ends (as overrun); a daemon waiting for a
        fire time that passed is made up as catch_up says, and due again at once.
        """
        daemon = self.daemon
        fire = self.next_fire
        if daemon.running or fire is None or fire > now or self._pending \
                or self._paused_at is not None:
            return  # (a pause counts what it skipped when it ends)
        missed = self.times.between(fire - 0.001, now)
        if not missed:
            return
        self._missed(missed, [_reason(t, events) for t in missed], now, self.catch_up)
        if daemon.app is not None:
            daemon.app.reschedule(daemon, self._arm(now))

    # An operator's commands (the scheduler calls these optional ISchedule hooks).

    def triggered(self, now: float) -> None:
        """The next run is a manual one (daemonapp trigger): it serves no fire time."""
        self._manual_at = now

    def _manual_run_ended(self, now: float) -> float:
        asked, self._manual_at = self._manual_at, None
        fire = self.serving  # what the daemon waited for: this run did not serve it
        if fire is None or asked is None:
            return self._arm(now)
        if fire != self.next_fire or self._pending or fire < asked:
            return 0.0  # a make-up was owed before the trigger: it runs now
        if fire > now or self._paused_at is not None:
            return max(0.0, fire - now)  # still the next run (a pause counts at its end)
        passed = self.times.between(fire - 0.001, now)
        self._missed(passed, ["overrun"] * len(passed), now, "once")
        return self._arm(now)

    def paused(self, since: float) -> None:
        """The daemon is paused (daemonapp pause) since ``since``: it runs no fire time."""
        self._paused_at = since

    def resumed(self, now: float) -> float | None:
        """The pause ended: the fire times it skipped are misfires ("paused"), made up as
        catch_up says. The delay to the next run; None keeps the one planned."""
        since, self._paused_at = self._paused_at, None
        fire = self.serving
        if fire is None or self.daemon.running:
            return None  # a run in flight counts what passed when it ends (overrun)
        if fire != self.next_fire or self._pending:
            # A make-up was owed when the pause began: it runs now, and the fire times
            # after the last one owed that passed meanwhile are paused misfires.
            start = max([fire, *self._pending, *([since] if since is not None else [])])
            missed = self.times.between(start, now)
            if missed:
                self._missed(missed, ["paused"] * len(missed), now, self.catch_up)
                if self.catch_up == "once" and self._pending:
                    # One run for all: the make-up owed serves the latest missed time.
                    self.serving = self._pending.pop()
                    self._publish(self.serving)
            return 0.0
        if fire > now:
            return None
        missed = self.times.between(fire - 0.001, now)
        self._missed(missed, ["paused"] * len(missed), now, self.catch_up)
        return self._arm(now)

    def close(self) -> None:
        """The daemon stopped: stop watching the clock for it."""
        unwatch = getattr(self.daemon.app, "unwatch_clock", None)
        if unwatch is not None and self._watching:
            unwatch(self._clock_changed)
            self._watching = False

    # ----------------------------------------------------------------------

    def _missed(self, times: list[float], reasons: list[str], now: float,
                catch_up: str) -> None:
        """Count missed fire times (``reasons[i]`` is why ``times[i]`` was missed) and
        queue those to make up within the grace: catch_up applies to all of them at
        once, whatever their reasons (once: one run, not one per reason)."""
        for why in reasons:
            self.misfires[why] = self.misfires.get(why, 0) + 1
        reason = ", ".join(sorted(set(reasons)))
        recent = [t for t in times if now - t <= self.grace]
        stale = len(times) - len(recent)
        name = self.daemon.name
        if stale:
            _log.warn("daemon {daemon}: {count} fire time(s) missed ({reason}) more than "
                      "misfire_grace ({grace:g} s) ago, not run; the last was {last}",
                      daemon=name, count=stale, reason=reason, grace=self.grace,
                      last=iso(times[-len(recent) - 1], self.zone))
        # Times never to be run: older than the grace, or left out by catch_up.
        skipped = times if catch_up == "none" else times[:stale]
        if catch_up == "all":
            skipped = skipped + recent[:-CATCH_UP_MAX]
        if skipped:
            self._alert_skipped(len(skipped), reason, skipped[-1])
        if not recent:
            return
        if catch_up == "once":
            if self.catch_up == "once":
                self._pending.clear()  # one run for all misses, those owed already too
            self._pending.append(recent[-1])
        elif catch_up == "all":
            self._pending.extend(recent[-CATCH_UP_MAX:])
        _log.info("daemon {daemon}: {count} fire time(s) missed ({reason}), catch_up "
                  "{catch_up}: {runs} run(s) now", daemon=name, count=len(recent),
                  reason=reason, catch_up=catch_up,
                  runs=0 if catch_up == "none" else len(self._pending))

    def _alert_skipped(self, count: int, reason: str, last: float) -> None:
        """Fire times that will never run raise an alert at once (DESIGN §10)."""
        alert = getattr(self.daemon.app, "alert", None)
        if alert is not None:
            alert({"event": "alert", "daemon": self.daemon.name, "count": count,
                   "error": f"{count} fire time(s) skipped ({reason}); the last was "
                            f"{iso(last, self.zone)}"})

    def _arm(self, now: float) -> float:
        """The delay to the next run: a fire time to make up at once, else the next one."""
        if self._pending:
            self.serving = self._pending.popleft()
            self.trigger = "catch-up"
            self._publish(self.serving)
            return 0.0
        self.trigger = "schedule"
        after = now if self.serving is None else max(now, self.serving)
        fire = self.times.next_after(after)
        self.serving = self.next_fire = fire
        self._publish(fire)
        delay = fire - now
        jitter = self.daemon.jitter
        if jitter:
            # Later only, never earlier: up to jitter x the gap to the following time.
            gap = self.times.next_after(fire) - fire
            delay += jitter * gap * random.random()  # noqa: S311
        return delay

    def _publish(self, fire: float) -> None:
        self.daemon.stats["next_fire"] = iso(fire, self.zone)


def _reason(fire: float, events: list[tuple[str, float, float]]) -> str:
    """The event a missed fire time fell into (the first one's reason otherwise)."""
    for reason, before, after in events:
        if before < fire <= after:
            return reason
    return events[0][0]


class ScheduleState:
    """The last fire time served by each clock-scheduled daemon, kept in state_dir.

    One small JSON file (``state_dir/schedules.json``), rewritten atomically at most
    once a second (and at ``flush()``, which the app calls when it stops), so that a
    restart knows which fire times it missed (DESIGN §8).
    """

    FILE = "schedules.json"

    def __init__(self, state_dir: str, reactor: Any) -> None:
        self.path = os.path.join(state_dir, self.FILE)
        self.reactor = reactor
        self._fires: dict[str, float] | None = None
        self._dirty = False
        self._flush_call: Any = None
        self._written_at = float("-inf")

    def _load(self) -> dict[str, float]:
        if self._fires is None:
            fires: dict[str, float] = {}
            try:
                with open(self.path, encoding="utf-8") as f:
                    data = json.load(f)
                if isinstance(data, dict):
                    fires = {str(k): float(v) for k, v in data.items()
                             if isinstance(v, int | float) and not isinstance(v, bool)}
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as e:
                _log.warn("cannot read {path} ({error}): fire times missed while the app "
                          "was down are not made up this time", path=self.path, error=e)
            self._fires = fires
        return self._fires

    def last_fire(self, name: str) -> float | None:
        """The last fire time ``name`` served, in an earlier life of the app too."""
        return self._load().get(name)

    def record(self, name: str, fire: float) -> None:
        """``name`` served ``fire``: kept, and written soon."""
        self._load()[name] = fire
        self._dirty = True
        if self._flush_call is not None:
            return
        wait = self._written_at + 1.0 - self.reactor.seconds()
        if wait <= 0:
            self.flush()
        else:
            self._flush_call = self.reactor.callLater(wait, self.flush)

    def flush(self) -> None:
        """Write the file now if anything changed (atomically, mode 0600)."""
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        if not self._dirty or self._fires is None:
            return
        self._dirty = False
        self._written_at = self.reactor.seconds()
        try:
            write_private_file(self.path, json.dumps(self._fires))
        except OSError as e:
            self._dirty = True
            _log.warn("cannot write {path}: {error}", path=self.path, error=e)
