"""Fixtures for the job tests: a store per backend, PostgreSQL in a throwaway schema."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests._env import unavailable

PG_BASE_URL = os.environ.get("DAEMONAPP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_unavailable(reason: str) -> None:
    unavailable(f"PostgreSQL unavailable: {reason}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    try:
        import psycopg
    except ImportError as err:
        _pg_unavailable(f"psycopg missing ({err})")
    schema = f"jobs_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_BASE_URL, autocommit=True, connect_timeout=3)
    except Exception as err:
        _pg_unavailable(str(err).strip())
    sep = "&" if "?" in PG_BASE_URL else "?"
    try:
        yield f"{PG_BASE_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_target(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Where a store lives: a state_dir for SQLite, a URL for PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "state")
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(store_target: str) -> Iterator[Any]:
    """An open job store of each backend, closed afterwards."""
    from daemonapp.jobs import open_store

    opened = open_store(store_target)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def dispatchers(tmp_path: Any) -> Iterator[Any]:
    """Start dispatcher processes with ``dispatchers(store, **options)``; all are killed
    at the end of the test."""
    from tests.jobs._helpers import DispatcherProcess

    started: list[DispatcherProcess] = []

    def start(store: str, **options: Any) -> DispatcherProcess:
        process = DispatcherProcess(tmp_path, store, name=str(len(started)), **options)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def tiny_disk(tmp_path: Any) -> Iterator[Any]:
    """A 3 MiB tmpfs of our own (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the injected full disk test covers it")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs",
                           str(mount_point)], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
