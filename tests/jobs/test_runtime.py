"""The job-side helpers: progress records on the pipe and their coalescing."""

from __future__ import annotations

import os
import select
import time

from hypothesis import given
from hypothesis import strategies as st

from daemonapp.jobs.runtime import (
    _ProgressPipe,
    cap_message,
    clamp_percent,
    decode_progress,
    encode_progress,
)


@given(st.floats(allow_nan=True, allow_infinity=True), st.text())
def test_progress_record_round_trip(percent: float, message: str) -> None:
    """Any percent and message survive the pipe as one clamped, capped line."""
    value = (clamp_percent(percent), cap_message(message))
    line = encode_progress(*value)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    decoded = decode_progress(line[:-1])
    assert decoded is not None
    assert decoded[0] == value[0]
    assert decoded[1] == value[1].encode("utf-8", "replace").decode("utf-8", "replace")


def test_clamp_percent() -> None:
    """Percentages are clamped to [0, 100]; NaN and junk read as 0."""
    assert [clamp_percent(v) for v in (-5, 42.5, 250, float("nan"), "x", None)] == [
        0.0, 42.5, 100.0, 0.0, 0.0, 0.0]


def test_damaged_record() -> None:
    """A record without a tab or with a bad number is dropped."""
    assert (decode_progress(b"50"), decode_progress(b"half\tway")) == (None, None)


def test_pipe_coalesces_and_flushes_last() -> None:
    """Reports closer than the interval are held back; flush() writes the last one."""
    read_end, write_end = os.pipe()
    try:
        pipe = _ProgressPipe(write_end, interval=3600)
        for i in range(1000):
            pipe.report(float(i), f"step {i}")
        pipe.flush()
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "rb") as reader:
            read_end = -1
            assert reader.read().splitlines() == [b"0.0\tstep 0", b"999.0\tstep 999"]
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)


def test_pipe_sends_held_back_value_without_another_call() -> None:
    """A value held back by the rate limit is written once the interval has passed,
    with no further report() and no flush()."""
    read_end, write_end = os.pipe()
    pipe = _ProgressPipe(write_end, interval=0.05)
    try:
        for i in range(1000):
            pipe.report(float(i), f"step {i}")
        os.set_blocking(read_end, True)
        received = b""
        deadline = time.monotonic() + 5.0
        while not received.endswith(b"999.0\tstep 999\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 0.1)
            if ready:
                received += os.read(read_end, 65536)
        assert received.splitlines() == [b"0.0\tstep 0", b"999.0\tstep 999"]
    finally:
        pipe.close()
        os.close(read_end)
        os.close(write_end)
