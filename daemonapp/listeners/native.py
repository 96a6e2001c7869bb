"""Native handlers: ``native: module:callable`` called on the reactor with a :class:`Request`.

A handler must not block. It returns the response body as ``bytes`` (200, text/plain),
a tuple ``(status, headers, body)``, or a Deferred (or coroutine) of either::

    def hello(request: Request) -> bytes:
        return b"Hello, " + request.query.encode() + b"\\n"

    def item(request: Request) -> tuple[int, dict[str, str], bytes]:
        return 404, {"Content-Type": "text/plain"}, b"no such item\\n"

``status`` is an int (``404``) or a status line (``"404 Not Found"``); ``headers`` a
dict or a list of ``(name, value)`` pairs; ``body`` bytes (str is encoded as UTF-8).
``Content-Length`` is added when missing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp.listeners.exchange import Exchange, Headers, ascii_digits, status_line

log = Logger()

_PLAIN = "text/plain; charset=utf-8"


class Request:
    """What a native handler receives: one HTTP request, body already read.

    - ``method``: ``"GET"``, ``"POST"``...
    - ``path``: the path inside the application (``PATH_INFO`` after the ``script_name``
      fix-up; without it, ``SCRIPT_NAME + PATH_INFO``), percent-decoded.
    - ``query``: the raw query string, without ``?``.
    - ``headers``: request headers, lower-case names (``"content-type"``, ``"x-token"``).
    - ``params``: all CGI variables as the web server sent them (``REMOTE_ADDR``...).
    - ``body``: the request body, bytes (bounded by ``max_body_bytes``).
    """

    __slots__ = ("_headers", "body", "params", "path")

    def __init__(self, params: dict[str, str], body: bytes, path: str) -> None:
        self.params = params
        self.body = body
        self.path = path
        self._headers: dict[str, str] | None = None

    @property
    def method(self) -> str:
        """The request method."""
        return self.params.get("REQUEST_METHOD", "GET")

    @property
    def query(self) -> str:
        """The query string."""
        return self.params.get("QUERY_STRING", "")

    @property
    def headers(self) -> dict[str, str]:
        """Request headers with lower-case, dash-separated names."""
        if self._headers is None:
            headers: dict[str, str] = {}
            for key, value in self.params.items():
                if key.startswith("HTTP_"):
                    headers[key[5:].lower().replace("_", "-")] = value
            for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                found = self.params.get(key)
                if found:
                    headers[key.lower().replace("_", "-")] = found
            self._headers = headers
        return self._headers

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path!r}>"


def normalize_response(result: object) -> tuple[str, Headers, bytes]:
    """``bytes`` or ``(status, headers, body)`` as a status line, header list and body."""
    if isinstance(result, bytes):
        return "200 OK", [("Content-Type", _PLAIN), ("Content-Length", str(len(result)))], result
    if not isinstance(result, tuple) or len(result) != 3:
        raise TypeError(
            f"a native handler must return bytes or (status, headers, body), got {result!r}"
        )
    status, raw_headers, body = result
    if isinstance(status, int):
        status_text = status_line(status)
    elif isinstance(status, str):
        if ascii_digits(status) and len(status) == 3:
            status_text = status_line(int(status))
        elif ascii_digits(status[:3]) and status[3:4] == " ":
            status_text = status
        else:
            raise TypeError(f'status must be like 404 or "404 Not Found", got {status!r}')
    else:
        raise TypeError(f"status must be an int or a status line, got {status!r}")
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(f"body must be bytes, got {type(body).__name__}")
    body = bytes(body)
    headers: Headers = []
    has_length = False
    pairs: Any
    if isinstance(raw_headers, Mapping):
        pairs = raw_headers.items()
    elif isinstance(raw_headers, Sequence):
        pairs = raw_headers
    elif raw_headers is None:
        pairs = ()
    else:
        raise TypeError(f"headers must be a dict or a list of pairs, got {raw_headers!r}")
    for raw_name, value in pairs:
        name = str(raw_name)
        if name.lower() == "content-length":
            has_length = True
        headers.append((name, str(value)))
    if not has_length:
        headers.append(("Content-Length", str(len(body))))
    return status_text, headers, body


class NativeApp:
    """Runs a native handler for each exchange, on the reactor."""

    needs_full_body = True

    def __init__(self, handler: Callable[[Request], Any]) -> None:
        self.handler = handler

    def call(self, exchange: Exchange) -> None:
        """Answer ``exchange`` with what the handler returns."""
        try:
            result = self.handler(Request(exchange.params, exchange.body_bytes(),
                                          exchange.route_path))
        except Exception:
            self._failed(exchange, Failure())
            return
        if type(result) is bytes:
            exchange.respond_text(result)
            return
        if inspect.iscoroutine(result):
            result = Deferred.fromCoroutine(result)
        if isinstance(result, Deferred):
            deferred: Deferred[Any] = result
            exchange.on_cancel(deferred.cancel)
            deferred.addCallbacks(self._deliver, self._errback,
                                  callbackArgs=(exchange,), errbackArgs=(exchange,))
            return
        self._deliver(result, exchange)

    def _deliver(self, result: object, exchange: Exchange) -> None:
        if exchange.done:
            return
        try:
            status, headers, body = normalize_response(result)
        except Exception:
            self._failed(exchange, Failure())
            return
        exchange.respond(status, headers, body)

    def _errback(self, failure: Failure, exchange: Exchange) -> None:
        if exchange.done:
            return  # cancelled because the request ended: nothing to report
        self._failed(exchange, failure)

    def _failed(self, exchange: Exchange, failure: Failure) -> None:
        log.failure("native handler failed for {method} {path}", failure,
                    method=exchange.params.get("REQUEST_METHOD", ""), path=exchange.route_path)
        exchange.app_failed()
