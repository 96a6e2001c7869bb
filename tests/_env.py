"""What the test environment lacks: a failure under CI=true, a skip elsewhere.

CI installs every web server and runs PostgreSQL, so a missing one there is a broken
set-up, never a reason to skip; on a developer's laptop it is only a skip with a reason.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """Fail when CI=true, else skip, saying ``reason``."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)
