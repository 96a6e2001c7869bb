"""What a validated configuration file is: the settings and specs `load_config` returns.

Plain frozen values, nothing built and nothing read from disk: `daemonapp.configcheck`
makes them from a YAML file and `daemonapp.assembly` builds the app from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from daemonapp.daemon import Daemon

__all__ = [
    "AppSettings",
    "CgiSettings",
    "Config",
    "ConfigError",
    "DaemonSpec",
    "ListenerSpec",
    "LockSettings",
    "LogSettings",
    "frontend_settings",
    "unix_socket_path",
]


class ConfigError(Exception):
    """A configuration file has errors; ``messages`` holds one line per error."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


@dataclass(frozen=True)
class LogSettings:
    """``app.log``: how `daemonapp run` writes its log."""

    format: str = "text"
    level: str = "info"
    file: str | None = None


@dataclass(frozen=True)
class LockSettings:
    """``app.locks``: the highlander lock backend (PostgreSQL when url is set)."""

    url: str | None = None
    ttl: float = 30.0
    wait: float = 10.0


@dataclass(frozen=True)
class AppSettings:
    """The ``app:`` section."""

    state_dir: str
    stay_alive_for: float | None = None
    shutdown_after: float | None = None
    shutdown_if_idle: float | None = None
    stop_timeout: float = 30.0
    time_slice: float = 0.010
    #: The zone of clock schedules without their own (None: the system's).
    timezone: str | None = None
    #: Where daemon alerts go (DESIGN §10): the targets of a job's on_failure, checked.
    alerts: Any = None
    #: Runs kept per daemon in the run history (0: none).
    history: int = 100
    log: LogSettings = field(default_factory=LogSettings)
    locks: LockSettings = field(default_factory=LockSettings)
    #: Where state_dir was set (0: the default ./var): run-time errors point there.
    state_dir_line: int = 0
    #: Processes serving the listeners (DESIGN §11; daemonapp.workers), and where set.
    processes: int = 1
    processes_line: int = 0


@dataclass(frozen=True)
class DaemonSpec:
    """A validated daemon section: calling it builds the daemon.

    ``spec(name=..., **overrides)`` returns a new instance; this is also what a
    class listed in ``NESTED_DAEMON_OPTIONS`` receives for such an option.
    """

    name: str
    type_name: str
    cls: type[Daemon]
    options: Mapping[str, Any]
    line: int = 0

    def __call__(self, *, name: str | None = None, **overrides: Any) -> Daemon:
        options = {**self.options, **overrides}
        return self.cls(name=self.name if name is None else name, **options)


@dataclass(frozen=True)
class ListenerSpec:
    """A validated ``listeners:`` item (options converted by LISTENER_OPTIONS)."""

    index: int
    options: Mapping[str, Any]
    line: int = 0
    key_lines: Mapping[str, int] = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        return str(self.options.get("protocol"))

    @property
    def endpoint(self) -> str | None:
        value = self.options.get("endpoint")
        return None if value is None else str(value)


@dataclass(frozen=True)
class CgiSettings:
    """The ``cgi:`` section, read by the CGI frontend through the state_dir sidecar."""

    min_load: float = 0.0
    max_load: float | None = None
    start_timeout: float = 10.0
    lock_timeout: float = 10.0
    #: The position in Config.listeners of the listener ``cgi.listener`` names.
    listener: int | None = None


@dataclass(frozen=True)
class Config:
    """A validated configuration file."""

    path: str
    base_dir: str
    app: AppSettings
    listeners: tuple[ListenerSpec, ...] = ()
    daemons: tuple[DaemonSpec, ...] = ()
    cgi: CgiSettings = field(default_factory=CgiSettings)
    cgi_configured: bool = False

    def cgi_listener(self) -> ListenerSpec | None:
        """The listener the CGI frontend talks to: ``cgi.listener``, else the first
        scgi, else the first fastcgi listener on a Unix socket (the frontend's rule)."""
        if self.cgi.listener is not None:
            return self.listeners[self.cgi.listener]
        settings = frontend_settings(self)
        if settings is None:
            return None
        for spec in self.listeners:
            if spec.protocol == settings["protocol"] and \
                    unix_socket_path(spec.endpoint, self.base_dir) == settings["socket"]:
                return spec
        return None


def unix_socket_path(endpoint: str | None, base_dir: str) -> str | None:
    """The socket path of a ``unix:`` endpoint string, absolute; None for others.

    listeners.endpoints.parse_endpoint is the one reading of endpoint strings.
    """
    if not endpoint:
        return None
    from daemonapp.listeners.endpoints import parse_endpoint

    try:
        spec = parse_endpoint(endpoint, base_dir=base_dir)
    except ValueError:
        return None
    return spec.path if spec.kind == "unix" else None


def frontend_settings(config: Config) -> dict[str, object] | None:
    """What the CGI frontend reads from ``config``: its ``sidecar_settings`` of the
    validated values, or None when no listener fits it.

    The frontend owns both rules, which listener it talks to and what its sidecar
    holds; the daemon hands it the checked values as the document it would read.
    """
    from daemonapp.cgi_frontend import sidecar_settings

    cgi = config.cgi
    items = [{key: spec.options[key] for key in ("protocol", "endpoint", "wsgi")
              if spec.options.get(key) is not None} for spec in config.listeners]
    document = {
        "app": {"state_dir": config.app.state_dir},
        "cgi": {"min_load": cgi.min_load, "max_load": cgi.max_load,
                "start_timeout": cgi.start_timeout, "lock_timeout": cgi.lock_timeout,
                "listener": cgi.listener},
        "listeners": items,
    }
    try:
        return sidecar_settings(config.path, document)
    except ValueError:
        return None  # a validated config: only "no listener on a unix socket" is left
