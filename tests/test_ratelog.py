"""Tests for daemonapp.ratelog: repeated trouble in a few lines, on a task.Clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from daemonapp.ratelog import Episode, RateLog


class Lines:
    """A LineWriter that keeps what each line would say."""

    def __init__(self, clock: Clock, label: str = "") -> None:
        self.clock = clock
        self.label = label
        self.lines: list[tuple[object, ...]] = []

    def __call__(self, episode: Episode) -> None:
        self.lines.append((self.label, self.clock.seconds(), episode.first, episode.count,
                           episode.total, episode.by_timer, dict(episode.tags)))


class TimerTests(SynchronousTestCase):
    """With call_later, what is counted is written at the end of the interval."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.rate = RateLog(self.clock.seconds, every=60.0, call_later=self.clock.callLater)

    def test_first_at_once_the_rest_at_the_end_of_the_minute(self) -> None:
        """The first occurrence is a line at once; three more within the minute are one
        line at its end, counting three."""
        lines = Lines(self.clock)
        self.rate.occurred("400", lines)
        for _ in range(3):
            self.clock.advance(10)
            self.rate.occurred("400", lines)
        self.assertEqual(lines.lines, [("", 0.0, True, 1, 1, False, {None: 1})])
        self.clock.advance(30)
        self.assertEqual(lines.lines[1:], [("", 60.0, False, 3, 4, True, {None: 3})])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_quiet_interval_logs_the_next_at_once(self) -> None:
        """After a minute without trouble, the next occurrence is a line at once again."""
        lines = Lines(self.clock)
        self.rate.occurred("400", lines)
        self.clock.advance(90)
        self.rate.occurred("400", lines)
        self.assertEqual([line[1:4] for line in lines.lines],
                         [(0.0, True, 1), (90.0, False, 1)])

    def test_the_latest_writer_words_the_counted_line(self) -> None:
        """The line at the end of the interval is the latest occurrence's wording."""
        first, second, third = (Lines(self.clock, label) for label in "abc")
        self.rate.occurred("kind", first)
        self.rate.occurred("kind", second)
        self.rate.occurred("kind", third)
        self.clock.advance(60)
        self.assertEqual([(line[0], line[3]) for line in first.lines + third.lines],
                         [("a", 1), ("c", 2)])
        self.assertEqual(second.lines, [])

    def test_kinds_are_counted_apart_and_tags_within_a_kind(self) -> None:
        """Each kind has its own interval; tags split one kind's count."""
        lines = Lines(self.clock)
        self.rate.occurred("conn", lines, tag="refused")
        self.rate.occurred("conn", lines, tag="refused")
        self.rate.occurred("conn", lines, tag="accept_error")
        self.rate.occurred("other", lines)
        self.clock.advance(60)
        self.assertEqual([(line[1], line[6]) for line in lines.lines], [
            (0.0, {"refused": 1}), (0.0, {None: 1}),
            (60.0, {"refused": 1, "accept_error": 1})])

    def test_stop_writes_what_is_counted_and_cancels_the_timers(self) -> None:
        """stop() writes the counted occurrences now and leaves no timer."""
        lines = Lines(self.clock)
        self.rate.occurred("400", lines)
        self.clock.advance(5)
        self.rate.occurred("400", lines)
        self.rate.stop()
        self.assertEqual([line[1:6] for line in lines.lines],
                         [(0.0, True, 1, 1, False), (5.0, False, 1, 2, True)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_failing_writer_leaves_the_count_right(self) -> None:
        """A line that raises still counts as written: the next interval starts clean."""
        calls: list[int] = []

        def broken(episode: Episode) -> None:
            calls.append(episode.count)
            raise RuntimeError("cannot log")

        with self.assertRaises(RuntimeError):
            self.rate.occurred("x", broken)
        self.rate.occurred("x", broken)
        self.assertEqual(calls, [1])


class LazyTests(SynchronousTestCase):
    """Without call_later, the next occurrence past the interval writes the line."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.rate = RateLog(self.clock.seconds, every=60.0)

    def test_an_outage_in_three_lines(self) -> None:
        """First error, one "still" line after a minute counting the errors since, and
        the end of the outage with its length and total."""
        lines = Lines(self.clock)
        for _ in range(7):  # every 10 s: 0 .. 60
            self.rate.occurred("backend", lines)
            self.clock.advance(10)
        self.assertEqual([line[1:5] for line in lines.lines],
                         [(0.0, True, 1, 1), (60.0, False, 6, 7)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        episode = self.rate.ended("backend")
        assert episode is not None
        self.assertEqual((self.clock.seconds() - episode.started, episode.total), (70.0, 7))
        self.assertIsNone(self.rate.episode("backend"))

    def test_a_new_outage_begins_with_a_first_line(self) -> None:
        """After ended(), the next occurrence opens a new episode, logged at once."""
        lines = Lines(self.clock)
        self.rate.occurred("backend", lines)
        self.rate.ended("backend")
        self.clock.advance(1)
        self.rate.occurred("backend", lines)
        self.assertEqual([line[1:5] for line in lines.lines],
                         [(0.0, True, 1, 1), (1.0, True, 1, 1)])

    def test_ended_without_an_episode(self) -> None:
        """Ending a kind that is not in trouble returns None."""
        self.assertIsNone(self.rate.ended("backend"))

    def test_once_per_episode(self) -> None:
        """every=inf: one line when the trouble begins, however long it lasts."""
        rate = RateLog(self.clock.seconds, every=float("inf"))
        lines = Lines(self.clock)
        for _ in range(100):
            rate.occurred("store", lines)
            self.clock.advance(3600)
        self.assertEqual(len(lines.lines), 1)
        episode = rate.episode("store")
        assert episode is not None
        self.assertEqual((episode.total, episode.started), (100, 0.0))
