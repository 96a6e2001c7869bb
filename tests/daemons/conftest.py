"""Fixtures for the bundled daemons: an app on a Clock and the log events it emits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import provider

from daemonapp.app import DaemonApp
from daemonapp.testing import make_app


@pytest.fixture
def app_clock() -> tuple[DaemonApp, Clock]:
    """A DaemonApp on a task.Clock (no signals, no reactor stop)."""
    return make_app()


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    """The twisted.logger events emitted during the test."""
    seen: list[dict[str, Any]] = []

    @provider(ILogObserver)
    def observer(event: dict[str, Any]) -> None:
        seen.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observer)

