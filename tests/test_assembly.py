"""Tests for daemonapp.assembly: from a loaded Config to a running app."""

from __future__ import annotations

import marshal
import os
import textwrap
from pathlib import Path

from daemonapp.assembly import write_sidecar
from daemonapp.config import load_config


def write(directory: Path, text: str, name: str = "daemons.yaml") -> str:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


# ------------------------------------------------------------------ the sidecar


def test_sidecar_holds_what_the_cgi_frontend_needs(tmp_path: Path) -> None:
    """cgi.marshal names the socket, protocol, loads, timeouts, state_dir and argv."""
    path = write(tmp_path, """
        listeners:
          - {protocol: scgi, endpoint: "unix:run/app.sock", wsgi: "tests.test_config:app"}
        cgi: {min_load: 0.5, max_load: 6, start_timeout: 3s, lock_timeout: 2s}
    """)
    config = load_config(path)
    os.makedirs(config.app.state_dir)
    sidecar = write_sidecar(config, ["python", "-m", "daemonapp.cli", "run", path])
    assert sidecar == str(tmp_path / "var" / "cgi.marshal")
    with open(sidecar, "rb") as f:
        data = marshal.load(f)
    assert data == {
        "config": path,
        "wsgi": "tests.test_config:app",
        "socket": str(tmp_path / "run" / "app.sock"),
        "protocol": "scgi",
        "min_load": 0.5,
        "max_load": 6.0,
        "start_timeout": 3.0,
        "lock_timeout": 2.0,
        "state_dir": str(tmp_path / "var"),
        "argv": ["python", "-m", "daemonapp.cli", "run", path],
        "scgi_content_length": True,
    }
    assert os.stat(sidecar).st_mode & 0o777 == 0o600


def test_no_sidecar_without_a_unix_listener(tmp_path: Path) -> None:
    """Without an scgi/fastcgi unix listener there is nothing for the frontend."""
    config = load_config(write(tmp_path, "daemons: {}\n"))
    assert write_sidecar(config, []) is None
