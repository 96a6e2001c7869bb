"""The public facade: exactly the supported names, loaded lazily."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import daemonapp

ROOT = Path(__file__).parent.parent


def test_all_names() -> None:
    """__all__ lists exactly the supported public names."""
    assert sorted(daemonapp.__all__) == sorted([
        "Daemon", "DaemonApp", "HighlanderBusy", "IActivityMonitor", "IAsyncLock", "IDaemon",
        "IJobStore", "IListener", "ILockBackend", "ILockProvider", "ISchedule", "IScheduler",
        "LockUnavailable", "OptionError", "SeedDaemon", "UnknownOptionError", "__version__",
        "build_daemon", "class_options", "highlander", "parse_duration", "parse_size",
        "resolve_type",
    ])


def test_every_name_resolves() -> None:
    """Every name of __all__ can be imported from the package."""
    for name in daemonapp.__all__:
        assert getattr(daemonapp, name) is not None, name


def test_core_names_resolve() -> None:
    """The core names of the facade resolve to their classes."""
    from daemonapp.app import DaemonApp
    from daemonapp.daemon import Daemon

    assert daemonapp.Daemon is Daemon
    assert daemonapp.DaemonApp is DaemonApp


def test_build_helpers_resolve() -> None:
    """The helpers docs/daemons.md sends seed authors to come from the facade."""
    from daemonapp.daemons import _build

    assert daemonapp.build_daemon is _build.build_daemon
    assert daemonapp.resolve_type is _build.resolve_type
    assert daemonapp.class_options is _build.class_options
    assert daemonapp.UnknownOptionError is _build.UnknownOptionError


def test_unknown_name() -> None:
    """An unknown attribute is an AttributeError, as for any module."""
    try:
        daemonapp.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as e:
        assert "NoSuchThing" in str(e)
    else:
        raise AssertionError("no AttributeError")


def test_import_is_light() -> None:
    """Importing the package imports no Twisted, zope or yaml (PEP 562 lazy facade)."""
    code = ("import sys, daemonapp; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('twisted', 'zope', 'yaml')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_facade_names() -> None:
    """The public names of DESIGN import from where DESIGN says."""
    import daemonapp.jobs
    import daemonapp.locks
    import daemonapp.testing
    from daemonapp import Daemon, DaemonApp, HighlanderBusy
    from daemonapp.locks import highlander

    assert daemonapp.Daemon is Daemon
    assert daemonapp.DaemonApp is DaemonApp
    assert daemonapp.locks.highlander is highlander
    assert daemonapp.locks.HighlanderBusy is HighlanderBusy
    for name in ("open_store", "StaleLease", "job", "progress", "current_job"):
        assert getattr(daemonapp.jobs, name) is not None
    assert issubclass(daemonapp.jobs.StaleLease, Exception)
    assert {"Daemon", "DaemonApp"} <= set(daemonapp.__all__)
