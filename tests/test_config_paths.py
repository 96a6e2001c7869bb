"""state_dir, log file and lock paths as `daemonapp check`, `daemonapp run` and twistd
see them: refused alike with FILE:LINE: key (DESIGN §3, §4), never chmodded through."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.python import usage

from daemonapp.cli import main
from daemonapp.config import ConfigError, build_app, load_config
from daemonapp.tap import Options
from tests._processes import (
    CGI_WSGI,
    DAEMONAPP,
    child_env,
    run_process,
    stop_process,
    wait_ready,
    wait_until,
    write_file,
)

ROOT = Path(__file__).resolve().parent.parent


def write(directory: Path, text: str, name: str = "daemons.yaml") -> str:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`daemonapp ARGS` from this checkout, as a process."""
    return subprocess.run([sys.executable, "-m", "daemonapp.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: the status socket path must fit AF_UNIX's 107 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="dcfg"))
    yield directory
    subprocess.run(["rm", "-rf", str(directory)], check=False)


def symlinked_state_dir(directory: Path) -> tuple[str, Path, Path]:
    """A config whose state_dir is a symlink to a 0755 directory: (config, link, target)."""
    target = directory / "shared"
    target.mkdir()
    target.chmod(0o755)
    (directory / "var").symlink_to(target)
    path = write(directory, """
        app:
          state_dir: ./var
          shutdown_after: 0.3s
    """)
    return path, directory / "var", target


def test_check_refuses_a_symlinked_state_dir(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`daemonapp check` reports a symlinked state_dir at its line (it said OK)."""
    path, link, target = symlinked_state_dir(tmp_path)
    assert main(["check", path]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"{path}:2: app.state_dir: {link} is a symlink (to {target}), which "
                      "is never followed for a private directory: give the real path, "
                      "or remove the link")
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_check_refuses_a_world_writable_state_dir(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A 1777 state_dir is a config error of `check`, and keeps its mode."""
    state = tmp_path / "var"
    state.mkdir()
    state.chmod(0o1777)
    path = write(tmp_path, "app: {state_dir: ./var}\n")
    assert main(["check", path]) == 2
    assert f"{path}:1: app.state_dir: {state} is writable by others (mode 1777)" in \
        capsys.readouterr().err
    assert stat.S_IMODE(state.stat().st_mode) == 0o1777


def test_build_app_never_chmods_through_a_link(tmp_path: Path) -> None:
    """build_app refuses a symlinked state_dir with FILE:LINE (it chmodded the target
    to 0700 with a warning)."""
    path, link, target = symlinked_state_dir(tmp_path)
    config = load_config(path)  # without check_state_dir: nothing looked at yet
    with pytest.raises(ConfigError) as info:
        build_app(config, stop_reactor=False, handle_signals=False, status_server=False)
    assert info.value.messages == [
        f"{path}:2: app.state_dir: {link} is a symlink (to {target}), which is never "
        "followed for a private directory: give the real path, or remove the link"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


@pytest.mark.integration
def test_run_refuses_a_symlinked_state_dir(short_tmp: Path) -> None:
    """`daemonapp run` exits 2 with the same message as check; the target keeps 0755."""
    path, link, target = symlinked_state_dir(short_tmp)
    result = run("run", path)
    assert result.returncode == 2, result.stderr
    assert f"{path}:2: app.state_dir: {link} is a symlink" in result.stderr
    assert "Traceback" not in result.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert sorted(p.name for p in target.iterdir()) == []


def test_twistd_refuses_a_symlinked_state_dir(tmp_path: Path) -> None:
    """twistd's option parsing reports it as a usage error, with the same line."""
    path, link, _ = symlinked_state_dir(tmp_path)
    with pytest.raises(usage.UsageError, match=rf"{path}:2: app.state_dir: {link} is a "):
        Options().parseOptions(["-c", path])  # type: ignore[no-untyped-call]


def test_load_config_alone_looks_at_no_directory(tmp_path: Path) -> None:
    """Without check_state_dir (status, the CGI mode) the state_dir is not inspected."""
    path, link, _ = symlinked_state_dir(tmp_path)
    assert load_config(path).app.state_dir == str(link)


def test_check_refuses_a_state_dir_too_long_for_the_status_socket(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A state_dir whose status socket exceeds AF_UNIX's 107 bytes fails `check` (it
    passed and `run` died with a traceback)."""
    state = tmp_path / ("s" * 100)
    path = write(tmp_path, f"app: {{state_dir: ./{'s' * 100}}}\n")
    assert main(["check", path]) == 2
    assert (f"{path}:1: app.state_dir: too long for its status socket: "
            f"{state}/status.sock.new is") in capsys.readouterr().err


def test_state_dir_name_over_255_bytes_is_an_error(tmp_path: Path) -> None:
    """A state_dir with a name over 255 bytes is a config error, even for load_config."""
    path = write(tmp_path, f"app:\n  state_dir: /srv/{'n' * 300}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.messages == [
        f"{path}:2: app.state_dir: state_dir has a name of 300 bytes ('{'n' * 40}...'); "
        "file systems allow at most 255"]


def test_lock_name_must_fit_a_file_name(tmp_path: Path) -> None:
    """A lock name whose locks/NAME.lock file would exceed 255 bytes is an error."""
    path = write(tmp_path, f"""
        daemons:
          a: {{type: tests.test_config:Replicator, run_every: 1s, lock: {'L' * 251}}}
    """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.messages == [
        f"{path}:2: daemons.a.lock: a lock name has at most 250 bytes (its file is "
        "locks/NAME.lock), got 251"]


# ---------------------------------------------------------- log file (issue 14.5)


@pytest.mark.integration
def test_run_logs_into_a_state_dir_it_creates(short_tmp: Path) -> None:
    """A log file inside a state_dir that does not exist yet: check says OK and run
    works, creating state_dir first (run exited 2)."""
    path = write(short_tmp, """
        app:
          state_dir: ./var
          shutdown_after: 0.3s
          log: {file: ./var/app.log}
    """)
    checked = run("check", path)
    assert checked.returncode == 0, checked.stderr
    assert not (short_tmp / "var").exists()
    result = run("run", path)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((short_tmp / "var").stat().st_mode) == 0o700
    assert "daemonapp ended with exit status 0" in (short_tmp / "var" / "app.log").read_text()


@pytest.mark.integration
def test_check_and_run_agree_on_a_missing_log_directory(short_tmp: Path) -> None:
    """A log file in a missing directory other than state_dir: both exit 2 with the
    same FILE:LINE message."""
    path = write(short_tmp, """
        app:
          shutdown_after: 0.3s
          log:
            file: ./logs/app.log
    """)
    expected = (f"{path}:4: app.log.file: the directory {short_tmp / 'logs'} does not "
                "exist: create it, or keep the log in state_dir (created by `daemonapp run`)")
    checked = run("check", path)
    ran = run("run", path)
    assert (checked.returncode, ran.returncode) == (2, 2)
    assert checked.stderr.splitlines()[0] == expected
    assert ran.stderr.splitlines()[0] == expected
    assert not (short_tmp / "logs").exists()


# ------------------------------ relative paths through `daemonapp run`, from elsewhere


@pytest.mark.integration
def test_relative_state_dir_is_relative_to_file(tmp_path: Path) -> None:
    """Relative paths are relative to the file's directory, not the working directory."""
    cfg = write_file(tmp_path / "etc" / "d.yaml",
                     "app:\n  state_dir: ./var\n  shutdown_after: 0.5s\n"
                     "daemons:\n  c:\n    type: file_cleanup\n    run_every: 5m\n"
                     "    directory: ./sessions\n    remove_older_than: 1h\n")
    (tmp_path / "etc" / "sessions").mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    result = run_process([str(DAEMONAPP), "run", str(cfg)], cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    state = tmp_path / "etc" / "var"
    assert state.is_dir()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert not (elsewhere / "var").exists()


@pytest.mark.integration
def test_relative_paths_for_listener_and_daemon(tmp_path: Path) -> None:
    """A unix endpoint and a daemon directory are relative to the file; socket mode 0660."""
    etc = tmp_path / "etc"
    write_file(etc / "cgiwsgi.py", CGI_WSGI)
    sessions = etc / "sessions"
    sessions.mkdir()
    old = sessions / "old"
    old.write_text("x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    cfg = write_file(etc / "d.yaml",
                     "app:\n  state_dir: ./var\n"
                     "listeners:\n  - protocol: scgi\n    endpoint: unix:./sock/app.sock\n"
                     "    wsgi: cgiwsgi:application\n"
                     "daemons:\n  c:\n    type: file_cleanup\n    run_every: 5m\n"
                     "    directory: ./sessions\n    remove_older_than: 1h\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    proc = subprocess.Popen([str(DAEMONAPP), "run", str(cfg)], cwd=elsewhere,
                            env=child_env(etc), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        sock = etc / "sock" / "app.sock"
        assert wait_ready(proc, sock)
        assert proc.poll() is None
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        assert stat.S_IMODE((etc / "sock").stat().st_mode) == 0o750
        assert wait_until(lambda: not old.exists(), timeout=10)
        assert not (elsewhere / "sock").exists()
    finally:
        stop_process(proc)
