"""Listeners: FastCGI, SCGI and HTTP on the app's reactor, serving WSGI or native handlers.

The config check and the assembly use three names from here: :data:`LISTENER_OPTIONS`
(every allowed key of a listener item and its converter), :func:`check_listener` (an
item's options checked and converted, once, with every error) and :func:`build_listener`
(an IListener from one item). See docs/listeners.md.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from daemonapp.durations import parse_duration, parse_size
from daemonapp.imports import TargetImportError, import_target
from daemonapp.interfaces import IListener
from daemonapp.listeners.budget import (
    DEFAULT_MAX_BUFFER_BYTES,
    DEFAULT_MAX_LISTENER_BUFFER_BYTES,
    FdLimits,
)
from daemonapp.listeners.endpoints import parse_endpoint, parse_mode
from daemonapp.listeners.limits import (
    DEFAULT_BACKLOG,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_PARAM_BYTES,
    DEFAULT_QUEUE_TIMEOUT,
    DEFAULT_SEND_TIMEOUT,
    Dispatcher,
    JobsStatus,
)
from daemonapp.listeners.native import NativeApp, Request
from daemonapp.listeners.service import Listener
from daemonapp.listeners.wsgi import WSGIApp

if TYPE_CHECKING:
    from daemonapp.options import OptionError

__all__ = [
    "LISTENER_OPTIONS",
    "PROTOCOLS",
    "Listener",
    "ListenerOptions",
    "Request",
    "build_listener",
    "check_listener",
]

log = Logger()

PROTOCOLS = ("fastcgi", "scgi", "http")
#: The environment variable a spawning web server may set: addresses allowed to connect.
WEB_SERVER_ADDRS = "FCGI_WEB_SERVER_ADDRS"
_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _protocol(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in PROTOCOLS:
        raise ValueError(f"expected one of {', '.join(PROTOCOLS)}, got {value!r}")
    return value.lower()


def _endpoint(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return f"fd:{value}"
    spec = parse_endpoint(value)  # raises ValueError with a message
    if spec.kind == "fd":
        # one spelling ("fd:fileno=0", "fd:0" alike), so that the config's "at most one
        # listener on the inherited fd 0" rule and `daemonapp run` recognize it
        return f"fd:{spec.fd}"
    result: str = value.strip()
    return result


def _target(value: Any) -> str:
    if not isinstance(value, str) or not _TARGET.fullmatch(value.strip()):
        raise ValueError(f'expected "module:callable" like "myapp.web:application", '
                         f"got {value!r}")
    return value.strip()


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected true or false, got {value!r}")


def _int(minimum: int, *, optional: bool = False) -> Callable[[Any], Any]:
    def convert(value: Any) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"expected a whole number of at least {minimum}, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"expected a whole number of at least {minimum}, "
                             f"got {value!r}") from None
        if number < minimum:
            raise ValueError(f"expected a whole number of at least {minimum}, got {value!r}")
        return number
    return convert


def _duration(*, optional: bool = False, positive: bool = False) -> Callable[[Any], Any]:
    def convert(value: Any) -> float | None:
        if value is None and optional:
            return None
        return parse_duration(value, positive=positive)
    return convert


def _size(*, minimum: int = 0) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        size = parse_size(value)
        if size < minimum:
            raise ValueError(f"expected a size of at least {minimum} bytes, got {value!r}")
        return size
    return convert


def _allow_from(value: Any) -> list[str] | None:
    if value is None:
        return None
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ValueError(f'expected addresses or networks like ["127.0.0.1", "10.0.0.0/8"], '
                         f"got {value!r}")
    networks = []
    for item in items:
        try:
            networks.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
        except ValueError:
            raise ValueError(f"expected an IP address or network, got {item!r}") from None
    return networks


def _web_server_addrs() -> list[str] | None:
    """FCGI_WEB_SERVER_ADDRS (FastCGI spec, §3.2): the peers a spawned responder accepts.

    A web server that spawns us over TCP may set it; an item's own ``allow_from``
    wins. Unix peers are never filtered, so it matters for tcp sockets only.
    """
    value = os.environ.get(WEB_SERVER_ADDRS, "").strip()
    if not value:
        return None
    try:
        return _allow_from(value)
    except ValueError as err:
        message = f"{WEB_SERVER_ADDRS} from the environment: {err}"
        raise _option_error("allow_from", message) from None


def _script_name(value: Any) -> str:
    if not isinstance(value, str) or (value and not value.startswith("/")):
        raise ValueError(f'expected the mount path like "/app" (or "" for the root), '
                         f"got {value!r}")
    return value.rstrip("/")


def _group(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a group name or number, got {value!r}")
    return value.strip()


#: Every key a listener item may have, with the converter that checks and normalizes it.
LISTENER_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "protocol": _protocol,
    "endpoint": _endpoint,
    "wsgi": _target,
    "native": _target,
    "jobs": _bool,
    "health": _bool,
    "metrics": _bool,
    "threads": _int(0),
    "request_buffering": _bool,
    "max_concurrent": _int(1, optional=True),
    "backlog": _int(0),
    "queue_timeout": _duration(),
    "max_param_bytes": _size(minimum=1),
    "max_body_bytes": _size(),
    "request_timeout": _duration(optional=True, positive=True),
    "max_requests": _int(1, optional=True),
    "max_requests_jitter": _int(0),
    "allow_from": _allow_from,
    "script_name": _script_name,
    "header_timeout": _duration(positive=True),
    "body_timeout": _duration(positive=True),
    "idle_timeout": _duration(positive=True),
    "send_timeout": _duration(positive=True),
    "max_buffer_bytes": _size(),
    "max_listener_buffer_bytes": _size(),
    "max_connections": _int(1, optional=True),
    "socket_group": _group,
    "mode": parse_mode,
}


def _option_error(key: str, message: str) -> OptionError:
    from daemonapp.options import OptionError

    return OptionError(key, message)


class ListenerOptions(dict[str, Any]):
    """A listener item's options as :func:`check_listener` left them: each value converted,
    only the keys given (an absent key means the default). :func:`build_listener` takes
    them as they are, without converting them again."""


def check_listener(options: Mapping[Any, Any], *,
                   base_dir: str = ".") -> tuple[ListenerOptions, list[OptionError]]:
    """Check and convert one listener item's options, once: the values and every error.

    Each key goes through its :data:`LISTENER_OPTIONS` converter (None included: an
    empty YAML value is an error unless the key is optional); ``protocol`` is required.
    When every key is right, the rules between keys follow (an endpoint unless fastcgi,
    wsgi or native but not both, something to serve, the endpoint against ``base_dir``
    and ``mode``, FCGI_WEB_SERVER_ADDRS, the application's import), up to the first that
    fails. Errors are OptionErrors naming the key; nothing is built.
    """
    values = ListenerOptions()
    errors: list[OptionError] = []
    if "protocol" not in options:
        errors.append(_option_error("protocol",
                                    f"missing: expected one of {', '.join(PROTOCOLS)}"))
    for key, raw in options.items():
        converter = LISTENER_OPTIONS.get(key) if isinstance(key, str) else None
        if converter is None:
            from daemonapp.options import suggest

            errors.append(_option_error(
                str(key), f"unknown listener option{suggest(key, LISTENER_OPTIONS)}; "
                          f"expected one of {', '.join(sorted(LISTENER_OPTIONS))}"))
            continue
        try:
            values[key] = converter(raw)
        except (ValueError, TypeError) as err:
            errors.append(_option_error(key, str(err)))
    if not errors:
        error = _cross_key_error(values, base_dir)
        if error is not None:
            errors.append(error)
    return values, errors


def _cross_key_error(values: ListenerOptions, base_dir: str) -> OptionError | None:
    """The first rule between the keys of converted ``values`` that fails, or None."""
    protocol = values["protocol"]
    endpoint = values.get("endpoint")
    if endpoint is None and protocol != "fastcgi":
        return _option_error("endpoint", 'missing: expected a Twisted endpoint like '
                                         '"unix:./run/app.sock" or '
                                         '"tcp:8080:interface=127.0.0.1"')
    if "wsgi" in values and "native" in values:
        return _option_error("native", "a listener serves either wsgi or native, not both")
    if not ("wsgi" in values or "native" in values or values.get("jobs")
            or values.get("health") or values.get("metrics")):
        return _option_error("protocol", "a listener needs wsgi: module:callable, "
                                         "native: module:callable, jobs: true, health: true "
                                         "or metrics: true")
    if values.get("metrics"):
        try:
            importlib.import_module("prometheus_client")
        except ImportError:
            return _option_error("metrics", "metrics: true needs prometheus_client: "
                                            "pip install 'daemonapp[metrics]'")
    from daemonapp.options import OptionError

    try:
        parse_endpoint(endpoint, base_dir=base_dir, mode=values.get("mode"))
    except ValueError as err:
        return _option_error("endpoint", str(err))
    try:
        if values.get("allow_from") is None and protocol == "fastcgi":
            _web_server_addrs()
        for key in ("wsgi", "native"):
            if key in values:
                _import_app(key, values[key])
    except OptionError as err:
        return err
    return None


def _import_app(key: str, target: str) -> Any:
    """The application ``target`` names, through :func:`daemonapp.imports.import_target`
    (OptionError naming ``key`` when it cannot be imported or is not callable)."""
    try:
        found = import_target(target, as_written=True)
    except TargetImportError as err:
        raise _option_error(key, str(err)) from err
    if not callable(found):
        raise _option_error(key, f"{target!r} is not callable")
    return found


def build_listener(options: Mapping[str, Any], *, reactor: Any, base_dir: str,
                   state_dir: str | None = None,
                   jobs_status: JobsStatus | None = None,
                   fds: FdLimits | None = None, multiprocess: bool = False) -> IListener:
    """Build the listener one config item describes (not started yet).

    ``options``: the :class:`ListenerOptions` of :func:`check_listener`, used as they
    are, or raw values with the keys of :data:`LISTENER_OPTIONS`, checked here (None
    means the default; ``protocol`` defaults to fastcgi).
    Relative unix socket paths are resolved against ``base_dir``. ``jobs_status`` is
    what ``jobs: true`` serves at ``/jobs/<id>``. ``fds`` is the process's fd limits
    (tests pass their own). ``multiprocess``: other processes serve the same WSGI
    application (``app.processes`` > 1, or processes a web server spawned): the
    environ's ``wsgi.multiprocess`` (PEP 3333). Raises OptionError(key, message), the
    first error found.
    """
    if isinstance(options, ListenerOptions):
        values = options
    else:
        given = {key: raw for key, raw in options.items() if raw is not None}
        values, errors = check_listener({"protocol": "fastcgi", **given}, base_dir=base_dir)
        if errors:
            raise errors[0]
    protocol = values["protocol"]
    jobs = values.get("jobs", False)
    if jobs and jobs_status is None:
        raise _option_error("jobs", "jobs: true needs a job dispatcher in the same app")
    try:
        endpoint = parse_endpoint(values.get("endpoint"), base_dir=base_dir,
                                  mode=values.get("mode"))
    except ValueError as err:  # checked already, unless base_dir differs
        raise _option_error("endpoint", str(err)) from err
    if endpoint.path is not None and state_dir is not None:
        private = os.path.realpath(os.path.join(base_dir, state_dir))
        if os.path.realpath(endpoint.path).startswith(private + os.sep):
            log.warn("listener socket {path} is inside the private state_dir {state_dir}: "
                     "a web server running as another user cannot reach it",
                     path=endpoint.path, state_dir=private)
    threads = values.get("threads", 10)
    app: NativeApp | WSGIApp | None = None
    if "wsgi" in values:
        app = WSGIApp(_import_app("wsgi", values["wsgi"]), reactor=reactor, threads=threads,
                      request_buffering=values.get("request_buffering", True),
                      multiprocess=multiprocess)
    elif "native" in values:
        app = NativeApp(_import_app("native", values["native"]))
    max_concurrent = values.get("max_concurrent")
    if max_concurrent is None and isinstance(app, WSGIApp) and threads > 0:
        max_concurrent = threads
    dispatcher = Dispatcher(
        app,
        reactor=reactor,
        max_concurrent=max_concurrent,
        backlog=values.get("backlog", DEFAULT_BACKLOG),
        queue_timeout=values.get("queue_timeout", DEFAULT_QUEUE_TIMEOUT),
        request_timeout=values.get("request_timeout"),
        max_body_bytes=values.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES),
        max_param_bytes=values.get("max_param_bytes", DEFAULT_MAX_PARAM_BYTES),
        max_requests=values.get("max_requests"),
        max_requests_jitter=values.get("max_requests_jitter", 0),
        script_name=values.get("script_name"),
        header_timeout=values.get("header_timeout", DEFAULT_HEADER_TIMEOUT),
        body_timeout=values.get("body_timeout", DEFAULT_BODY_TIMEOUT),
        idle_timeout=values.get("idle_timeout", DEFAULT_IDLE_TIMEOUT),
        send_timeout=values.get("send_timeout", DEFAULT_SEND_TIMEOUT),
        max_buffer_bytes=values.get("max_buffer_bytes", DEFAULT_MAX_BUFFER_BYTES),
        max_listener_buffer_bytes=values.get("max_listener_buffer_bytes",
                                             DEFAULT_MAX_LISTENER_BUFFER_BYTES),
        fds=fds,
        jobs_status=jobs_status if jobs else None,
        health=values.get("health", False),
        metrics=values.get("metrics", False),
    )
    allow_from = values.get("allow_from")
    if allow_from is None and protocol == "fastcgi":
        allow_from = _web_server_addrs()
    networks = ([ipaddress.ip_network(net) for net in allow_from]
                if allow_from is not None else None)
    factory: Any
    max_connections = values.get("max_connections")
    if protocol == "fastcgi":
        from daemonapp.listeners.fastcgi import FastCGIFactory

        factory = FastCGIFactory(dispatcher, reactor=reactor, allow_from=networks, fds=fds,
                                 max_connections=max_connections)
    elif protocol == "scgi":
        from daemonapp.listeners.scgi import SCGIFactory

        factory = SCGIFactory(dispatcher, reactor=reactor, allow_from=networks, fds=fds,
                              max_connections=max_connections)
    else:
        from daemonapp.listeners.http import HTTPSite

        factory = HTTPSite(dispatcher, reactor=reactor, allow_from=networks, fds=fds,
                           max_connections=max_connections)
    listener: IListener = Listener(
        protocol_name=protocol, endpoint=endpoint, factory=factory, dispatcher=dispatcher,
        reactor=reactor, app=app, socket_group=values.get("socket_group"),
    )
    return listener
