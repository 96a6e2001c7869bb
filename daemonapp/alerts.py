"""Where a failure event goes: the log always, then webhooks, mail and Python callables.

A job's ``on_failure`` sends one event dict per job that failed for good; the daemon
alerts of DESIGN §10 (``app.alerts``) send theirs to the same targets. Nothing here blocks the loop:
each target runs on a Deferred of its own, a webhook waits for its retries on timers,
and a target that fails is logged by its sender and forgotten.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from daemonapp.options import OptionError

__all__ = ["AlertTarget", "Callback", "Mail", "Webhook", "parse_targets", "send"]

_log = Logger()

#: A target: called with the event and the reactor; may return a Deferred.
AlertTarget = Callable[[dict[str, Any], Any], Any]
#: Builds a mail's subject and body from an event.
MailComposer = Callable[[Mapping[str, Any]], tuple[str, str]]


def parse_targets(spec: Any, *, key: str, compose_mail: MailComposer | None = None,
                  log: Logger = _log, webhook_retries: int = 0) -> list[AlertTarget]:
    """The targets an option names, checked now (the app's start), never at a failure.

    ``spec`` is one item or a list of them: an http(s) URL (a webhook), ``"log"``,
    a mapping ``{webhook: URL}``, ``{mail: {to, from, host, port}}`` or ``{log: ...}``,
    or a callable taking the event dict. The log is always written by the sender
    itself, so ``log`` adds no target. A bad item raises OptionError naming ``key``.
    ``log`` is the logger that reports what a target says (a webhook's answer);
    ``webhook_retries`` how often a webhook is tried again (a connection error, a 5xx).
    """
    if spec is None:
        return []
    items = spec if isinstance(spec, list | tuple) else [spec]
    targets: list[AlertTarget] = []
    for item in items:
        if callable(item):
            targets.append(Callback(item))
        elif isinstance(item, str) and item.startswith(("http://", "https://")):
            targets.append(Webhook(item, key=key, log=log, retries=webhook_retries))
        elif isinstance(item, str) and item in ("log", ""):
            continue
        elif isinstance(item, Mapping):
            for kind, value in item.items():
                if kind == "webhook":
                    targets.append(Webhook(str(value), key=key, log=log,
                                           retries=webhook_retries))
                elif kind == "mail":
                    targets.append(Mail.from_spec(value, key=key, compose=compose_mail))
                elif kind == "log":
                    continue
                else:
                    raise OptionError(key, f"unknown hook {kind!r}; expected "
                                           f"webhook, mail or log")
        else:
            raise OptionError(key, f"expected a webhook URL, a mapping with "
                                   f"webhook/mail, or a callable, got {item!r}")
    return targets


def send(event: dict[str, Any], targets: Iterable[AlertTarget], reactor: Any, *,
         about: str, key: str = "on_failure", log: Logger = _log, **fields: Any) -> None:
    """Give ``event`` to each target at once; a target that fails is logged as
    "``about``: ``key`` hook ``target``" (``about`` a log format filled from ``fields``)."""
    for target in targets:
        d = maybeDeferred(target, event, reactor)
        d.addErrback(_log_target_failure, log, f"{about}: {{key}} hook {{hook}}",
                     dict(fields, key=key, hook=repr(target)))


def _log_target_failure(failure: Failure, log: Logger, text: str,
                        fields: dict[str, Any]) -> None:
    log.failure(text, failure, **fields)


class Callback:
    """A Python callable given the event dict (its result may be a Deferred)."""

    def __init__(self, func: Callable[[dict[str, Any]], Any]) -> None:
        self.func = func

    def __call__(self, event: dict[str, Any], reactor: Any) -> Any:
        return self.func(event)

    def __repr__(self) -> str:
        return f"<Callback {self.func!r}>"


class Webhook:
    """POSTs the event as JSON to an http(s) URL; any answer but 2xx is logged.

    With ``retries``, a connection error or a 5xx answer is tried again after
    ``retry_delay`` seconds, doubling, on the reactor's timers (the loop never waits).
    A target that takes the connection but answers nothing within ``answer_timeout``
    seconds has its request cancelled (the connection closed), which counts as a
    connection error: a hung server holds no connection and no send for ever.
    """

    def __init__(self, url: str, *, retries: int = 0, retry_delay: float = 1.0,
                 connect_timeout: float = 10.0, answer_timeout: float = 30.0,
                 key: str = "on_failure",
                 log: Logger = _log, agent: Callable[[Any], Any] | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise OptionError(key, f"a webhook must be an http(s) URL, got {url!r}")
        self.url = url
        self.retries = retries
        self.retry_delay = retry_delay
        self.answer_timeout = answer_timeout
        self.key = key
        self._log = log
        # Imported when the target is made (the app's start), not at a failure: under
        # twistd --uid the venv may be unreadable by then (DESIGN §2).
        from io import BytesIO

        from twisted.web.client import Agent, FileBodyProducer
        from twisted.web.http_headers import Headers

        _import_for_posts()

        def body(data: bytes) -> Any:
            return FileBodyProducer(BytesIO(data))

        self._body = body
        self._headers = Headers({b"Content-Type": [b"application/json"]})
        self._agent: Callable[[Any], Any] = agent or (
            lambda reactor: Agent(reactor, connectTimeout=connect_timeout))

    def __repr__(self) -> str:
        return f"<Webhook {self.url}>"

    def __call__(self, event: dict[str, Any], reactor: Any) -> Deferred[None]:
        data = json.dumps(event).encode("utf-8")
        done: Deferred[None] = Deferred()
        self._post(data, reactor, 0, done)
        return done

    def _post(self, data: bytes, reactor: IReactorTime, tried: int,
              done: Deferred[None]) -> None:
        d = self._agent(reactor).request(b"POST", self.url.encode("ascii"), self._headers,
                                         self._body(data))
        d.addTimeout(self.answer_timeout, reactor)  # (cancels the request: TimeoutError)

        def answered(response: Any) -> None:
            if 200 <= response.code < 300:
                done.callback(None)
            elif response.code >= 500 and tried < self.retries:
                again(f"answered {response.code}")
            else:
                self._log.warn("{key} webhook {url} answered {code}", key=self.key,
                               url=self.url, code=response.code)
                done.callback(None)

        def failed(failure: Failure) -> None:
            if failure.check(defer.TimeoutError):
                failure = Failure(defer.TimeoutError(
                    f"no answer within {self.answer_timeout:g} s"))
            if tried < self.retries:
                again(str(failure.value))
            else:
                done.errback(failure)

        def again(why: str) -> None:
            delay = self.retry_delay * 2 ** tried
            self._log.info("{key} webhook {url}: {why}; trying again in {delay:g} s",
                           key=self.key, url=self.url, why=why, delay=delay)
            reactor.callLater(delay, self._post, data, reactor, tried + 1, done)

        d.addCallbacks(answered, failed)


def _import_for_posts() -> None:
    """What the first POST would import: twisted.web.client encodes a URL's host name
    with the idna package (when installed), whose tables load the charmap codec."""
    import encodings.charmap  # noqa: F401

    try:
        import idna  # noqa: F401
    except ImportError:
        pass


def _default_mail(event: Mapping[str, Any]) -> tuple[str, str]:
    subject = f"daemonapp {event.get('event', 'event')}"
    return subject, json.dumps(event, indent=2, default=str) + "\n"


class Mail:
    """Sends the event as an e-mail over SMTP (twisted.mail), composed by ``compose``."""

    def __init__(self, to: list[str], *, sender: str | None = None, host: str = "localhost",
                 port: int = 25, compose: MailComposer | None = None) -> None:
        self.to = [str(r) for r in to]
        self.sender = sender or f"daemonapp@{socket.gethostname()}"
        self.host = host
        self.port = port
        self.compose = compose or _default_mail
        # Imported now: see Webhook. A message's as_bytes() loads the rest of email.
        import email.contentmanager
        import email.generator
        import email.headerregistry
        import email.policy  # noqa: F401
        from email.message import EmailMessage

        from twisted.mail.smtp import sendmail

        self._message = EmailMessage
        self._sendmail: Callable[..., Deferred[Any]] = sendmail

    @classmethod
    def from_spec(cls, spec: Any, *, key: str = "on_failure",
                  compose: MailComposer | None = None) -> Mail:
        """The target of ``{mail: {to, from, host, port}}`` (``to`` one address or a list)."""
        if not isinstance(spec, Mapping) or not spec.get("to"):
            raise OptionError(key, "mail needs a mapping with at least 'to' "
                                   "(and 'from', 'host', 'port')")
        recipients = spec["to"] if isinstance(spec["to"], list) else [spec["to"]]
        return cls(recipients, sender=str(spec.get("from") or "") or None,
                   host=str(spec.get("host") or "localhost"), port=int(spec.get("port") or 25),
                   compose=compose)

    def __repr__(self) -> str:
        return f"<Mail to {', '.join(self.to)} via {self.host}:{self.port}>"

    def __call__(self, event: dict[str, Any], reactor: Any) -> Deferred[Any]:
        subject, body = self.compose(event)
        message = self._message()
        message["Subject"] = subject
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        message.set_content(body)
        d: Deferred[Any] = self._sendmail(self.host, self.sender, self.to, message.as_bytes(),
                                          reactor=reactor, port=self.port)
        return d
