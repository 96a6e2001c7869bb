"""Fixtures shared by every test module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import globalLogPublisher


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    """Every twisted.logger event published during the test."""
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(seen.append)
