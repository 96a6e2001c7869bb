"""``daemonapp jobs``: the command line over a job store, app running or not."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from daemonapp.config import load_config
from daemonapp.jobs import open_store
from daemonapp.jobs.cli import StoreNotFound, main, store_from_config
from tests._processes import DAEMONAPP, run_process, write_file
from tests.jobs._helpers import stored_job


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "daemons.yaml"
    path.parent.mkdir()
    path.write_text("app:\n  state_dir: ../var\n"
                    "daemons:\n  work:\n    type: job_dispatcher\n    run_every: 1s\n")
    return path


def test_submit_prints_id(config: Path, capsys: Any) -> None:
    """submit prints the new job's id."""
    assert main(["-c", str(config), "submit", "mail", '{"to": "x"}']) == 0
    assert capsys.readouterr().out == "1\n"


def test_submit_with_store_option(tmp_path: Path, capsys: Any) -> None:
    """--store names a state_dir directly."""
    assert main(["--store", str(tmp_path / "s"), "submit", "mail", "{}"]) == 0
    assert capsys.readouterr().out == "1\n"
    assert (tmp_path / "s" / "jobs.sqlite3").exists()


def test_state_dir_relative_to_config(config: Path, tmp_path: Path) -> None:
    """With -c, app.state_dir is resolved relative to the config file."""
    assert store_from_config(str(config)) == str(tmp_path / "var")


def test_dispatcher_store_option_wins(tmp_path: Path) -> None:
    """With -c, the job_dispatcher's store option wins over app.state_dir."""
    path = tmp_path / "app.yaml"
    path.write_text("app: {state_dir: ./var}\ndaemons:\n  j: {type: job_dispatcher, "
                    "store: 'postgresql://u@db/jobs'}\n")
    assert store_from_config(str(path)) == "postgresql://u@db/jobs"


def test_default_state_dir_as_run_finds_it(tmp_path: Path, monkeypatch: Any,
                                           capsys: Any) -> None:
    """Without app.state_dir, -c uses the state_dir run uses (./var next to the file),
    whatever the current directory."""
    path = tmp_path / "etc" / "app.yaml"
    path.parent.mkdir()
    path.write_text("daemons:\n  j: {type: job_dispatcher, run_every: 1s}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["-c", str(path), "submit", "mail", "{}"]) == 0
    assert capsys.readouterr().out == "1\n"
    assert load_config(str(path)).app.state_dir == str(tmp_path / "etc" / "var")
    assert open_store(str(tmp_path / "etc" / "var")).get(1) is not None


def test_invalid_config_is_a_usage_error(tmp_path: Path, capsys: Any) -> None:
    """A config run would refuse is refused with its file:line messages, exit 2."""
    path = tmp_path / "app.yaml"
    path.write_text("app:\n  stat_dir: ./var\n")
    assert main(["-c", str(path), "list"]) == 2
    assert f"{path}:2: app.stat_dir" in capsys.readouterr().err


def test_unknown_dispatcher_name(config: Path) -> None:
    """--dispatcher names a job_dispatcher the config does not have: an error."""
    with pytest.raises(StoreNotFound, match="no job_dispatcher daemon named 'other'"):
        store_from_config(str(config), "other")


def test_submit_unique_key(config: Path, capsys: Any) -> None:
    """submit with the same --unique-key prints the same id."""
    main(["-c", str(config), "submit", "mail", "{}", "--unique-key", "u1"])
    main(["-c", str(config), "submit", "mail", "{}", "--unique-key", "u1"])
    assert capsys.readouterr().out == "1\n1\n"


def test_submit_bad_json(config: Path, capsys: Any) -> None:
    """A payload that is not JSON exits 2 with a message."""
    assert main(["-c", str(config), "submit", "mail", "{nope"]) == 2
    assert "JSON" in capsys.readouterr().err


def test_submit_non_object(config: Path, capsys: Any) -> None:
    """A payload that is no JSON object exits 2."""
    assert main(["-c", str(config), "submit", "mail", "[1, 2]"]) == 2
    assert "JSON object" in capsys.readouterr().err


def test_show_prints_json_with_traceback(config: Path, tmp_path: Path, capsys: Any) -> None:
    """show prints the job as JSON, its error (the traceback) included."""
    store = open_store(str(tmp_path / "var"))
    job_id = store.submit("mail", {"a": 1}, max_attempts=1)
    job = store.claim("h")
    store.fail(job.id, job.token, "Traceback (most recent call last):\nValueError: x")
    store.close()
    assert main(["-c", str(config), "show", str(job_id)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["id"], data["state"], data["payload"]) == (job_id, "failed", {"a": 1})
    assert data["error"] == "Traceback (most recent call last):\nValueError: x"


def test_show_unknown(config: Path, capsys: Any) -> None:
    """show of an unknown id exits 1."""
    assert main(["-c", str(config), "show", "42"]) == 1
    assert "no job 42" in capsys.readouterr().err


def test_list(config: Path, capsys: Any) -> None:
    """list prints a table of the newest jobs."""
    main(["-c", str(config), "submit", "mail", "{}"])
    main(["-c", str(config), "submit", "report", "{}"])
    capsys.readouterr()
    assert main(["-c", str(config), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "KIND", "ATTEMPTS", "PERCENT", "UPDATED",
                                "MESSAGE"]
    assert [line.split()[:3] for line in lines[1:]] == [["2", "pending", "report"],
                                                        ["1", "pending", "mail"]]


def test_list_json(config: Path, capsys: Any) -> None:
    """list --json prints one JSON object per job."""
    main(["-c", str(config), "submit", "mail", "{}"])
    capsys.readouterr()
    assert main(["-c", str(config), "list", "--json"]) == 0
    assert [json.loads(line)["kind"] for line in capsys.readouterr().out.splitlines()] == [
        "mail"]


def test_cancel_and_retry(config: Path, capsys: Any) -> None:
    """cancel marks a pending job cancelled; retry makes it pending again."""
    main(["-c", str(config), "submit", "mail", "{}"])
    assert main(["-c", str(config), "cancel", "1"]) == 0
    assert main(["-c", str(config), "retry", "1"]) == 0
    assert capsys.readouterr().out == "1\njob 1: cancelled\njob 1: pending\n"


def test_cancel_finished_refused(config: Path, capsys: Any) -> None:
    """cancel of a job that is not pending or running exits 1."""
    main(["-c", str(config), "submit", "mail", "{}"])
    main(["-c", str(config), "cancel", "1"])
    assert main(["-c", str(config), "cancel", "1"]) == 1
    assert "job 1 is cancelled" in capsys.readouterr().err


def test_retry_pending_refused(config: Path, capsys: Any) -> None:
    """retry of a pending job exits 1."""
    main(["-c", str(config), "submit", "mail", "{}"])
    assert main(["-c", str(config), "retry", "1"]) == 1
    assert "only failed or cancelled" in capsys.readouterr().err


def test_no_store_given(capsys: Any, monkeypatch: Any) -> None:
    """Without -c, --store or DAEMONAPP_CONFIG the command exits 2."""
    monkeypatch.delenv("DAEMONAPP_CONFIG", raising=False)
    assert main(["list"]) == 2
    assert "give -c CONFIG or --store URL" in capsys.readouterr().err


def test_config_from_environment(config: Path, capsys: Any, monkeypatch: Any) -> None:
    """DAEMONAPP_CONFIG stands in for -c."""
    monkeypatch.setenv("DAEMONAPP_CONFIG", str(config))
    assert main(["submit", "mail", "{}"]) == 0
    assert capsys.readouterr().out == "1\n"


def test_leading_jobs_word_accepted(config: Path, capsys: Any) -> None:
    """main() accepts argv with or without the leading "jobs"."""
    assert main(["jobs", "-c", str(config), "submit", "mail", "{}"]) == 0
    assert capsys.readouterr().out == "1\n"


def test_usage_error(capsys: Any) -> None:
    """An unknown command exits 2 with argparse's usage."""
    assert main(["frobnicate"]) == 2
    assert "usage: daemonapp jobs" in capsys.readouterr().err


@pytest.mark.postgres
def test_postgres_store(pg_url: str, capsys: Any) -> None:
    """--store accepts a PostgreSQL URL."""
    assert main(["--store", pg_url, "submit", "mail", "{}"]) == 0
    job_id = int(capsys.readouterr().out)
    assert main(["--store", pg_url, "show", str(job_id)]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "pending"


# ------------------------------------ the `daemonapp jobs` command, in a child process


def jobs_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_process([str(DAEMONAPP), "jobs", "--store", str(tmp_path / "state"), *args],
                       cwd=tmp_path)


@pytest.mark.integration
def test_jobs_cli_submit_show(tmp_path: Path) -> None:
    """`daemonapp jobs submit` prints the id, `show ID` prints JSON; no app needed."""
    sub = jobs_cli(tmp_path, "submit", "email", '{"to": "x"}')
    assert sub.returncode == 0, sub.stderr
    job_id = int(sub.stdout.strip())
    again = jobs_cli(tmp_path, "submit", "email", '{"to": "y"}', "--unique-key", "K")
    again2 = jobs_cli(tmp_path, "submit", "email", '{"to": "z"}', "--unique-key", "K")
    assert again.stdout.strip() == again2.stdout.strip()
    shown = jobs_cli(tmp_path, "show", str(job_id))
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["id"] == job_id
    assert data["state"] == "pending"
    assert data["kind"] == "email"
    assert "error" in data


@pytest.mark.integration
def test_jobs_cli_list_cancel_retry(tmp_path: Path) -> None:
    """`daemonapp jobs list | cancel ID | retry ID` work against the store."""
    job_id = int(jobs_cli(tmp_path, "submit", "k", "{}").stdout.strip())
    listed = jobs_cli(tmp_path, "list")
    assert listed.returncode == 0
    assert str(job_id) in listed.stdout
    cancelled = jobs_cli(tmp_path, "cancel", str(job_id))
    assert cancelled.returncode == 0, cancelled.stderr
    retried = jobs_cli(tmp_path, "retry", str(job_id))
    assert retried.returncode == 0, retried.stderr
    data = json.loads(jobs_cli(tmp_path, "show", str(job_id)).stdout)
    assert data["state"] == "pending"


@pytest.mark.integration
def test_jobs_cli_with_config(tmp_path: Path) -> None:
    """`daemonapp jobs -c CONFIG submit` uses the job_dispatcher's store (state_dir by default)."""
    cfg = write_file(tmp_path / "etc" / "d.yaml",
                     "app:\n  state_dir: ./var\ndaemons:\n  jobs:\n    type: job_dispatcher\n"
                     "    run_every: 1s\n")
    sub = run_process([str(DAEMONAPP), "jobs", "-c", str(cfg), "submit", "k", "{}"], cwd=tmp_path)
    assert sub.returncode == 0, sub.stderr
    job_id = int(sub.stdout.strip())
    assert stored_job(tmp_path / "etc" / "var", job_id).state == "pending"


@pytest.mark.integration
def test_jobs_cli_reads_daemonapp_config(tmp_path: Path) -> None:
    """`daemonapp jobs` without -c uses DAEMONAPP_CONFIG."""
    cfg = write_file(tmp_path / "d.yaml", "app:\n  state_dir: ./var\ndaemons:\n  jobs:\n"
                     "    type: job_dispatcher\n    run_every: 1s\n")
    sub = run_process([str(DAEMONAPP), "jobs", "submit", "k", "{}"], cwd=tmp_path,
                      env={"DAEMONAPP_CONFIG": str(cfg)})
    assert sub.returncode == 0, sub.stderr
    assert int(sub.stdout.strip()) >= 1
