"""FileCleanup: old matching files go, everything else stays, symlinks are never followed."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from daemonapp import IDaemon
from daemonapp.app import DaemonApp
from daemonapp.daemon import OptionError
from daemonapp.daemons.file_cleanup import FileCleanup
from daemonapp.testing import ImmediateThreadPool, make_app
from tests._processes import DAEMONAPP, ROOT, run_process, write_file
from tests.daemons._helpers import age_link, failures, write

HOUR = 3600.0


def cleanup(directory: Path, **kw: Any) -> FileCleanup:
    kw.setdefault("run_every", 60)
    kw.setdefault("remove_older_than", "1h")
    return FileCleanup(directory=str(directory), **kw)


def run_once(app_clock: tuple[DaemonApp, Clock], daemon: FileCleanup) -> None:
    app, clock = app_clock
    app.add(daemon)
    app.startService()
    clock.advance(0)


def names(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_provides_idaemon(tmp_path: Path) -> None:
    """FileCleanup provides IDaemon."""
    verifyObject(IDaemon, cleanup(tmp_path))


def test_removes_old_matching_files(tmp_path: Path, app_clock: Any) -> None:
    """A run removes the matching files older than remove_older_than, and only those."""
    write(tmp_path / "old.tmp", age=2 * HOUR)
    write(tmp_path / "new.tmp", age=60)
    write(tmp_path / "old.keep", age=2 * HOUR)
    daemon = cleanup(tmp_path, pattern="*.tmp")
    run_once(app_clock, daemon)
    assert names(tmp_path) == ["new.tmp", "old.keep"]
    assert daemon.stats["removed"] == 1
    assert daemon.stats["removed_bytes"] == 1
    assert daemon.stats["last_outcome"] == "worked"


def test_in_thread(tmp_path: Path) -> None:
    """With in_thread, the scan and the removals run in the app's thread pool."""
    pool = ImmediateThreadPool()
    write(tmp_path / "old", age=2 * HOUR)
    daemon = cleanup(tmp_path, in_thread=True)
    run_once(make_app(threadpool=pool), daemon)
    assert names(tmp_path) == []
    assert (pool.calls, daemon.stats["last_outcome"]) == (2, "worked")


def test_nothing_to_remove_is_idle(tmp_path: Path, app_clock: Any) -> None:
    """A run that finds nothing expired is idle."""
    write(tmp_path / "new.tmp", age=60)
    daemon = cleanup(tmp_path)
    run_once(app_clock, daemon)
    assert daemon.stats["last_outcome"] == "idle"
    assert names(tmp_path) == ["new.tmp"]


def test_not_recursive_by_default(tmp_path: Path, app_clock: Any) -> None:
    """Without recursive, files in subdirectories stay."""
    write(tmp_path / "sub" / "old", age=2 * HOUR)
    run_once(app_clock, cleanup(tmp_path))
    assert names(tmp_path) == ["sub", "sub/old"]


def test_recursive_removes_files_but_keeps_directories(tmp_path: Path, app_clock: Any) -> None:
    """With recursive, old files in subdirectories go and the directories stay."""
    write(tmp_path / "a" / "b" / "old", age=2 * HOUR)
    write(tmp_path / "a" / "fresh", age=10)
    run_once(app_clock, cleanup(tmp_path, recursive=True))
    assert names(tmp_path) == ["a", "a/b", "a/fresh"]


def test_pattern_matches_names_not_paths(tmp_path: Path, app_clock: Any) -> None:
    """The pattern is matched against each file's name, case-sensitively."""
    write(tmp_path / "sess" / "sess_1", age=2 * HOUR)
    write(tmp_path / "sess" / "SESS_2", age=2 * HOUR)
    write(tmp_path / "other", age=2 * HOUR)
    run_once(app_clock, cleanup(tmp_path, pattern="sess_*", recursive=True))
    assert names(tmp_path) == ["other", "sess", "sess/SESS_2"]


def test_symlink_to_file_is_neither_removed_nor_followed(tmp_path: Path,
                                                         app_clock: Any) -> None:
    """An old symlink stays, and so does the old file outside that it points to."""
    outside = tmp_path / "outside"
    target = write(outside / "precious", age=2 * HOUR)
    top = tmp_path / "top"
    top.mkdir()
    os.symlink(target, top / "link")
    age_link(top / "link", 2 * HOUR)
    run_once(app_clock, cleanup(top))
    assert names(top) == ["link"]
    assert os.path.exists(target)


def test_symlinked_directory_is_not_entered(tmp_path: Path, app_clock: Any) -> None:
    """A recursive cleanup never enters a symlink to a directory outside."""
    outside = tmp_path / "outside"
    target = write(outside / "precious", age=2 * HOUR)
    top = tmp_path / "top"
    top.mkdir()
    os.symlink(outside, top / "escape")
    run_once(app_clock, cleanup(top, recursive=True))
    assert os.path.exists(target)
    assert os.path.islink(top / "escape")


def test_directory_swapped_for_symlink_after_the_scan(tmp_path: Path,
                                                      app_clock: Any) -> None:
    """A subdirectory replaced by a symlink between scan and removal is not followed."""
    outside = tmp_path / "outside"
    target = write(outside / "old", age=2 * HOUR)
    top = tmp_path / "top"
    write(top / "sub" / "old", age=2 * HOUR)
    daemon = cleanup(top, recursive=True)
    app, _ = app_clock
    app.add(daemon)
    batch = daemon.get_work()
    assert batch == ["sub/old"]
    os.unlink(top / "sub" / "old")
    os.rmdir(top / "sub")
    os.symlink(outside, top / "sub")
    daemon.do_work(batch)
    assert os.path.exists(target)
    assert daemon.stats["removed"] == 0


def test_file_touched_after_the_scan_stays(tmp_path: Path, app_clock: Any) -> None:
    """A file whose mtime became recent between scan and removal is kept."""
    path = write(tmp_path / "session", age=2 * HOUR)
    daemon = cleanup(tmp_path)
    app, _ = app_clock
    app.add(daemon)
    batch = daemon.get_work()
    os.utime(path)
    daemon.do_work(batch)
    assert os.path.exists(path)


def test_configured_directory_may_be_a_symlink(tmp_path: Path, app_clock: Any) -> None:
    """The configured directory itself may be a symlink; it is cleaned."""
    real = tmp_path / "real"
    write(real / "old", age=2 * HOUR)
    os.symlink(real, tmp_path / "alias")
    run_once(app_clock, cleanup(tmp_path / "alias"))
    assert names(real) == []


def test_batches_bound_a_run_and_the_scan_resumes(tmp_path: Path, app_clock: Any) -> None:
    """One item is a batch; with max_items 1 each run removes one batch and yields."""
    for i in range(5):
        write(tmp_path / f"f{i}", age=2 * HOUR)
    daemon = cleanup(tmp_path, batch_size=2, max_items=1)
    run_once(app_clock, daemon)
    assert names(tmp_path) == []
    assert (daemon.stats["runs"], daemon.stats["items"], daemon.stats["removed"]) == (4, 3, 5)
    assert daemon.stats["last_outcome"] == "idle"


def test_get_work_returns_a_bounded_batch(tmp_path: Path, app_clock: Any) -> None:
    """get_work returns at most batch_size relative paths, in name order."""
    for i in range(3):
        write(tmp_path / f"f{i}", age=2 * HOUR)
    daemon = cleanup(tmp_path, batch_size=2)
    app_clock[0].add(daemon)
    assert [daemon.get_work(), daemon.get_work()] == [["f0", "f1"], ["f2"]]


def test_one_scan_per_run(tmp_path: Path, app_clock: Any) -> None:
    """After a scan's last batch get_work returns None once, then a new scan begins."""
    for i in range(3):
        write(tmp_path / f"f{i}", age=2 * HOUR)
    daemon = cleanup(tmp_path, batch_size=2)
    app_clock[0].add(daemon)
    got = [daemon.get_work() for _ in range(4)]
    assert got == [["f0", "f1"], ["f2"], None, ["f0", "f1"]]


def test_a_file_that_cannot_be_removed_ends_the_run(tmp_path: Path, app_clock: Any,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    events: list[Any]) -> None:
    """A file whose removal fails is reported and counted, and the run still ends."""
    write(tmp_path / "stuck", age=2 * HOUR)

    def refuse(path: Any, *, dir_fd: int | None = None) -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "unlink", refuse)
    daemon = cleanup(tmp_path)
    run_once(app_clock, daemon)
    assert (daemon.stats["runs"], daemon.stats["remove_errors"]) == (1, 1)
    assert [e["path"] for e in events if e.get("error")] == ["stuck"]


def test_removals_are_logged(tmp_path: Path, app_clock: Any, events: list[Any]) -> None:
    """The removed files are logged with the daemon's name and their paths."""
    write(tmp_path / "a", age=2 * HOUR)
    write(tmp_path / "b", age=2 * HOUR)
    run_once(app_clock, cleanup(tmp_path, name="sessions"))
    logged = [e for e in events if e.get("count") is not None and e.get("daemon") == "sessions"]
    assert [(e["count"], e["paths"], e["directory"]) for e in logged] == [
        (2, "a, b", str(tmp_path))]


def test_missing_directory_is_idle_not_failed(tmp_path: Path, app_clock: Any,
                                              events: list[Any]) -> None:
    """A directory that does not exist makes an idle run and a warning, not a failure."""
    daemon = cleanup(tmp_path / "nope")
    run_once(app_clock, daemon)
    assert daemon.stats["last_outcome"] == "idle"
    assert failures(events) == []
    assert [e["directory"] for e in events if e.get("log_namespace", "").endswith(
        "file_cleanup") and e.get("directory")] == [str(tmp_path / "nope")]


def test_stop_closes_a_scan_left_open(tmp_path: Path, app_clock: Any) -> None:
    """Stopping the daemon closes a scan that a yielded run left open."""
    for i in range(3):
        write(tmp_path / f"f{i}", age=2 * HOUR)
    daemon = cleanup(tmp_path, batch_size=1)
    app_clock[0].add(daemon)
    daemon.get_work()
    assert daemon._scan is not None
    daemon.stop()
    assert daemon._scan is None


@pytest.mark.parametrize(("kw", "key"), [
    ({"remove_older_than": "soon"}, "remove_older_than"),
    ({"remove_older_than": 0}, "remove_older_than"),
    ({"pattern": "a/*.tmp"}, "pattern"),
    ({"pattern": ""}, "pattern"),
    ({"recursive": "yes"}, "recursive"),
    ({"batch_size": 0}, "batch_size"),
    ({"directory": ""}, "directory"),
])
def test_bad_options_name_their_key(tmp_path: Path, kw: dict[str, Any], key: str) -> None:
    """A bad option value raises OptionError naming the key."""
    options: dict[str, Any] = {"directory": str(tmp_path), "remove_older_than": "1h",
                               "run_every": 60, **kw}
    with pytest.raises(OptionError) as info:
        FileCleanup(**options)
    assert info.value.key == key


def test_unknown_option_is_a_type_error(tmp_path: Path) -> None:
    """An option neither Daemon nor FileCleanup knows is a TypeError naming it."""
    with pytest.raises(TypeError, match="older"):
        FileCleanup(directory=str(tmp_path), remove_older_than="1h", run_every=60, older="1h")


def test_durations_are_parsed(tmp_path: Path) -> None:
    """remove_older_than accepts duration strings."""
    assert cleanup(tmp_path, remove_older_than="1h30m").remove_older_than == 5400.0


@pytest.mark.integration
def test_file_cleanup_never_follows_symlinks_out(tmp_path: Path) -> None:
    """file_cleanup removes old files but never follows a symlink out of its directory."""
    base = tmp_path / "sessions"
    (base / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    old = time.time() - 7200
    for path in (base / "old", base / "sub" / "old2", outside / "precious"):
        path.write_text("x")
        os.utime(path, (old, old))
    fresh = base / "fresh"
    fresh.write_text("x")
    (base / "link-dir").symlink_to(outside)
    (base / "link-file").symlink_to(outside / "precious")
    cfg = write_file(tmp_path / "d.yaml",
                     "app:\n  state_dir: ./var\n  shutdown_after: 1s\n"
                     "daemons:\n  c:\n    type: file_cleanup\n    run_every: 5m\n"
                     "    directory: ./sessions\n    remove_older_than: 1h\n    recursive: true\n")
    result = run_process([str(DAEMONAPP), "run", str(cfg)], cwd=tmp_path,
                         env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert not (base / "old").exists()
    assert not (base / "sub" / "old2").exists()
    assert fresh.exists()
    assert (outside / "precious").exists()
