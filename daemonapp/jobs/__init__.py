"""daemonapp.jobs: heavy work in child processes, with a store, leases and retries.

Job code imports ``job``, ``progress`` and ``current_job`` from here; the
store (``open_store``), ``StaleLease`` and the ``JobDispatcher`` daemon load lazily so that a
job child stays free of Twisted and database drivers.
"""

from __future__ import annotations

from daemonapp.jobs.runtime import CurrentJob, current_job, job, progress

# mypy reads any TYPE_CHECKING as true; the job child skips importing typing.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from daemonapp.jobs._model import Job, JobCancelled, JobRecord, StaleLease
    from daemonapp.jobs.dispatcher import JobDispatcher
    from daemonapp.jobs.store import PostgresJobStore, SQLiteJobStore, open_store

_LAZY = {
    "Job": "daemonapp.jobs._model",
    "JobCancelled": "daemonapp.jobs._model",
    "JobRecord": "daemonapp.jobs._model",
    "StaleLease": "daemonapp.jobs._model",
    "open_store": "daemonapp.jobs.store",
    "SQLiteJobStore": "daemonapp.jobs.store",
    "PostgresJobStore": "daemonapp.jobs.store",
    "JobDispatcher": "daemonapp.jobs.dispatcher",
}

__all__ = [
    "CurrentJob",
    "Job",
    "JobCancelled",
    "JobDispatcher",
    "JobRecord",
    "PostgresJobStore",
    "SQLiteJobStore",
    "StaleLease",
    "current_job",
    "job",
    "open_store",
    "progress",
]


def __getattr__(name: str) -> object:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'daemonapp.jobs' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
