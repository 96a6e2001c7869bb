"""A reload (``daemonapp reload``, SIGHUP): re-read the YAML file, apply the difference.

`Reloader` checks the file with `load_config` (the checks of ``daemonapp check``) and,
when it is valid, applies what changed (DESIGN §9): new daemons start, removed ones
stop after their run in flight, changed ones are replaced the same way, unchanged ones
are left alone, ``app.log`` applies at once, and what needs a restart is named
(`restart_keys`) and left as it was. `same_spec` says which daemons are unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp.configmodel import Config, ConfigError, DaemonSpec, LogSettings

__all__ = ["Difference", "Refused", "Reloader", "restart_keys", "same_spec"]

log = Logger(namespace="daemonapp.control")


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

    def on_reload(self, begin: Callable[[], object], end: Callable[[], object]) -> None:
        """Call ``begin()`` when a reload begins and ``end()`` when it is over."""
        self._hooks.append((begin, end))

    def reload(self, source: str) -> Difference | Refused:
        """Re-read the YAML file and apply the difference (DESIGN §9); the reply.

        The one place where a reload begins and ends: the `on_reload` hooks run
        around it, whatever its result.
        """
        for begin, _ in self._hooks:
            _call_hook(begin)
        try:
            reply = self._reload_now(source)
        finally:
            for _, end in self._hooks:
                _call_hook(end)
        return reply

    def _reload_now(self, source: str) -> Difference | Refused:
        old = self.config
        if old is None:
            return Refused("unavailable", "this app was not started from a YAML file: "
                                          "there is nothing to reload")
        if self.app.lifetime.stopping:
            return Refused("unavailable", "the app is stopping: "
                                          f"{self.app.stop_reason or 'a graceful stop'}")
        from daemonapp.configcheck import load_config

        try:
            new = load_config(old.path, check_state_dir=True, owners=self.owners)
        except ConfigError as e:
            for message in e.messages:
                log.error("reload ({source}): {message}", source=source, message=message)
            log.error("reload ({source}): {count} error(s) in {path}; nothing changed",
                      source=source, count=len(e.messages), path=old.path)
            return Refused("invalid_config", f"{len(e.messages)} error(s) in {old.path}; "
                                             "nothing changed", tuple(e.messages))
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
        log.info("reload: app.log applied (format {log_format}, level {level}, file {file})",
                 log_format=new.format, level=new.level, file=new.file or "stderr")
        return "applied"

    def _swap(self, name: str, spec: DaemonSpec | None) -> None:
        """Make ``spec`` (None: nothing) what runs under ``name``: the daemon there now
        stops after its run in flight, then the new one starts."""
        self._wanted[name] = spec
        current = self.app.daemons.get(name)
        if current is None:
            self._start_wanted(name)
            return
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
        if spec is None or self.app.lifetime.stopping:
            return
        try:
            daemon = spec()
            self.app.add(daemon)
        except Exception:
            log.failure("reload: daemon {daemon} could not be started", daemon=name)


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
    keys = [f"app.{field.name}" for field in dataclasses.fields(old.app)
            if field.name not in ("log", "state_dir_line")
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
