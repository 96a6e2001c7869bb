"""Clock schedules in a real `daemonapp run`, on a faked wall clock (libfaketime).

The process's clock starts a few seconds before a minute boundary, so a `* * * * *`
daemon fires within seconds instead of a minute; after a SIGKILL, a restart whose clock
is 2.5 minutes later makes up the missed fire times with exactly one run (catch_up
once), from the last fire time kept in state_dir.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests._env import unavailable
from tests._processes import wait_until

ROOT = Path(__file__).resolve().parent.parent
DAEMONAPP = str(Path(sys.executable).parent / "daemonapp")


LIBFAKETIME = [str(p) for p in Path("/usr/lib").glob("*/faketime/libfaketime.so.1")]


@pytest.fixture
def site() -> Iterator[Path]:
    if not LIBFAKETIME:
        unavailable("libfaketime is not installed (.ci/run installs the faketime package)")
    directory = Path(tempfile.mkdtemp(prefix="dclk"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def start(site: Path, at: str) -> subprocess.Popen[bytes]:
    """`daemonapp run` whose wall clock starts at ``at`` (UTC) and then runs normally."""
    # libfaketime preloaded into the process itself (the faketime wrapper would stand
    # between the test's signals and the app); "@..." starts the clock there and lets it run.
    stamp = datetime.fromisoformat(at).strftime("@%Y-%m-%d %H:%M:%S")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(site)]), TZ="UTC",
               LD_PRELOAD=LIBFAKETIME[0], FAKETIME=stamp, FAKETIME_DONT_RESET="1")
    return subprocess.Popen([DAEMONAPP, "run", "daemons.yaml"], cwd=site, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def stamps(site: Path) -> list[float]:
    path = site / "stamps"
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def kept_fire(site: Path, name: str) -> float:
    """The last fire time of ``name`` in state_dir/schedules.json (0 until it is there)."""
    try:
        return float(json.loads((site / "var" / "schedules.json").read_text())[name])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def wait_for(count: int, site: Path, timeout: float = 20.0) -> list[float]:
    deadline = time.monotonic() + timeout
    while len(stamps(site)) < count:
        assert time.monotonic() < deadline, f"waited {timeout} s for {count} run(s)"
        time.sleep(0.05)
    return stamps(site)


@pytest.mark.integration
def test_fires_at_the_minute_and_catches_up_once_after_a_kill(site: Path) -> None:
    """A * * * * * daemon fires at the top of the minute (within 1 s); killed and
    restarted 2.5 minutes later, catch_up once runs exactly once."""
    (site / "daemons.yaml").write_text(textwrap.dedent(f"""
        app: {{state_dir: ./var}}
        daemons:
          minutely:
            type: "tests.clock_fixtures:Stamp"
            schedule: "* * * * *"
            timezone: UTC
            catch_up: once
            path: "{site / 'stamps'}"
    """))
    first = start(site, "2026-01-01T00:00:57+00:00")
    try:
        (fire,) = wait_for(1, site)
        assert epoch("2026-01-01T00:01:00+00:00") <= fire < epoch("2026-01-01T00:01:01+00:00")
        # the last fire time reaches state_dir/schedules.json (written within 1 s)
        assert wait_until(lambda: kept_fire(site, "minutely") >= fire - 1, timeout=10)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
    second = start(site, "2026-01-01T00:03:30+00:00")
    try:
        runs = wait_for(2, site)
        wait_until(lambda: len(stamps(site)) > 2, timeout=2)  # none may come before 00:04
        assert len(stamps(site)) == 2, stamps(site)
        assert epoch("2026-01-01T00:03:30+00:00") <= runs[1] < epoch("2026-01-01T00:03:35+00:00")
    finally:
        second.send_signal(signal.SIGTERM)
        out, _ = second.communicate(timeout=30)
    assert second.returncode == 0, out.decode(errors="replace")
