"""daemonapp.unixsocket: the two-step unix bind (PATH.new, then a rename over PATH)."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from daemonapp.unixsocket import PreparedUnix


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory: unix socket paths are limited to ~107 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="dus"))
    yield directory
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()


def _peer_name(path: Path) -> str:
    client = socket.socket(socket.AF_UNIX)
    try:
        client.connect(str(path))
        name: str = client.getpeername()
        return name
    finally:
        client.close()


def test_a_first_bind_takes_the_path_itself(short_dir: Path) -> None:
    """With nothing at PATH, the socket is bound there: peers are told PATH, not PATH.new."""
    path = short_dir / "app.sock"
    prepared = PreparedUnix(str(path), 0o660, 8)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    port = prepared.commit(Factory.forProtocol(Protocol), MemoryReactorClock())
    try:
        assert _peer_name(path) == str(path)
        assert not (short_dir / "app.sock.new").exists()
    finally:
        port.connectionLost(None)  # type: ignore[arg-type]
    assert not path.exists()


def test_a_takeover_binds_new_and_renames(short_dir: Path) -> None:
    """With a socket at PATH, the new one is bound at PATH.new and renamed over it."""
    path = short_dir / "app.sock"
    first = PreparedUnix(str(path), 0o660, 8).commit(Factory.forProtocol(Protocol),
                                                     MemoryReactorClock())
    before = os.stat(path).st_ino
    second = PreparedUnix(str(path), 0o660, 8)
    assert (short_dir / "app.sock.new").exists()
    assert os.stat(path).st_ino == before  # nothing taken over before commit
    port = second.commit(Factory.forProtocol(Protocol), MemoryReactorClock())
    assert os.stat(path).st_ino != before
    first.connectionLost(None)  # type: ignore[arg-type]
    assert stat.S_ISSOCK(os.stat(path).st_mode)  # the successor's socket stays
    port.connectionLost(None)  # type: ignore[arg-type]


def test_abandon_removes_only_what_it_bound(short_dir: Path) -> None:
    """Abandoning a first bind removes PATH; abandoning a takeover leaves PATH alone."""
    path = short_dir / "app.sock"
    PreparedUnix(str(path), 0o660, 8).abandon()
    assert not path.exists()
    first = PreparedUnix(str(path), 0o660, 8).commit(Factory.forProtocol(Protocol),
                                                     MemoryReactorClock())
    before = os.stat(path).st_ino
    PreparedUnix(str(path), 0o660, 8).abandon()
    assert os.stat(path).st_ino == before
    assert not (short_dir / "app.sock.new").exists()
    first.connectionLost(None)  # type: ignore[arg-type]
