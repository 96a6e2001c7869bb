"""Tests for daemonapp.durations: the one reading of a duration and of a size."""

from __future__ import annotations

import pytest

from daemonapp.durations import parse_duration, parse_size


def test_durations_in_units_add_up() -> None:
    """Numbers are seconds; units add up, "1h30m" being 5400 seconds."""
    assert [parse_duration(v) for v in (2.5, "10", "250ms", "1h30m", "0s")] == [
        2.5, 10.0, 0.25, 5400.0, 0.0]


@pytest.mark.parametrize(("value", "message"), [
    ("soon", "expected a duration like \"30s\", \"5m\" or \"1h30m\", got 'soon'"),
    (True, "expected a duration like \"30s\", got True"),
    (-1, "expected a finite duration of zero or more seconds, got -1"),
])
def test_a_bad_duration_says_what_is_expected(value: object, message: str) -> None:
    """A value that is no duration is a ValueError saying what a duration looks like."""
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) == message


def test_positive_refuses_zero_only() -> None:
    """With positive, zero is refused in the words every option uses; any other
    duration reads as without it."""
    with pytest.raises(ValueError) as info:
        parse_duration("0s", positive=True)
    assert str(info.value) == "expected a duration above zero, got '0s'"
    assert parse_duration("1ms", positive=True) == 0.001


def test_positive_durations_of_options_share_the_rule() -> None:
    """A daemon option, a bundled daemon's and a listener's refuse zero alike."""
    from daemonapp.daemon import OptionError
    from daemonapp.daemons.dir_queue import DirQueue
    from daemonapp.listeners import check_listener

    with pytest.raises(OptionError) as info:
        DirQueue(directory="/nonexistent-dq", stale_after=0, run_every=1)
    _, errors = check_listener({"protocol": "http", "endpoint": "tcp:0", "health": True,
                                "idle_timeout": "0s"})
    assert [(info.value.key, info.value.message)] + [
        (e.key, e.message) for e in errors] == [
        ("stale_after", "expected a duration above zero, got 0"),
        ("idle_timeout", "expected a duration above zero, got '0s'")]


def test_sizes_in_units() -> None:
    """Sizes take decimal and binary units."""
    assert [parse_size(v) for v in (100, "64k", "512MiB", "1GB")] == [
        100, 64000, 512 * 1024 ** 2, 1000 ** 3]
