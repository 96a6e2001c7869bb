"""Tests for daemonapp.jobs.notify: the LISTEN reader on the reactor."""

from __future__ import annotations

from twisted.python.failure import Failure

from tests.jobs._helpers import PipeNotifier


def test_notify_reader_pokes_and_reports_loss() -> None:
    """The LISTEN reader pokes on a wake-up and reports a broken connection."""
    from twisted.internet.error import ConnectionLost

    from daemonapp.jobs.notify import NotifyReader

    events: list[str] = []
    notifier = PipeNotifier([True, False, OSError("server closed the connection")])
    reader = NotifyReader(notifier, lambda: events.append("poke"),
                           lambda: events.append("lost"))
    assert (reader.doRead(), reader.doRead()) == (None, None)
    why = reader.doRead()
    assert isinstance(why, ConnectionLost)
    reader.connectionLost(Failure(why))
    assert (events, notifier.closed, reader.fileno()) == (["poke", "lost"], True, -1)


def test_notify_reader_lost_on_a_real_epoll_reactor() -> None:
    """When libpq closes its socket as the connection breaks, an epoll reactor still
    removes the reader and the loss is reported (it used to fail with EBADF)."""
    from twisted.internet.epollreactor import EPollReactor

    from daemonapp.jobs.notify import NotifyReader

    events: list[str] = []
    notifier = PipeNotifier([OSError("server closed the connection")])
    reader = NotifyReader(notifier, lambda: events.append("poke"),
                           lambda: events.append("lost"))
    epoll = EPollReactor()
    try:
        epoll.addReader(reader)
        epoll._doReadOrWrite(reader, reader.fileno(), 1)  # EPOLLIN, as the loop does
        assert events == ["lost"]
        assert reader not in epoll.getReaders()
    finally:
        epoll.removeAll()
        epoll._poller.close()
