"""What ``wsgi.input`` (daemonapp's StreamingInput) costs for one ``read(CONTENT_LENGTH)``.

Usage: python -P bench/uploads_input.py [--source CHECKOUT] [--mb 20] [--runs 5]

Stand-alone, no web server: a child process writes the body into a socketpair; the main
thread plays the reactor (``recv(65536)`` as Twisted's doRead, a slice per piece as
FastCGI's record parser makes, ``feed()``); one thread does ``read(N)``, as Django's
``request.body``. Each variant differs from the listener's class in one thing, to tell
the causes apart:

- *as is*: StreamingInput from --source;
- *memoryview take*: ``_take`` copies once (``bytes(memoryview(buf)[:n])``) instead of
  twice (a bytearray slice, then bytes);
- *notify when enough*: the reader is woken once its bytes are there, not per piece;
- *list + join*: pieces kept in a list, joined once.

Prints CPU time per upload (all threads, best of --runs) and how often the reader was
woken, then tracemalloc's peak during the take (the memory per upload: x the body).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 65536


def main() -> int:
    """Run every variant, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=str(ROOT), help="checkout to import daemonapp from")
    parser.add_argument("--mb", type=int, default=20, help="body size in MB (10^6 bytes)")
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    sys.path.insert(0, options.source)
    from daemonapp.listeners import wsgi

    size = options.mb * 1000 * 1000
    source = bytes(size)
    base: Any = wsgi.StreamingInput
    wakes = [0]

    class AsIs(base):  # type: ignore[misc]
        """The listener's class, counting the reader's wake-ups."""

        def _wait(self, ready: Callable[[], bool], *need: float) -> None:
            cond = self._cond
            original = cond.wait

            def wait(*args: Any) -> bool:
                wakes[0] += 1
                return bool(original(*args))

            cond.wait = wait
            try:
                base._wait(self, ready, *need)  # a need since the wake-up fix
            finally:
                del cond.wait

    class MemoryviewTake(AsIs):
        """Only the take differs: one copy."""

        def _take(self, n: int) -> bytes:
            data = bytes(memoryview(self._buf)[:n])
            del self._buf[:n]
            return data

    class NotifyWhenEnough(MemoryviewTake):
        """And the reader is woken only when its bytes are there."""

        want: int | None = None

        def feed(self, data: bytes) -> None:
            with self._cond:
                self._buf += data
                if self.want is None or len(self._buf) >= self.want:
                    self._cond.notify_all()

        def read(self, n: int | None = -1) -> bytes:
            with self._cond:
                self.want = n if n is not None and n >= 0 else None
                while (self.want is None or len(self._buf) < self.want) and not self._eof:
                    wakes[0] += 1
                    self._cond.wait()
                self.want = None
                return self._take(len(self._buf) if n is None or n < 0 else n)

    class ListJoin(NotifyWhenEnough):
        """And the pieces are kept in a list, joined once."""

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.parts: list[bytes] = []
            self.have = 0

        def feed(self, data: bytes) -> None:
            with self._cond:
                self.parts.append(data)
                self.have += len(data)
                if self.want is None or self.have >= self.want:
                    self._cond.notify_all()

        def read(self, n: int | None = -1) -> bytes:
            with self._cond:
                self.want = n if n is not None and n >= 0 else None
                while (self.want is None or self.have < self.want) and not self._eof:
                    wakes[0] += 1
                    self._cond.wait()
                data = b"".join(self.parts)
                self.parts, self.have, self.want = [], 0, None
                return data

    class Exchange:
        body: list[bytes]
        body_complete = False
        spool = None
        _hold_paused = False

        def __init__(self) -> None:
            self.body = []

        def _pause_input(self) -> None:
            """Never paused here: the reader always wants the whole body."""

        def _resume_input(self) -> None:
            """See _pause_input."""

    def writer() -> socket.socket:
        ours, theirs = socket.socketpair()
        if os.fork() == 0:
            ours.close()
            theirs.sendall(source)
            theirs.close()
            os._exit(0)
        theirs.close()
        time.sleep(0.05)
        return ours

    def one(cls: Any) -> float:
        stream = cls(Exchange(), lambda function, *args: function(*args))
        out: dict[str, bytes] = {}
        reader = threading.Thread(target=lambda: out.update(body=stream.read(size)))
        reader.start()
        sock = writer()
        started = time.process_time()
        got = 0
        while got < size:
            piece = sock.recv(CHUNK)
            got += len(piece)
            stream.feed(piece[8:] + piece[:8])  # FastCGI: a slice of each read (a copy)
        stream.feed_eof()
        reader.join()
        cpu = time.process_time() - started
        sock.close()
        os.wait()
        assert len(out["body"]) == size
        return cpu

    def recv_only() -> float:
        sock = writer()
        started = time.process_time()
        parts, got = [], 0
        while got < size:
            piece = sock.recv(CHUNK)
            got += len(piece)
            parts.append(piece[8:] + piece[:8])
        b"".join(parts)
        cpu = time.process_time() - started
        sock.close()
        os.wait()
        return cpu

    print(f"# {options.mb} MB body, read(CONTENT_LENGTH) in one call; daemonapp from "
          f"{wsgi.__file__}; best of {options.runs}")
    print(f"{'variant':<44} {'CPU ms':>7} {'reader woken':>13}")
    floor = min(recv_only() for _ in range(options.runs))
    print(f"{'floor: recv loop + one join, no thread':<44} {floor * 1000:>7.1f} {'—':>13}")
    for label, cls in (("as is", AsIs), ("  memoryview take", MemoryviewTake),
                       ("  + notify when enough", NotifyWhenEnough),
                       ("  + list of pieces, one join", ListJoin)):
        wakes[0] = 0
        cpu = min(one(cls) for _ in range(options.runs))
        print(f"{label:<44} {cpu * 1000:>7.1f} {wakes[0] // options.runs:>13}")

    print(f"\n{'take (the memory per upload)':<44} {'peak MB':>7} {'x body':>7}")
    takes: tuple[tuple[str, Callable[[bytearray], bytes]], ...] = (
        ("as is: bytes(buf[:n])", lambda b: bytes(b[:size])),
        ("memoryview: bytes(memoryview(buf)[:n])", lambda b: bytes(memoryview(b)[:size])))
    for label, take in takes:
        tracemalloc.start()
        buf = bytearray()
        for offset in range(0, size, CHUNK):
            buf += source[offset:offset + CHUNK]
        tracemalloc.reset_peak()
        body = take(buf)
        del buf[:size]
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del body
        print(f"{label:<44} {peak / 1e6:>7.1f} {peak / size:>6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
