"""A full disk under the state_dir: a clear one-line error, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from tests.jobs._helpers import ROOT

pytestmark = pytest.mark.integration


def test_run_on_full_disk_is_one_line(tiny_disk: Any) -> None:
    """daemonapp run whose pid entry cannot be written (ENOSPC) exits 1 with one line."""
    (tiny_disk / "var").mkdir(mode=0o700)
    config = tiny_disk / "app.yaml"
    config.write_text("daemons:\n  jobs: {type: job_dispatcher, run_every: 1s}\n")
    with open(tiny_disk / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError:
            pass
    done = subprocess.run([sys.executable, "-m", "daemonapp.cli", "run", str(config)],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"daemonapp: cannot write the pid entry {tiny_disk}/var/pids/"
        f"{done.stderr.split('/pids/')[1].split('.json')[0]}.json: No space left on device")
