"""A reload (``daemonapp reload``, SIGHUP): re-read the YAML file, apply the difference.

`Reloader` checks the file with `load_config` (the checks of ``daemonapp check``) and,
when it is valid, applies what changed (DESIGN §9): new daemons start, removed ones
stop after their run in flight, changed ones are replaced the same way, unchanged ones
are left alone, ``app.log`` applies at once, and what needs a restart is named
(`restart_keys`) and left as it was. `same_spec` says which daemons are unchanged.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp.configmodel import Config, ConfigError, DaemonSpec, LogSettings

__all__ = ["Difference", "Refused", "Reloader", "in_thread", "restart_keys", "same_spec"]

log = Logger(namespace="daemonapp.control")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Difference:
    """What a reload applied: daemon names, the keys that need a restart, and what
    became of ``app.log`` ("unchanged", "applied", "not applied: WHY")."""

    added: list[str]
    removed: list[str]
    replaced: list[str]
    unchanged: list[str]
    needs_restart: list[str]
    log: str


@dataclasses.dataclass(frozen=True)
class Refused:
    """A reload that changed nothing: ``code`` as the protocol's refusals (unavailable,
    invalid_config), ``error`` the words, ``errors`` each error of an invalid file."""

    code: str
    error: str
    errors: tuple[str, ...] = ()


class Reloader:
    """Reloads ``app`` from the YAML file of ``config`` (None: the app was not started
    from a file, so it cannot reload).

    ``owners``: the uids that may own state_dir besides us, as for the first load
    (twistd's --uid). ``reconfigure_log(settings)`` applies ``app.log`` (None: the log
    is not ours, e.g. twistd's).
    """

    def __init__(self, app: Any, config: Config | None, *, owners: tuple[int, ...] = ()
                 ) -> None:
        self.app = app
        self.config = config
        self.owners = owners
        self.reconfigure_log: Callable[[LogSettings], None] | None = None
        self._hooks: list[tuple[Callable[[], object], Callable[[], object]]] = []
        #: Per daemon name, what runs under it once its current daemon has stopped
        #: (None: nothing); names whose current daemon is stopping for a reload.
        self._wanted: dict[str, DaemonSpec | None] = {}
        self._leaving: set[str] = set()
        #: Names whose replacement runs once as soon as it starts (a trigger came
        #: while the daemon it replaces finished its run, or was pending at the reload).
        self._triggered: set[str] = set()
        #: Reads the file away from the reactor: ``run_in_thread(function, *args)``.
        self.run_in_thread: Callable[..., Deferred[Any]] = partial(in_thread, app.reactor)
        self._busy = False
        self._queued: list[tuple[str, Deferred[Difference | Refused]]] = []

    def on_reload(self, begin: Callable[[], object], end: Callable[[], object]) -> None:
        """Call ``begin()`` when a reload begins and ``end()`` when it is over."""
        self._hooks.append((begin, end))

    def reload(self, source: str) -> Deferred[Difference | Refused]:
        """Re-read the YAML file and apply the difference (DESIGN §9); its result.

        The one place where a reload begins and ends: the `on_reload` hooks run around
        it, whatever its result. The file is read and checked in a thread of its own
        (a file of 1,000 daemons takes about a second to check), then the difference is
        applied on the reactor. A reload asked for while one is under way follows it
        (the file may have changed since it was read), once for all who ask meanwhile.
        The Deferred never fails: an error is a `Refused`.
        """
        if self._busy:
            waiter: Deferred[Difference | Refused] = Deferred()
            self._queued.append((source, waiter))
            return waiter
        self._busy = True
        for begin, _ in self._hooks:
            _call_hook(begin)
        loaded = maybeDeferred(self._load, source)
        applied: Deferred[Difference | Refused] = loaded.addCallback(self._apply, source)
        applied.addErrback(self._failed, source)  # (never a failure from here on)
        applied.addCallback(self._ended)
        return applied

    def _ended(self, result: Difference | Refused) -> Difference | Refused:
        for _, end in self._hooks:
            _call_hook(end)
        self._busy = False
        if self._queued:
            queued, self._queued = self._queued, []
            sources = ", ".join(dict.fromkeys(source for source, _ in queued))

            def answer(result: Difference | Refused) -> None:
                for _, waiter in queued:
                    waiter.callback(result)

            self.reload(sources).addCallback(answer)
        return result

    def _failed(self, failure: Failure, source: str) -> Refused:
        log.failure("reload ({source}) failed", failure, source=source)
        return Refused("unavailable", "the reload failed inside the app (see its log)")

    def _load(self, source: str) -> Deferred[Config | ConfigError | Refused]:
        """The file, read and checked in a thread (a Refused when it cannot be)."""
        refused = self._refused()
        if refused is not None:
            return succeed(refused)
        assert self.config is not None
        return self.run_in_thread(_read_config, self.config.path, self.owners)

    def _refused(self) -> Refused | None:
        if self.config is None:
            return Refused("unavailable", "this app was not started from a YAML file: "
                                          "there is nothing to reload")
        if self.app.lifetime.stopping:
            return Refused("unavailable", "the app is stopping: "
                                          f"{self.app.stop_reason or 'a graceful stop'}")
        return None

    def _apply(self, loaded: Config | ConfigError | Refused,
               source: str) -> Difference | Refused:
        """Apply the file read (on the reactor)."""
        if isinstance(loaded, Refused):
            return loaded
        refused = self._refused()  # (a stop may have begun while the file was read)
        if refused is not None:
            return refused
        old = self.config
        assert old is not None
        if isinstance(loaded, ConfigError):
            messages = loaded.messages
            for message in messages:
                log.error("reload ({source}): {message}", source=source, message=message)
            log.error("reload ({source}): {count} error(s) in {path}; nothing changed",
                      source=source, count=len(messages), path=old.path)
            return Refused("invalid_config", f"{len(messages)} error(s) in {old.path}; "
                                             "nothing changed", tuple(messages))
        new = loaded
        needs_restart = restart_keys(old, new)
        log_result = self._apply_log(old.app.log, new.app.log)
        olds = {spec.name: spec for spec in old.daemons}
        news = {spec.name: spec for spec in new.daemons}
        added = sorted(set(news) - set(olds))
        removed = sorted(set(olds) - set(news))
        replaced = sorted(name for name in set(olds) & set(news)
                          if not same_spec(olds[name], news[name]))
        unchanged = sorted(set(olds) & set(news) - set(replaced))
        # What runs now is the new file's daemons and log with the old file's rest.
        self.config = dataclasses.replace(
            old, daemons=new.daemons,
            app=dataclasses.replace(old.app, log=new.app.log))
        for name in removed:
            self._swap(name, None)
        for name in replaced + added:
            self._swap(name, news[name])
        log.info("reload ({source}): {added} added, {removed} removed, {replaced} replaced, "
                 "{unchanged} unchanged{restart}", source=source, added=len(added),
                 removed=len(removed), replaced=len(replaced), unchanged=len(unchanged),
                 restart="; needs a restart to apply: " + ", ".join(needs_restart)
                 if needs_restart else "")
        return Difference(added=added, removed=removed, replaced=replaced,
                          unchanged=unchanged, needs_restart=needs_restart, log=log_result)

    def _apply_log(self, old: LogSettings, new: LogSettings) -> str:
        if old == new:
            return "unchanged"
        if self.reconfigure_log is None:
            return "not applied: this app's log is not daemonapp's (twistd's options apply)"
        try:
            self.reconfigure_log(new)
        except (OSError, ValueError) as e:
            log.error("reload: cannot apply app.log ({error}); the log stays as it was",
                      error=e)
            return f"not applied: {e}"
        log.info("reload: app.log applied (format {new_format}, level {new_level}, file {file})",
                 new_format=new.format, new_level=new.level, file=new.file or "stderr")
        return "applied"

    def _swap(self, name: str, spec: DaemonSpec | None) -> None:
        """Make ``spec`` (None: nothing) what runs under ``name``: the daemon there now
        stops after its run in flight, then the new one starts."""
        self._wanted[name] = spec
        current = self.app.daemons.get(name)
        if current is None:
            self._start_wanted(name)
            return
        if spec is not None and self.app.scheduler.trigger_pending(current):
            # A trigger accepted before this reload goes to the replacement: the old
            # daemon stops without the run it was asked for.
            self._triggered.add(name)
        if name in self._leaving:
            return  # its stop is under way; the wanted one starts when it is over
        self._leaving.add(name)
        self.app.remove(current).addBoth(self._left, name)

    def _left(self, result: object, name: str) -> None:
        self._leaving.discard(name)
        if isinstance(result, Failure):
            log.failure("reload: stopping daemon {daemon} failed", result, daemon=name)
        self._start_wanted(name)

    def _start_wanted(self, name: str) -> None:
        spec = self._wanted.pop(name, None)
        triggered = name in self._triggered
        self._triggered.discard(name)
        if spec is None or self.app.lifetime.stopping:
            return
        try:
            daemon = spec()
            self.app.add(daemon)
        except Exception:
            log.failure("reload: daemon {daemon} could not be started", daemon=name)
            return
        if triggered:
            try:
                self.app.scheduler.trigger(daemon)
            except ValueError:  # (it did not start: the app is stopping)
                pass

    def leaving(self, name: str) -> str | None:
        """What a reload does to the daemon running as ``name`` while it finishes its
        run: "removed", "replaced" (a new daemon starts once it has stopped), or None
        (nothing: no reload is stopping it)."""
        if name not in self._leaving:
            return None
        return "replaced" if self._wanted.get(name) is not None else "removed"

    def trigger_replacement(self, name: str) -> str:
        """Run the daemon replacing ``name`` once, as soon as it starts (a manual run);
        "after-run", or "merged" when a trigger asked for that already."""
        merged = name in self._triggered
        self._triggered.add(name)
        return "merged" if merged else "after-run"


def _read_config(path: str, owners: tuple[int, ...]) -> Config | ConfigError:
    """`load_config` as `daemonapp run` does it (run in a thread: nothing of the reactor)."""
    from daemonapp.configcheck import load_config

    try:
        return load_config(path, check_state_dir=True, owners=owners)
    except ConfigError as e:
        return e


def in_thread(reactor: Any, function: Callable[..., T], *args: Any) -> Deferred[T]:
    """``function(*args)`` in a new thread; its result on the reactor.

    A thread of its own, not the reactor's pool: daemons' thread runs (one a timeout
    could not stop among them) never make a reload wait. A reactor without threads (a
    test's Clock) calls ``function`` at once.
    """
    call_from_thread = getattr(reactor, "callFromThread", None)
    if call_from_thread is None:
        return maybeDeferred(function, *args)
    d: Deferred[T] = Deferred()

    def work() -> None:
        try:
            result = function(*args)
        except BaseException:
            call_from_thread(d.errback, Failure())
        else:
            call_from_thread(d.callback, result)

    threading.Thread(target=work, name="daemonapp reload", daemon=True).start()
    return d


def _call_hook(hook: Callable[[], object]) -> None:
    try:
        hook()
    except Exception:
        log.failure("error in a reload hook")


def same_spec(old: DaemonSpec, new: DaemonSpec) -> bool:
    """True when a reload keeps the daemon: same class, type and options (where in the
    file it is does not matter)."""
    return (old.cls is new.cls and old.type_name == new.type_name
            and _same_value(old.options, new.options))


def _same_value(old: object, new: object) -> bool:
    if isinstance(old, DaemonSpec) and isinstance(new, DaemonSpec):
        return same_spec(old, new)
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return old.keys() == new.keys() and all(_same_value(old[k], new[k]) for k in old)
    if isinstance(old, list | tuple) and isinstance(new, list | tuple):
        return len(old) == len(new) and all(_same_value(a, b) for a, b in zip(old, new,
                                                                               strict=True))
    try:
        return type(old) is type(new) and bool(old == new)
    except Exception:
        return False


def restart_keys(old: Config, new: Config) -> list[str]:
    """The keys whose change a reload leaves alone: they need a restart."""
    # (log applies at once; a *_line field is where a key sits in the file, not a key)
    keys = [f"app.{field.name}" for field in dataclasses.fields(old.app)
            if field.name != "log" and not field.name.endswith("_line")
            and not _same_value(getattr(old.app, field.name), getattr(new.app, field.name))]
    if len(old.listeners) != len(new.listeners):
        keys.append("listeners")
    else:
        keys += [f"listeners[{index}]" for index, (a, b)
                 in enumerate(zip(old.listeners, new.listeners, strict=True))
                 if not _same_value(dict(a.options), dict(b.options))]
    if old.cgi != new.cgi or old.cgi_configured != new.cgi_configured:
        keys.append("cgi")
    return keys
