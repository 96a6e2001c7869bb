"""Log setup for `daemonapp run`: twisted.logger as text or JSON lines, filtered by
level, to stderr or to a file that SIGHUP reopens (logrotate). Records of the
stdlib ``logging`` module are forwarded into the same stream.

Under twistd, twistd's own --logfile / --syslog / --logger options apply instead.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)
from zope.interface import implementer

__all__ = ["LogTarget", "StdlibForwarder", "make_observer", "start_logging"]

log = Logger()

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


@implementer(ILogObserver)
class LogTarget:
    """An observer writing text or JSON lines to a stream or a reopenable file."""

    def __init__(self, *, format: str = "text", file: str | None = None,
                 stream: IO[str] | None = None) -> None:
        if format not in ("text", "json"):
            raise ValueError(f"expected a log format of text or json, got {format!r}")
        self.format = format
        self.file = file
        self._stream = stream if stream is not None else sys.stderr
        self._owned: IO[str] | None = None
        self._observer: ILogObserver = self._open()
        #: The level filter in front of this target (`make_observer` sets it).
        self.level_filter: LogLevelFilterPredicate | None = None

    def _open(self) -> ILogObserver:
        stream = self._stream
        if self.file is not None:
            self._owned = open(self.file, "a", encoding="utf-8")  # noqa: SIM115
            stream = self._owned
        if self.format == "json":
            # JSON lines (DESIGN §7): one object a line, without RFC 7464's record
            # separator before each, so that json.loads reads every line as it is.
            return jsonFileLogObserver(stream, recordSeparator="")
        return textFileLogObserver(stream)

    def reopen(self) -> None:
        """Close and reopen the log file (after logrotate moved it away)."""
        if self.file is None:
            return
        old = self._owned
        self._observer = self._open()
        if old is not None:
            old.close()

    def reconfigure(self, *, format: str, level: str, file: str | None) -> None:
        """Apply new settings at once (``daemonapp reload``): a file that cannot be
        opened raises OSError and leaves the old settings in place."""
        if level not in _LEVELS:
            raise ValueError(f"expected a log level of {', '.join(_LEVELS)}, got {level!r}")
        if format != self.format or file != self.file:
            fresh = LogTarget(format=format, file=file, stream=self._stream)
            old = self._owned
            self.format, self.file = format, file
            self._observer, self._owned = fresh._observer, fresh._owned
            if old is not None:
                old.close()
        if self.level_filter is not None:
            self.level_filter.setLogLevelForNamespace("", _LEVELS[level])

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def __call__(self, event: dict[str, Any]) -> None:
        self._observer(event)


class StdlibForwarder(logging.Handler):
    """Forwards stdlib ``logging`` records (e.g. from locks on the CGI path) to
    twisted.logger."""

    _LEVELS = ((logging.CRITICAL, LogLevel.critical), (logging.ERROR, LogLevel.error),
               (logging.WARNING, LogLevel.warn), (logging.INFO, LogLevel.info))

    def __init__(self, logger: Logger | None = None) -> None:
        super().__init__()
        self._log = logger if logger is not None else Logger(namespace="stdlib")

    def emit(self, record: logging.LogRecord) -> None:
        level = LogLevel.debug
        for number, twisted_level in self._LEVELS:
            if record.levelno >= number:
                level = twisted_level
                break
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        self._log.emit(level, "{logger}: {text}", logger=record.name, text=text)


def make_observer(*, format: str = "text", level: str = "info", file: str | None = None,
                  stream: IO[str] | None = None) -> tuple[ILogObserver, LogTarget]:
    """The level-filtered observer and the LogTarget behind it."""
    if level not in _LEVELS:
        raise ValueError(f"expected a log level of {', '.join(_LEVELS)}, got {level!r}")
    target = LogTarget(format=format, file=file, stream=stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[level])
    target.level_filter = predicate
    return FilteringLogObserver(target, [predicate]), target


def start_logging(*, format: str = "text", level: str = "info", file: str | None = None,
                  app: Any = None, stream: IO[str] | None = None) -> LogTarget:
    """Begin global logging (once per process); SIGHUP reopens ``file`` via
    ``app.on_reopen_logs``."""
    observer, target = make_observer(format=format, level=level, file=file, stream=stream)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    root = logging.getLogger()
    if not any(isinstance(h, StdlibForwarder) for h in root.handlers):
        root.addHandler(StdlibForwarder())
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
    if app is not None:
        app.on_reopen_logs(target.reopen)
    return target
