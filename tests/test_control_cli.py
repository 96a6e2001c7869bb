"""`daemonapp trigger | pause | resume | reload` (daemonapp.control_cli): which app a
command talks to, what it prints and its exit status (0 done, 1 refused, 2 usage), with
the app's answers given by the test (tests/test_control_live.py talks to real apps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from daemonapp import control, control_cli
from daemonapp.cli import main


class FakeApp:
    """Stands in for `send_request`: records each (target, request), answers ``reply``."""

    def __init__(self, reply: dict[str, Any] | Exception) -> None:
        self.reply = reply
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, path: str, request: dict[str, Any], **kw: Any) -> dict[str, Any]:
        self.requests.append((path, request))
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Any:
    def answer(reply: dict[str, Any] | Exception) -> FakeApp:
        fake = FakeApp(reply)
        monkeypatch.setattr(control, "send_request", fake)
        return fake

    monkeypatch.delenv(control_cli.ENV_CONFIG, raising=False)
    return answer


def test_done_is_0_with_the_answer_in_words(app: Any, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    """A command carried out exits 0 and says what happened."""
    fake = app({"v": 1, "ok": True, "daemon": "x", "state": "queued", "paused": False})
    assert main(["trigger", "x", "--app", "/srv/var"]) == 0
    assert capsys.readouterr().out == "x: runs now\n"
    assert fake.requests == [("/srv/var", {"command": "trigger", "daemon": "x"})]


@pytest.mark.parametrize(("state", "running", "said"), [
    ("queued", False, "x: runs now"),
    ("merged", False, "x: runs now (it was due or asked for already)"),
    ("after-run", True, "x: a run is in flight; it runs once more right after it"),
    ("merged", True, "x: a run is in flight; it runs once more right after it "
                     "(asked for already)"),
])
def test_a_trigger_says_when_it_runs(app: Any, capsys: pytest.CaptureFixture[str],
                                     state: str, running: bool, said: str) -> None:
    """A trigger merged into the one after a run in flight does not say "runs now"."""
    app({"v": 1, "ok": True, "daemon": "x", "state": state, "running": running,
         "paused": False})
    assert main(["trigger", "x", "--app", "/srv/var"]) == 0
    assert capsys.readouterr().out == said + "\n"


def test_refused_is_1(app: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown daemon (or any refusal but a bad request) exits 1 with the app's words."""
    app({"v": 1, "ok": False, "refused": "unknown_daemon",
         "error": "no daemon named 'x' in this app (daemons: a)"})
    assert main(["resume", "x", "--app", "/srv/var"]) == 1
    assert "resume: no daemon named 'x'" in capsys.readouterr().err


def test_no_app_answering_is_1(app: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening exits 1 and says where it looked."""
    app(ConnectionRefusedError(111, "Connection refused"))
    assert main(["reload", "--app", "/srv/var"]) == 1
    assert "reload: no app answers in /srv/var" in capsys.readouterr().err


def test_a_request_the_app_calls_bad_is_usage(app: Any) -> None:
    """A bad_request refusal (an empty name) is a usage error: exit 2."""
    app({"v": 1, "ok": False, "refused": "bad_request",
         "error": "\"daemon\" must be a daemon's name"})
    assert main(["pause", "", "--app", "/srv/var"]) == 2


@pytest.mark.parametrize("duration", ["soon", "0", "-5s", "inf", "3651d"])
def test_a_bad_for_is_usage_before_any_request(app: Any, duration: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`pause --for` that is no duration, not above zero or over ten years: exit 2, and
    the app is never asked."""
    fake = app({"v": 1, "ok": True})
    assert main(["pause", "x", "--for", duration, "--app", "/srv/var"]) == 2
    assert "--for" in capsys.readouterr().err
    assert fake.requests == []


def test_a_missing_name_is_usage(app: Any) -> None:
    """argparse's usage errors exit 2."""
    assert main(["trigger"]) == 2


def test_pause_sends_for_in_seconds_and_the_reason(app: Any) -> None:
    """`--for 2h --reason TEXT` goes out as seconds and text."""
    fake = app({"v": 1, "ok": True, "daemon": "x", "paused_since": 1.0,
                "paused_until": 7201.0, "paused_reason": "db"})
    assert main(["pause", "x", "--for", "2h", "--reason", "db", "--app", "/srv/var"]) == 0
    assert fake.requests[0][1] == {"command": "pause", "daemon": "x", "for": 7200.0,
                                   "reason": "db"}


def test_reload_json_is_the_answer(app: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """`reload --json` prints the app's answer: added, removed, replaced, unchanged,
    needs_restart."""
    reply = {"v": 1, "ok": True, "added": ["n"], "removed": ["g"], "replaced": ["c"],
             "unchanged": ["k"], "needs_restart": ["listeners[0]"], "log": "unchanged"}
    app(reply)
    assert main(["reload", "--json", "--app", "/srv/var"]) == 0
    assert json.loads(capsys.readouterr().out) == reply


def test_an_invalid_file_prints_each_error_on_its_own_line(
        app: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid file to reload: exit 1, each error on a line of stderr."""
    errors = ["app.yaml:4: daemons.a.run_every: expected a duration, got 'soon'",
              "app.yaml:7: daemons.b: unknown option 'x'"]
    app({"v": 1, "ok": False, "refused": "invalid_config",
         "error": "2 error(s) in app.yaml; nothing changed", "errors": errors})
    assert main(["reload", "--app", "/srv/var"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == errors
    assert lines[2] == "daemonapp: reload: 2 error(s) in app.yaml; nothing changed"


# ------------------------------------------------------------ which app: --app


def test_app_may_be_the_yaml_file(app: Any, tmp_path: Path) -> None:
    """`--app FILE` talks to the state_dir the file names (relative to the file)."""
    (tmp_path / "app.yaml").write_text("app:\n  state_dir: ./state\ndaemons: {}\n")
    fake = app({"v": 1, "ok": True, "daemon": "x", "was_paused": False})
    assert main(["resume", "x", "--app", str(tmp_path / "app.yaml")]) == 0
    assert fake.requests[0][0] == str(tmp_path / "state")


def test_a_file_being_edited_still_names_its_state_dir(app: Any, tmp_path: Path) -> None:
    """`reload --app FILE` of a file that no longer checks still reaches its app (which
    then says what is wrong)."""
    (tmp_path / "app.yaml").write_text("app:\n  state_dir: ./state\ndaemons:\n"
                                       "  a: {type: nope:Nope, run_every: soon}\n")
    fake = app({"v": 1, "ok": True})
    main(["reload", "--app", str(tmp_path / "app.yaml")])
    assert fake.requests[0][0] == str(tmp_path / "state")


def test_the_default_is_the_state_dir_of_daemonapp_config(
        app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --app: the state_dir of $DAEMONAPP_CONFIG, as `daemonapp status`."""
    (tmp_path / "app.yaml").write_text("app:\n  state_dir: ./state\n")
    fake = app({"v": 1, "ok": True})
    monkeypatch.setenv(control_cli.ENV_CONFIG, str(tmp_path / "app.yaml"))
    main(["reload"])
    monkeypatch.delenv(control_cli.ENV_CONFIG)
    monkeypatch.chdir(tmp_path)
    main(["reload"])
    assert [path for path, _ in fake.requests] == [str(tmp_path / "state"), "var"]


def test_status_of_a_file_being_edited_reaches_the_app(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`daemonapp status FILE` after a refused reload (the file no longer checks) still
    shows the app that runs, as the commands reach it."""
    from daemonapp import status

    (tmp_path / "app.yaml").write_text("app:\n  state_dir: ./state\ndaemons:\n"
                                       "  a: {type: file_cleanup, run_every: soon}\n")
    asked: list[str] = []

    def fetch_status(path: str, **kw: Any) -> dict[str, Any]:
        asked.append(path)
        return {"pid": 4242, "state": "running", "daemons": [], "listeners": []}

    monkeypatch.setattr(status, "fetch_status", fetch_status)
    assert main(["status", "--json", str(tmp_path / "app.yaml")]) == 0
    assert asked == [str(tmp_path / "state")]
    assert json.loads(capsys.readouterr().out)["pid"] == 4242
