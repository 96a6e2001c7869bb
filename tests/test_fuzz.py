"""A short run of bench/fuzz.py's harness: the listeners and the YAML loader hold up.

A few thousand generated and mutated inputs per target (the long run is
``./dev bench fuzz``, see bench/README.md): nothing escapes dataReceived, nothing
leaks once a connection closes, garbage closes only its own connection, the bytes a
connection holds stay within its limits, and a configuration file gives a Config or
a ConfigError, never another exception. Seeds are fixed: a failure reproduces.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))  # last: bench/'s scripts must shadow no module

import _fuzzlib as fz  # noqa: E402  (bench/ is not a package)

INPUTS = 2500
#: Known bugs the short run steers clear of (each listed in bench/README.md, fuzz): a
#: YAML integer of more than 4,300 digits makes load_config raise ValueError; a command
#: daemon's argv string of 600 KB takes shlex.split 7 s (quadratic), twice in check; an
#: app.timezone name over 255 bytes makes zoneinfo raise OSError.
KNOWN_YAML_BUGS = re.compile(r"\d{4300}|argv:[^\n\[]{20000}|timezone:[^\n]{200}")
#: And on the HTTP listener, an app on a thread whose client left before it read its
#: body gets "ValueError: read of closed file" from wsgi.input (a race: some runs meet it).
KNOWN_LOGGED = re.compile(r"of closed file")
#: Scenarios that hit a known bug: their figures are in the long run's table.
KNOWN_SCENARIOS = {scenario.name for scenario in fz.scenarios() if scenario.known}


def found(stats: fz.Stats) -> dict[str, Any]:
    """Every finding of a run (empty when it found nothing)."""
    logged = {sig: count for sig, count in stats.logged.items()
              if not KNOWN_LOGGED.search(stats.tracebacks.get(f"logged: {sig}", ""))}
    return {key: dict(value) if not isinstance(value, int) else value
            for key, value in (("crashes", stats.crashes), ("leaks", stats.leaks),
                               ("over_bound", stats.over_bound),
                               ("dead_listener", stats.dead_listener),
                               ("logged", logged), ("hangs", stats.hangs))
            if value}


@pytest.mark.parametrize("protocol", ["fastcgi", "scgi", "http"])
def test_protocol_survives_fuzzed_input(protocol: str) -> None:
    """2,500 generated and mutated streams, in random pieces: no finding, and a valid
    connection after them is still answered."""
    stats = fz.fuzz_protocol(protocol, inputs=INPUTS, seconds=120, seed=13)
    assert stats.inputs == INPUTS
    assert found(stats) == {}
    assert stats.liveness_checks >= 3 * (INPUTS // 200)
    # the inputs reach both ends: answered requests and connections closed on garbage
    assert stats.answered > INPUTS // 10
    assert stats.closed > INPUTS // 20


def test_harness_finds_an_escape_from_data_received(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the release's SCGI length check (str.isdigit, then int()), the short run
    finds the ValueError that escaped dataReceived for a length like "²"."""
    from daemonapp.listeners import scgi

    def release_parse_length(text: str) -> int | None:
        return int(text) if text.isdigit() else None

    monkeypatch.setattr(scgi, "parse_length", release_parse_length)
    stats = fz.fuzz_protocol("scgi", inputs=INPUTS, seconds=120, seed=13)
    escaped = [sig for sig in stats.crashes if sig.startswith("dataReceived: ValueError")]
    assert escaped, dict(stats.crashes)


def test_yaml_loader_survives_mutated_files() -> None:
    """1,200 mutated configuration files: a Config or a ConfigError with file:line
    messages each, no other exception, no hang, bounded memory."""
    stats = fz.fuzz_yaml(inputs=1200, seconds=120, seed=13, timeout=10.0,
                         avoid=KNOWN_YAML_BUGS.search)
    assert stats.inputs == 1200
    assert found(stats) == {}
    assert stats.answered > 0  # some mutated files are still valid configs
    assert stats.closed > 0


@pytest.mark.parametrize("name", [s.name for s in fz.scenarios()
                                  if s.name not in KNOWN_SCENARIOS])
def test_hostile_peer_memory_is_bounded(name: str) -> None:
    """Huge length fields, endless records, slow senders and clients that never read
    (1 MiB each): a connection holds no more than its limits allow."""
    [scenario] = [s for s in fz.scenarios() if s.name == name]
    result = fz.run_scenario(scenario, 1 << 20)
    assert result.error == ""
    assert result.peak_held <= scenario.bound, result
    assert result.tracemalloc_peak <= scenario.traced_bound, result
    assert result.written_after_pause <= fz.WRITE_AFTER_PAUSE_BOUND, result
