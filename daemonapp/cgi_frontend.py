"""The CGI program ``daemonapp-cgi``: answer one request through the running daemon.

It relays the request over the daemon's SCGI or FastCGI unix socket, starts the daemon
on demand when the load allows, refuses with 503 when the machine is too busy and serves
in-process as plain CGI when it is idle (DESIGN §5). It runs once per request, so at
import time it touches only cheap parts of the standard library: no ``socket``, ``re``,
``json``, ``typing`` or Twisted.
"""

from __future__ import annotations

import marshal
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from collections.abc import Callable, Iterable, Mapping, MutableMapping
    from types import ModuleType
    from typing import Any
    from wsgiref.handlers import CGIHandler

    _Params = list[tuple[bytes, bytes]]

#: File name of the sidecar that ``daemonapp run`` writes into its state_dir.
SIDECAR_NAME = "cgi.marshal"
#: Environment variable naming the YAML configuration (as for ``daemonapp run``).
CONFIG_ENV = "DAEMONAPP_CONFIG"
#: Environment variable naming the state_dir, for a state_dir other than ``<config dir>/var``.
STATE_DIR_ENV = "DAEMONAPP_STATE_DIR"
#: Test hook: a number used instead of the 1-minute load average.
LOADAVG_ENV = "DAEMONAPP_CGI_LOADAVG"
#: SCGI parameter telling the daemon the answer goes to this frontend, which buffers it:
#: the daemon should then send a Content-Length, the only way an SCGI answer cut short by
#: a crash can be told from a whole one (FastCGI has FCGI_END_REQUEST for that).
FRONTEND_PARAM = b"DAEMONAPP_CGI_FRONTEND"
#: Name of the start lock in ``state_dir/locks/``.
START_LOCK_NAME = "cgi-start"

DEFAULT_MIN_LOAD = 0.0
DEFAULT_START_TIMEOUT = 10.0
DEFAULT_LOCK_TIMEOUT = 10.0
DEFAULT_RETRY_AFTER = 30
DEFAULT_RESPONSE_TIMEOUT = 300.0
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: How long a full listen backlog (EAGAIN on connect) is retried before a 503.
BUSY_TIMEOUT = 5.0

_MAX_SIDECAR_BYTES = 64 * 1024
_MAX_HEADER_BYTES = 64 * 1024
_MAX_STDERR_BYTES = 64 * 1024
_CHUNK = 32 * 1024
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Variables of ours, of the interpreter and of the loader: never request parameters.
_PRIVATE_PREFIXES = (b"DAEMONAPP_", b"PYTHON", b"LD_")

_FCGI_BEGIN_REQUEST = 1
_FCGI_END_REQUEST = 3
_FCGI_PARAMS = 4
_FCGI_STDIN = 5
_FCGI_STDOUT = 6
_FCGI_STDERR = 7
_FCGI_REQUEST_COMPLETE = 0


class CGIFrontendError(Exception):
    """A request that cannot be answered normally; main() turns it into a CGI answer."""

    def __init__(self, message: str, status: int = 503, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class Settings:
    """What the frontend needs to know, read from the sidecar or from the YAML file."""

    __slots__ = (
        "argv",
        "config",
        "length_required",
        "lock_timeout",
        "max_load",
        "max_response_bytes",
        "min_load",
        "protocol",
        "response_timeout",
        "retry_after",
        "socket",
        "start_timeout",
        "state_dir",
        "wsgi",
    )

    def __init__(self, raw: Mapping[str, object]) -> None:
        """Validate a sidecar-shaped mapping; a wrong value raises ValueError naming its key."""
        self.socket = _text(raw, "socket")
        protocol = _text(raw, "protocol")
        if protocol not in ("scgi", "fastcgi"):
            raise ValueError(f"protocol: expected 'scgi' or 'fastcgi', got {protocol!r}")
        self.protocol = protocol
        self.state_dir = _text(raw, "state_dir")
        self.min_load = _number(raw, "min_load", DEFAULT_MIN_LOAD)
        self.max_load = _number(raw, "max_load", float("inf"))
        self.start_timeout = _number(raw, "start_timeout", DEFAULT_START_TIMEOUT)
        self.lock_timeout = _number(raw, "lock_timeout", DEFAULT_LOCK_TIMEOUT)
        self.response_timeout = _number(raw, "response_timeout", DEFAULT_RESPONSE_TIMEOUT)
        self.max_response_bytes = int(
            _number(raw, "max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES)
        )
        self.retry_after = int(_number(raw, "retry_after", DEFAULT_RETRY_AFTER))
        argv = raw.get("argv")
        if (
            not isinstance(argv, list | tuple)
            or not argv
            or not all(isinstance(item, str) for item in argv)
        ):
            raise ValueError(f"argv: expected a non-empty list of strings, got {argv!r}")
        self.argv: list[str] = list(argv)
        config = raw.get("config")
        self.config: str | None = config if isinstance(config, str) else None
        wsgi = raw.get("wsgi")
        self.wsgi: str | None = wsgi if isinstance(wsgi, str) and wsgi else None
        # True once the daemon promises a Content-Length on every SCGI answer to this
        # frontend (see FRONTEND_PARAM): then an answer without one is a cut-short one.
        self.length_required = raw.get("scgi_content_length") is True


def _text(raw: Mapping[str, object], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _number(raw: Mapping[str, object], key: str, default: float) -> float:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{key}: expected a number of zero or more, got {value!r}")
    return float(value)


# -- configuration ------------------------------------------------------------------------


def sidecar_path(state_dir: str) -> str:
    """The sidecar's path in a state_dir."""
    return os.path.join(state_dir, SIDECAR_NAME)


def write_sidecar(state_dir: str, settings: Mapping[str, object]) -> str:
    """Write the sidecar atomically (0600) for ``daemonapp run``; returns its path.

    The mapping is validated first (see `sidecar_settings` for its shape), so a broken
    sidecar is never written.
    """
    Settings(settings)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = sidecar_path(state_dir)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, marshal.dumps(dict(settings)))
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def read_sidecar(path: str, config: str | None = None) -> Settings | None:
    """The settings in a sidecar, or None when it is missing, untrusted, stale or invalid.

    Stale means older than the configuration file: the configuration was edited since
    the daemon wrote it, so the YAML file is read instead. Untrusted means owned by
    another user (root aside) or writable by group or others.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if info.st_uid not in (os.geteuid(), 0) or info.st_mode & 0o022:
            _log(f"{path}: ignored: owned by uid {info.st_uid} or writable by others")
            return None
        data = os.read(fd, _MAX_SIDECAR_BYTES + 1)
    finally:
        os.close(fd)
    try:
        raw = marshal.loads(data)  # noqa: S302 - our own file in a private dir, owner checked
        if len(data) > _MAX_SIDECAR_BYTES or not isinstance(raw, dict):
            raise ValueError("not a marshalled dict of at most 64 KiB")
        settings = Settings(raw)
    except (ValueError, EOFError, TypeError) as e:
        _log(f"{path}: ignored: {e}")
        return None
    config = settings.config or config
    if config is not None:
        try:
            if os.stat(config).st_mtime_ns > info.st_mtime_ns:
                return None
        except OSError:
            pass
    return settings


def sidecar_settings(config_path: str, document: object) -> dict[str, object]:
    """The sidecar mapping for a parsed YAML configuration (what ``daemonapp run`` writes).

    Keys: socket, protocol, min_load, max_load (None: no limit), start_timeout and
    lock_timeout (seconds), state_dir, argv (the command that starts the daemon), config
    (absolute path) and wsgi (the ``module:callable`` served in-process: the chosen
    listener's, else the first listener's that has one; None if none has). Relative paths
    are relative to the file's directory. Raises ValueError naming the file and the key.
    The daemon's own writer is ``daemonapp.cli.write_sidecar``; this is the frontend's
    reading of the same rules, for when no sidecar exists yet.
    """
    from daemonapp.durations import parse_duration

    config = os.path.abspath(config_path)
    base = os.path.dirname(config)
    doc = document if isinstance(document, dict) else {}

    def fail(key: str, message: str) -> ValueError:
        return ValueError(f"{config_path}: {key}: {message}")

    app = doc.get("app") or {}
    if not isinstance(app, dict):
        raise fail("app", "expected a mapping")
    state_dir = app.get("state_dir", "./var")
    if not isinstance(state_dir, str) or not state_dir:
        raise fail("app.state_dir", f"expected a path, got {state_dir!r}")
    cgi = doc.get("cgi") or {}
    if not isinstance(cgi, dict):
        raise fail("cgi", "expected a mapping")
    unknown = sorted(str(key) for key in cgi if key not in _CGI_KEYS)
    if unknown:
        raise fail(f"cgi.{unknown[0]}", f"unknown key; expected one of {', '.join(_CGI_KEYS)}")

    loads: dict[str, float | None] = {}
    for key, default in (("min_load", DEFAULT_MIN_LOAD), ("max_load", None)):
        value = cgi.get(key, default)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value < 0
        ):
            raise fail(f"cgi.{key}", f"expected a load average like 2.5, got {value!r}")
        loads[key] = None if value is None else float(value)
    if loads["max_load"] is not None and loads["max_load"] < (loads["min_load"] or 0.0):
        raise fail("cgi.max_load", "expected a load of at least min_load")
    timeouts: dict[str, float] = {}
    for key, fallback in (
        ("start_timeout", DEFAULT_START_TIMEOUT),
        ("lock_timeout", DEFAULT_LOCK_TIMEOUT),
    ):
        try:
            timeouts[key] = parse_duration(cgi.get(key, fallback))
        except ValueError as e:
            raise fail(f"cgi.{key}", str(e)) from None

    listeners = doc.get("listeners")
    items = [item for item in listeners if isinstance(item, dict)] if isinstance(
        listeners, list
    ) else []
    item = _choose_listener(items, cgi.get("listener"), fail)
    endpoint = item.get("endpoint")
    socket_path = _unix_path(endpoint) if isinstance(endpoint, str) else None
    if socket_path is None:
        raise fail("cgi.listener", f"the CGI frontend needs a unix: endpoint, got {endpoint!r}")
    wsgi = item.get("wsgi")
    if not isinstance(wsgi, str):
        wsgi = next((i["wsgi"] for i in items if isinstance(i.get("wsgi"), str)), None)
    return {
        "socket": os.path.normpath(os.path.join(base, os.path.expanduser(socket_path))),
        "protocol": _protocol(item),
        "min_load": loads["min_load"],
        "max_load": loads["max_load"],
        "start_timeout": timeouts["start_timeout"],
        "lock_timeout": timeouts["lock_timeout"],
        "state_dir": os.path.normpath(os.path.join(base, os.path.expanduser(state_dir))),
        "argv": [sys.executable, "-m", "daemonapp.cli", "run", config],
        "config": config,
        "wsgi": wsgi,
    }


_CGI_KEYS = ("min_load", "max_load", "start_timeout", "lock_timeout", "listener")


def _choose_listener(
    items: list[dict[str, object]], choice: object, fail: Callable[[str, str], ValueError]
) -> dict[str, object]:
    """The listener the frontend talks to: `choice` is an item's index or its endpoint."""
    chosen: dict[str, object] | None = None
    if isinstance(choice, int) and not isinstance(choice, bool):
        chosen = items[choice] if 0 <= choice < len(items) else None
    elif isinstance(choice, str):
        chosen = next((item for item in items if item.get("endpoint") == choice), None)
    elif choice is None:
        for protocol in ("scgi", "fastcgi"):
            for item in items:
                endpoint = item.get("endpoint")
                if (
                    _protocol(item) == protocol
                    and isinstance(endpoint, str)
                    and _unix_path(endpoint) is not None
                ):
                    return item
        raise fail("cgi.listener", "no scgi or fastcgi listener on a unix: socket")
    if chosen is None:
        raise fail(
            "cgi.listener",
            "expected the index of a listener item (0 is the first) or its endpoint string, "
            f"got {choice!r}",
        )
    if _protocol(chosen) not in ("scgi", "fastcgi"):
        raise fail("cgi.listener", "expected an scgi or fastcgi listener on a unix: endpoint")
    return chosen


def _protocol(item: dict[str, object]) -> str:
    """A listener item's protocol, as daemonapp reads it: case does not matter."""
    return str(item.get("protocol", "")).lower()


def _unix_path(endpoint: str) -> str | None:
    """The path of a Twisted ``unix:`` endpoint string (backslash escapes a colon)."""
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for char in endpoint:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    if fields[0] != "unix":
        return None
    for field in fields[1:]:
        if field.startswith("address="):
            return field[len("address=") :] or None
    positional = [field for field in fields[1:] if "=" not in field]
    return positional[0] if positional and positional[0] else None


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Find the settings: the sidecar if fresh, else the YAML file (the slow path).

    The sidecar is ``$DAEMONAPP_STATE_DIR/cgi.marshal`` when that variable is set, else
    ``cgi.marshal`` in the state_dir that `scan_state_dir` reads off ``$DAEMONAPP_CONFIG``
    without parsing YAML (``<directory of the file>/var`` when it names none).
    """
    config = environ.get(CONFIG_ENV) or None
    if config is not None:
        config = os.path.abspath(config)
    state_dir = environ.get(STATE_DIR_ENV) or None
    if state_dir is None and config is not None:
        state_dir = scan_state_dir(config)
    if state_dir is None:
        raise CGIFrontendError(f"neither {CONFIG_ENV} nor {STATE_DIR_ENV} is set", status=500)
    settings = read_sidecar(sidecar_path(state_dir), config)
    if settings is not None:
        return settings
    if config is None:
        raise CGIFrontendError(
            f"no usable {sidecar_path(state_dir)} and {CONFIG_ENV} is not set", status=500
        )
    raw = _yaml_settings(config)
    if str(raw["state_dir"]) != state_dir:  # the scan was unsure, or saw another one
        settings = read_sidecar(sidecar_path(str(raw["state_dir"])), config)
        if settings is not None:
            return settings
    return Settings(raw)


def scan_state_dir(config: str) -> str | None:
    """``app.state_dir`` of a YAML file, read without a YAML parser (the fast path).

    A line scan that understands what people write: ``app:`` at the top level with
    ``state_dir:`` among its direct children (block style, any order, comments and
    blank lines around, plain or quoted), or ``app: {state_dir: ...}`` in flow style.
    Relative paths are relative to the file's directory; no ``state_dir`` means
    ``<dir>/var``. Anything it is not sure of (tabs, anchors, escapes, multi-line
    values, a file it cannot read) gives None: the caller then parses the YAML.
    """
    try:
        with open(config, "rb") as f:
            data = f.read(_MAX_SCAN_BYTES + 1)
    except OSError:
        return None
    if len(data) > _MAX_SCAN_BYTES:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    value = _scan_app_state_dir(text.splitlines())
    if value is _UNSURE:
        return None
    base = os.path.dirname(os.path.abspath(config))
    if value is None:
        return os.path.join(base, "var")
    assert isinstance(value, str)
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


_MAX_SCAN_BYTES = 1024 * 1024
_UNSURE = object()


def _scan_app_state_dir(lines: list[str]) -> object:
    """The raw ``app.state_dir`` string, None when absent, _UNSURE when unclear."""
    in_app = False
    child_indent = -1
    found: object = None
    for line in lines:
        if "\t" in line[: len(line) - len(line.lstrip())]:
            return _UNSURE
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            continue
        if stripped.startswith("%"):
            continue  # a directive (%YAML 1.1)
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0:
            in_app = False
            key, rest = _split_key(stripped)
            if key is None:
                if stripped.startswith(("app", "'app'", '"app"')):
                    return _UNSURE
                continue
            if key != "app":
                continue
            value = rest.strip()
            if value.startswith("{"):
                return _flow_state_dir(value[1:])
            if value and not value.startswith("#"):
                return _UNSURE  # an anchor, an alias, a tag, or a scalar
            in_app = True
            child_indent = -1
            continue
        if not in_app:
            continue
        if child_indent < 0:
            child_indent = indent
        if indent != child_indent:
            continue  # deeper: a child's own mapping
        key, rest = _split_key(stripped)
        if key != "state_dir":
            if key is None and "state_dir" in stripped:
                return _UNSURE
            continue
        if found is not None:
            return _UNSURE  # a duplicate key: let the parser report it
        found = _scalar(rest)
        if found is _UNSURE:
            return _UNSURE
    return found


def _split_key(text: str) -> tuple[str | None, str]:
    """``key: rest`` → (key, rest); (None, text) when the line is no simple key."""
    if text[:1] in ("'", '"'):
        quote = text[0]
        end = text.find(quote, 1)
        if end < 0 or text[end + 1 : end + 2] != ":":
            return None, text
        return text[1:end], text[end + 2 :]
    colon = text.find(":")
    while colon >= 0 and colon + 1 < len(text) and text[colon + 1] not in " \t":
        colon = text.find(":", colon + 1)
    if colon <= 0:
        return None, text
    key = text[:colon]
    if any(c in key for c in "{}[]&*!|>'\"#,?"):
        return None, text
    return key.strip(), text[colon + 1 :]


def _scalar(rest: str) -> object:
    """One scalar value: plain or quoted, with an optional comment after it."""
    rest = rest.strip()
    if not rest or rest.startswith("#"):
        return _UNSURE  # a value on the next lines (a block scalar, a null)
    if rest[0] == "'":
        end = 1
        while True:
            end = rest.find("'", end)
            if end < 0:
                return _UNSURE
            if rest[end + 1 : end + 2] == "'":
                end += 2
                continue
            break
        value = rest[1:end].replace("''", "'")
        tail = rest[end + 1 :].strip()
    elif rest[0] == '"':
        end = rest.find('"', 1)
        if end < 0 or "\\" in rest[1:end]:
            return _UNSURE
        value = rest[1:end]
        tail = rest[end + 1 :].strip()
    else:
        if rest[0] in "&*!|>[{@`%":
            return _UNSURE
        cut = rest.find(" #")
        value = rest[:cut].rstrip() if cut >= 0 else rest
        tail = ""
    if tail and not tail.startswith("#"):
        return _UNSURE
    return value if value else _UNSURE


def _flow_state_dir(text: str) -> object:
    """``state_dir`` in ``{a: 1, state_dir: "/x"}`` (``text`` follows the ``{``).

    The mapping must close on this line, hold no nested collection, and be followed
    by nothing but a comment; else unsure.
    """
    items: list[str] = []
    start = 0
    quote = ""
    end = -1
    for i, c in enumerate(text):
        if quote:
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "{[]&*":
            return _UNSURE
        elif c == ",":
            items.append(text[start:i])
            start = i + 1
        elif c == "}":
            items.append(text[start:i])
            end = i
            break
    tail = text[end + 1 :].strip() if end >= 0 else "?"
    if end < 0 or (tail and not tail.startswith("#")):
        return _UNSURE
    found: object = None
    for item in items:
        key, rest = _split_key(item.strip())
        if key == "state_dir":
            if found is not None:
                return _UNSURE
            found = _scalar(rest)
    return found


def _yaml_settings(config: str) -> dict[str, object]:
    """sidecar_settings from the YAML file itself (the slow path: imports yaml)."""
    try:
        import yaml
    except ImportError:
        raise CGIFrontendError(
            f"{config}: no sidecar, and PyYAML is not installed to read the file", status=500
        ) from None
    try:
        with open(config, "rb") as f:
            document = yaml.safe_load(f)
        return sidecar_settings(config, document)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise CGIFrontendError(f"{config}: {e}", status=500) from None


# -- talking to the daemon ----------------------------------------------------------------


def connect(settings: Settings) -> _socket.socket | None:
    """A connection to the daemon's socket, or None when nothing listens there.

    A full listen backlog means the daemon runs but is busy: that is retried for
    BUSY_TIMEOUT seconds, then answered with 503; it never starts a second daemon.
    """
    import _socket

    deadline = 0.0
    delay = 0.001
    while True:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(settings.response_timeout)
        try:
            sock.connect(settings.socket)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return None
        except BlockingIOError:
            sock.close()
            now = time.monotonic()
            if not deadline:
                deadline = now + BUSY_TIMEOUT
            elif now >= deadline:
                raise CGIFrontendError(
                    f"{settings.socket}: the daemon's backlog stayed full",
                    retry_after=settings.retry_after,
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            continue
        except OSError as e:
            sock.close()
            raise CGIFrontendError(f"{settings.socket}: cannot connect: {e}", status=500) from None
        return sock


def request_params(environ: Mapping[bytes, bytes]) -> _Params:
    """The CGI variables sent to the daemon: all but ours, the interpreter's and ld.so's."""
    return [
        (name, value)
        for name, value in environ.items()
        if not name.startswith(_PRIVATE_PREFIXES)
        and name not in (b"CONTENT_LENGTH", b"SCGI")
        and b"\0" not in name
        and b"\0" not in value
    ]


#: More digits than any real length: int() of thousands of them costs (and refuses).
_MAX_LENGTH_DIGITS = 18


def _content_length(environ: Mapping[bytes, bytes]) -> int:
    text = environ.get(b"CONTENT_LENGTH", b"").strip()
    if not text:
        return 0
    if not text.isdigit():  # bytes.isdigit(): ASCII digits only
        raise CGIFrontendError(f"bad CONTENT_LENGTH {text[:40]!r}", status=400)
    if len(text) > _MAX_LENGTH_DIGITS:
        raise CGIFrontendError("CONTENT_LENGTH too large", status=413)
    return int(text)


def _read_body(length: int) -> Iterable[bytes]:
    """The request body from stdin in chunks; a short body is a 400."""
    while length > 0:
        chunk = os.read(0, min(length, _CHUNK))
        if not chunk:
            raise CGIFrontendError("the request body is shorter than CONTENT_LENGTH", status=400)
        length -= len(chunk)
        yield chunk


def _send(sock: _socket.socket, data: bytes) -> bool:
    """Send unless the daemon stopped reading (it may have answered early, e.g. 413)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def _recv_chunk(sock: _socket.socket) -> bytes:
    """The next bytes from the daemon (b"" when it closed); failures as CGIFrontendError."""
    try:
        return sock.recv(65536)
    except TimeoutError:
        raise CGIFrontendError("the daemon did not answer in time") from None
    except OSError as e:
        raise CGIFrontendError(f"reading the daemon's answer failed: {e}") from None


def _receive(sock: _socket.socket, limit: int) -> bytearray:
    """Everything the daemon sends until it closes, at most `limit` bytes."""
    answer = bytearray()
    while True:
        chunk = _recv_chunk(sock)
        if not chunk:
            return answer
        answer += chunk
        if len(answer) > limit:
            raise CGIFrontendError(f"the daemon's answer exceeds {limit} bytes")


def scgi_exchange(
    sock: _socket.socket, params: _Params, content_length: int, body: Iterable[bytes], limit: int
) -> bytes:
    """Send one SCGI request and return the daemon's whole answer (a CGI response).

    The header is CONTENT_LENGTH, SCGI=1, DAEMONAPP_CGI_FRONTEND=1, then `params`.
    """
    header = b"".join(
        [b"CONTENT_LENGTH\0%d\0SCGI\x001\0%s\x001\0" % (content_length, FRONTEND_PARAM)]
        + [name + b"\0" + value + b"\0" for name, value in params]
    )
    if _send(sock, b"%d:%s," % (len(header), header)):
        for chunk in body:
            if not _send(sock, chunk):
                break
    return bytes(_receive(sock, limit))


def _fcgi_record(record_type: int, content: bytes) -> bytes:
    length = len(content)
    padding = -length & 7
    return (
        bytes((1, record_type, 0, 1, length >> 8, length & 0xFF, padding, 0))
        + content
        + b"\0" * padding
    )


def _fcgi_length(n: int) -> bytes:
    return bytes((n,)) if n < 128 else (n | 0x80000000).to_bytes(4, "big")


def _fcgi_stream(record_type: int, data: bytes) -> bytes:
    """`data` as records of one stream, ended by the empty record."""
    records = [
        _fcgi_record(record_type, data[i : i + _CHUNK]) for i in range(0, len(data), _CHUNK)
    ]
    records.append(_fcgi_record(record_type, b""))
    return b"".join(records)


def fastcgi_exchange(
    sock: _socket.socket, params: _Params, content_length: int, body: Iterable[bytes], limit: int
) -> bytes:
    """Send one FastCGI responder request (id 1) and return its whole stdout.

    The answer counts only when FCGI_END_REQUEST arrives with REQUEST_COMPLETE; a
    connection that ends before it is a failure, however much stdout came.
    """
    pairs = [(b"CONTENT_LENGTH", b"%d" % content_length), *params]
    encoded = b"".join(
        _fcgi_length(len(name)) + _fcgi_length(len(value)) + name + value
        for name, value in pairs
    )
    begin = _fcgi_record(_FCGI_BEGIN_REQUEST, b"\0\x01\0\0\0\0\0\0")
    if _send(sock, begin + _fcgi_stream(_FCGI_PARAMS, encoded)):
        sent = True
        for chunk in body:
            if not _send(sock, _fcgi_record(_FCGI_STDIN, chunk)):
                sent = False
                break
        if sent:
            _send(sock, _fcgi_record(_FCGI_STDIN, b""))
    stdout = bytearray()
    stderr = bytearray()
    pending = bytearray()
    while True:
        chunk = _recv_chunk(sock)
        if not chunk:
            raise CGIFrontendError("the daemon closed the connection before FCGI_END_REQUEST")
        pending += chunk
        while len(pending) >= 8:
            if pending[0] != 1:
                raise CGIFrontendError(f"bad FastCGI version {pending[0]} from the daemon")
            record_type = pending[1]
            request_id = (pending[2] << 8) | pending[3]
            length = (pending[4] << 8) | pending[5]
            end = 8 + length + pending[6]
            if len(pending) < end:
                break
            content = bytes(pending[8 : 8 + length])
            del pending[:end]
            if request_id != 1:
                continue
            if record_type == _FCGI_STDOUT:
                stdout += content
                if len(stdout) > limit:
                    raise CGIFrontendError(f"the daemon's answer exceeds {limit} bytes")
            elif record_type == _FCGI_STDERR:
                if len(stderr) < _MAX_STDERR_BYTES:
                    stderr += content[: _MAX_STDERR_BYTES - len(stderr)]
            elif record_type == _FCGI_END_REQUEST:
                if stderr:
                    _log("daemon stderr: " + stderr.decode("utf-8", "replace").rstrip())
                if len(content) < 5 or content[4] != _FCGI_REQUEST_COMPLETE:
                    status = content[4] if len(content) >= 5 else None
                    raise CGIFrontendError(f"the daemon refused the request (status {status})")
                return bytes(stdout)


def check_answer(answer: bytes, method: bytes, length_required: bool = False) -> bytes:
    """The answer as a CGI response, or CGIFrontendError when it is incomplete.

    It needs a complete header block; when it has a Content-Length, the body must be
    exactly that long (a daemon that died mid-answer leaves it short), and with
    `length_required` it must have one. An ``HTTP/1.x`` status line becomes a
    ``Status:`` header.
    """
    end = answer.find(b"\r\n\r\n", 0, _MAX_HEADER_BYTES)
    separator = 4
    newline = answer.find(b"\n\n", 0, _MAX_HEADER_BYTES)
    if newline != -1 and (end == -1 or newline < end):
        end, separator = newline, 2
    if end == -1:
        raise CGIFrontendError(f"the daemon's answer has no complete header ({len(answer)} bytes)")
    lines = answer[:end].split(b"\n")
    rewritten = False
    if lines[0].startswith(b"HTTP/"):
        ending = b"\r" if lines[0].endswith(b"\r") else b""
        lines[0] = b"Status: " + lines[0].partition(b" ")[2].strip() + ending
        rewritten = True
    status = b"200"
    declared: int | None = None
    for line in lines:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"status":
            status = value.strip()[:3]
        elif name == b"content-length":
            text = value.strip()
            if not text.isdigit() or len(text) > _MAX_LENGTH_DIGITS:
                raise CGIFrontendError(f"the daemon sent Content-Length {text[:40]!r}")
            declared = int(text)
    body = answer[end + separator :]
    bodiless = method == b"HEAD" or status in (b"204", b"304") or status.startswith(b"1")
    if declared is None and length_required and not bodiless:
        raise CGIFrontendError("the daemon's answer has no Content-Length: cut short?")
    if declared is not None and declared != len(body) and not bodiless:
        raise CGIFrontendError(
            f"the daemon's answer is cut short: Content-Length {declared}, got {len(body)} bytes"
        )
    if rewritten:
        return b"\n".join(lines) + answer[end : end + separator] + body
    return answer


def relay(sock: _socket.socket, settings: Settings, environb: Mapping[bytes, bytes]) -> bytes:
    """Relay this CGI request to the daemon; its whole, checked answer."""
    try:
        content_length = _content_length(environb)
        exchange = fastcgi_exchange if settings.protocol == "fastcgi" else scgi_exchange
        answer = exchange(
            sock,
            request_params(environb),
            content_length,
            _read_body(content_length),
            settings.max_response_bytes,
        )
    finally:
        sock.close()
    return check_answer(
        answer,
        environb.get(b"REQUEST_METHOD", b"GET"),
        settings.length_required and settings.protocol == "scgi",
    )


# -- starting the daemon ------------------------------------------------------------------


def loadavg(environ: Mapping[str, str]) -> float:
    """The 1-minute load average; $DAEMONAPP_CGI_LOADAVG overrides it (a test hook)."""
    forced = environ.get(LOADAVG_ENV)
    if forced:
        return float(forced)
    return os.getloadavg()[0]


def open_start_lock(state_dir: str) -> int:
    """The start lock's fd (O_CLOEXEC|O_NOFOLLOW): ``state_dir/locks/cgi-start.lock``."""
    locks = os.path.join(state_dir, "locks")
    os.makedirs(state_dir, mode=0o700, exist_ok=True)  # state_dir is private, as the daemon's
    os.makedirs(locks, mode=0o700, exist_ok=True)
    path = os.path.join(locks, f"{START_LOCK_NAME}.lock")
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise CGIFrontendError(f"{path}: cannot open the start lock: {e}", status=500) from None


def daemon_environment(environ: Mapping[str, str], config: str | None) -> dict[str, str]:
    """The daemon's clean environment: PATH, LANG, PYTHONPATH and DAEMONAPP_CONFIG only."""
    env = {name: environ[name] for name in ("PATH", "LANG", "PYTHONPATH") if name in environ}
    env.setdefault("PATH", _DEFAULT_PATH)
    if config is not None:
        env[CONFIG_ENV] = config
    elif environ.get(CONFIG_ENV):
        env[CONFIG_ENV] = os.path.abspath(environ[CONFIG_ENV])
    return env


def spawn_daemon(argv: list[str], env: Mapping[str, str]) -> int:
    """Fork and exec the daemon in a new session, stdio on /dev/null; its pid.

    Every fd above 2 is closed in the child, the start lock among them, and the signals
    Python ignores (SIGPIPE, SIGXFSZ) get their default action back, as subprocess does.
    """
    import signal

    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child execs or exits at once
            try:
                os.setsid()
                os.chdir("/")
                for number in (signal.SIGPIPE, signal.SIGXFSZ):
                    signal.signal(number, signal.SIG_DFL)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.closerange(3, 65536)
                os.execvpe(argv[0], argv, env)  # noqa: S606 - an argument list, no shell
            finally:
                os._exit(127)
    finally:
        os.close(null)
    return pid


def stop_daemon(pid: int, grace: float = 2.0) -> None:
    """SIGTERM the daemon's process group, SIGKILL it after `grace` seconds; reap it."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return
            if done:
                return
            time.sleep(0.01)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def wait_for_daemon(settings: Settings, pid: int) -> _socket.socket:
    """Poll the socket until the new daemon answers; kill it if it never does."""
    deadline = time.monotonic() + settings.start_timeout
    delay = 0.002
    while True:
        sock = connect(settings)
        if sock is not None:
            return sock
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            raise CGIFrontendError(
                f"the daemon {settings.argv!r} exited with status "
                f"{os.waitstatus_to_exitcode(status)} before it answered",
                retry_after=settings.retry_after,
            )
        if time.monotonic() >= deadline:
            stop_daemon(pid)
            raise CGIFrontendError(
                f"the daemon did not answer on {settings.socket} within "
                f"{settings.start_timeout:g} s; killed it",
                retry_after=settings.retry_after,
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.05)


def start_daemon(settings: Settings, environ: Mapping[str, str]) -> _socket.socket:
    """A connection to the daemon, started by this process if nobody else does.

    Under the start lock: re-check, start, wait. While another process holds the lock,
    this one polls both the lock and the socket, so it relays as soon as the daemon
    answers. When the lock is released, the daemon runs or was killed.
    """
    import fcntl

    fd = open_start_lock(settings.state_dir)
    try:
        deadline = time.monotonic() + settings.lock_timeout
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            sock = connect(settings)
            if sock is not None:
                return sock
            if time.monotonic() >= deadline:
                raise CGIFrontendError(
                    f"the start lock stayed busy for {settings.lock_timeout:g} s",
                    retry_after=settings.retry_after,
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)
        sock = connect(settings)
        if sock is not None:
            return sock
        pid = spawn_daemon(settings.argv, daemon_environment(environ, settings.config))
        return wait_for_daemon(settings, pid)
    finally:
        os.close(fd)  # releases the flock: the child never had this fd after exec


# -- serving in-process -------------------------------------------------------------------


def load_wsgi_app(spec: str) -> Callable[..., object]:
    """Import ``module:callable`` (``application`` when the callable is left out)."""
    import importlib

    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "application"
    module: ModuleType = importlib.import_module(module_name)
    app: object = module
    for part in attribute.split("."):
        app = getattr(app, part)
    if not callable(app):
        raise ValueError(f"{spec} is not callable")
    return app


def serve_in_process(settings: Settings) -> None:
    """Answer as plain CGI with wsgiref's CGIHandler on the listener's WSGI app.

    Request headers (HTTP_*) reach the app's environ but are removed from os.environ,
    so no library takes HTTP_PROXY for its proxy (httpoxy).
    """
    wsgi: object = settings.wsgi
    if wsgi is None and settings.config is not None:
        wsgi = _yaml_settings(settings.config).get("wsgi")  # a sidecar without "wsgi"
    if not isinstance(wsgi, str):
        raise CGIFrontendError(
            "the daemon is down, the load is below min_load and no listener has a wsgi app",
            status=500,
        )
    try:
        app = load_wsgi_app(wsgi)
    except Exception as e:
        raise CGIFrontendError(f"cannot load wsgi app {wsgi}: {e!r}", status=500) from e
    cgi_handler().run(app)  # type: ignore[arg-type]


def cgi_handler() -> CGIHandler:
    """wsgiref's CGIHandler for this request, its environ as PEP 3333 has it (DESIGN
    §4): CONTENT_TYPE and CONTENT_LENGTH, never the HTTP_CONTENT_* copies web servers
    send too (HTTP_CONTENT_TYPE stands in for a missing CONTENT_TYPE). Then the request
    headers (HTTP_*, HTTP_PROXY among them: httpoxy) leave os.environ, before any
    application code runs: the handler took its copy."""
    from wsgiref.handlers import CGIHandler

    handler = CGIHandler()
    content_headers_as_pep3333(handler.base_env)
    for name in [name for name in os.environ if name.startswith("HTTP_")]:
        del os.environ[name]
    return handler


def content_headers_as_pep3333(environ: MutableMapping[str, Any]) -> None:
    """PEP 3333: CONTENT_TYPE and CONTENT_LENGTH, never as HTTP_* (web servers send the
    request headers both ways; wsgiref.validate refuses the HTTP_ ones). The one rule
    for every WSGI environ daemonapp builds (the listeners' and plain CGI's)."""
    content_type = environ.pop("HTTP_CONTENT_TYPE", None)
    if content_type is not None and not environ.get("CONTENT_TYPE"):
        environ["CONTENT_TYPE"] = content_type
    environ.pop("HTTP_CONTENT_LENGTH", None)


# -- the program --------------------------------------------------------------------------

_REASONS = {400: "Bad Request", 413: "Content Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


def error_answer(status: int, retry_after: int | None = None) -> bytes:
    """A short text/plain CGI answer; the details go to the web server's error log."""
    reason = _REASONS.get(status, "Error")
    body = f"{status} {reason}\n".encode()
    head = f"Status: {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
    if retry_after is not None:
        head += f"Retry-After: {retry_after}\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _log(message: str) -> None:
    """One line on stderr, which the web server puts in its error log."""
    try:
        _write_all(2, f"daemonapp-cgi: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def answer_request(environ: Mapping[str, str], environb: Mapping[bytes, bytes]) -> bytes | None:
    """The CGI answer to write, or None when it was served in-process."""
    settings = load_settings(environ)
    sock = connect(settings)
    if sock is None:
        load = loadavg(environ)
        if load > settings.max_load:
            raise CGIFrontendError(
                f"the daemon is down and the load {load:.2f} is above max_load "
                f"{settings.max_load:g}",
                retry_after=settings.retry_after,
            )
        if load < settings.min_load:
            serve_in_process(settings)
            return None
        sock = start_daemon(settings, environ)
    return relay(sock, settings, environb)


def main() -> int:
    """Answer the CGI request in os.environ and on stdin; the exit status."""
    try:
        answer = answer_request(os.environ, os.environb)
    except CGIFrontendError as e:
        _log(str(e))
        retry_after = e.retry_after
        if e.status == 503 and retry_after is None:
            retry_after = DEFAULT_RETRY_AFTER
        answer = error_answer(e.status, retry_after)
    except Exception as e:  # a bug must still give a clean answer, never a traceback
        _log(f"internal error: {e!r}")
        answer = error_answer(503, DEFAULT_RETRY_AFTER)
    if answer is not None:
        try:
            _write_all(1, answer)
        except OSError:
            return 1  # the web server went away: nobody to answer
    return 0
