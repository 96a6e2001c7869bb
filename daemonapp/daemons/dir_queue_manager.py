"""DirQueueManager: a daemon seed running one queue daemon per subdirectory.

Each subdirectory of ``base_directory`` gets a child daemon built from the
``queue:`` section with ``directory=<the subdirectory>``; a new subdirectory
starts a child, a removed one stops it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

from twisted.logger import Logger

from daemonapp.daemon import Daemon, OptionError
from daemonapp.daemons._build import (
    UnknownOptionError,
    build_daemon,
    class_options,
    resolve_type,
)
from daemonapp.daemons.dir_queue import DIR_MODE
from daemonapp.seed import SeedDaemon

__all__ = ["DirQueueManager"]

log = Logger()

#: The queue type when the ``queue:`` section names none.
DEFAULT_QUEUE_TYPE = "dir_queue"


def _subdirectory_name(value: object) -> str:
    if not isinstance(value, str) or not value or value.startswith(".") or "/" in value:
        raise OptionError("create", f"expected subdirectory names without '/' that do not "
                                    f"start with '.', got {value!r}")
    return value


class DirQueueManager(SeedDaemon):
    """One child queue daemon per subdirectory of ``base_directory``.

    ``queue`` is a mapping like a YAML daemon section (``type``, default
    ``dir_queue``, plus Daemon attributes and the class's parameters; what the
    config loader passes), or a factory called as ``queue(name=..., directory=...)``.
    Children are named ``<manager>/<subdirectory>``. Subdirectories whose
    names start with '.' and symlinks are ignored. ``create`` lists subdirectories
    (and so base_directory) to create when missing, with mode 0700.
    """

    #: Options that hold a nested daemon section, and the keys this class sets on
    #: each child (so the section may not): read by the config loader.
    NESTED_DAEMON_OPTIONS: ClassVar[dict[str, tuple[str, ...]]] = {
        "queue": ("directory", "create_directory")}
    #: The type of a nested section that names none.
    NESTED_DEFAULT_TYPES: ClassVar[dict[str, str]] = {"queue": DEFAULT_QUEUE_TYPE}

    def __init__(self, *, base_directory: str | os.PathLike[str],
                 queue: Mapping[str, Any] | Callable[..., Daemon],
                 create: Sequence[str] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        if self.in_thread:
            raise OptionError("in_thread", "a manager adds and removes daemons, which only "
                                           "the reactor thread may do: remove in_thread")
        if isinstance(base_directory, os.PathLike):
            base_directory = os.fspath(base_directory)
        if not isinstance(base_directory, str) or not base_directory:
            raise OptionError("base_directory",
                              f"expected a directory path, got {base_directory!r}")
        self.base_directory = base_directory
        if create is None:
            self.create: tuple[str, ...] = ()
        elif isinstance(create, str) or not isinstance(create, Sequence):
            raise OptionError("create", f"expected a list of subdirectory names, got {create!r}")
        else:
            self.create = tuple(_subdirectory_name(name) for name in create)
        self._no_create = False
        self._factory = self._queue_factory(queue)
        # Build one child now, so that a bad queue section shows before the app starts.
        self._build_child(name=f"{self.name}/(check)", directory=self.base_directory)
        self._base_missing = False

    # ------------------------------------------------------------------ seed

    def reconcile(self) -> dict[str, Callable[[], Daemon]]:
        """One factory per subdirectory of base_directory, keyed by its name."""
        base = self.base_directory
        for name in self.create:
            os.makedirs(os.path.join(base, name), DIR_MODE, exist_ok=True)
        try:
            with os.scandir(base) as entries:
                names = sorted(entry.name for entry in entries
                               if not entry.name.startswith(".")
                               and entry.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            if not self._base_missing:
                log.warn("{daemon}: base_directory {directory} does not exist: no queues",
                         daemon=self.name, directory=base)
            self._base_missing = True
            return {}
        self._base_missing = False
        return {name: partial(self._build_child, name=f"{self.name}/{name}",
                              directory=os.path.join(base, name))
                for name in names}

    # -------------------------------------------------------------- internals

    def _queue_factory(self, queue: object) -> Callable[..., Daemon]:
        """The child factory, and whether children get create_directory=False."""
        cls: object = None
        factory: Callable[..., Daemon]
        if isinstance(queue, Mapping):
            section = dict(queue)
            section.setdefault("type", DEFAULT_QUEUE_TYPE)
            try:
                cls = resolve_type(section["type"])
            except OptionError as e:
                raise OptionError(f"queue.{e.key}", e.message) from None
            factory = partial(build_daemon, section)
        elif callable(queue):
            options = getattr(queue, "options", None)  # a config.DaemonSpec
            if isinstance(options, Mapping) and "directory" in options:
                raise OptionError("queue.directory", "is set for each subdirectory of "
                                                     "base_directory; remove this key")
            cls = getattr(queue, "cls", None)
            factory = queue
        else:
            raise OptionError("queue", f"expected a daemon section (a mapping with type and "
                                       f"options), got {queue!r}")
        # A child must not re-create the subdirectory of a queue that was just removed.
        self._no_create = (isinstance(cls, type) and issubclass(cls, Daemon)
                           and "create_directory" in class_options(cls)[0])
        return factory

    def _build_child(self, *, name: str, directory: str) -> Daemon:
        extra: dict[str, Any] = {"directory": directory}
        if self._no_create:
            extra["create_directory"] = False
        try:
            child = self._factory(name=name, **extra)
        except UnknownOptionError as e:
            raise UnknownOptionError(f"queue.{e.key}", e.message) from None
        except OptionError as e:
            raise OptionError(f"queue.{e.key}", e.message) from None
        except (TypeError, ValueError) as e:
            raise OptionError("queue", str(e)) from None
        if not isinstance(child, Daemon):
            raise OptionError("queue", f"the queue factory returned {child!r}, not a Daemon")
        return child
