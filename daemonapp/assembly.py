"""From a loaded Config to a running DaemonApp: the one assembly both entry points use.

`daemonapp run` (cli.py) and `twistd daemonapp` (tap.py) take the same steps, in this
order, through an `Assembly`:

1. `prepare`: the fd-0 rule (a fastcgi item without an endpoint serves the listening
   socket a web server passes as fd 0) and the private state directory;
2. `build`: the DaemonApp with the file's settings, its daemons, the status socket
   and the listeners (a process spawned by a web server gets its own status socket
   and a short drain);
3. `write_sidecar`: what the CGI frontend reads (its own rules decide what it holds);
4. `when_listening`: once the reactor runs and every listener should be bound, stop
   (exit status 1) unless they all are; `run` then takes over from its predecessor.

Errors a user can fix are ConfigError (``FILE:LINE: key: message``), as for validation.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from daemonapp.configcheck import ListenersUnavailable, listeners_module
from daemonapp.configmodel import Config, ConfigError, ListenerSpec, frontend_settings
from daemonapp.options import OptionError
from daemonapp.state_dir import StateDirError, ensure_state_dir

if TYPE_CHECKING:
    from daemonapp.app import DaemonApp

__all__ = [
    "SPAWNED_STOP_TIMEOUT",
    "Assembly",
    "build_app",
    "not_listening",
    "stop_unless_listening",
    "write_sidecar",
]

# The namespaces these lines had before the assembly was a module of its own.
log = Logger(namespace="daemonapp.config")
_run_log = Logger(namespace="daemonapp.cli")

#: Under a web server that spawned us (fd 0), a drain must fit in the few seconds
#: before mod_fcgid's SIGKILL.
SPAWNED_STOP_TIMEOUT = 2.0


class Assembly:
    """The steps from ``config`` to a running app; see the module's docstring.

    ``inherited``: True when a web server passed a listening socket as fd 0 (the app
    is one of its spawned processes), False when it did not (`daemonapp run` checks
    fd 0), None to take the endpoints as written (twistd, the Python API).
    ``owners``: uids that may own state_dir besides us (twistd's --uid).
    ``worker_fds``: for a worker process of ``app.processes`` (daemonapp.workers), the
    listening fd it inherited for each listener item (by index): the app it builds
    serves those listeners only, with ``jobs_status`` for ``jobs: true``.
    """

    def __init__(self, config: Config, *, inherited: bool | None = None,
                 owners: Iterable[int] = (), worker_fds: Mapping[int, int] | None = None,
                 jobs_status: Any = None) -> None:
        self.config = config
        self.inherited = inherited
        self.owners = tuple(owners)
        self.worker_fds = worker_fds
        self.jobs_status = jobs_status
        #: The tcp ports a previous process of this config still listens on (a takeover):
        #: bound too, shared with it (SO_REUSEPORT) until it has drained.
        self.share_ports: frozenset[int] = frozenset()
        self._listeners: tuple[ListenerSpec, ...] | None = None

    # ------------------------------------------------------------------ prepare

    def prepare(self) -> None:
        """Assign fd 0 and create (0700) and check state_dir; ConfigError when refused.

        Idempotent; `build` calls it. `daemonapp run` calls it first, to open its
        log in state_dir before anything else is built.
        """
        if self._listeners is None:
            self._listeners = self._assign_fd0()
            self._state_dir()

    def _assign_fd0(self) -> tuple[ListenerSpec, ...]:
        """The listener items with fd 0 assigned, for a process that checked fd 0."""
        config = self.config
        if self.worker_fds is not None:
            return tuple(_on_fd(spec, self.worker_fds[spec.index]) for spec in config.listeners
                         if spec.index in self.worker_fds)
        if self.inherited and config.app.processes > 1:
            raise ConfigError([
                f"{config.path}:{config.app.processes_line or 1}: app.processes: a web "
                "server started this process (fd 0 is a listening socket) and owns the "
                "processes: remove processes, or run the app with `daemonapp run`"])
        if self.inherited is None:
            return config.listeners
        specs: list[ListenerSpec] = []
        for spec in config.listeners:
            endpoint = spec.endpoint
            wants_fd0 = spec.protocol == "fastcgi" and (endpoint is None or endpoint == "fd:0")
            if wants_fd0 and not self.inherited:
                raise ConfigError([
                    f"{config.path}:{spec.line}: listeners[{spec.index}].endpoint: no "
                    "endpoint (or fd:0) means the listening socket a web server passes as "
                    "fd 0, and fd 0 is not one; give an endpoint like "
                    '"unix:./run/app.sock"'])
            if wants_fd0:
                specs.append(_on_fd(spec, 0))
            else:
                specs.append(spec)
        return tuple(specs)

    def _state_dir(self) -> str:
        config = self.config
        try:
            return ensure_state_dir(config.app.state_dir, owners=self.owners)
        except StateDirError as e:
            line = config.app.state_dir_line or 1
            raise ConfigError([f"{config.path}:{line}: app.state_dir: {e}"]) from None

    # -------------------------------------------------------------------- build

    def build(self, *, reactor: Any = None, status_server: bool | None = None,
              **app_overrides: Any) -> DaemonApp:
        """The DaemonApp: settings, daemons, status socket, listeners (not started).

        ``app_overrides`` are DaemonApp keywords (``stop_reactor=False``, ``clock=``,
        ...). ``status_server`` None means: serve the status socket when the reactor
        can listen on Unix sockets. Raises ConfigError for a listener it cannot build.
        """
        from daemonapp.app import DaemonApp

        self.prepare()
        config, settings = self.config, self.config.app
        spawned = bool(self.inherited)
        kwargs: dict[str, Any] = {
            "stay_alive_for": settings.stay_alive_for,
            "shutdown_after": settings.shutdown_after,
            "shutdown_if_idle": settings.shutdown_if_idle,
            "stop_timeout": min(settings.stop_timeout, SPAWNED_STOP_TIMEOUT) if spawned
            else settings.stop_timeout,
            "time_slice": settings.time_slice,
            "timezone": settings.timezone,
            "alerts": settings.alerts,
            "history": settings.history,
            "state_dir": settings.state_dir,
            "lock_wait": settings.locks.wait,
            "reactor": reactor,
        }
        status_socket = app_overrides.pop("status_socket", None)
        kwargs.update(app_overrides)
        if settings.locks.url is not None and "locks" not in app_overrides:
            kwargs["locks"] = _lock_provider(config, kwargs.get("reactor") or kwargs.get("clock"))
        app = DaemonApp(**kwargs)
        if self.worker_fds is not None:  # a worker process serves the listeners only
            self._add_listeners(app)
            return app
        for spec in config.daemons:
            app.add(spec())
        if status_server is None:
            status_server = hasattr(app.reactor, "adoptStreamPort")
        controller = None
        if not spawned:  # a web server's children share state_dir: none takes commands
            from daemonapp.control import Controller

            controller = Controller(app, config, owners=self.owners)
            controller.setServiceParent(app)  # type: ignore[no-untyped-call]
        if status_server:
            from daemonapp.status import StatusService, status_socket_path

            if status_socket is None and spawned:
                # Siblings spawned by the web server share state_dir: a socket each.
                status_socket = status_socket_path(settings.state_dir, os.getpid())
            path = status_socket or status_socket_path(settings.state_dir)
            StatusService(app, path, controller).setServiceParent(app)  # type: ignore[no-untyped-call]
        from daemonapp.systemd import SystemdNotifier

        notifier = SystemdNotifier.from_environ(app)
        if notifier is not None and not spawned:  # a web server's child is not the unit
            notifier.setServiceParent(app)  # type: ignore[no-untyped-call]
        if spawned:
            # The web server SIGKILLs a few seconds after its SIGTERM: job children are
            # killed at once and their jobs go back to pending with their attempt given
            # back. (A dispatcher's own stop_timeout would only lose the attempt.)
            for daemon in app.daemons.values():
                if hasattr(daemon, "jobs_snapshot"):
                    daemon.stop_timeout = 0.0  # type: ignore[attr-defined]
            assert self._listeners is not None
            if not any(spec.options.get("endpoint") == "fd:0" for spec in self._listeners):
                _run_log.warn("fd 0 is a listening socket, but no fastcgi listener serves it "
                         "(an explicit endpoint wins)")
        self._add_listeners(app)
        if settings.processes > 1 and not spawned and hasattr(app.reactor, "spawnProcess"):
            from daemonapp.workers import Supervisor

            Supervisor(app, config).setServiceParent(app)  # type: ignore[no-untyped-call]
        return app

    def _add_listeners(self, app: DaemonApp) -> None:
        """Build each listener item with daemonapp.listeners.build_listener and add it."""
        config = self.config
        specs = self._listeners
        if not specs:
            return
        try:
            build = listeners_module().build_listener
        except ListenersUnavailable as e:
            raise ConfigError([f"{config.path}:{specs[0].line}: listeners: {e}"]) from None
        jobs_status = self.jobs_status
        for daemon in app.daemons.values():
            if callable(getattr(daemon, "job_status", None)):
                jobs_status = daemon.job_status  # type: ignore[attr-defined]
                break
        # PEP 3333: other processes run the same application (app.processes, or the
        # siblings a web server spawns, as mod_fcgid does).
        multiprocess = config.app.processes > 1 or bool(self.inherited)
        messages = []
        for spec in specs:
            try:
                listener = build(spec.options, reactor=app.reactor,
                                 base_dir=config.base_dir, state_dir=config.app.state_dir,
                                 jobs_status=jobs_status, multiprocess=multiprocess)
            except OptionError as e:
                line = spec.key_lines.get(e.key, spec.line)
                messages.append(f"{config.path}:{line}: listeners[{spec.index}].{e.key}: "
                                f"{e.message}")
                continue
            listener.share_ports = self.share_ports
            app.add_listener(listener)
        if messages:
            raise ConfigError(messages)

    # ------------------------------------------------------------ sidecar, ready

    def write_sidecar(self, argv: list[str]) -> str | None:
        """Write state_dir/cgi.marshal for the CGI frontend; None when no listener fits."""
        return write_sidecar(self.config, argv)

    def when_listening(self, app: DaemonApp,
                       then: Callable[[bool], object] | None = None) -> None:
        """Once the reactor runs and the app started: `stop_unless_listening`, then
        ``then(listening)`` (a takeover goes on only when every listener is bound).

        callLater(0): after the app's own start (callWhenRunning) bound its sockets.
        """
        def check() -> None:
            listening = stop_unless_listening(app)
            if then is not None:
                then(listening)

        app.reactor.callWhenRunning(app.reactor.callLater, 0, check)


def _on_fd(spec: ListenerSpec, fd: int) -> ListenerSpec:
    """``spec`` serving the inherited listening socket ``fd`` (``endpoint: fd:N``)."""
    # a copy keeps check_listener's ListenerOptions: built as they are
    options = copy.copy(spec.options)
    assert isinstance(options, dict)
    options["endpoint"] = f"fd:{fd}"
    return replace(spec, options=options)


def build_app(config: Config, *, reactor: Any = None, status_server: bool | None = None,
              status_socket: str | None = None, owners: Iterable[int] = (),
              **app_overrides: Any) -> DaemonApp:
    """Build the DaemonApp a Config describes (the Python API; endpoints as written).

    Creates the state directory (0700). ``app_overrides`` are DaemonApp keywords;
    ``status_socket`` the status socket's path (default ``state_dir/status.sock``).
    """
    if status_socket is not None:
        app_overrides["status_socket"] = status_socket
    return Assembly(config, owners=owners).build(reactor=reactor, status_server=status_server,
                                                  **app_overrides)


def write_sidecar(config: Config, argv: list[str]) -> str | None:
    """Write state_dir/cgi.marshal for the CGI frontend; None when no listener fits.

    The frontend's ``sidecar_settings`` decides what it holds and which listener it
    names (daemonapp.configmodel.frontend_settings); the daemon adds the command that
    starts it and ``scgi_content_length``: every SCGI answer of ours has a
    Content-Length. The frontend checks it before it is written atomically, 0600.
    """
    from daemonapp.cgi_frontend import write_sidecar as write_settings

    settings = frontend_settings(config)
    if settings is None:
        return None
    settings["argv"] = argv
    # our SCGI listener buffers every answer to the frontend and sends it whole with
    # a Content-Length (or nothing): an answer without one was cut short
    settings["scgi_content_length"] = True
    return write_settings(config.app.state_dir, settings)


def not_listening(app: DaemonApp) -> list[str]:
    """The names of the app's listeners that are not bound (after it started)."""
    return [str(getattr(listener, "name", listener)) for listener in app.listeners
            if not getattr(listener, "running", False)
            or getattr(listener, "port", True) is None]


def stop_unless_listening(app: DaemonApp) -> bool:
    """Stop the app (exit status 1) when a listener failed to bind; True when all are.

    A listener that cannot bind (an address in use) must not leave a half-started
    process behind.
    """
    if app.stop_reason is not None:
        return True  # already stopping (an idle exit at start): its listeners are closing
    failed = not_listening(app)
    if not failed:
        return True
    log.critical("not listening: {listeners}; stopping", listeners=", ".join(failed))
    app.stop(f"listener(s) not listening: {', '.join(failed)}", 1)
    return False


def _lock_provider(config: Config, reactor: Any) -> Any:
    """The PostgreSQL lease provider of ``app.locks.url``."""
    from daemonapp import locks

    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return locks.LockProvider(reactor=reactor, state_dir=config.app.state_dir,
                              url=config.app.locks.url, ttl=config.app.locks.ttl)
