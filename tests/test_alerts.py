"""Tests for daemonapp.alerts: reading targets, sending to them, webhook retries.

The webhook tests stand in for the network with a scripted agent (the HTTP exchange
itself runs against a real server in tests/jobs/test_dispatcher.py).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from daemonapp.alerts import Callback, Mail, Webhook, parse_targets, send
from daemonapp.options import OptionError


class _Response:
    def __init__(self, code: int) -> None:
        self.code = code


class ScriptedAgent:
    """Answers each request with the next item: a status code or an exception."""

    def __init__(self, clock: Clock, answers: list[int | Exception]) -> None:
        self.clock = clock
        self.answers = answers
        self.requests: list[tuple[float, bytes, bytes]] = []

    def __call__(self, reactor: Any) -> ScriptedAgent:
        return self

    def request(self, method: bytes, url: bytes, headers: Any, body: Any) -> Deferred[Any]:
        self.requests.append((self.clock.seconds(), method, url))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(_Response(answer))


class ParseTargetsTests(SynchronousTestCase):
    def test_each_kind_of_item(self) -> None:
        """A URL is a webhook, a mail mapping a Mail, a callable a Callback; log adds none."""
        targets = parse_targets(["https://ops.example.org/hook", "log", {"log": True},
                                 {"mail": {"to": "ops@example.org"}}, print],
                                key="on_failure")
        self.assertEqual([type(t) for t in targets], [Webhook, Mail, Callback])

    def test_bad_item_names_the_key(self) -> None:
        """An unknown item raises OptionError naming the option it came from."""
        with self.assertRaises(OptionError) as raised:
            parse_targets({"sms": "+123"}, key="alerts")
        self.assertEqual((raised.exception.key, raised.exception.message),
                         ("alerts", "unknown hook 'sms'; expected webhook, mail or log"))

    def test_webhook_must_be_http(self) -> None:
        """A webhook that is not an http(s) URL is refused when read."""
        with self.assertRaises(OptionError) as raised:
            parse_targets({"webhook": "ftp://example.org/"}, key="on_failure")
        self.assertEqual(raised.exception.message,
                         "a webhook must be an http(s) URL, got 'ftp://example.org/'")


class SendTests(SynchronousTestCase):
    def test_failing_target_is_logged_and_others_still_called(self) -> None:
        """A target that raises is logged with the sender's words; the next one still runs."""
        got: list[dict[str, Any]] = []

        def broken(event: dict[str, Any]) -> None:
            raise RuntimeError("mail server on fire")

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        send({"id": 7}, [Callback(broken), Callback(got.append)], Clock(),
             about="job {job_id}", job_id=7)
        self.assertEqual(got, [{"id": 7}])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        failures = [e for e in events if e.get("log_failure") is not None]
        self.assertEqual([(formatEvent(e).split(" <")[0], e["job_id"]) for e in failures],
                         [("job 7: on_failure hook", 7)])


class WebhookTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def warnings(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.warn]

    def test_one_post_by_default(self) -> None:
        """Without retries a 503 is one POST and one warning (a job's on_failure)."""
        agent = ScriptedAgent(self.clock, [503])
        hook = Webhook("http://127.0.0.1:9/hook", agent=agent)
        self.successResultOf(hook({"id": 1}, self.clock))
        self.assertEqual(agent.requests, [(0.0, b"POST", b"http://127.0.0.1:9/hook")])
        self.assertEqual(self.warnings(),
                         ["on_failure webhook http://127.0.0.1:9/hook answered 503"])

    def test_retries_on_timers_then_succeeds(self) -> None:
        """With retries, a refused connection and a 502 are tried again after 1 s and
        2 s on the reactor's timers; a 2xx ends it without a warning."""
        agent = ScriptedAgent(self.clock, [ConnectionRefusedError(), 502, 204])
        hook = Webhook("http://127.0.0.1:9/hook", retries=3, retry_delay=1.0, agent=agent)
        d = hook({"id": 1}, self.clock)
        self.assertNoResult(d)
        self.clock.advance(1.0)
        self.assertNoResult(d)
        self.clock.advance(2.0)
        self.successResultOf(d)
        self.assertEqual([at for at, _, _ in agent.requests], [0.0, 1.0, 3.0])
        self.assertEqual(self.warnings(), [])

    def test_gives_up_after_retries(self) -> None:
        """Once the retries are spent, a connection error fails the send."""
        agent = ScriptedAgent(self.clock, [ConnectionRefusedError()] * 2)
        hook = Webhook("http://127.0.0.1:9/hook", retries=1, retry_delay=0.5, agent=agent)
        d = hook({"id": 1}, self.clock)
        self.clock.advance(0.5)
        self.failureResultOf(d, ConnectionRefusedError)
        self.assertEqual(len(agent.requests), 2)

    def test_a_target_that_never_answers_is_given_up_after_answer_timeout(self) -> None:
        """A server that takes the connection and answers nothing: the request is
        cancelled after answer_timeout and tried again like a connection error."""
        cancelled: list[float] = []

        class SilentAgent(ScriptedAgent):
            def request(self, method: bytes, url: bytes, headers: Any,
                        body: Any) -> Deferred[Any]:
                self.requests.append((self.clock.seconds(), method, url))
                return Deferred(lambda _: cancelled.append(self.clock.seconds()))

        agent = SilentAgent(self.clock, [])
        hook = Webhook("http://127.0.0.1:9/hook", retries=1, retry_delay=1.0,
                       answer_timeout=5.0, agent=agent)
        d = hook({"id": 1}, self.clock)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)  # the first request cancelled; tried again 1 s later
        self.assertEqual(cancelled, [5.0])
        self.clock.advance(1.0)
        self.assertNoResult(d)
        self.clock.advance(5.0)
        self.assertEqual(cancelled, [5.0, 11.0])
        failure = self.failureResultOf(d, defer.TimeoutError)
        self.assertEqual(str(failure.value), "no answer within 5 s")
        self.assertEqual([at for at, _, _ in agent.requests], [0.0, 6.0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_client_error_is_not_retried(self) -> None:
        """A 4xx answer is not retried: asking again would get the same answer."""
        agent = ScriptedAgent(self.clock, [404])
        hook = Webhook("http://127.0.0.1:9/hook", retries=3, agent=agent)
        self.successResultOf(hook({"id": 1}, self.clock))
        self.assertEqual((len(agent.requests), len(self.warnings())), (1, 1))
