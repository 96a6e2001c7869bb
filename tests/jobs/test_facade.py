"""The daemonapp.jobs facade: its names, and that job code imports nothing heavy."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import daemonapp.jobs
from tests.jobs._helpers import ROOT


def test_all_names() -> None:
    """__all__ lists exactly the supported names, and each one resolves."""
    assert sorted(daemonapp.jobs.__all__) == [
        "CurrentJob", "Job", "JobCancelled", "JobDispatcher", "JobRecord",
        "PostgresJobStore", "SQLiteJobStore", "StaleLease", "current_job", "job",
        "open_store", "progress"]
    for name in daemonapp.jobs.__all__:
        assert getattr(daemonapp.jobs, name) is not None


def test_stale_lease_is_one_class() -> None:
    """daemonapp.jobs.StaleLease is the class the stores raise."""
    from daemonapp.jobs._model import StaleLease

    assert daemonapp.jobs.StaleLease is StaleLease
    assert issubclass(daemonapp.jobs.JobCancelled, StaleLease)


def test_job_code_imports_stay_light() -> None:
    """Importing job, progress and current_job pulls in no Twisted, database or json."""
    code = ("import sys; from daemonapp.jobs import job, progress, current_job; "
            "print(sorted(m for m in ('twisted', 'sqlite3', 'psycopg', 'json', "
            "'dataclasses', 'daemonapp.jobs.store') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(ROOT), env={"PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]"


def test_progress_outside_a_job() -> None:
    """progress() outside a job child only remembers the value; current_job() is None."""
    from daemonapp.jobs.runtime import last_progress

    daemonapp.jobs.progress(150, "x" * 2000)
    assert last_progress() == (100.0, "x" * 1000)
    assert daemonapp.jobs.current_job() is None


def test_job_kind_taken_twice() -> None:
    """Registering a second function for a kind is a ValueError."""
    import pytest

    @daemonapp.jobs.job("facade-test-kind")
    def first(payload: dict[str, object]) -> None:
        return None

    with pytest.raises(ValueError, match="already handled by"):
        @daemonapp.jobs.job("facade-test-kind")
        def second(payload: dict[str, object]) -> None:
            return None


def test_job_decorator_and_current_job() -> None:
    """`@job("kind")` returns a usable function; current_job() is callable; progress exists."""
    from daemonapp.jobs import current_job, job, progress

    @job("design-rules-test-kind")
    def handler(payload: dict[str, Any]) -> int:
        return int(payload["n"]) + 1

    assert handler({"n": 1}) == 2
    assert callable(progress)
    current_job()  # outside a job: must not crash
