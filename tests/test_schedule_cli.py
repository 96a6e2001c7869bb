"""``daemonapp schedule EXPR``: the coming fire times, DST changes marked."""

from __future__ import annotations

import pytest

from daemonapp.schedule_cli import main


def test_prints_fire_times_and_marks_dst(capsys: pytest.CaptureFixture[str]) -> None:
    """Fire times in ISO 8601 with their offset; the spring-forward one is marked."""
    assert main(["30 2 * * *", "--timezone", "Europe/Berlin", "--from", "2026-03-27T12:00",
                 "--count", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00  (DST: offset +01:00 -> +02:00)",
        "2026-03-30T02:30:00+02:00",
    ]


def test_from_with_an_offset_and_the_default_count(capsys: pytest.CaptureFixture[str]) -> None:
    """--from with an offset is that instant; five times by default."""
    assert main(["@hourly", "--timezone", "UTC", "--from", "2026-01-01T00:30:00+00:00"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"2026-01-01T0{h}:00:00+00:00" for h in range(1, 6)]


def test_bad_expression_names_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad expression exits 2 and names the field."""
    assert main(["0 25 * * *"]) == 2
    assert "hour field '25'" in capsys.readouterr().err


def test_bad_zone_and_bad_from(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown zone or an unreadable --from exits 2 with a message."""
    assert main(["@daily", "--timezone", "Nowhere/Land"]) == 2
    assert "Nowhere/Land" in capsys.readouterr().err
    assert main(["@daily", "--from", "tomorrow"]) == 2
    assert "--from" in capsys.readouterr().err


def test_through_the_daemonapp_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`daemonapp schedule` is the same command."""
    from daemonapp.cli import main as daemonapp

    assert daemonapp(["schedule", "0 9 * * 1-5", "--timezone", "UTC", "--from",
                      "2026-01-02T10:00", "--count", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "2026-01-05T09:00:00+00:00", "2026-01-06T09:00:00+00:00"]
    assert daemonapp(["schedule", "0 9 * * 8"]) == 2
    assert "day of week field '8'" in capsys.readouterr().err
