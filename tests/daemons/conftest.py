"""Fixtures for the bundled daemons: an app on a Clock (`events` is tests/conftest.py's)."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from daemonapp.app import DaemonApp
from daemonapp.testing import make_app


@pytest.fixture
def app_clock() -> tuple[DaemonApp, Clock]:
    """A DaemonApp on a task.Clock (no signals, no reactor stop)."""
    return make_app()
