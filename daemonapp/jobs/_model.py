"""The values the job stores hand out (Job, JobRecord) and their shared rules.

Kept free of Twisted and of any database driver so that the job child and the
command line can import it cheaply.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

STATES = ("pending", "running", "done", "failed", "cancelled")
ACTIVE_STATES = ("pending", "running")
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024
MAX_KIND_CHARS = 200
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_LEASE = 30.0
# A run_after/retry_at below this (about 2001-09-09) is read as seconds from now.
_ABSOLUTE_AFTER = 1e9


class StaleLease(Exception):
    """The fencing token is no longer the job's current one (or the job left running)."""

    def __init__(self, job_id: int, token: int,
                 reason: str = "the lease is no longer held") -> None:
        super().__init__(f"job {job_id}: token {token}: {reason}")
        self.job_id = job_id
        self.token = token
        self.reason = reason


@dataclass(frozen=True)
class Job:
    """A claimed job, as the dispatcher runs it."""

    id: int
    kind: str
    payload: dict[str, Any]
    token: int
    attempt: int
    max_attempts: int = DEFAULT_MAX_ATTEMPTS

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: what ``get`` and ``list`` return."""

    id: int
    kind: str
    state: str
    attempts: int
    max_attempts: int
    error: str | None
    percent: float | None
    message: str | None
    payload: dict[str, Any]
    created_at: float
    updated_at: float
    unique_key: str | None = None
    priority: int = 0
    run_after: float | None = None
    holder: str | None = None
    token: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (``extra`` left out)."""
        data = asdict(self)
        data.pop("extra", None)
        return data


def encode_payload(payload: object) -> str:
    """The payload as compact JSON text; ValueError when it is no object or too big."""
    if not isinstance(payload, dict):
        raise ValueError(f"a job payload must be a JSON object, got {type(payload).__name__}")
    try:
        text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"a job payload must be JSON-serialisable: {err}") from None
    if len(text.encode("utf-8")) > MAX_PAYLOAD_BYTES:
        raise ValueError(
            f"a job payload is limited to {MAX_PAYLOAD_BYTES} bytes of JSON, "
            f"got {len(text.encode('utf-8'))}"
        )
    return text


def decode_payload(text: str | None) -> dict[str, Any]:
    """The stored payload text back as a dict (an empty one for a damaged row)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def check_kind(kind: object) -> str:
    """The job kind, validated: a non-empty string of at most 200 characters."""
    if not isinstance(kind, str) or not kind or len(kind) > MAX_KIND_CHARS:
        raise ValueError(f"a job kind must be a non-empty string of at most "
                         f"{MAX_KIND_CHARS} characters, got {kind!r}")
    return kind


def check_lease(lease: float) -> float:
    """A lease length in seconds, validated (> 0)."""
    value = float(lease)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"a lease must be a positive number of seconds, got {lease!r}")
    return value


def absolute_time(when: float | None, now: float | None = None) -> float | None:
    """A Unix time from ``when``: small values are seconds from now, None stays None."""
    if when is None:
        return None
    value = float(when)
    if value < _ABSOLUTE_AFTER:
        return (time.time() if now is None else now) + value
    return value


def cap_error(error: str | None) -> str | None:
    """The error text cut to 64 KiB of UTF-8 (DESIGN §6), keeping its end (the exception
    line); a character cut in two at the start is dropped."""
    if error is None:
        return None
    text = str(error)
    if len(text) * 4 <= MAX_ERROR_BYTES:  # (no character takes more than 4 bytes)
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= MAX_ERROR_BYTES:
        return text
    marker = "...[cut]...\n"
    return marker + data[-(MAX_ERROR_BYTES - len(marker)):].decode("utf-8", "ignore")


def last_line(text: str | None) -> str:
    """The last non-blank line of an error text (the exception line of a traceback)."""
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""


class JobCancelled(StaleLease):
    """The job was cancelled while this holder ran it: stop, write nothing more."""
