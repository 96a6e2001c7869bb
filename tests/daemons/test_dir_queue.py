"""DirQueue: enqueue through tmp/ into new/, claim by rename into cur/, recover stale claims."""

from __future__ import annotations

import fcntl
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from daemonapp import IDaemon
from daemonapp.app import DaemonApp
from daemonapp.daemon import OptionError
from daemonapp.daemons.dir_queue import DirQueue, enqueue
from daemonapp.testing import ImmediateThreadPool, make_app
from tests.daemons._helpers import failures, write

HOUR = 3600.0


class Recording(DirQueue):
    """A queue whose handle records (name, content) and can fail or wait on request."""

    run_every = 10

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.handled: list[tuple[str, bytes]] = []
        self.fail_on: set[bytes] = set()
        self.pending: Deferred[None] | None = None
        self.wait = False

    def handle(self, path: str) -> Any:
        with open(path, "rb") as f:
            data = f.read()
        if data in self.fail_on:
            raise RuntimeError(f"cannot handle {data!r}")
        self.handled.append((os.path.basename(path), data))
        if self.wait:
            self.pending = Deferred()
            return self.pending
        return None


def listing(queue: Path) -> dict[str, list[str]]:
    return {sub: sorted(os.listdir(queue / sub)) for sub in ("tmp", "new", "cur")}


def started(app_clock: tuple[DaemonApp, Clock], daemon: DirQueue) -> Clock:
    app, clock = app_clock
    app.add(daemon)
    app.startService()
    clock.advance(0)
    return clock


def test_provides_idaemon(tmp_path: Path) -> None:
    """DirQueue provides IDaemon."""
    verifyObject(IDaemon, DirQueue(directory=str(tmp_path), run_every=10))


def test_enqueue_goes_through_tmp_into_new(tmp_path: Path) -> None:
    """enqueue writes the data into new/ (tmp/ left empty) and returns its path."""
    queue = tmp_path / "q"
    path = enqueue(queue, b"payload", name="job-1")
    assert path == str(queue / "new" / "job-1")
    assert (queue / "new" / "job-1").read_bytes() == b"payload"
    assert listing(queue) == {"tmp": [], "new": ["job-1"], "cur": []}


def test_enqueue_classmethod_makes_unique_names(tmp_path: Path) -> None:
    """DirQueue.enqueue without a name gives each job its own name."""
    paths = {DirQueue.enqueue(tmp_path, b"x") for _ in range(50)}
    assert len(paths) == 50
    assert len(os.listdir(tmp_path / "new")) == 50


def test_enqueue_never_replaces_a_waiting_job(tmp_path: Path) -> None:
    """enqueue with the name of a job still in new/ raises FileExistsError and keeps it."""
    enqueue(tmp_path, b"first", name="job")
    with pytest.raises(FileExistsError):
        enqueue(tmp_path, b"second", name="job")
    assert (tmp_path / "new" / "job").read_bytes() == b"first"
    assert listing(tmp_path)["tmp"] == []


@pytest.mark.parametrize("name", ["", ".hidden", "a/b"])
def test_enqueue_rejects_bad_names(tmp_path: Path, name: str) -> None:
    """A job name must be a plain file name that does not start with '.'."""
    with pytest.raises(ValueError, match="job name"):
        enqueue(tmp_path, b"x", name=name)


def test_directories_are_created_private(tmp_path: Path, app_clock: Any) -> None:
    """The first run creates the directory with tmp/, new/ and cur/, mode 0700."""
    queue = tmp_path / "q"
    started(app_clock, Recording(directory=str(queue)))
    modes = {sub: stat.S_IMODE(os.stat(queue / sub).st_mode) for sub in ("tmp", "new", "cur")}
    assert modes == {"tmp": 0o700, "new": 0o700, "cur": 0o700}


def test_handles_oldest_first_and_removes(tmp_path: Path, app_clock: Any) -> None:
    """Jobs are handled oldest mtime first, then removed; the run worked."""
    write(tmp_path / "new" / "b", b"second", age=20)
    write(tmp_path / "new" / "a", b"third", age=10)
    write(tmp_path / "new" / "c", b"first", age=30)
    daemon = Recording(directory=str(tmp_path))
    started(app_clock, daemon)
    assert daemon.handled == [("c", b"first"), ("b", b"second"), ("a", b"third")]
    assert listing(tmp_path) == {"tmp": [], "new": [], "cur": []}
    assert (daemon.stats["handled"], daemon.stats["last_outcome"]) == (3, "worked")


def test_in_thread(tmp_path: Path) -> None:
    """With in_thread, claims and handling run in the app's thread pool."""
    pool = ImmediateThreadPool()
    app_clock = make_app(threadpool=pool)
    enqueue(tmp_path, b"one", name="a")
    enqueue(tmp_path, b"two", name="b")
    daemon = Recording(directory=str(tmp_path), in_thread=True)
    started(app_clock, daemon)
    assert sorted(daemon.handled) == [("a", b"one"), ("b", b"two")]
    assert pool.calls == 3
    assert listing(tmp_path) == {"tmp": [], "new": [], "cur": []}


def test_hidden_and_non_regular_entries_are_ignored(tmp_path: Path, app_clock: Any) -> None:
    """Names starting with '.', directories and symlinks in new/ are not jobs."""
    write(tmp_path / "new" / ".partial", b"p")
    (tmp_path / "new" / "dir").mkdir()
    os.symlink("/etc/hostname", tmp_path / "new" / "link")
    daemon = Recording(directory=str(tmp_path))
    started(app_clock, daemon)
    assert daemon.handled == []
    assert listing(tmp_path)["new"] == [".partial", "dir", "link"]


def test_a_fifo_swapped_in_after_the_scan_is_skipped(tmp_path: Path, app_clock: Any) -> None:
    """A job replaced by a FIFO between scan and claim is skipped without blocking."""
    write(tmp_path / "new" / "a", b"a", age=30)
    write(tmp_path / "new" / "b", b"b", age=20)
    daemon = Recording(directory=str(tmp_path))
    app_clock[0].add(daemon)
    daemon._scan()
    os.unlink(tmp_path / "new" / "a")
    os.mkfifo(tmp_path / "new" / "a")
    assert daemon.get_work() == str(tmp_path / "cur" / "b")
    assert listing(tmp_path)["new"] == ["a"]


def test_max_items_bounds_a_run(tmp_path: Path, app_clock: Any) -> None:
    """With max_items 2, three files take a yielded run of two and a worked run of one."""
    for i in range(3):
        write(tmp_path / "new" / f"j{i}", b"%d" % i, age=30 - i)
    daemon = Recording(directory=str(tmp_path), max_items=2)
    started(app_clock, daemon)
    assert daemon.handled == [("j0", b"0"), ("j1", b"1"), ("j2", b"2")]
    assert (daemon.stats["runs"], daemon.stats["items"]) == (2, 3)
    assert daemon.stats["last_outcome"] == "worked"


def test_failed_handle_leaves_the_file_in_cur(tmp_path: Path, app_clock: Any,
                                              events: list[Any]) -> None:
    """When handle raises, the run fails and the file stays in cur/."""
    enqueue(tmp_path, b"bad", name="job")
    daemon = Recording(directory=str(tmp_path))
    daemon.fail_on = {b"bad"}
    started(app_clock, daemon)
    assert listing(tmp_path) == {"tmp": [], "new": [], "cur": ["job"]}
    assert daemon.stats["last_outcome"] == "failed"
    assert [(e["daemon"], e["phase"]) for e in failures(events)] == [("Recording", "do_work")]


def test_failed_file_comes_back_after_stale_after(tmp_path: Path, app_clock: Any) -> None:
    """A file left in cur/ by a failure is handled again once it is stale_after old."""
    enqueue(tmp_path, b"bad", name="job")
    daemon = Recording(directory=str(tmp_path), stale_after="5m", increase_idle_by=0)
    daemon.fail_on = {b"bad"}
    clock = started(app_clock, daemon)
    daemon.fail_on = set()
    clock.advance(10)  # the next run: not stale yet
    assert daemon.handled == []
    then = time.time() - 301
    os.utime(tmp_path / "cur" / "job", (then, then))
    clock.advance(300)
    assert daemon.handled == [("job", b"bad")]
    assert listing(tmp_path) == {"tmp": [], "new": [], "cur": []}
    assert daemon.stats["recovered"] == 1


def test_stale_claims_are_recovered_at_start(tmp_path: Path, app_clock: Any) -> None:
    """At start, files in cur/ older than stale_after (a crashed run) are handled."""
    write(tmp_path / "cur" / "crashed", b"left over", age=2 * HOUR)
    write(tmp_path / "new" / "waiting", b"new", age=10)
    daemon = Recording(directory=str(tmp_path), stale_after="1h")
    started(app_clock, daemon)
    assert sorted(daemon.handled) == [("crashed", b"left over"), ("waiting", b"new")]
    assert listing(tmp_path) == {"tmp": [], "new": [], "cur": []}


def test_recent_claims_are_left_alone(tmp_path: Path, app_clock: Any) -> None:
    """A file claimed less than stale_after ago (another worker's) stays in cur/."""
    write(tmp_path / "cur" / "busy", b"x", age=60)
    daemon = Recording(directory=str(tmp_path), stale_after="1h")
    started(app_clock, daemon)
    assert daemon.handled == []
    assert listing(tmp_path)["cur"] == ["busy"]


def test_a_locked_claim_is_never_recovered(tmp_path: Path, app_clock: Any) -> None:
    """An old file in cur/ that a live worker holds (flock) stays, however old."""
    path = write(tmp_path / "cur" / "slow", b"x", age=2 * HOUR)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        daemon = Recording(directory=str(tmp_path), stale_after="1h")
        started(app_clock, daemon)
        assert daemon.handled == []
        assert listing(tmp_path)["cur"] == ["slow"]
    finally:
        os.close(fd)


def test_claim_marks_the_claim_time(tmp_path: Path, app_clock: Any) -> None:
    """A claimed file's mtime is set to the claim time, so stale_after counts from it."""
    write(tmp_path / "new" / "job", b"x", age=2 * HOUR)
    daemon = Recording(directory=str(tmp_path))
    app_clock[0].add(daemon)
    path = daemon.get_work()
    assert path == str(tmp_path / "cur" / "job")
    assert time.time() - os.stat(path).st_mtime < 60
    daemon.do_work(path)


def test_a_job_taken_by_another_worker_is_skipped(tmp_path: Path, app_clock: Any) -> None:
    """When another worker renamed a job first, get_work claims the next one."""
    write(tmp_path / "new" / "a", b"a", age=30)
    write(tmp_path / "new" / "b", b"b", age=20)
    daemon = Recording(directory=str(tmp_path))
    app_clock[0].add(daemon)
    daemon._scan()
    os.rename(tmp_path / "new" / "a", tmp_path / "elsewhere")  # the other worker
    assert daemon.get_work() == str(tmp_path / "cur" / "b")


def test_a_job_locked_by_another_worker_is_skipped(tmp_path: Path, app_clock: Any) -> None:
    """A job another worker is claiming (holds its flock) is left to it."""
    path = write(tmp_path / "new" / "a", b"a", age=30)
    write(tmp_path / "new" / "b", b"b", age=20)
    daemon = Recording(directory=str(tmp_path))
    app_clock[0].add(daemon)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert daemon.get_work() == str(tmp_path / "cur" / "b")
    finally:
        os.close(fd)
    assert listing(tmp_path)["new"] == ["a"]


def test_deferred_handle_removes_the_file_when_it_fires(tmp_path: Path,
                                                        app_clock: Any) -> None:
    """With a Deferred from handle, the file stays in cur/ until it fires."""
    enqueue(tmp_path, b"slow", name="job")
    daemon = Recording(directory=str(tmp_path))
    daemon.wait = True
    started(app_clock, daemon)
    assert listing(tmp_path)["cur"] == ["job"]
    assert daemon.running
    assert daemon.pending is not None
    daemon.pending.callback(None)
    app_clock[1].advance(0)
    assert listing(tmp_path)["cur"] == []
    assert daemon.stats["last_outcome"] == "worked"


def test_failed_deferred_leaves_the_file_in_cur(tmp_path: Path, app_clock: Any,
                                                events: list[Any]) -> None:
    """When the Deferred from handle fails, the file stays in cur/ and the run fails."""
    enqueue(tmp_path, b"slow", name="job")
    daemon = Recording(directory=str(tmp_path))
    daemon.wait = True
    started(app_clock, daemon)
    assert daemon.pending is not None
    daemon.pending.errback(RuntimeError("broken"))
    app_clock[1].advance(0)
    assert listing(tmp_path)["cur"] == ["job"]
    assert daemon.stats["last_outcome"] == "failed"
    assert daemon._claimed == {}


def test_default_handle_logs_and_removes(tmp_path: Path, app_clock: Any,
                                         events: list[Any]) -> None:
    """The default handle logs the file with its size, and the file is removed."""
    enqueue(tmp_path, b"12345", name="job")
    started(app_clock, DirQueue(directory=str(tmp_path), run_every=10, name="q"))
    assert [(e["path"], e["size"]) for e in events if e.get("daemon") == "q"
            and "size" in e] == [(str(tmp_path / "cur" / "job"), 5)]
    assert listing(tmp_path) == {"tmp": [], "new": [], "cur": []}


def test_handler_may_move_the_file_itself(tmp_path: Path, app_clock: Any) -> None:
    """A handler that moves its file away makes a normal, successful item."""
    enqueue(tmp_path, b"keep me", name="job")
    done = tmp_path / "done"
    done.mkdir()

    class Mover(DirQueue):
        def handle(self, path: str) -> None:
            os.rename(path, done / os.path.basename(path))

    daemon = Mover(directory=str(tmp_path), run_every=10)
    started(app_clock, daemon)
    assert (done / "job").read_bytes() == b"keep me"
    assert (daemon.stats["handled"], daemon.stats["last_outcome"]) == (1, "worked")


def test_without_create_directory_a_missing_directory_stays_missing(
        tmp_path: Path, app_clock: Any) -> None:
    """With create_directory false, a missing queue directory is an idle run, not created."""
    daemon = Recording(directory=str(tmp_path / "gone"), create_directory=False)
    started(app_clock, daemon)
    assert daemon.stats["last_outcome"] == "idle"
    assert not os.path.exists(tmp_path / "gone")


def test_stop_releases_claims(tmp_path: Path, app_clock: Any) -> None:
    """Stopping the daemon closes the descriptors of claims it still holds."""
    enqueue(tmp_path, b"x", name="job")
    daemon = Recording(directory=str(tmp_path))
    app_clock[0].add(daemon)
    daemon.get_work()
    assert len(daemon._claimed) == 1
    daemon.stop()
    assert daemon._claimed == {}


@pytest.mark.parametrize(("kw", "key"), [
    ({"stale_after": "later"}, "stale_after"),
    ({"stale_after": 0}, "stale_after"),
    ({"directory": ""}, "directory"),
    ({"create_directory": "no"}, "create_directory"),
])
def test_bad_options_name_their_key(tmp_path: Path, kw: dict[str, Any], key: str) -> None:
    """A bad option value raises OptionError naming the key."""
    options: dict[str, Any] = {"directory": str(tmp_path), "run_every": 10, **kw}
    with pytest.raises(OptionError) as info:
        DirQueue(**options)
    assert info.value.key == key


def test_construction_has_no_side_effects(tmp_path: Path) -> None:
    """Building a DirQueue (as `daemonapp check` does) creates nothing."""
    DirQueue(directory=str(tmp_path / "q"), run_every=10)
    assert not os.path.exists(tmp_path / "q")
