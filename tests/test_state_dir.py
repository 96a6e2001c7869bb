"""Tests for daemonapp.state_dir: a private state_dir, refused rather than chmodded
through (symlinks, directories others may write, other owners), and paths that fit."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from daemonapp.state_dir import (
    StateDirError,
    ensure_private_subdir,
    ensure_state_dir,
    path_problems,
    state_dir_problems,
)
from tests._processes import DAEMONAPP, run_process, write_file


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_missing_state_dir_is_created_0700(tmp_path: Path) -> None:
    """A missing state_dir (and its missing parents) is created, itself 0700."""
    state = tmp_path / "srv" / "var"
    assert state_dir_problems(str(state)) == []
    assert ensure_state_dir(str(state)) == str(state)
    assert mode_of(state) == 0o700


def test_our_readable_state_dir_is_made_0700_again(tmp_path: Path) -> None:
    """An existing state_dir of ours that others may only read and enter (0755) is
    tightened to 0700, as before: that is no refusal."""
    state = tmp_path / "var"
    state.mkdir()
    state.chmod(0o755)
    assert state_dir_problems(str(state)) == []
    ensure_state_dir(str(state))
    assert mode_of(state) == 0o700


def test_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    """A state_dir that is a symlink is refused; the directory it points to keeps its
    mode (it was chmodded to 0700 through the link)."""
    target = tmp_path / "shared"
    target.mkdir()
    target.chmod(0o755)
    state = tmp_path / "var"
    state.symlink_to(target)
    expected = (f"{state} is a symlink (to {target}), which is never followed for a "
                "private directory: give the real path, or remove the link")
    assert state_dir_problems(str(state)) == [expected]
    with pytest.raises(StateDirError) as info:
        ensure_state_dir(str(state))
    assert str(info.value) == expected
    assert mode_of(target) == 0o755


def test_world_writable_sticky_dir_is_refused_and_kept(tmp_path: Path) -> None:
    """A 1777 directory (like /tmp) is refused and keeps its mode and sticky bit."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    expected = (f"{shared} is writable by others (mode 1777): it would hold locks and "
                "sockets others could replace; make it private "
                f"(chmod 0700 {shared}) or use a directory of its own")
    assert state_dir_problems(str(shared)) == [expected]
    with pytest.raises(StateDirError) as info:
        ensure_state_dir(str(shared))
    assert str(info.value) == expected
    assert mode_of(shared) == 0o1777


def test_group_writable_dir_is_refused(tmp_path: Path) -> None:
    """A directory its group may write (0770) is refused and left as it is."""
    state = tmp_path / "var"
    state.mkdir()
    state.chmod(0o770)
    with pytest.raises(StateDirError, match=r"is writable by its group \(mode 0770\)"):
        ensure_state_dir(str(state))
    assert mode_of(state) == 0o770


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_other_users_dir_is_refused_unless_named(tmp_path: Path) -> None:
    """A state_dir of another user is refused, unless that user is one of ``owners``
    (twistd's --uid, to whom root hands the state_dir over)."""
    nobody = pwd.getpwnam("nobody").pw_uid
    state = tmp_path / "var"
    state.mkdir(mode=0o700)
    os.chown(state, nobody, -1)
    with pytest.raises(StateDirError, match=rf"belongs to uid {nobody}, not to the user"):
        ensure_state_dir(str(state))
    assert state_dir_problems(str(state), owners=[nobody]) == []
    ensure_state_dir(str(state), owners=[nobody])
    assert os.stat(state).st_uid == nobody


def test_file_in_the_way_is_refused(tmp_path: Path) -> None:
    """A regular file where state_dir should be is a clear error."""
    state = tmp_path / "var"
    state.write_text("")
    with pytest.raises(StateDirError, match="exists and is not a directory"):
        ensure_state_dir(str(state))


def test_state_dir_under_a_file_cannot_be_created(tmp_path: Path) -> None:
    """A state_dir below a regular file cannot be created: said before anything runs."""
    (tmp_path / "file").write_text("")
    state = tmp_path / "file" / "var"
    assert state_dir_problems(str(state)) == [
        f"{state} cannot be created: {tmp_path / 'file'} is not a directory"]
    with pytest.raises(StateDirError, match="cannot be created"):
        ensure_state_dir(str(state))


def test_status_socket_must_fit_af_unix(tmp_path: Path) -> None:
    """A state_dir whose status socket (bound as status.sock.new) would exceed the 107
    bytes of sun_path is refused, with the longest path that fits."""
    state = "/" + "s" * 95
    problems = state_dir_problems(state)
    assert problems == [
        f"too long for its status socket: {state}/status.sock.new is 112 bytes and unix "
        "sockets allow at most 107; use a state_dir path of at most 91 bytes"]
    with pytest.raises(StateDirError, match="too long for its status socket"):
        ensure_state_dir(state)


def test_spawned_status_socket_has_room_for_a_pid() -> None:
    """Spawned by a web server, the socket is status.<pid>.sock: 7 digits must fit."""
    state = "/" + "s" * 85
    assert state_dir_problems(state) == []
    [problem] = state_dir_problems(state, spawned=True)
    assert "status.4194304.sock.new is 110 bytes" in problem


def test_names_over_255_bytes_are_refused() -> None:
    """A path with a name over 255 bytes is refused before anything is created."""
    name = "n" * 256
    assert path_problems(f"/srv/{name}/var", what="state_dir") == [
        f"state_dir has a name of 256 bytes ('{'n' * 40}...'); file systems allow at most 255"]


def test_private_subdir_refuses_a_symlink(tmp_path: Path) -> None:
    """pids/ (or locks/) planted as a symlink in state_dir is refused, never followed."""
    state = tmp_path / "var"
    ensure_state_dir(str(state))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (state / "pids").symlink_to(elsewhere)
    with pytest.raises(StateDirError, match="is a symlink"):
        ensure_private_subdir(str(state), "pids")
    assert ensure_private_subdir(str(state), "locks") == str(state / "locks")
    assert mode_of(state / "locks") == 0o700


@pytest.mark.integration
def test_existing_state_dir_made_private_or_refused(tmp_path: Path) -> None:
    """`daemonapp run` never runs with a state_dir open to others: it fixes it or refuses."""
    state = tmp_path / "var"
    state.mkdir()
    state.chmod(0o755)
    cfg = write_file(tmp_path / "d.yaml", "app:\n  state_dir: ./var\n  shutdown_after: 0.3s\n")
    result = run_process([str(DAEMONAPP), "run", str(cfg)], cwd=tmp_path)
    mode = stat.S_IMODE(state.stat().st_mode)
    refused = result.returncode == 2 and str(state) in result.stderr
    assert refused or (result.returncode == 0 and mode == 0o700), (result.returncode, oct(mode))


def test_write_private_file_replaces_atomically_with_mode_0600(tmp_path: Path) -> None:
    """The file is replaced whole, private, and no temporary file is left behind."""
    from daemonapp.state_dir import write_private_file

    path = tmp_path / "pauses.json"
    path.write_text("old")
    write_private_file(str(path), "new", fsync=True)
    assert path.read_text() == "new"
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pauses.json"]


def test_write_private_file_failure_leaves_the_old_file_and_no_temporary(
        tmp_path: Path) -> None:
    """A rename that fails keeps the old file and removes the temporary one."""
    from daemonapp.state_dir import write_private_file

    target = tmp_path / "history.jsonl"
    target.mkdir()  # a directory where the file should be: os.replace fails
    with pytest.raises(OSError):
        write_private_file(str(target), "runs")
    assert target.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.jsonl"]


def test_write_private_file_never_writes_through_a_symlinked_temporary(
        tmp_path: Path) -> None:
    """A symlink planted at the temporary name is not followed."""
    from daemonapp.state_dir import write_private_file

    victim = tmp_path / "victim"
    victim.write_text("keep")
    path = tmp_path / "schedules.json"
    (tmp_path / f"schedules.json.{os.getpid()}.tmp").symlink_to(victim)
    with pytest.raises(OSError):
        write_private_file(str(path), "data")
    assert victim.read_text() == "keep"
