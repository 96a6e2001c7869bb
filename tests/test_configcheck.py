"""`daemonapp check` and `run` against a bad or a complete config: every error at once,
each as FILE:LINE: dotted.key: message, exit status 2 and nothing started (DESIGN §3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._processes import (
    BAD_CONFIG,
    CGI_WSGI,
    CLEANUP_TMP_DAEMON,
    DAEMONAPP,
    ROOT,
    check_config,
    free_port,
    run_process,
    write_file,
)


@pytest.mark.integration
def test_check_reports_every_error_with_file_line_key(tmp_path: Path) -> None:
    """`daemonapp check` prints FILE:LINE: dotted.key: ... for every error and exits 2."""
    cfg = write_file(tmp_path / "etc" / "daemons.yaml", BAD_CONFIG)
    result = run_process([str(DAEMONAPP), "check", "etc/daemons.yaml"], cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines() + result.stdout.splitlines()
    prefix = "etc/daemons.yaml:6: daemons.collective.run_every: "
    first = [x for x in lines if x.startswith(prefix)]
    assert first and "expected a duration" in first[0] and "'soon'" in first[0]
    assert any(x.startswith("etc/daemons.yaml:14: daemons.other.no_such_key: ") for x in lines)
    assert not (cfg.parent / "var").exists()


@pytest.mark.integration
def test_run_config_error_exit_2_nothing_started(tmp_path: Path) -> None:
    """`daemonapp run` with a bad file exits 2 and starts nothing."""
    write_file(tmp_path / "d.yaml", BAD_CONFIG)
    result = run_process([str(DAEMONAPP), "run", "d.yaml"], cwd=tmp_path)
    assert result.returncode == 2
    assert "d.yaml:6: daemons.collective.run_every: " in result.stderr
    assert not (tmp_path / "var").exists()


@pytest.mark.integration
def test_check_good_file_exit_0_writes_nothing(tmp_path: Path) -> None:
    """`daemonapp check` of a good file exits 0 and writes nothing in state_dir."""
    good = BAD_CONFIG.replace("soon", "5m").replace("    no_such_key: 3\n", "")
    result = check_config(tmp_path, good)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "var").exists()


@pytest.mark.integration
def test_yaml_unknown_daemon_key_is_error_naming_it(tmp_path: Path) -> None:
    """A daemon key unknown to Daemon and its class is an error naming the dotted key."""
    result = check_config(tmp_path, CLEANUP_TMP_DAEMON + "    wat: 1\n")
    assert result.returncode == 2
    assert "d.yaml:7: daemons.c.wat: " in result.stderr


@pytest.mark.integration
def test_yaml_unknown_top_level_key(tmp_path: Path) -> None:
    """Top-level keys are app, listeners, daemons, cgi: another one is an error."""
    result = check_config(tmp_path, "app: {}\nlisteners: []\ncgi: {}\nbogus: 1\n")
    assert result.returncode == 2
    assert "d.yaml:4: bogus: " in result.stderr


def test_bad_lock_name_in_yaml(tmp_path: Path) -> None:
    """A bad lock name in YAML is a config error naming the key."""
    result = check_config(tmp_path, CLEANUP_TMP_DAEMON + "    lock: 'bad name'\n")
    assert result.returncode == 2
    assert "d.yaml:7: daemons.c.lock: " in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize(("key", "text"), [("run_every", "on"), ("maximum_idle", "off"),
                                           ("jitter", "0660")])
def test_yaml_error_keeps_source_text(tmp_path: Path, key: str, text: str) -> None:
    """Messages quote the scalar's source text (YAML 1.1 `on` is shown as on, not True)."""
    lines = ["daemons:", "  c:", "    type: file_cleanup", "    directory: /tmp",
             "    remove_older_than: 1h"]
    if key != "run_every":
        lines.append("    run_every: 5m")
    lines.append(f"    {key}: {text}")
    result = check_config(tmp_path, "\n".join(lines) + "\n")
    assert result.returncode == 2
    prefix = f"d.yaml:{len(lines)}: daemons.c.{key}: "
    found = [x for x in result.stderr.splitlines() if x.startswith(prefix)]
    assert found, result.stderr
    assert found[0].rsplit("got ", 1)[1].strip("'\"") == text


@pytest.mark.integration
def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A YAML syntax error names the file and line and exits 2."""
    result = check_config(tmp_path, "app:\n  state_dir: ./var\ndaemons: [unclosed\n")
    assert result.returncode == 2
    assert "d.yaml:" in result.stderr


@pytest.mark.integration
def test_missing_file_exit_2(tmp_path: Path) -> None:
    """A missing config file is a config error: exit 2."""
    result = run_process([str(DAEMONAPP), "check", "nope.yaml"], cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr


@pytest.mark.integration
def test_every_config_error_at_once_across_sections(tmp_path: Path) -> None:
    """Errors in app, listeners and daemons are all reported in one go, exit 2."""
    result = check_config(tmp_path,
                          "app:\n  shutdown_after: soon\n"
                          "listeners:\n  - protocol: gopher\n    endpoint: tcp:0\n"
                          "daemons:\n  x:\n    type: no.such.module:Nope\n    run_every: 5m\n")
    assert result.returncode == 2
    err = result.stderr
    assert "d.yaml:2: app.shutdown_after: " in err
    assert "d.yaml:4: " in err and "protocol" in err
    assert "d.yaml:8: daemons.x.type: " in err


@pytest.mark.integration
def test_two_fd0_fastcgi_items_refused(tmp_path: Path) -> None:
    """At most one fastcgi item may use the inherited fd 0 (no endpoint or fd:0)."""
    write_file(tmp_path / "app.py", CGI_WSGI)
    result = check_config(tmp_path,
                          "listeners:\n  - protocol: fastcgi\n    wsgi: app:application\n"
                          "  - protocol: fastcgi\n    endpoint: fd:0\n    wsgi: app:application\n",
                          PYTHONPATH=f"{ROOT}:{tmp_path}")
    assert result.returncode == 2
    assert "d.yaml:" in result.stderr


FULL_CONFIG = """\
app:
  stay_alive_for: 15m
  shutdown_after: 30m
  shutdown_if_idle: 1m
  state_dir: ./var
  log: {{format: text, level: info}}
  locks: {{wait: 10s, ttl: 30s}}
listeners:
  - protocol: scgi
    endpoint: unix:./run/app.sock:mode=0660
    wsgi: wsgiapp:application
    threads: 4
    max_concurrent: 8
    backlog: 16
    queue_timeout: 5s
    max_param_bytes: 65536
    max_body_bytes: 1048576
    request_timeout: 30s
    max_requests: 1000
    max_requests_jitter: 100
    script_name: /app
  - protocol: http
    endpoint: tcp:{port}:interface=127.0.0.1
    native: wsgiapp:native
    jobs: true
    allow_from: [127.0.0.1]
cgi:
  min_load: 0.5
  max_load: 8
  start_timeout: 10s
  lock_timeout: 5s
daemons:
  mail-queues:
    type: dir_queue_manager
    run_every: 5m
    base_directory: ./queues
    queue: {{type: dir_queue, run_every: 10s}}
  session-cleanup:
    type: file_cleanup
    run_every: 5m
    directory: ./sessions
    remove_older_than: 1h
  collective:
    type: wsgiapp:Replicator
    run_every: 30s
    increase_idle_by: 10s
    multiply_idle_by: 1.5
    maximum_idle: 2m
    priority: 2
    max_items: 10
    max_seconds: 5s
    jitter: 0.1
    in_thread: false
    lock: collective
    start_delay: 1s
    record_count: 10
  tick:
    type: command
    run_every: 1m
    argv: [/bin/true]
  jobs:
    type: job_dispatcher
    run_every: 1s
    max_children: 2
    max_attempts: 3
    timeout: 1m
    kill_grace: 5s
    lease: 30s
    retry_delay: 10s
    retry_max_delay: 1h
    memory_limit: 512MiB
    progress_persist_hz: 2
"""


WSGI_MODULE = """\
from daemonapp import Daemon

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

def native(request):
    return b"ok"

class Replicator(Daemon):
    run_every = 30
    def __init__(self, record_count=1, **kw):
        super().__init__(**kw)
        self.record_count = record_count
"""


@pytest.mark.integration
def test_check_accepts_every_documented_key(tmp_path: Path) -> None:
    """`daemonapp check` accepts every key DESIGN documents (app, listeners, cgi, daemons)."""
    write_file(tmp_path / "wsgiapp.py", WSGI_MODULE)
    for d in ("queues", "sessions", "run"):
        (tmp_path / d).mkdir()
    result = check_config(tmp_path, FULL_CONFIG.format(port=free_port()),
                          PYTHONPATH=f"{ROOT}:{tmp_path}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "var").exists()
