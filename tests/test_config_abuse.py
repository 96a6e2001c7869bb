"""Hostile configuration files fail fast with a message (DESIGN §3): aliases, nesting,
size, long values; and the bounded reader still reads what real files use."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemonapp import configfile
from daemonapp.config import ConfigError, load_config
from daemonapp.configfile import MAX_DEPTH, MAX_FILE_BYTES, ConfigFileError, read_document


@pytest.fixture(params=[loader.__name__ for loader in configfile._LOADERS])
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each YAML parser the reader may use (libyaml's events, pure Python)."""
    chosen = [cls for cls in configfile._LOADERS if cls.__name__ == request.param]
    monkeypatch.setattr(configfile, "_LOADERS", chosen)
    yield request.param


def write(directory: Path, text: str, name: str = "daemons.yaml") -> str:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def errors(path: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.messages


def alias_bomb(levels: int) -> str:
    """A "billion laughs" file: each level an anchor holding nine aliases of the last."""
    lines = ["anchors:", '  - &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"  - &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    lines += ["daemons:", "  d:", "    type: command", "    run_every: 1s",
              f"    argv: *a{levels - 1}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------- aliases


def test_alias_bomb_is_refused_with_one_short_message(tmp_path: Path, loader: str) -> None:
    """Aliases standing for 531,441 values are refused where they are, not expanded
    into a message."""
    path = write(tmp_path, alias_bomb(6))
    messages = errors(path)
    assert messages == [f"{path}:7: aliases here stand for more than 100,000 values in all "
                        "(an alias bomb?); write the values out or use fewer aliases"]


def test_ten_level_alias_bomb_is_refused(tmp_path: Path, loader: str) -> None:
    """The ten-level bomb of the issue (3.4 billion values) ends in one message."""
    path = write(tmp_path, alias_bomb(10))
    [message] = errors(path)
    assert "aliases here stand for more than 100,000 values" in message


def test_merge_keys_and_shared_values_still_work(tmp_path: Path, loader: str) -> None:
    """Anchors, aliases and merge keys used for shared settings are read as before."""
    path = write(tmp_path, """
        daemons:
          a: &shared {type: tests.test_config:Replicator, run_every: 30s, priority: 2}
          b:
            <<: *shared
            run_every: 5s
    """)
    config = load_config(path)
    options = {spec.name: dict(spec.options) for spec in config.daemons}
    assert options == {"a": {"run_every": "30s", "priority": 2},
                       "b": {"run_every": "5s", "priority": 2}}


def test_recursive_alias_is_refused(tmp_path: Path, loader: str) -> None:
    """An alias inside the node it names (a structure containing itself) is refused."""
    path = write(tmp_path, """
        daemons:
          d:
            type: command
            run_every: 1s
            argv: &loop ["x", *loop]
    """)
    assert errors(path) == [f"{path}:5: an alias inside the node it names (a recursive "
                            "structure); write the value out instead"]


# ------------------------------------------------------------------- nesting


def test_deep_nesting_is_refused(tmp_path: Path, loader: str) -> None:
    """10,000 nested lists end in one message, not a RecursionError."""
    path = write(tmp_path, "daemons: " + "[" * 10_000 + "]" * 10_000 + "\n")
    [message] = errors(path)
    # libyaml's own bound (1,000 flow levels) may speak first, while it reads ahead
    assert message in (f"{path}:1: nested deeper than {MAX_DEPTH} levels",
                       f"{path}:1: invalid YAML: while increasing flow level exceeded "
                       "maximum nesting depth")


def test_deep_block_nesting_is_refused(tmp_path: Path, loader: str) -> None:
    """Indented nesting past the bound is refused at the line where it crosses it."""
    text = "".join(" " * level + f"k{level}:\n" for level in range(MAX_DEPTH + 5))
    path = write(tmp_path, text)
    assert errors(path) == [f"{path}:{MAX_DEPTH}: nested deeper than {MAX_DEPTH} levels"]


def test_nesting_up_to_the_bound_is_read(tmp_path: Path, loader: str) -> None:
    """MAX_DEPTH levels (the top-level mapping included) are read; one more is not."""
    inner = MAX_DEPTH - 1
    path = write(tmp_path, "a: " + "[" * inner + "]" * inner + "\n")
    value = read_document(path)["a"]
    for _ in range(inner - 1):
        value = value[0]
    assert value == []
    path = write(tmp_path, "a: " + "[" * (inner + 1) + "]" * (inner + 1) + "\n")
    with pytest.raises(ConfigFileError):
        read_document(path)


# ---------------------------------------------------------------------- size


def test_file_over_one_mib_is_refused(tmp_path: Path) -> None:
    """A file above 1 MiB is refused before it is parsed, with its size."""
    path = tmp_path / "daemons.yaml"
    path.write_text("#" * MAX_FILE_BYTES + "\n")
    assert errors(str(path)) == [
        f"{path}: the configuration is 1,048,577 bytes; daemonapp reads at most 1 MiB "
        "(1,048,576 bytes): is this the right file?"]


def test_file_of_one_mib_is_read(tmp_path: Path) -> None:
    """A file of exactly 1 MiB is read."""
    path = tmp_path / "daemons.yaml"
    path.write_text("#" * (MAX_FILE_BYTES - 1) + "\n")
    assert load_config(str(path)).daemons == ()


def test_endless_stream_is_cut_at_the_bound(tmp_path: Path) -> None:
    """A file with no size (/dev/zero) is read up to the bound and refused."""
    messages = errors("/dev/zero")
    assert messages == ["/dev/zero: the configuration is more than 1 MiB; daemonapp reads "
                        "at most 1 MiB (1,048,576 bytes): is this the right file?"]


# ------------------------------------------------------------ long values


def test_long_values_are_cut_in_messages(tmp_path: Path) -> None:
    """A value quoted in a message is cut to 200 characters with its length."""
    path = write(tmp_path, f"app: {{stop_timeout: {'x' * 100_000}}}\n")
    [message] = errors(path)
    assert message.startswith(f"{path}:1: app.stop_timeout: ")
    assert message.endswith("... (100,002 characters in all)")
    assert len(message) < len(path) + 400


def test_long_keys_are_cut_in_messages(tmp_path: Path) -> None:
    """A hostile key is cut too, and every error of the file is still reported."""
    # an explicit key ("? KEY"): YAML limits implicit ones to 1,024 characters
    path = write(tmp_path, f"""
        ? {'k' * 50_000}
        : 1
        app: {{stop_timeout: soon}}
    """)
    messages = errors(path)
    assert len(messages) == 2
    assert messages[0].startswith(f"{path}:1: {'k' * 200}... (50,000 characters in all): "
                                  "unknown section")
    assert messages[1].startswith(f"{path}:3: app.stop_timeout: ")
    assert max(len(message) for message in messages) < len(path) + 600


def test_aliased_value_is_cut_in_messages(tmp_path: Path) -> None:
    """A large value reached through aliases (under the bound) is not printed whole."""
    path = write(tmp_path, alias_bomb(4))
    unknown, argv = errors(path)
    assert unknown.startswith(f"{path}:1: anchors: unknown section")
    assert argv.startswith(f"{path}:10: daemons.d.argv: ")
    assert len(argv) < len(path) + 600


# Found by bench/fuzz.py (its YAML target): each was a traceback before.


def test_an_integer_of_thousands_of_digits_is_a_config_error(tmp_path: Path) -> None:
    """A 5,000-digit number is reported at its line, not as int()'s ValueError."""
    path = tmp_path / "daemons.yaml"
    path.write_text("app:\n  stop_timeout: " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.messages == [
        f"{path}:2: a number of 5,000 digits; at most 100 are read"]


def test_a_zone_name_too_long_for_a_file_is_a_config_error(tmp_path: Path) -> None:
    """app.timezone of 300 characters is an unknown zone (zoneinfo raised OSError)."""
    path = tmp_path / "daemons.yaml"
    path.write_text("app:\n  timezone: " + "x" * 300 + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    (message,) = caught.value.messages
    assert message.startswith(f"{path}:2: app.timezone: unknown time zone 'xxxx")


def test_a_huge_command_line_is_refused_at_once(tmp_path: Path) -> None:
    """A 600 KB argv string is refused before shlex splits it (quadratic: seconds)."""
    path = tmp_path / "daemons.yaml"
    path.write_text("daemons:\n  d:\n    type: command\n    run_every: 1h\n    argv: "
                    + "x" * 600_000 + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.messages == [
        f"{path}:5: daemons.d.argv: a command line of 600,000 characters; at most 131,072 "
        "(the kernel's limit for one argument)"]
