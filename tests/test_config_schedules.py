"""Clock schedules in the YAML file: keys, errors all at once, and `check`'s report."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from daemonapp.cli import main
from daemonapp.configcheck import load_config
from daemonapp.configmodel import ConfigError


def write(directory: Path, text: str) -> str:
    path = directory / "daemons.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def errors(path: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return list(caught.value.messages)


def test_a_schedule_needs_no_run_every(tmp_path: Path) -> None:
    """A daemon with schedule and no run_every is valid; app.timezone is read."""
    path = write(tmp_path, """
        app: {timezone: Europe/Berlin}
        daemons:
          nightly: {type: "tests.clock_fixtures:Stamp", schedule: "30 2 * * *", path: x}
    """)
    config = load_config(path)
    assert config.app.timezone == "Europe/Berlin"
    daemon = config.daemons[0]()
    assert (daemon.schedule, daemon.catch_up, daemon.misfire_grace) == ("30 2 * * *", "once",
                                                                       3600.0)


def test_every_schedule_error_at_once(tmp_path: Path) -> None:
    """A bad field, a bad zone, schedule with run_every and a bad misfire_grace: all at once."""
    path = write(tmp_path, """
        app: {timezone: Mars/Olympus}
        daemons:
          a: {type: "tests.clock_fixtures:Stamp", schedule: "30 25 * * *", path: x}
          b:
            type: "tests.clock_fixtures:Stamp"
            schedule: "@daily"
            run_every: 30s
            path: x
          c: {type: "tests.clock_fixtures:Stamp", schedule: "@daily", misfire_grace: soon,
              path: x}
          d: {type: "tests.clock_fixtures:Stamp", schedule: "@daily", timezone: Nowhere, path: x}
    """)
    assert errors(path) == [
        f"{path}:1: app.timezone: unknown time zone 'Mars/Olympus': use an IANA name like "
        "'Europe/Berlin' or 'UTC'",
        f"{path}:3: daemons.a.schedule: hour field '25' is not valid in '30 25 * * *'",
        f"{path}:7: daemons.b.run_every: schedule and run_every exclude each other: a clock "
        "schedule replaces run_every and the idle backoff; remove one of them",
        f"{path}:9: daemons.c.misfire_grace: expected a duration like \"30s\", \"5m\" or "
        "\"1h30m\", got 'soon'",
        f"{path}:11: daemons.d.timezone: unknown time zone 'Nowhere': use an IANA name like "
        "'Europe/Berlin' or 'UTC'",
    ]


def test_check_prints_the_next_fire_times(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`daemonapp check` shows each clock schedule with its zone and next fire times."""
    path = write(tmp_path, """
        daemons:
          nightly:
            type: "tests.clock_fixtures:Stamp"
            schedule: "30 2 * * *"
            timezone: America/New_York
            catch_up: all
            path: x
    """)
    assert main(["check", path]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[-1].splitlines()
    assert table[0].split() == ["DAEMON", "SCHEDULE", "TIMEZONE", "CATCH_UP", "MISFIRE_GRACE",
                                "NEXT", "FIRE", "TIMES"]
    fields = table[1].split("  ")
    assert [f.strip() for f in fields if f.strip()][:5] == [
        "nightly", "30 2 * * *", "America/New_York", "all", "1h"]
    assert table[1].count("T02:30-0") + table[1].count("T03:00-04:00") == 3
