"""DirQueueManager: one child queue per subdirectory, started and stopped as they come and go."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from daemonapp import IDaemon
from daemonapp.app import DaemonApp
from daemonapp.daemon import Daemon, OptionError
from daemonapp.daemons._build import UnknownOptionError
from daemonapp.daemons.dir_queue import DirQueue, enqueue
from daemonapp.daemons.dir_queue_manager import DirQueueManager
from tests._processes import DAEMONAPP, popen_run, run_process, running, wait_until, write_file


class Collector(DirQueue):
    """A queue that records (queue directory name, data) in a class-level list."""

    seen: ClassVar[list[tuple[str, bytes]]] = []

    def handle(self, path: str) -> None:
        with open(path, "rb") as f:
            Collector.seen.append((os.path.basename(self.directory), f.read()))


def manager(base: Path, queue: Any = None, **kw: Any) -> DirQueueManager:
    kw.setdefault("run_every", 60)
    kw.setdefault("name", "mail")
    return DirQueueManager(base_directory=str(base),
                           queue={"run_every": 10} if queue is None else queue, **kw)


def start(app_clock: tuple[DaemonApp, Clock], daemon: Daemon) -> Clock:
    app, clock = app_clock
    app.add(daemon)
    app.startService()
    clock.advance(0)
    return clock


def children(app: DaemonApp) -> dict[str, str]:
    return {name: getattr(d, "directory", "?") for name, d in sorted(app.daemons.items())
            if name.startswith("mail/")}


def test_provides_idaemon(tmp_path: Path) -> None:
    """DirQueueManager provides IDaemon."""
    verifyObject(IDaemon, manager(tmp_path))


def test_one_child_per_subdirectory(tmp_path: Path, app_clock: Any) -> None:
    """Each subdirectory gets a dir_queue child named <manager>/<subdirectory>."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    start(app_clock, manager(tmp_path))
    app = app_clock[0]
    assert children(app) == {"mail/a": str(tmp_path / "a"), "mail/b": str(tmp_path / "b")}
    assert [type(app.daemons[n]).__name__ for n in ("mail/a", "mail/b")] == ["DirQueue"] * 2
    assert app.daemons["mail/a"].run_every == 10.0


def test_new_directory_starts_a_child(tmp_path: Path, app_clock: Any) -> None:
    """A subdirectory created later gets a child at the manager's next run."""
    (tmp_path / "a").mkdir()
    clock = start(app_clock, manager(tmp_path))
    (tmp_path / "b").mkdir()
    clock.advance(60)
    assert sorted(children(app_clock[0])) == ["mail/a", "mail/b"]


def test_removed_directory_stops_its_child(tmp_path: Path, app_clock: Any) -> None:
    """A subdirectory removed later has its child stopped and removed."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    clock = start(app_clock, manager(tmp_path))
    child = app_clock[0].daemons["mail/b"]
    shutil.rmtree(tmp_path / "b")
    clock.advance(60)
    assert sorted(children(app_clock[0])) == ["mail/a"]
    assert child.stats["next_run_at"] is None


def test_child_never_recreates_a_removed_directory(tmp_path: Path, app_clock: Any) -> None:
    """A child whose directory vanished runs idle and does not create it again."""
    (tmp_path / "a").mkdir()
    clock = start(app_clock, manager(tmp_path))
    shutil.rmtree(tmp_path / "a")
    clock.advance(10)  # the child runs before the manager looks again
    assert not os.path.exists(tmp_path / "a")
    assert app_clock[0].daemons["mail/a"].stats["last_outcome"] == "idle"


def test_children_handle_their_queues(tmp_path: Path, app_clock: Any) -> None:
    """Jobs enqueued in each subdirectory are handled by the queue class of the section."""
    Collector.seen.clear()
    enqueue(tmp_path / "a", b"for a")
    enqueue(tmp_path / "b", b"for b")
    queue = {"type": f"{__name__}:Collector", "run_every": "10s"}
    start(app_clock, manager(tmp_path, queue))
    assert sorted(Collector.seen) == [("a", b"for a"), ("b", b"for b")]


def test_queue_may_be_a_class(tmp_path: Path, app_clock: Any) -> None:
    """In Python the queue section's type may be the class itself."""
    (tmp_path / "a").mkdir()
    start(app_clock, manager(tmp_path, {"type": Collector, "run_every": 5}))
    assert type(app_clock[0].daemons["mail/a"]) is Collector


def test_queue_may_be_a_factory(tmp_path: Path, app_clock: Any) -> None:
    """queue may be a factory called with name and directory (what config passes)."""
    (tmp_path / "a").mkdir()
    calls = []

    def factory(*, name: str, directory: str) -> Daemon:
        calls.append((name, directory))
        return DirQueue(name=name, directory=directory, run_every=7)

    start(app_clock, manager(tmp_path, factory))
    assert calls == [("mail/(check)", str(tmp_path)), ("mail/a", str(tmp_path / "a"))]
    assert app_clock[0].daemons["mail/a"].run_every == 7.0


def test_hidden_and_symlinked_directories_are_ignored(tmp_path: Path,
                                                      app_clock: Any) -> None:
    """Subdirectories starting with '.', symlinks and plain files get no child."""
    (tmp_path / ".trash").mkdir()
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "alias")
    (tmp_path / "file").write_bytes(b"")
    start(app_clock, manager(tmp_path))
    assert sorted(children(app_clock[0])) == ["mail/real"]


def test_create_makes_the_listed_subdirectories(tmp_path: Path, app_clock: Any) -> None:
    """create: the listed subdirectories (and base_directory) are made, mode 0700."""
    base = tmp_path / "queues"
    start(app_clock, manager(base, create=["in", "out"]))
    assert sorted(children(app_clock[0])) == ["mail/in", "mail/out"]
    assert os.stat(base / "in").st_mode & 0o777 == 0o700


def test_missing_base_directory_means_no_children(tmp_path: Path, app_clock: Any) -> None:
    """Without create, a missing base_directory gives no children and an idle run."""
    daemon = manager(tmp_path / "nope")
    start(app_clock, daemon)
    assert children(app_clock[0]) == {}
    assert daemon.stats["last_outcome"] == "idle"


def test_unchanged_directories_make_an_idle_run(tmp_path: Path, app_clock: Any) -> None:
    """A run that finds the same subdirectories changes nothing and is idle."""
    (tmp_path / "a").mkdir()
    daemon = manager(tmp_path)
    clock = start(app_clock, daemon)
    clock.advance(60)
    assert (daemon.stats["runs"], daemon.stats["last_outcome"]) == (2, "idle")


def test_removing_the_manager_removes_its_children(tmp_path: Path, app_clock: Any) -> None:
    """app.remove(manager) stops and removes its children too."""
    (tmp_path / "a").mkdir()
    daemon = manager(tmp_path)
    start(app_clock, daemon)
    app_clock[0].remove(daemon)
    assert children(app_clock[0]) == {}
    assert "mail" not in app_clock[0].daemons


def test_app_stop_with_children_ends(tmp_path: Path, app_clock: Any) -> None:
    """A graceful app stop with a manager and its children running ends with status 0."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    start(app_clock, manager(tmp_path))
    app = app_clock[0]
    stopped = app.stopService()
    assert stopped.called
    assert app.exit_status == 0


@pytest.mark.parametrize(("queue", "key"), [
    ({"run_every": "soon"}, "queue.run_every"),
    ({}, "queue.run_every"),
    ({"run_every": 10, "directory": "/x"}, "queue.directory"),
    ({"run_every": 10, "stale_after": "never"}, "queue.stale_after"),
    ({"type": "no_such_type", "run_every": 10}, "queue.type"),
    ({"type": "daemonapp.daemons.dir_queue:Nope", "run_every": 10}, "queue.type"),
    ("dir_queue", "queue"),
])
def test_bad_queue_section_fails_at_construction(tmp_path: Path, queue: Any,
                                                 key: str) -> None:
    """A bad nested queue section raises OptionError at construction, naming queue.<key>."""
    with pytest.raises(OptionError) as info:
        manager(tmp_path, queue)
    assert info.value.key == key


def test_unknown_queue_key_is_a_type_error(tmp_path: Path) -> None:
    """An unknown key in the queue section is a TypeError that names queue.<key>."""
    with pytest.raises(UnknownOptionError) as info:
        manager(tmp_path, {"run_every": 10, "stale": "1h"})
    assert info.value.key == "queue.stale"
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize("create", ["in", [".x"], ["a/b"], [""]])
def test_bad_create_fails(tmp_path: Path, create: Any) -> None:
    """create must be a list of plain subdirectory names."""
    with pytest.raises(OptionError) as info:
        manager(tmp_path, create=create)
    assert info.value.key == "create"


def test_in_thread_is_refused(tmp_path: Path) -> None:
    """A manager cannot run in a thread: it adds and removes daemons."""
    with pytest.raises(OptionError) as info:
        manager(tmp_path, in_thread=True)
    assert info.value.key == "in_thread"


def test_construction_has_no_side_effects(tmp_path: Path) -> None:
    """Building a manager (as `daemonapp check` does) creates nothing."""
    manager(tmp_path / "base", create=["a"])
    assert not os.path.exists(tmp_path / "base")


@pytest.mark.integration
def test_dir_queue_manager_one_child_per_subdirectory(tmp_path: Path) -> None:
    """dir_queue_manager runs one child daemon per subdirectory of base_directory."""
    for name in ("alpha", "beta"):
        (tmp_path / "queues" / name).mkdir(parents=True)
    cfg = write_file(tmp_path / "d.yaml",
                     "app:\n  state_dir: ./var\n"
                     "daemons:\n  mail-queues:\n    type: dir_queue_manager\n    run_every: 5m\n"
                     "    base_directory: ./queues\n    queue: {type: dir_queue, run_every: 10s}\n")
    with running(popen_run(tmp_path, cfg)) as proc:
        names: list[str] = []

        def children() -> bool:
            result = run_process([str(DAEMONAPP), "status", "--json", str(tmp_path / "var")],
                                 cwd=tmp_path)
            if result.returncode != 0:
                return proc.poll() is not None
            names[:] = [d["name"] for d in json.loads(result.stdout)["daemons"]]
            return len(names) >= 3

        assert wait_until(children)
        assert sorted(names) == ["mail-queues", "mail-queues/alpha", "mail-queues/beta"]
