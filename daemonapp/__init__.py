"""daemonapp: long-running daemons, listeners and jobs on one Twisted reactor.

The names below are the supported public API. They load lazily (PEP 562) so that
``daemonapp.cgi_frontend`` can run a CGI request without importing Twisted.
"""

from __future__ import annotations

from daemonapp._version import __version__

# Not `from typing import TYPE_CHECKING`: typing (and the `re` it imports) costs ~10 ms,
# the whole budget of the CGI frontend, which imports this package first. mypy treats
# any name TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from daemonapp.app import DaemonApp
    from daemonapp.daemon import Daemon, OptionError
    from daemonapp.daemons._build import (
        UnknownOptionError,
        build_daemon,
        class_options,
        resolve_type,
    )
    from daemonapp.durations import parse_duration, parse_size
    from daemonapp.interfaces import (
        IActivityMonitor,
        IAsyncLock,
        IDaemon,
        IJobStore,
        IListener,
        ILockBackend,
        ILockProvider,
        ISchedule,
        IScheduler,
        LockUnavailable,
    )
    from daemonapp.locks import HighlanderBusy, highlander
    from daemonapp.seed import SeedDaemon
del TYPE_CHECKING  # not part of the facade

_LAZY = {
    "Daemon": "daemonapp.daemon",
    "DaemonApp": "daemonapp.app",
    "parse_duration": "daemonapp.durations",
    "parse_size": "daemonapp.durations",
    "IActivityMonitor": "daemonapp.interfaces",
    "IAsyncLock": "daemonapp.interfaces",
    "IDaemon": "daemonapp.interfaces",
    "IJobStore": "daemonapp.interfaces",
    "IListener": "daemonapp.interfaces",
    "ILockBackend": "daemonapp.interfaces",
    "ILockProvider": "daemonapp.interfaces",
    "IScheduler": "daemonapp.interfaces",
    "ISchedule": "daemonapp.interfaces",
    "LockUnavailable": "daemonapp.interfaces",
    "OptionError": "daemonapp.daemon",
    "SeedDaemon": "daemonapp.seed",
    "UnknownOptionError": "daemonapp.daemons._build",
    "build_daemon": "daemonapp.daemons._build",
    "class_options": "daemonapp.daemons._build",
    "resolve_type": "daemonapp.daemons._build",
    "highlander": "daemonapp.locks",
    "HighlanderBusy": "daemonapp.locks",
}

__all__ = [
    "Daemon",
    "DaemonApp",
    "HighlanderBusy",
    "IActivityMonitor",
    "IAsyncLock",
    "IDaemon",
    "IJobStore",
    "IListener",
    "ILockBackend",
    "ILockProvider",
    "ISchedule",
    "IScheduler",
    "LockUnavailable",
    "OptionError",
    "SeedDaemon",
    "UnknownOptionError",
    "__version__",
    "build_daemon",
    "class_options",
    "highlander",
    "parse_duration",
    "parse_size",
    "resolve_type",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'daemonapp' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
