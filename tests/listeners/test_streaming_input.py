"""wsgi.input for a body still arriving: a large read wakes its reader once, copies once."""

from __future__ import annotations

import threading
from typing import Any

from daemonapp.listeners.wsgi import StreamingInput


def _until_waiting(stream: StreamingInput) -> None:
    """Poll (bounded) until the reader thread waits in the stream."""
    for _ in range(10_000):
        if stream._need is not None:
            return
        threading.Event().wait(0.001)
    raise AssertionError("the reader never waited")


class _Exchange:
    """The little of an Exchange that StreamingInput uses."""

    body: list[bytes]
    body_complete = False
    spool = None
    _hold_paused = False

    def __init__(self) -> None:
        self.body = []
        self.paused = 0

    def _pause_input(self) -> None:
        self.paused += 1

    def _resume_input(self) -> None:
        self.paused -= 1


def test_a_large_read_wakes_its_reader_once() -> None:
    """read(n) of 2 MiB fed in 32 pieces is woken once, when all n bytes are there."""
    stream = StreamingInput(_Exchange(), lambda function, *args: function(*args))  # type: ignore[arg-type]
    waits = [0]
    original = stream._cond.wait

    def counting_wait(*args: Any) -> bool:
        waits[0] += 1
        return bool(original(*args))

    stream._cond.wait = counting_wait  # type: ignore[method-assign]
    size = 2 * 1024 * 1024
    out: dict[str, bytes] = {}
    reader = threading.Thread(target=lambda: out.update(body=stream.read(size)))
    reader.start()
    _until_waiting(stream)
    piece = b"x" * (size // 32)
    for _ in range(32):
        stream.feed(piece)
    reader.join(10)
    assert out["body"] == b"x" * size
    assert waits[0] == 1


def test_read_all_is_woken_by_the_end_of_the_body() -> None:
    """read() waits for the body's end, not for each piece."""
    stream = StreamingInput(_Exchange(), lambda function, *args: function(*args))  # type: ignore[arg-type]
    out: dict[str, bytes] = {}
    reader = threading.Thread(target=lambda: out.update(body=stream.read()))
    reader.start()
    _until_waiting(stream)
    for _ in range(10):
        stream.feed(b"abc")
    assert reader.is_alive()
    stream.feed_eof()
    reader.join(10)
    assert out["body"] == b"abc" * 10
