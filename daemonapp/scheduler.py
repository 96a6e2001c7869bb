"""The scheduler: which daemon runs when, on one timer.

A heap of due times and a ready queue ordered by (priority desc, due time, FIFO):
one FIFO per priority, since daemons mostly become ready in that order.
When daemons are due it runs ready work for at most ``time_slice`` seconds, then
yields to the reactor with ``callLater(0)`` so that listener I/O is served between
items; with nothing due it arms exactly one timer, for the earliest due time
(DESIGN §2). It keeps its own record per daemon (`Slot`: due time, sequence, in-run
state, lateness) and talks to a daemon only through ``run_step`` / ``abort_run``;
when a daemon is due is its schedule's business (daemonapp.schedules).
"""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp.clockwatch import CLOCK_JUMP, TOLERANCE, ClockWatch
from daemonapp.daemon import ENDED, READY, Daemon
from daemonapp.runstep import AGAIN

__all__ = ["MANUAL", "Pause", "Scheduler", "Slot"]

_INF = float("inf")

#: A ready entry: (due time, sequence, slot), kept in its priority's FIFO.
_Entry = tuple[float, int, "Slot"]

log = Logger()

#: ``Slot.trigger`` of a run an operator asked for (``daemonapp trigger``).
MANUAL = "manual"

# Bits of ``Slot.control``: what an operator's command asked of a daemon beyond its
# schedule, looked at once when a run ends.
_PAUSED = 1  # start no run (daemonapp pause)
_TRIGGER_AFTER_RUN = 2  # a trigger came during the run in flight: run once more after it
_MANUAL_RUN = 4  # the run in flight (or the one queued) is a manual one


@dataclass(frozen=True)
class Pause:
    """A pause of a daemon (``daemonapp pause``): epoch seconds, and why."""

    since: float
    until: float | None = None
    reason: str | None = None


class Slot:
    """The scheduler's record of one started daemon.

    ``trigger`` says why the run in flight (or the one queued) starts: MANUAL for an
    operator's trigger, else None (the schedule's own choice; a run history may name
    it). It is reset when the run ends (`Scheduler.run_ended`).
    """

    __slots__ = ("control", "daemon", "deadline_queued", "due", "in_run", "lateness", "queue",
                 "seq", "timeout", "trigger")

    def __init__(self, daemon: Daemon, queue: deque[_Entry] | None = None) -> None:
        self.daemon = daemon
        #: The ready FIFO of the daemon's priority (read once: the daemon stays cold).
        self.queue: deque[_Entry] = deque() if queue is None else queue
        self.due = 0.0
        self.seq = -1  # the live heap/ready entry's sequence; -1: none (stopped)
        self.in_run = False
        self.lateness = 0.0  # start - due time of the last run
        self.trigger: str | None = None
        self.control = 0  # _PAUSED | _TRIGGER_AFTER_RUN | _MANUAL_RUN
        #: The daemon's run timeout (DESIGN §10).
        self.timeout: float | None = getattr(daemon, "run_timeout", None)
        self.deadline_queued = False  # an entry of this slot is in the timed heap


class Scheduler:
    """Runs the daemons' runs on ``reactor``: one timer, time slices, priorities.

    ``stopping`` set: no new run starts (one in flight goes on). ``idle_hook``, when
    set, is called whenever the scheduler may have become idle (a run ended, a slice
    emptied the ready queue): the lifetime's idle-exit check.
    """

    def __init__(self, reactor: Any, time_slice: float) -> None:
        self.reactor = reactor
        self.seconds: Callable[[], float] = reactor.seconds
        self.time_slice = time_slice
        self.stopping = False
        self.idle_hook: Callable[[], None] | None = None
        #: The longest the one timer is armed for (None: until the earliest due time).
        self.max_sleep: float | None = None
        #: Compares the wall clock with monotonic and boot time at each wake-up, once
        #: someone watches the clock (a test may set its own, with fake clocks).
        self.watch: ClockWatch | None = None
        self._clock_watchers: list[Callable[[list[tuple[str, float, float]], float], None]] = []
        #: The largest lateness (start - due time) of any run so far, in seconds.
        self.max_lateness = 0.0
        self.runs_in_flight = 0
        self._slots: dict[Daemon, Slot] = {}
        self._seq = itertools.count()
        self._heap: list[tuple[float, int, Slot]] = []
        #: The ready queue: a FIFO of entries per priority, each in (due, seq) order,
        #: and those FIFOs highest priority first (`_levels`). A heap of N entries
        #: costs ~log2(N) tuple comparisons per item; a yield appends in O(1).
        self._queues: dict[int, deque[_Entry]] = {}
        self._levels: list[deque[_Entry]] = []
        self._timer: Any = None
        self._timer_at = _INF
        self._wake_at = _INF  # when the timer was set to fire (_timer_at, or earlier)
        self._yield_call: Any = None
        self._in_slice = False
        #: The reactor's time to its next timer (None: a reactor that cannot tell).
        self._reactor_timeout: Callable[[], float | None] | None = getattr(
            reactor, "timeout", None)
        #: Calls at a time, on the same one timer: run deadlines (one entry per daemon
        #: at most, see _deadline) and chores such as the run history's flush.
        self._timed: list[tuple[float, int, Callable[[Any], None], Any]] = []
        #: Paused daemons by name: a daemon started under that name (a restart, a
        #: reload's replacement, a seed's child) starts paused too.
        self._pauses: dict[str, Pause] = {}

    # ----------------------------------------------------------- from daemons

    def daemon_started(self, daemon: Daemon, delay: float) -> None:
        """Make ``daemon`` due ``delay`` seconds from now."""
        slot = self._slots.get(daemon)
        if slot is None:
            slot = self._slots[daemon] = Slot(daemon, self._queue_for(daemon.priority))
        daemon.stats["next_run_at"] = self.seconds() + delay
        if self._pauses and daemon.name in self._pauses:
            slot.control |= _PAUSED
            self._hold(slot, delay)
            _policy_call(daemon, "paused", self._pauses[daemon.name].since)
            return
        self._schedule(slot, delay)

    def daemon_stopped(self, daemon: Daemon) -> None:
        """Forget ``daemon``: its heap and ready entries are stale from now on."""
        slot = self._slots.pop(daemon, None)
        if slot is not None:
            slot.seq = -1

    def run_ended(self, daemon: Daemon, delay: float | None, now: float | None = None,
                  ) -> None:
        """A run ended: due again ``delay`` seconds from ``now`` (None: it stopped).

        ``now``: the daemon's ``seconds()`` at the run's end (None: read it here).
        """
        self.runs_in_flight -= 1
        slot = self._slots.get(daemon)
        if slot is not None:
            slot.in_run = False
            if slot.control:
                self._controlled_end(slot, delay)
            elif delay is not None:
                # A yield is due from the run's end (the busy path of a yield after a
                # yield is run_slice's AGAIN, inline); any later run from now.
                self._schedule(slot, delay, now if delay <= 0 else None)
        if self.idle_hook is not None:
            self.idle_hook()

    def wake(self, daemon: Daemon) -> None:
        """A daemon that waited on a Deferred or a thread goes on with its run."""
        slot = self._slots.get(daemon)
        if slot is None or (slot.seq < 0 and not slot.in_run):
            return
        _enqueue(slot.queue, (slot.due, slot.seq, slot))
        if not self._in_slice:
            # Go on at once, like any Deferred callback: a slice of its own, in
            # priority order with whatever else is ready.
            self.run_slice()

    def reschedule(self, daemon: Daemon, delay: float) -> None:
        """Make a waiting daemon due ``delay`` from now instead (a daemon in a run, or
        not started, is left alone)."""
        slot = self._slots.get(daemon)
        if slot is None or slot.in_run:
            return
        daemon.stats["next_run_at"] = self.seconds() + delay
        if slot.control & _PAUSED:
            self._hold(slot, delay)
            return
        self._schedule(slot, delay)

    # ------------------------------------------------------ operators' commands

    def trigger(self, daemon: Daemon) -> str:
        """Run ``daemon`` now, as a manual run (``daemonapp trigger``); its lock applies.

        Returns "queued" (it runs within one time slice), "after-run" (a run is in
        flight: once more right after it; triggers during one run merge) or "merged"
        (a run was due at once anyway; it becomes the manual one). A paused daemon runs
        once and stays paused. ValueError when the daemon has not started.
        """
        slot = self._slots.get(daemon)
        if slot is None or (slot.seq < 0 and not slot.in_run):
            raise ValueError(f"daemon {daemon.name!r} is not started")
        if slot.in_run:
            merged = bool(slot.control & _TRIGGER_AFTER_RUN)
            slot.control |= _TRIGGER_AFTER_RUN
            return "merged" if merged else "after-run"
        now = self.seconds()
        if slot.control & _MANUAL_RUN or (not slot.control & _PAUSED and slot.due <= now):
            slot.trigger = MANUAL
            slot.control |= _MANUAL_RUN
            return "merged"
        self._queue_manual(slot, now)
        return "queued"

    def _queue_manual(self, slot: Slot, now: float) -> None:
        slot.trigger = MANUAL
        slot.control |= _MANUAL_RUN
        _policy_call(slot.daemon, "triggered", now)
        slot.daemon.stats["next_run_at"] = now
        self._schedule(slot, 0.0)

    def pause(self, name: str, pause: Pause) -> None:
        """Start no run of the daemon ``name`` until `resume` (a run in flight finishes).

        Kept by name: a daemon started later under that name starts paused. Pausing a
        paused daemon only replaces the record (until, reason).
        """
        was = self._pauses.get(name)
        self._pauses[name] = pause
        if was is not None:
            return
        now = self.seconds()
        for slot in list(self._slots.values()):
            if slot.daemon.name != name:
                continue
            slot.control |= _PAUSED
            if slot.seq >= 0 and not slot.in_run and not slot.control & _MANUAL_RUN:
                self._hold(slot, slot.due - now)  # (a manual run queued still goes)
            _policy_call(slot.daemon, "paused", now)
        self._rearm()

    def resume(self, name: str) -> Pause | None:
        """End the pause of the daemon ``name``; returns it (None: it was not paused).

        A daemon waiting for its next run asks its schedule when that is now (a clock
        schedule makes up the fire times the pause skipped, as catch_up says); a
        schedule without an opinion (the idle backoff) runs at once.
        """
        pause = self._pauses.pop(name, None)
        if pause is None:
            return None
        now = self.seconds()
        for slot in list(self._slots.values()):
            if slot.daemon.name != name or not slot.control & _PAUSED:
                continue
            slot.control &= ~_PAUSED
            if slot.in_run:
                _policy_call(slot.daemon, "resumed", now)  # the run's end schedules it
                continue
            if slot.seq < 0:
                continue
            delay = _policy_call(slot.daemon, "resumed", now, default=0.0)
            if delay is None:
                delay = max(0.0, slot.due - now)
            slot.daemon.stats["next_run_at"] = now + delay
            self._schedule(slot, delay)
        return pause

    def pause_of(self, name: str) -> Pause | None:
        """The pause of the daemon ``name`` (None: not paused)."""
        return self._pauses.get(name) if self._pauses else None

    def pauses(self) -> dict[str, Pause]:
        """Every pause, by daemon name (a copy)."""
        return dict(self._pauses)

    def trigger_of(self, daemon: Daemon) -> str | None:
        """``Slot.trigger`` of the daemon's run in flight (or queued): MANUAL or None."""
        slot = self._slots.get(daemon)
        return slot.trigger if slot is not None else None

    def trigger_pending(self, daemon: Daemon) -> bool:
        """Whether a manual run asked of ``daemon`` has yet to start: one after its
        run in flight ("after-run") or one queued ("queued", "merged")."""
        slot = self._slots.get(daemon)
        if slot is None:
            return False
        return bool(slot.control & _TRIGGER_AFTER_RUN
                    or (slot.control & _MANUAL_RUN and not slot.in_run))

    def _hold(self, slot: Slot, delay: float) -> None:
        """Keep a paused daemon's next due time without queueing it: its heap and
        ready entries are stale from now on."""
        slot.due = self.seconds() + delay
        slot.seq = next(self._seq)

    def _controlled_end(self, slot: Slot, delay: float | None) -> None:
        """A run ended on a daemon an operator paused or triggered."""
        control = slot.control
        if control & _MANUAL_RUN:
            slot.trigger = None
            control &= ~_MANUAL_RUN
        slot.control = control & ~_TRIGGER_AFTER_RUN
        if delay is None:
            return
        if control & _TRIGGER_AFTER_RUN:
            if delay <= 0:
                # It goes on at once anyway (a yield): that run is the manual one.
                slot.trigger = MANUAL
                slot.control |= _MANUAL_RUN
                self._schedule(slot, delay)
            else:
                self._queue_manual(slot, self.seconds())
        elif control & _PAUSED:
            self._hold(slot, delay)
        else:
            self._schedule(slot, delay)

    def watch_clock(self, watcher: Callable[[list[tuple[str, float, float]], float], None],
                    max_sleep: float) -> None:
        """Call ``watcher(events, now)`` when a wake-up finds that the machine slept or
        the wall clock jumped; from now on, never sleep longer than ``max_sleep``."""
        self._clock_watchers.append(watcher)
        if self.watch is None:
            self.watch = ClockWatch.for_reactor(self.reactor)
        self.limit_sleep(max_sleep)

    def unwatch_clock(self, watcher: Callable[[list[tuple[str, float, float]], float], None],
                      ) -> None:
        """Stop calling ``watcher`` (its daemon stopped)."""
        if watcher in self._clock_watchers:
            self._clock_watchers.remove(watcher)

    def limit_sleep(self, seconds: float) -> None:
        """Never arm the timer for longer than ``seconds`` (clock schedules: 60 s)."""
        if self.max_sleep is None or seconds < self.max_sleep:
            self.max_sleep = seconds
            if self._timer is not None and self._timer_at != _INF:
                self._arm_timer(self._timer_at, self.seconds())

    def sleep(self, daemon: Daemon, delay: float) -> None:
        """Go on with the daemon's run after ``delay`` (a lock wait), via the heap."""
        slot = self._slots.get(daemon)
        if slot is not None:
            self._schedule(slot, delay)

    # --------------------------------------------------------------- questions

    def next_due(self) -> float:
        """The earliest due time of a daemon waiting in the heap (inf: none)."""
        heap = self._heap
        while heap and heap[0][2].seq != heap[0][1]:
            heapq.heappop(heap)
        return heap[0][0] if heap else _INF

    def has_ready(self) -> bool:
        """True while daemons wait in the ready queue."""
        return any(self._levels)

    def running(self) -> Iterator[Daemon]:
        """The daemons with a run in flight."""
        return (slot.daemon for slot in self._slots.values() if slot.in_run)

    def lateness(self, daemon: Daemon) -> float:
        """Start - due time of the daemon's last run (0.0 before its first)."""
        slot = self._slots.get(daemon)
        return slot.lateness if slot is not None else 0.0

    def call_at(self, at: float, function: Callable[[Any], None], arg: Any = None) -> None:
        """Call ``function(arg)`` at ``at`` (``reactor.seconds()``), through the
        scheduler's one timer: a chore arms no timer of its own (DESIGN §2)."""
        heapq.heappush(self._timed, (at, next(self._seq), function, arg))
        if at < self._timer_at and not self._in_slice:
            self._arm_timer(at, self.seconds())

    def _run_timed(self, now: float) -> None:
        """Make the timed calls that are due (inside a slice, before its runs)."""
        timed = self._timed
        while timed and timed[0][0] <= now:
            _, _, function, arg = heapq.heappop(timed)
            try:
                function(arg)
            except Exception:
                log.failure("scheduler: a timed call ({function}) failed",
                            function=getattr(function, "__qualname__", repr(function)))

    def _run_supervised(self, slot: Slot, now: float) -> None:
        """A run starts with a manual trigger, or with a timeout and no deadline entry
        of its daemon in the timed heap (DESIGN §10)."""
        if slot.trigger is not None:
            slot.daemon.run_trigger = slot.trigger
        if slot.timeout is not None and not slot.deadline_queued:
            slot.deadline_queued = True
            heapq.heappush(self._timed, (now + slot.timeout, next(self._seq), self._deadline,
                                         slot))

    def _deadline(self, slot: Slot) -> None:
        """A daemon's deadline entry came due: time its run out, or look again later.

        A daemon has at most one entry in the timed heap, whatever its rate of runs:
        runs that start while it waits push none, and the entry, once due, is pushed
        again for the deadline of the run then in flight (its start + timeout).
        """
        slot.deadline_queued = False
        daemon = slot.daemon
        started = daemon.run_started_at
        if not slot.in_run or started is None or slot.timeout is None \
                or self._slots.get(daemon) is not slot:
            return
        at = started + slot.timeout
        if at > self.seconds():
            slot.deadline_queued = True
            self.call_at(at, self._deadline, slot)
            return
        try:
            daemon.run_timed_out()
        except Exception:
            daemon.abort_run(Failure(), "scheduler")

    def cancel_timers(self) -> None:
        """Disarm the scheduler's timer and yield (the app ended)."""
        for timer in (self._timer, self._yield_call):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._yield_call = None
        self._timer_at = _INF

    # -------------------------------------------------------------- scheduling

    def _schedule(self, slot: Slot, delay: float, now: float | None = None) -> None:
        """Make ``slot`` due ``delay`` from ``now`` (None: read the clock)."""
        if now is None:
            now = self.seconds()
        due = now + delay if delay else now
        seq = next(self._seq)
        slot.seq = seq
        slot.due = due
        if delay <= 0:
            # Due at once: behind equal-priority daemons already due (round robin).
            # Its sequence is the newest, so it goes last unless the clock went back.
            queue = slot.queue
            if queue and due < queue[-1][0]:
                _enqueue(queue, (due, seq, slot))
            else:
                queue.append((due, seq, slot))
            if not self._in_slice and self._yield_call is None:
                self._yield_call = self.reactor.callLater(0, self.run_slice)
            return
        heapq.heappush(self._heap, (due, seq, slot))
        if due < self._timer_at and not self._in_slice:
            self._arm_timer(due, now)

    def _arm_timer(self, due: float, now: float) -> None:
        delay = due - now if due > now else 0.0  # (max() costs a call per wake-up)
        if self.max_sleep is not None and delay > self.max_sleep:
            # Wake up early and look again: a suspend or a clock change is noticed.
            delay = self.max_sleep
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = self.reactor.callLater(delay, self._on_timer)
        self._timer_at = due
        self._wake_at = now + delay

    def _rearm(self) -> None:
        """Keep the one timer on the earliest live due time or timed call (or none)."""
        heap = self._heap  # next_due(), inline: once per slice
        while heap and heap[0][2].seq != heap[0][1]:
            heapq.heappop(heap)
        due = heap[0][0] if heap else _INF
        timed = self._timed
        if timed and timed[0][0] < due:
            due = timed[0][0]
        if due == _INF:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            self._timer_at = _INF
            return
        if due != self._timer_at or self._timer is None or not self._timer.active():
            self._arm_timer(due, self.seconds())

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = _INF
        if self.watch is None and self._clock_watchers:
            self._woke_late(self.seconds())
        self.run_slice()

    def _woke_late(self, now: float) -> None:
        """A test's Clock has no ClockWatch (its time moves when the test says): a timer
        that fires later than the longest the scheduler sleeps (max_sleep, while clock
        schedules exist) and TOLERANCE after its time means the clock jumped forward
        past it at once, which clock schedules are told as a real watch would. Steps of
        up to max_sleep are time passing, whatever their phase."""
        if now - self._wake_at > (self.max_sleep or 0.0) + TOLERANCE:
            events = [(CLOCK_JUMP, self._wake_at, now)]
            for watcher in list(self._clock_watchers):
                watcher(events, now)

    def _queue_for(self, priority: int) -> deque[_Entry]:
        """The ready FIFO of ``priority`` (made on first use, in its place in _levels)."""
        queue = self._queues.get(priority)
        if queue is None:
            queue = self._queues[priority] = deque()
            # In place: a slice in progress holds this list.
            self._levels[:] = [self._queues[p] for p in sorted(self._queues, reverse=True)]
        return queue

    def _promote(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, seq, slot = heapq.heappop(heap)
            if slot.seq == seq:
                _enqueue(slot.queue, (due, seq, slot))

    def run_slice(self) -> None:
        """Run ready work for at most time_slice, then yield to the reactor."""
        if self._in_slice:
            return
        if self._yield_call is not None:
            if self._yield_call.active():
                self._yield_call.cancel()
            self._yield_call = None
        self._in_slice = True
        seconds = self.seconds
        levels = self._levels
        heap = self._heap
        try:
            now = seconds()
            if self.watch is not None:
                events = self.watch.look()
                if events:
                    for watcher in list(self._clock_watchers):
                        watcher(events, now)
                    now = seconds()  # (they may take a while: runs start after them)
            start = now
            # End the slice early when another timer on the reactor (a listener's
            # timeout, a LoopingCall) comes due first, so it is not late by a slice;
            # never below a tenth of the slice, so that a callLater(0) chain elsewhere
            # does not shrink every slice to a single item. The reactor is asked once
            # that tenth has passed: most slices (a wake-up for one run) end before.
            timeout = self._reactor_timeout
            deadline = now + (self.time_slice if timeout is None else self.time_slice / 10)
            timed = self._timed
            if timed and timed[0][0] <= now:
                self._run_timed(now)
                now = seconds()  # (a chore may take a while: runs start after it)
            self._promote(now)
            while True:
                for queue in levels:  # the highest priority with a daemon ready
                    if queue:
                        break
                else:
                    break
                entry = queue.popleft()
                slot = entry[2]
                if not slot.in_run:
                    if slot.seq != entry[1] or self.stopping:
                        continue  # stale (stopped or rescheduled), or no new run now
                    slot.in_run = True
                    self.runs_in_flight += 1
                    lateness = slot.lateness = now - slot.due
                    if lateness > self.max_lateness:  # noqa: PLR1730 - no call on the hot path
                        self.max_lateness = lateness
                    if (slot.timeout is not None and not slot.deadline_queued) \
                            or slot.trigger is not None:
                        self._run_supervised(slot, now)
                daemon = slot.daemon
                try:
                    status = daemon.run_step(deadline, now)
                except Exception:
                    # A bug around the run (not a hook's: those are caught inside):
                    # end this run as failed, and let the slice go on with the others.
                    daemon.abort_run(Failure(), "scheduler")
                    status = ENDED
                if status == AGAIN:
                    # The run ended, due again at once: run_ended and _schedule(slot,
                    # 0.0, its end), inline, as this is a busy daemon's every run (due as
                    # it ended: behind those already ready, round robin). Its end is the
                    # clock's latest reading: the next run starts then.
                    now = daemon.last_end
                    self.runs_in_flight -= 1
                    slot.in_run = False
                    if slot.control:
                        self._controlled_end(slot, 0.0)
                    else:
                        seq = slot.seq = next(self._seq)
                        slot.due = now
                        if queue and now < queue[-1][0]:
                            _enqueue(queue, (now, seq, slot))
                        else:
                            queue.append((now, seq, slot))
                else:
                    now = seconds()
                    if status == READY:  # back at its place, ahead of those due after it
                        queue.insert(bisect_left(queue, entry[:2]), entry)
                if now >= deadline:
                    if timeout is None:
                        break
                    deadline = self._slice_end(start, now, timeout())
                    timeout = None
                    if now >= deadline:
                        break
                if heap and heap[0][0] <= now:
                    self._promote(now)
        finally:
            self._in_slice = False
        ready = any(levels)
        if ready and self._yield_call is None:
            self._yield_call = self.reactor.callLater(0, self.run_slice)
        self._rearm()
        if not ready and self.idle_hook is not None:
            self.idle_hook()

    def _slice_end(self, start: float, now: float, wait: float | None) -> float:
        """When a slice begun at ``start`` ends, the reactor's next timer being ``wait``
        from ``now`` (None: none): at that timer, within [a tenth of a slice, a slice]."""
        end = start + self.time_slice
        if wait is None:
            return end
        return min(end, max(now + wait, start + self.time_slice / 10))


def _enqueue(queue: deque[_Entry], entry: _Entry) -> None:
    """Queue ``entry`` at its place in its priority's FIFO: (due, seq) order."""
    if queue:
        last = queue[-1]
        due = entry[0]
        if due < last[0] or (due == last[0] and entry[1] < last[1]):
            # Behind the tail (a woken run, a promotion after a yield): its place.
            queue.insert(bisect_left(queue, entry[:2]), entry)
            return
    queue.append(entry)


def _policy_call(daemon: Daemon, hook: str, now: float, default: Any = None) -> Any:
    """Tell the daemon's schedule about a pause, a resume or a manual run, when it
    cares (optional ISchedule hooks ``paused``, ``resumed``, ``triggered``)."""
    method = getattr(daemon.schedule_policy, hook, None)
    if method is None:
        return default
    return method(now)
