"""Which app a command talks to (daemonapp.apptarget): one rule for status, history and
the control commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemonapp.apptarget import AppTarget, find_app
from daemonapp.cli import main


@pytest.fixture(autouse=True)
def _no_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAEMONAPP_CONFIG", raising=False)


def test_a_directory_is_the_state_dir(tmp_path: Path) -> None:
    """A TARGET that is not a file is the state_dir itself."""
    assert find_app(str(tmp_path), "status") == AppTarget(str(tmp_path))
    assert find_app(str(tmp_path), "status").status_socket == str(tmp_path / "status.sock")


def test_without_target_daemonapp_config_then_var(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """No TARGET: the state_dir of $DAEMONAPP_CONFIG, else ./var."""
    assert find_app(None, "status") == AppTarget("var")
    (tmp_path / "app.yaml").write_text("app:\n  state_dir: ./state\n")
    monkeypatch.setenv("DAEMONAPP_CONFIG", str(tmp_path / "app.yaml"))
    assert find_app(None, "status") == AppTarget(str(tmp_path / "state"),
                                                 str(tmp_path / "app.yaml"))


def test_a_file_names_its_state_dir_relative_to_itself(tmp_path: Path) -> None:
    """A YAML file: its app.state_dir, relative to the file's directory; with settings,
    the file's app settings too."""
    config = tmp_path / "app.yaml"
    config.write_text("app:\n  state_dir: ./state\n  history: 7\ndaemons: {}\n")
    assert find_app(str(config), "trigger") == AppTarget(str(tmp_path / "state"), str(config))
    found = find_app(str(config), "history", settings=True)
    assert isinstance(found, AppTarget)
    assert found.state_dir == str(tmp_path / "state")
    assert found.app is not None and found.app.history == 7


def test_a_file_being_edited_still_names_its_state_dir(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that no longer checks gives the state_dir its scan finds; asked for its
    settings, a warning says they are not known."""
    config = tmp_path / "app.yaml"
    config.write_text("app:\n  state_dir: ./state\n  history: soon\n")
    assert find_app(str(config), "status") == AppTarget(str(tmp_path / "state"), str(config))
    assert capsys.readouterr().err == ""
    assert find_app(str(config), "history", settings=True) == AppTarget(
        str(tmp_path / "state"), str(config))
    assert capsys.readouterr().err == (
        f"daemonapp: history: warning: {config} has 1 error(s); its app settings are not "
        f"known (daemonapp check {config})\n")


@pytest.mark.parametrize("command", [["status"], ["history", "d", "--app"],
                                     ["trigger", "d", "--app"], ["reload", "--app"]])
def test_a_file_without_a_state_dir_to_tell_is_usage_for_every_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    """A file neither the scan nor the parser can read a state_dir from: its errors, one
    line naming the command, exit 2, the same for status, history and the control
    commands."""
    config = tmp_path / "app.yaml"
    config.write_text("app: &a\n  state_dir: ./state\nother: *a\n")  # the scan is unsure
    assert main([*command, str(config)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1] == (f"daemonapp: {command[0]}: cannot tell the state_dir of {config} "
                         f"({len(lines) - 1} error(s))")
    assert len(lines) >= 2
    assert all(line.startswith(f"{config}:") for line in lines[:-1])
