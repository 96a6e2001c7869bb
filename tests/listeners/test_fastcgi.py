"""The FastCGI responder, record by record, on a StringTransport."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from daemonapp.listeners.fastcgi import (
    FCGI_ABORT_REQUEST,
    FCGI_DATA,
    FCGI_END_REQUEST,
    FCGI_GET_VALUES,
    FCGI_GET_VALUES_RESULT,
    FCGI_PARAMS,
    FCGI_STDIN,
    FCGI_STDOUT,
    FCGI_UNKNOWN_TYPE,
    ProtocolError,
    decode_pairs,
    encode_pairs,
    record,
)
from tests._processes import (
    listener_load,
    popen_run_logged,
    running,
    wait_listening,
    wait_until,
    write_file,
)
from tests.listeners import apps
from tests.listeners.helpers import (
    begin,
    connect,
    make_listener,
    params,
    parse_records,
    request,
    stdin,
    stdout_of,
)
from tests.listeners.raw_fcgi import (
    FCGI_APP,
    fcgi_connect,
    fcgi_get,
    fcgi_pairs,
    fcgi_read,
    fcgi_record,
    fcgi_request,
)

END_OK = struct.pack("!IB3x", 0, 0)


class PairsTests(SynchronousTestCase):
    def test_short_and_long_lengths(self) -> None:
        """Names and values below 128 bytes use 1-byte lengths, longer ones 4-byte."""
        long_value = b"v" * 300
        data = encode_pairs([(b"A", b"1"), (b"LONG", long_value)])
        self.assertEqual(data[:4], b"\x01\x01A1")
        self.assertEqual(data[4:13], b"\x04\x80\x00\x01\x2cLONG")
        self.assertEqual(decode_pairs(data), {"A": "1", "LONG": "v" * 300})

    def test_four_byte_name_length(self) -> None:
        """A 4-byte name length (high bit set) is decoded too."""
        data = b"\x80\x00\x00\x03\x01abcX"
        self.assertEqual(decode_pairs(data), {"abc": "X"})

    def test_truncated_pair_raises(self) -> None:
        """A pair longer than its data is a ProtocolError."""
        self.assertRaises(ProtocolError, decode_pairs, b"\x05\x01abc")

    def test_truncated_length_raises(self) -> None:
        """A 4-byte length cut short is a ProtocolError."""
        self.assertRaises(ProtocolError, decode_pairs, b"\x80\x00")

    def test_values_are_latin1(self) -> None:
        """Bytes above 127 become the same code points (PEP 3333 latin-1 strings)."""
        self.assertEqual(decode_pairs(b"\x01\x02P\xc3\xa9"), {"P": "\xc3\xa9"})


class ResponderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.listener = make_listener(native="tests.listeners.apps:echo_native")
        self.proto, self.transport = connect(self.listener)

    def test_get_answered_with_stdout_empty_stdout_end_request(self) -> None:
        """A request gets STDOUT, an empty STDOUT, then END_REQUEST (complete, status 0)."""
        self.proto.dataReceived(request(1, PATH_INFO="/x"))
        records = parse_records(self.transport.value())
        self.assertEqual([(t, r) for t, r, _ in records],
                         [(FCGI_STDOUT, 1), (FCGI_STDOUT, 1), (FCGI_END_REQUEST, 1)])
        self.assertEqual(records[1][2], b"")
        self.assertEqual(records[2][2], END_OK)
        self.assertEqual(records[0][2],
                         b"Status: 200 OK\r\nX-Method: GET\r\nX-Path: /x\r\n"
                         b"Content-Length: 0\r\n\r\n")

    def test_records_split_at_every_byte(self) -> None:
        """Feeding a request one byte at a time gives the same answer as in one piece."""
        data = request(1, body=b"hello", PATH_INFO="/x")
        for index in range(len(data)):
            self.proto.dataReceived(data[index:index + 1])
        self.assertEqual(stdout_of(self.transport.value()),
                         b"Status: 200 OK\r\nX-Method: POST\r\nX-Path: /x\r\n"
                         b"Content-Length: 5\r\n\r\nhello")

    def test_padding_is_skipped(self) -> None:
        """Record padding is read and ignored."""
        pairs = encode_pairs([(b"REQUEST_METHOD", b"GET"), (b"PATH_INFO", b"/p")])
        padded = struct.pack("!BBHHBx", 1, FCGI_PARAMS, 1, len(pairs), 5) + pairs + b"\0" * 5
        self.proto.dataReceived(begin(1) + padded + record(FCGI_PARAMS, 1) + stdin(1))
        self.assertIn(b"X-Path: /p\r\n", stdout_of(self.transport.value()))

    def test_params_split_across_records(self) -> None:
        """A name-value pair may span two PARAMS records."""
        pairs = encode_pairs([(b"REQUEST_METHOD", b"GET"), (b"PATH_INFO", b"/split")])
        data = (begin(1) + record(FCGI_PARAMS, 1, pairs[:7]) + record(FCGI_PARAMS, 1, pairs[7:])
                + record(FCGI_PARAMS, 1) + stdin(1))
        self.proto.dataReceived(data)
        self.assertIn(b"X-Path: /split\r\n", stdout_of(self.transport.value()))

    def test_multiplexed_requests(self) -> None:
        """Two interleaved request ids are answered each with its own body."""
        data = (begin(1) + begin(2) + params(2, REQUEST_METHOD="POST", PATH_INFO="/two")
                + params(1, REQUEST_METHOD="POST", PATH_INFO="/one")
                + stdin(2, b"second") + stdin(1, b"first"))
        self.proto.dataReceived(data)
        out = self.transport.value()
        self.assertTrue(stdout_of(out, 1).endswith(b"\r\n\r\nfirst"))
        self.assertTrue(stdout_of(out, 2).endswith(b"\r\n\r\nsecond"))
        self.assertEqual(sorted(r for t, r, _ in parse_records(out) if t == FCGI_END_REQUEST),
                         [1, 2])

    def test_keep_conn_keeps_the_connection(self) -> None:
        """With FCGI_KEEP_CONN the connection stays open after END_REQUEST."""
        self.proto.dataReceived(request(1, keep_conn=True))
        self.assertFalse(self.transport.disconnecting)

    def test_without_keep_conn_the_connection_closes(self) -> None:
        """Without FCGI_KEEP_CONN the connection is closed after END_REQUEST."""
        self.proto.dataReceived(request(1, keep_conn=False))
        self.assertTrue(self.transport.disconnecting)

    def test_get_values(self) -> None:
        """GET_VALUES is answered with the known variables only."""
        query = encode_pairs([(b"FCGI_MAX_CONNS", b""), (b"FCGI_MAX_REQS", b""),
                              (b"FCGI_MPXS_CONNS", b""), (b"OTHER", b"")])
        self.proto.dataReceived(record(FCGI_GET_VALUES, 0, query))
        [(rtype, rid, content)] = parse_records(self.transport.value())
        self.assertEqual((rtype, rid), (FCGI_GET_VALUES_RESULT, 0))
        self.assertEqual(decode_pairs(content), {"FCGI_MAX_CONNS": "1000",
                                                 "FCGI_MAX_REQS": "1000",
                                                 "FCGI_MPXS_CONNS": "1"})

    def test_unknown_management_type(self) -> None:
        """A management record of an unknown type gets FCGI_UNKNOWN_TYPE naming it."""
        self.proto.dataReceived(record(42, 0, b"xyz"))
        self.assertEqual(parse_records(self.transport.value()),
                         [(FCGI_UNKNOWN_TYPE, 0, b"\x2a" + b"\0" * 7)])
        self.assertFalse(self.transport.disconnecting)

    def test_unknown_role(self) -> None:
        """A role other than RESPONDER gets END_REQUEST with FCGI_UNKNOWN_ROLE."""
        self.proto.dataReceived(begin(3, role=2))
        self.assertEqual(parse_records(self.transport.value()),
                         [(FCGI_END_REQUEST, 3, struct.pack("!IB3x", 0, 3))])
        self.assertFalse(self.transport.disconnecting)  # (KEEP_CONN)

    def test_unknown_role_without_keep_conn_closes(self) -> None:
        """Without KEEP_CONN the connection closes after the END_REQUEST, as after any
        request (FastCGI 1.0, 5.1), unless other requests on it are still active."""
        self.proto.dataReceived(begin(1) + begin(3, keep_conn=False, role=2))
        self.assertEqual(parse_records(self.transport.value()),
                         [(FCGI_END_REQUEST, 3, struct.pack("!IB3x", 0, 3))])
        self.assertFalse(self.transport.disconnecting)  # request 1 is active
        self.proto.dataReceived(request(1))
        self.proto.dataReceived(begin(4, keep_conn=False, role=3))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(parse_records(self.transport.value())[-1],
                         (FCGI_END_REQUEST, 4, struct.pack("!IB3x", 0, 3)))

    def test_records_for_inactive_ids_are_ignored(self) -> None:
        """PARAMS, STDIN, DATA and ABORT for a request id that is not active are ignored."""
        self.proto.dataReceived(params(9, REQUEST_METHOD="GET") + stdin(9, b"x")
                                + record(FCGI_DATA, 9, b"d") + record(FCGI_ABORT_REQUEST, 9))
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.transport.disconnecting)

    def test_records_after_the_end_are_ignored(self) -> None:
        """Records for a request that already ended are ignored."""
        self.proto.dataReceived(request(1))
        written = self.transport.value()
        self.proto.dataReceived(stdin(1, b"late") + record(FCGI_ABORT_REQUEST, 1))
        self.assertEqual(self.transport.value(), written)

    def test_bad_version_closes(self) -> None:
        """A record with a version other than 1 closes the connection."""
        self.proto.dataReceived(b"\x02\x01\x00\x01\x00\x08\x00\x00" + bytes(8))
        self.assertTrue(self.transport.disconnecting)

    def test_unparsable_params_close(self) -> None:
        """Params whose pair lengths overrun their data close the connection."""
        self.proto.dataReceived(begin(1) + record(FCGI_PARAMS, 1, b"\x09\x01ab")
                                + record(FCGI_PARAMS, 1))
        self.assertTrue(self.transport.disconnecting)

    def test_large_output_split_into_records(self) -> None:
        """A 1 MiB response goes out in STDOUT records of at most 65,535 bytes."""
        listener = make_listener(native="tests.listeners.apps:big_native")
        proto, transport = connect(listener)
        proto.dataReceived(request(1))
        records = parse_records(transport.value())
        sizes = [len(c) for t, _, c in records if t == FCGI_STDOUT]
        self.assertTrue(all(size <= 65535 for size in sizes))
        self.assertEqual(sizes[-1], 0)
        body = stdout_of(transport.value()).split(b"\r\n\r\n", 1)[1]
        self.assertEqual(body, apps.BIG)

    def test_large_body_in_many_records(self) -> None:
        """A 1 MiB body in 17 STDIN records is echoed whole."""
        body = bytes(range(256)) * 4096
        self.proto.dataReceived(request(1, body=body))
        self.assertTrue(stdout_of(self.transport.value()).endswith(b"\r\n\r\n" + body))


class AbortTests(SynchronousTestCase):
    def setUp(self) -> None:
        apps.PENDING.clear()
        self.listener = make_listener(native="tests.listeners.apps:pending_native")
        self.proto, self.transport = connect(self.listener)

    def test_abort_sends_end_request_once_and_nothing_after(self) -> None:
        """After ABORT_REQUEST, END_REQUEST is sent once and the late answer is dropped."""
        self.proto.dataReceived(request(1))
        self.proto.dataReceived(record(FCGI_ABORT_REQUEST, 1))
        self.proto.dataReceived(record(FCGI_ABORT_REQUEST, 1))
        self.assertEqual(parse_records(self.transport.value()),
                         [(FCGI_END_REQUEST, 1, END_OK)])
        self.assertEqual(self.listener.in_flight, 0)

    def test_abort_cancels_the_handlers_deferred(self) -> None:
        """ABORT_REQUEST cancels the Deferred a native handler returned."""
        self.proto.dataReceived(request(1))
        self.proto.dataReceived(record(FCGI_ABORT_REQUEST, 1))
        self.assertTrue(apps.PENDING[0].called)
        self.assertEqual(self.listener.snapshot()["cancelled"], 1)

    def test_abort_before_params_end(self) -> None:
        """A request aborted while its params arrive gets END_REQUEST, and no answer."""
        self.proto.dataReceived(begin(1) + record(FCGI_ABORT_REQUEST, 1))
        self.assertEqual(parse_records(self.transport.value()),
                         [(FCGI_END_REQUEST, 1, END_OK)])

    def test_connection_lost_cancels(self) -> None:
        """Losing the connection cancels the requests in flight."""
        self.proto.dataReceived(request(1))
        self.proto.connectionLost(None)
        self.assertTrue(apps.PENDING[0].called)
        self.assertEqual(self.listener.in_flight, 0)

    def test_deferred_answer(self) -> None:
        """A Deferred's result is sent when it fires."""
        self.proto.dataReceived(request(1))
        self.assertEqual(self.transport.value(), b"")
        apps.PENDING[0].callback(b"later")
        self.assertTrue(stdout_of(self.transport.value()).endswith(b"\r\n\r\nlater"))


class LimitTests(SynchronousTestCase):
    def test_params_over_the_limit_get_431_then_close(self) -> None:
        """Params over max_param_bytes are answered 431 and the connection closes."""
        listener = make_listener(native="tests.listeners.apps:hello_native",
                                 max_param_bytes=100)
        proto, transport = connect(listener)
        proto.dataReceived(begin(1) + record(FCGI_PARAMS, 1, encode_pairs(
            [(b"HTTP_X", b"x" * 200)])))
        self.assertTrue(stdout_of(transport.value()).startswith(
            b"Status: 431 Request Header Fields Too Large\r\n"))
        self.assertEqual(parse_records(transport.value())[-1], (FCGI_END_REQUEST, 1, END_OK))
        self.assertTrue(transport.disconnecting)

    def test_body_over_the_limit_gets_413(self) -> None:
        """A Content-Length over max_body_bytes is answered 413 without reading the body."""
        listener = make_listener(native="tests.listeners.apps:echo_native", max_body_bytes=10)
        proto, transport = connect(listener)
        proto.dataReceived(begin(1) + params(1, REQUEST_METHOD="POST", CONTENT_LENGTH="11"))
        self.assertTrue(stdout_of(transport.value()).startswith(b"Status: 413 "))

    def test_body_over_the_limit_without_length_gets_413(self) -> None:
        """A body that grows over max_body_bytes without Content-Length is answered 413."""
        listener = make_listener(native="tests.listeners.apps:echo_native", max_body_bytes=10)
        proto, transport = connect(listener)
        proto.dataReceived(begin(1) + params(1, REQUEST_METHOD="POST")
                           + record(FCGI_STDIN, 1, b"x" * 11))
        self.assertTrue(stdout_of(transport.value()).startswith(b"Status: 413 "))
        self.assertEqual(listener.snapshot()["too_large_413"], 1)

    def test_length_not_in_ascii_digits_gets_400(self) -> None:
        """CONTENT_LENGTH "²" (str.isdigit() says yes, int() says no) is answered 400.

        The other request multiplexed on the connection is answered as usual.
        """
        listener = make_listener(native="tests.listeners.apps:echo_native")
        proto, transport = connect(listener)
        proto.dataReceived(begin(1) + begin(2)
                           + params(1, REQUEST_METHOD="POST", CONTENT_LENGTH="\u00b2")
                           + params(2, REQUEST_METHOD="POST", CONTENT_LENGTH="2")
                           + stdin(1, b"xx") + stdin(2, b"ok"))
        out = transport.value()
        self.assertTrue(stdout_of(out, 1).startswith(b"Status: 400 Bad Request\r\n"))
        self.assertTrue(stdout_of(out, 2).endswith(b"\r\n\r\nok"))
        self.assertFalse(transport.disconnecting)
        self.assertEqual(listener.snapshot()["bad_request_400"], 1)

    def test_length_of_5000_digits_gets_413(self) -> None:
        """A CONTENT_LENGTH longer than int() parses (4,300 digits) is over the limit: 413."""
        listener = make_listener(native="tests.listeners.apps:echo_native")
        proto, transport = connect(listener)
        proto.dataReceived(begin(1) + params(1, REQUEST_METHOD="POST", CONTENT_LENGTH="9" * 5000))
        self.assertTrue(stdout_of(transport.value()).startswith(b"Status: 413 "))

    def test_too_many_request_ids_per_connection(self) -> None:
        """Past FCGI_MAX_REQS (1000 for a native handler) open request ids on one
        connection, BEGIN gets a 503 on STDOUT (nginx would turn FCGI_CANT_MPX_CONN
        into a 502)."""
        listener = make_listener(native="tests.listeners.apps:hello_native")
        proto, transport = connect(listener)
        proto.dataReceived(b"".join(begin(rid) for rid in range(1, 1002)))
        records = parse_records(transport.value())
        self.assertEqual([(t, r) for t, r, _ in records],
                         [(FCGI_STDOUT, 1001), (FCGI_STDOUT, 1001), (FCGI_END_REQUEST, 1001)])
        self.assertTrue(records[0][2].startswith(b"Status: 503 "))
        self.assertEqual(records[2][2], END_OK)


class LingerTests(SynchronousTestCase):
    """Answered before its body ended, a closing connection first reads the body's rest:
    closing under the web server's writes makes it fail the request (Apache's
    mod_proxy_fcgi: EPIPE on the empty STDIN record, then its own 503)."""

    def test_early_413_closes_only_after_the_body_ended(self) -> None:
        """413 goes out at once; the close waits for the empty STDIN record."""
        listener = make_listener(native="tests.listeners.apps:echo_native", max_body_bytes=10)
        proto, transport = connect(listener)
        proto.dataReceived(begin(1, keep_conn=False)
                           + params(1, REQUEST_METHOD="POST", CONTENT_LENGTH="20"))
        self.assertTrue(stdout_of(transport.value()).startswith(b"Status: 413 "))
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(record(FCGI_STDIN, 1, b"x" * 20))
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(record(FCGI_STDIN, 1))
        self.assertTrue(transport.disconnecting)

    def test_a_body_that_never_ends_is_waited_for_a_bounded_time(self) -> None:
        """Without the body's end the connection still closes after LINGER_TIMEOUT."""
        from daemonapp.listeners.connections import LINGER_TIMEOUT

        listener = make_listener(native="tests.listeners.apps:echo_native", max_body_bytes=10)
        proto, transport = connect(listener)
        proto.dataReceived(begin(1, keep_conn=False)
                           + params(1, REQUEST_METHOD="POST", CONTENT_LENGTH="20"))
        listener.reactor.advance(LINGER_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        listener.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_a_whole_answer_before_the_body_ended_waits_too(self) -> None:
        """A WSGI-like early whole answer (hello, body unread) closes after the body."""
        listener = make_listener(native="tests.listeners.apps:hello_native")
        proto, transport = connect(listener)
        proto.dataReceived(begin(1, keep_conn=False) + params(1, REQUEST_METHOD="GET"))
        # a native handler needs the whole body: nothing is answered yet
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(record(FCGI_STDIN, 1))
        self.assertTrue(stdout_of(transport.value()).endswith(b"Hello, world!\n"))
        self.assertTrue(transport.disconnecting)  # the body had ended: close at once

    def test_close_unregisters_the_producer_first(self) -> None:
        """Closing unregisters the protocol as producer: with one registered, Twisted's
        FileDescriptor never closes a connection whose producer it had paused."""
        listener = make_listener(native="tests.listeners.apps:hello_native")
        proto, transport = connect(listener)
        self.assertIs(transport.producer, proto)
        proto.dataReceived(request(1, keep_conn=False))
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)

    def test_keep_conn_answers_never_linger(self) -> None:
        """With KEEP_CONN the connection stays open, answered early or not."""
        listener = make_listener(native="tests.listeners.apps:echo_native", max_body_bytes=10)
        proto, transport = connect(listener)
        proto.dataReceived(begin(1, keep_conn=True)
                           + params(1, REQUEST_METHOD="POST", CONTENT_LENGTH="20"))
        self.assertTrue(stdout_of(transport.value()).startswith(b"Status: 413 "))
        proto.dataReceived(record(FCGI_STDIN, 1, b"x" * 20) + record(FCGI_STDIN, 1))
        self.assertFalse(transport.disconnecting)


class UnknownTypeFloodTests(SynchronousTestCase):
    def test_unknown_type_records_are_answered_with_one_write_per_read(self) -> None:
        """8-byte records of an unknown type (a never-reading peer's flood): each gets its
        UNKNOWN_TYPE answer, all of a read in one write (a write call each cost 1.4 s of
        reactor for 20 such peers)."""
        listener = make_listener(native="tests.listeners.apps:hello_native")
        proto, transport = connect(listener)
        writes: list[bytes] = []
        real_write = transport.write

        def write(data: bytes) -> None:
            writes.append(data)
            real_write(data)

        transport.write = write  # type: ignore[method-assign]
        proto.dataReceived(record(20, 0) * 8192)
        self.assertEqual(len(writes), 1)
        records = parse_records(transport.value())
        self.assertEqual(len(records), 8192)
        self.assertEqual(set(records), {(FCGI_UNKNOWN_TYPE, 0, bytes([20]) + bytes(7))})


class KeepConnDropTests(SynchronousTestCase):
    """With KEEP_CONN, a body still coming after an early answer is read and dropped
    within bounds (issue 14: 4 GiB in 10 s on 20 connections, for ever)."""

    def _answered_early(self) -> tuple[Any, Any, Any]:
        listener = make_listener(native="tests.listeners.apps:echo_native", max_body_bytes=10)
        proto, transport = connect(listener)
        # no CONTENT_LENGTH: the body is answered 413 once it grows past 10 bytes
        proto.dataReceived(begin(1, keep_conn=True) + params(1, REQUEST_METHOD="POST")
                           + record(FCGI_STDIN, 1, b"x" * 11))
        self.assertTrue(stdout_of(transport.value()).startswith(b"Status: 413 "))
        return listener, proto, transport

    def test_an_endless_body_closes_after_max_body_bytes_more(self) -> None:
        _listener, proto, transport = self._answered_early()
        proto.dataReceived(record(FCGI_STDIN, 1, b"x" * 10))
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(record(FCGI_STDIN, 1, b"x"))
        self.assertTrue(transport.disconnecting)

    def test_a_body_still_coming_after_linger_timeout_closes(self) -> None:
        from daemonapp.listeners.connections import LINGER_TIMEOUT

        listener, proto, transport = self._answered_early()
        listener.reactor.advance(LINGER_TIMEOUT - 0.1)
        proto.dataReceived(record(FCGI_STDIN, 1, b"x"))
        self.assertFalse(transport.disconnecting)
        listener.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_a_body_that_ends_keeps_the_connection_for_the_next_request(self) -> None:
        listener, proto, transport = self._answered_early()
        proto.dataReceived(record(FCGI_STDIN, 1, b"x" * 5) + record(FCGI_STDIN, 1))
        listener.reactor.advance(30)  # no linger timer left (idle_timeout is 60 s)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(request(2, b"abc"))
        self.assertTrue(stdout_of(transport.value(), 2).endswith(b"\r\n\r\nabc"))
        self.assertFalse(transport.disconnecting)

    def test_a_declared_body_is_dropped_to_its_end(self) -> None:
        """A 413 for a declared length over max_body_bytes: the whole declared body may
        still come (nginx sends it) without the connection being cut."""
        listener = make_listener(native="tests.listeners.apps:echo_native", max_body_bytes=10)
        proto, transport = connect(listener)
        proto.dataReceived(begin(1, keep_conn=True)
                           + params(1, REQUEST_METHOD="POST", CONTENT_LENGTH="100"))
        proto.dataReceived(record(FCGI_STDIN, 1, b"x" * 100) + record(FCGI_STDIN, 1))
        self.assertFalse(transport.disconnecting)

    def test_requests_past_fcgi_max_reqs_have_their_body_bounded_too(self) -> None:
        listener = make_listener(native="tests.listeners.apps:echo_native", max_concurrent=1,
                                 backlog=0, max_body_bytes=10)
        proto, transport = connect(listener)
        proto.dataReceived(begin(1) + params(1, REQUEST_METHOD="POST")  # open, no body end
                           + begin(2) + params(2, REQUEST_METHOD="POST"))
        self.assertTrue(stdout_of(transport.value(), 2).startswith(b"Status: 503 "))
        proto.dataReceived(record(FCGI_STDIN, 2, b"x" * 11))
        self.assertTrue(transport.disconnecting)


class PeerLogTests(SynchronousTestCase):
    """What peers do wrong is logged at most once a minute per kind, with a count."""

    def test_two_hundred_garbage_connections_make_two_lines(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = MemoryReactorClock()
        listener = make_listener(clock, native="tests.listeners.apps:echo_native")
        for _ in range(200):
            proto, transport = connect(listener)
            proto.dataReceived(b"\x02" + request(1)[1:])  # a bad version
            self.assertTrue(transport.disconnecting)
        lines = [e for e in events if "FastCGI:" in str(e.get("log_format"))]
        self.assertEqual(len(lines), 1)
        clock.advance(60)
        lines = [e for e in events if "FastCGI:" in str(e.get("log_format"))]
        self.assertEqual(len(lines), 2)
        self.assertEqual(lines[1]["repeated"], 199)
        self.assertEqual(lines[1]["version"], 2)
        clock.advance(120)  # nothing more to say: no line, no timer
        self.assertEqual(len([e for e in events if "FastCGI:" in str(e.get("log_format"))]), 2)
        self.assertEqual([c for c in clock.getDelayedCalls() if "_flush" in str(c)], [])


class FlowControlTests(SynchronousTestCase):
    def test_registers_as_streaming_producer(self) -> None:
        """The protocol registers itself with its transport as a streaming producer."""
        listener = make_listener(native="tests.listeners.apps:hello_native")
        proto, transport = connect(listener)
        self.assertIs(transport.producer, proto)
        self.assertTrue(transport.streaming)

    def test_pause_reaches_running_exchanges(self) -> None:
        """pauseProducing marks running requests paused; resumeProducing resumes them."""
        apps.PENDING.clear()
        listener = make_listener(native="tests.listeners.apps:pending_native")
        proto, _transport = connect(listener)
        proto.dataReceived(request(1))
        proto.pauseProducing()
        self.assertTrue(proto.requests[1].output_paused)
        proto.resumeProducing()
        self.assertFalse(proto.requests[1].output_paused)


# ---------------------------------- the wire rules against a real `daemonapp run`


@pytest.fixture(scope="module")
def fcgi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("fcgi")
    write_file(root / "fcgiapp.py", FCGI_APP)
    cfg = write_file(root / "d.yaml", "app:\n  state_dir: ./var\nlisteners:\n"
                     "  - protocol: fastcgi\n    endpoint: unix:./run/fcgi.sock\n"
                     "    native: fcgiapp:handle\n    max_param_bytes: 4096\n")
    sock_path = root / "run" / "fcgi.sock"
    with running(popen_run_logged(root, cfg)) as proc:
        assert wait_listening(proc, sock_path)
        assert proc.poll() is None, (root / "app.log").read_text()
        yield sock_path


@pytest.mark.integration
def test_fcgi_get_values(fcgi_server: Path) -> None:
    """GET_VALUES is answered with FCGI_MAX_CONNS, FCGI_MAX_REQS and FCGI_MPXS_CONNS."""
    with fcgi_connect(fcgi_server) as sock:
        names = {"FCGI_MAX_CONNS": "", "FCGI_MAX_REQS": "", "FCGI_MPXS_CONNS": ""}
        sock.sendall(fcgi_record(9, 0, fcgi_pairs(names)))
        records = fcgi_read(sock)
    assert records and records[0][0] == 10
    for name in names:
        assert name.encode() in records[0][2]


@pytest.mark.integration
def test_fcgi_unknown_type(fcgi_server: Path) -> None:
    """An unknown management record type is answered with UNKNOWN_TYPE."""
    with fcgi_connect(fcgi_server) as sock:
        sock.sendall(fcgi_record(42, 0, b""))
        records = fcgi_read(sock)
    assert records and records[0][0] == 11
    assert records[0][2][0] == 42


@pytest.mark.integration
def test_fcgi_multiplexed_split_at_every_byte(fcgi_server: Path) -> None:
    """Two multiplexed requests sent one byte at a time are both answered on one connection."""
    data = fcgi_request(1, "/a") + fcgi_request(2, "/b")
    with fcgi_connect(fcgi_server) as sock:
        for i in range(len(data)):
            sock.send(data[i:i + 1])
        records = fcgi_read(sock, until_end={1, 2})
    ends = {rid for rtype, rid, _ in records if rtype == 3}
    assert ends == {1, 2}
    out1 = b"".join(c for t, rid, c in records if t == 6 and rid == 1)
    assert out1.endswith(b"hello")


@pytest.mark.integration
def test_fcgi_output_records_at_most_65535(fcgi_server: Path) -> None:
    """Output is split into records of at most 65,535 bytes."""
    records = fcgi_get(fcgi_server, "/big")
    stdout = [c for t, _, c in records if t == 6]
    assert sum(len(c) for c in stdout) > 200000
    assert max(len(c) for c in stdout) <= 65535
    assert records[-1][0] == 3


@pytest.mark.integration
def test_fcgi_inactive_request_id_ignored(fcgi_server: Path) -> None:
    """Records for a request id that is not active are ignored; the connection stays up."""
    with fcgi_connect(fcgi_server) as sock:
        sock.sendall(fcgi_record(5, 7, b"stray") + fcgi_record(4, 9, b""))
        sock.sendall(fcgi_request(1, "/a"))
        records = fcgi_read(sock, until_end=1)
    assert records[-1][0] == 3 and records[-1][1] == 1
    assert all(rid == 1 for _, rid, _ in records)


@pytest.mark.integration
def test_fcgi_abort_end_request_once(fcgi_server: Path) -> None:
    """After ABORT_REQUEST, END_REQUEST is sent once and nothing follows it."""
    with fcgi_connect(fcgi_server) as sock:
        sock.sendall(fcgi_request(1, "/hang"))
        # The request is in flight in the app (not only on the wire) when ABORT comes.
        state_dir = fcgi_server.parent.parent / "var"
        assert wait_until(lambda: listener_load(state_dir, 0) == (1, 0), timeout=10)
        sock.sendall(fcgi_record(2, 1))
        records = fcgi_read(sock, until_end=1)
        assert records and records[-1][0] == 3
        more = fcgi_read(sock, timeout=0.5)
    assert [r for r in more if r[1] == 1 and r[0] != -1] == []


@pytest.mark.integration
def test_fcgi_bad_version_closes(fcgi_server: Path) -> None:
    """A record with a bad version closes the connection."""
    with fcgi_connect(fcgi_server) as sock:
        sock.sendall(fcgi_record(1, 1, b"\0" * 8, version=9))
        records = fcgi_read(sock)
    assert records and records[-1][0] == -1


@pytest.mark.integration
def test_fcgi_params_over_limit_431(fcgi_server: Path) -> None:
    """Params over max_param_bytes get `Status: 431`, then the connection is closed."""
    with fcgi_connect(fcgi_server) as sock:
        sock.sendall(fcgi_request(1, "/a", {"HTTP_X_BIG": "y" * 8000}))
        records = fcgi_read(sock, until_end=1)
        out = b"".join(c for t, _, c in records if t == 6)
        assert out.startswith(b"Status: 431")
        tail = fcgi_read(sock, timeout=2)
    assert tail and tail[-1][0] == -1
