"""Rate-limited logging of repeated trouble: a few lines, however long or hard it lasts.

One rule for a lock backend's outage, a job store's, the refused connections of a
listener and what its peers do wrong: the first occurrence of a kind is logged at once;
those that follow within ``every`` seconds are counted, and the next line stands for
them all; an episode (an outage) may end with a line of its own. What each line says
stays with its caller, which gets an :class:`Episode` to word it from.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["Episode", "LineWriter", "RateLog"]


class Episode:
    """One kind of trouble since it began, as a line about it is written."""

    __slots__ = ("_write", "by_timer", "call", "count", "lines", "logged_at", "started",
                 "tags", "total")

    def __init__(self, now: float) -> None:
        #: when its first occurrence came (a clock's seconds)
        self.started = now
        #: occurrences in all
        self.total = 0
        #: occurrences the next line stands for (not logged yet)
        self.count = 0
        #: those occurrences by tag (an occurrence without one counts under None)
        self.tags: dict[Hashable, int] = {}
        #: lines written so far (0 while the first is written)
        self.lines = 0
        #: when the last line was written
        self.logged_at = now
        #: True while a line is written at the end of an interval, not by an occurrence
        self.by_timer = False
        self.call: Any = None  # the timer of the next line
        self._write: LineWriter | None = None  # how the latest occurrence words a line

    @property
    def first(self) -> bool:
        """Whether the line being written is the episode's first."""
        return self.lines == 0


#: Words and logs one line from the episode it stands for.
LineWriter = Callable[[Episode], None]


class RateLog:
    """At most one line every ``every`` seconds per kind of trouble, each with a count.

    ``occurred(kind, write)`` records one occurrence: ``write(episode)`` is called at once
    for the first of its kind, and for a later one when the last line is ``every``
    seconds old; otherwise the occurrence is counted. With ``call_later`` (a reactor's
    callLater), what was counted is written at the end of the interval by the latest
    occurrence's ``write`` (``episode.by_timer`` set); without it, by the next
    occurrence that finds the interval over. ``ended(kind)`` closes an episode (the
    backend answered) and returns it for a closing line.
    """

    def __init__(self, seconds: Callable[[], float], *, every: float = 60.0,
                 call_later: Callable[..., Any] | None = None) -> None:
        self.seconds = seconds
        self.every = every
        self.call_later = call_later
        self._episodes: dict[Hashable, Episode] = {}

    def episode(self, kind: Hashable) -> Episode | None:
        """The episode of ``kind`` under way, if any."""
        return self._episodes.get(kind)

    def occurred(self, kind: Hashable, write: LineWriter, tag: Hashable = None) -> None:
        """One occurrence of ``kind`` (counted under ``tag``): logged now or counted."""
        now = self.seconds()
        episode = self._episodes.get(kind)
        if episode is None:
            episode = self._episodes[kind] = Episode(now)
        episode.total += 1
        episode.count += 1
        episode.tags[tag] = episode.tags.get(tag, 0) + 1
        episode._write = write
        if episode.lines == 0 or (episode.call is None
                                  and now - episode.logged_at >= self.every):
            self._line(episode, now, by_timer=False)
        elif self.call_later is not None and episode.call is None:
            episode.call = self.call_later(episode.logged_at + self.every - now,
                                           self._flush, kind)

    def ended(self, kind: Hashable) -> Episode | None:
        """End the episode of ``kind``: returned for a closing line (None if none);
        what it counted and did not log yet is dropped."""
        episode = self._episodes.pop(kind, None)
        if episode is not None:
            self._cancel(episode)
        return episode

    def stop(self) -> None:
        """Write what is counted and not logged yet, and cancel the timers."""
        for episode in self._episodes.values():
            self._cancel(episode)
            if episode.count:
                self._line(episode, self.seconds(), by_timer=True)

    def _flush(self, kind: Hashable) -> None:
        episode = self._episodes.get(kind)
        if episode is None:
            return
        episode.call = None
        if episode.count:
            self._line(episode, self.seconds(), by_timer=True)

    def _line(self, episode: Episode, now: float, *, by_timer: bool) -> None:
        write = episode._write
        assert write is not None
        episode.by_timer = by_timer
        try:
            write(episode)
        finally:
            episode.lines += 1
            episode.logged_at = now
            episode.count = 0
            episode.tags = {}

    @staticmethod
    def _cancel(episode: Episode) -> None:
        call, episode.call = episode.call, None
        if call is not None and call.active():
            call.cancel()
