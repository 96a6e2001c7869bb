"""Tests for daemonapp.jobs.children: how a job child is started."""

from __future__ import annotations

import os
from pathlib import Path

from daemonapp.jobs.children import child_environment, child_pythonpath
from tests.jobs._helpers import ROOT


def test_child_environment() -> None:
    """The child environment keeps PATH and locale, sets PYTHONPATH, drops the rest."""
    env = child_environment({"PATH": "/bin", "LANG": "C.UTF-8", "LC_ALL": "C",
                             "HOME": "/root", "HTTP_PROXY": "x", "DATABASE_URL": "y"},
                            pythonpath="/app")
    assert env == {"PATH": "/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "PYTHONPATH": "/app"}


def test_child_pythonpath(tmp_path: Path) -> None:
    """PYTHONPATH holds this daemonapp's directory and the app's own sys.path entries,
    never the interpreter's standard library or site-packages."""
    import sysconfig

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    stdlib = sysconfig.get_paths()["stdlib"]
    purelib = sysconfig.get_paths()["purelib"]
    entries = child_pythonpath([str(app_dir), stdlib, purelib, str(tmp_path / "missing")])
    assert entries.split(os.pathsep) == [str(ROOT), str(app_dir)]
