"""Property tests: the FastCGI parser under random splits and random bytes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.listeners.helpers import connect, make_listener, request, stdout_of

LISTENER = make_listener(native="tests.listeners.apps:echo_native", max_param_bytes=4096,
                         max_body_bytes=65536)
STREAM = (request(1, body=b"alpha", PATH_INFO="/a")
          + request(2, body=b"beta" * 10000, PATH_INFO="/b")
          + request(3, PATH_INFO="/c"))


def _feed_in_pieces(data: bytes, cuts: list[int]) -> bytes:
    proto, transport = connect(LISTENER)
    previous = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        proto.dataReceived(data[previous:cut])
        previous = cut
    return bytes(transport.value())


WHOLE = _feed_in_pieces(STREAM, [])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=60))
def test_any_split_gives_the_same_output(cuts: list[int]) -> None:
    """However the byte stream is cut into reads, the responses are the same."""
    assert _feed_in_pieces(STREAM, cuts) == WHOLE


def test_whole_stream_answers_all_three() -> None:
    """The reference stream's three requests are each answered."""
    assert stdout_of(WHOLE, 1).endswith(b"\r\n\r\nalpha")
    assert stdout_of(WHOLE, 2).endswith(b"\r\n\r\n" + b"beta" * 10000)
    assert b"X-Path: /c" in stdout_of(WHOLE, 3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_random_bytes_never_raise(chunks: list[bytes]) -> None:
    """Random bytes never raise out of dataReceived, and buffered state stays bounded."""
    proto, _transport = connect(LISTENER)
    for chunk in chunks:
        proto.dataReceived(chunk)
        assert proto._pending_len <= 8 + 65535 + 255 + 300
        for ex in proto.requests.values():
            assert ex.param_len <= 4096
            assert ex.body_len <= 65536 + 65535


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(min_value=0, max_value=2000))
def test_valid_prefix_then_garbage_never_raises(garbage: bytes, cut: int) -> None:
    """A valid request cut anywhere and followed by garbage never raises."""
    proto, _transport = connect(LISTENER)
    proto.dataReceived(STREAM[:cut] + garbage)
    proto.connectionLost(None)
    assert LISTENER.in_flight == 0
