"""bench/faults_jobs.py, short: an outage, SIGKILLed children and app, no job lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.jobs._helpers import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def test_short_fault_run_loses_nothing(pg_url: str) -> None:
    """30 jobs through a 3 s store outage (a cut proxy), SIGKILLed children and one
    SIGKILLed app: every job done, no effect run twice but after a crash, the outage
    logged in a few lines, no traceback."""
    from tests.jobs.conftest import PG_BASE_URL

    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "faults_jobs.py"), "--jobs", "30",
         "--outage", "3", "--child-kills", "3", "--app-kills", "1", "--lease", "4",
         "--probes", "1", "--rate", "8", "--settle", "60", "--pg", PG_BASE_URL, "--json"],
        capture_output=True, text=True, timeout=240, check=False, cwd=str(ROOT))
    assert done.stdout.strip(), done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert (figures["lost"], figures["effects_twice_unexplained"]) == (0, 0), figures
    assert figures["jobs"] >= 30 and figures["tracebacks"] == 0, figures
    assert figures["outages"] and all(n <= 4 for n in figures["log_lines_per_outage"]), figures
    assert figures["first_start_after_outage"] is not None, figures
    assert done.returncode == 0, done.stderr[-2000:]
