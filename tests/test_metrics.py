"""Prometheus text from an app's snapshot."""

from __future__ import annotations

from daemonapp.metrics import render_metrics
from daemonapp.testing import FakeDaemon, PendingDaemon, make_app


def test_daemon_counters() -> None:
    """Runs, items and failures of each daemon appear as counters."""
    app, clock = make_app()
    app.add(FakeDaemon(["a", "b"], name="mail", run_every=10))
    app.startService()
    clock.advance(0)
    text = render_metrics(app.snapshot()).decode()
    assert 'daemonapp_daemon_runs_total{daemon="mail"} 1.0' in text
    assert 'daemonapp_daemon_items_total{daemon="mail"} 2.0' in text
    assert 'daemonapp_daemon_failures_total{daemon="mail"} 0.0' in text
    assert 'daemonapp_daemon_last_outcome{daemon="mail",outcome="worked"} 1.0' in text
    assert "daemonapp_up 1.0" in text


def test_listener_and_jobs() -> None:
    """Listener counters and jobs by state come from their snapshot entries."""
    snap = {
        "state": "running",
        "daemons": [],
        "listeners": [{"name": "web", "requests": 7, "rejected_503": 2}],
        "jobs": {"by_state": {"pending": 3, "done": 4}},
    }
    text = render_metrics(snap).decode()
    assert 'daemonapp_listener_requests_total{listener="web"} 7.0' in text
    assert 'daemonapp_listener_rejected_503_total{listener="web"} 2.0' in text
    assert 'daemonapp_jobs{state="pending"} 3.0' in text


def test_listener_receiving_is_a_gauge() -> None:
    """Requests whose body still arrives are a gauge per listener."""
    text = render_metrics({"state": "running", "daemons": [], "listeners": [
        {"name": "web", "receiving": 3}, {"name": "old"}]}).decode()
    assert "# TYPE daemonapp_listener_receiving gauge" in text
    assert 'daemonapp_listener_receiving{listener="web"} 3.0' in text
    assert 'daemonapp_listener_receiving{listener="old"}' not in text


def test_misfires_by_reason() -> None:
    """A clock schedule's misfires appear as a counter by daemon and reason."""
    text = render_metrics({"state": "running", "listeners": [], "daemons": [
        {"name": "nightly", "misfires": {"overrun": 2, "downtime": 1}}]}).decode()
    assert 'daemonapp_daemon_misfires_total{daemon="nightly",reason="downtime"} 1.0' in text
    assert 'daemonapp_daemon_misfires_total{daemon="nightly",reason="overrun"} 2.0' in text


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Each sample of a Prometheus text, parsed by prometheus_client: (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_supervision_metrics_per_daemon() -> None:
    """Runs by outcome, last success, failure streak, alert, durations, interval and pause."""
    samples = _samples(render_metrics({"state": "running", "listeners": [], "daemons": [{
        "name": "mail", "runs": 7, "run_seconds": 3.5, "last_duration": 0.25,
        "outcomes": {"worked": 4, "failed": 3}, "last_success_at": 1_800_000_000.0,
        "consecutive_failures": 3, "in_alert": True, "expected_interval": 60.0,
        "paused": True}]}).decode())
    mail = (("daemon", "mail"),)
    assert {key: value for key, value in samples.items()
            if key[0].startswith("daemonapp_daemon_") and "lateness" not in key[0]
            and "current_delay" not in key[0] and "last_outcome" not in key[0]} == {
        ("daemonapp_daemon_runs_total", mail): 7.0,
        ("daemonapp_daemon_items_total", mail): 0.0,
        ("daemonapp_daemon_failures_total", mail): 0.0,
        ("daemonapp_daemon_runs_by_outcome_total", (("daemon", "mail"), ("outcome", "failed"))):
            3.0,
        ("daemonapp_daemon_runs_by_outcome_total", (("daemon", "mail"), ("outcome", "worked"))):
            4.0,
        ("daemonapp_daemon_last_success_timestamp_seconds", mail): 1_800_000_000.0,
        ("daemonapp_daemon_consecutive_failures", mail): 3.0,
        ("daemonapp_daemon_in_alert", mail): 1.0,
        ("daemonapp_daemon_run_duration_seconds_count", mail): 7.0,
        ("daemonapp_daemon_run_duration_seconds_sum", mail): 3.5,
        ("daemonapp_daemon_last_run_duration_seconds", mail): 0.25,
        ("daemonapp_daemon_expected_interval_seconds", mail): 60.0,
        ("daemonapp_daemon_paused", mail): 1.0,
    }


def test_supervision_metrics_of_a_daemon_without_them() -> None:
    """A daemon entry without supervision keys gives zeros, and no sample where none fits."""
    samples = _samples(render_metrics({"state": "running", "listeners": [],
                                       "daemons": [{"name": "old"}]}).decode())
    old = (("daemon", "old"),)
    assert samples[("daemonapp_daemon_consecutive_failures", old)] == 0.0
    assert samples[("daemonapp_daemon_in_alert", old)] == 0.0
    assert samples[("daemonapp_daemon_paused", old)] == 0.0
    assert not [key for key in samples if key[0] in (
        "daemonapp_daemon_runs_by_outcome_total",
        "daemonapp_daemon_last_success_timestamp_seconds",
        "daemonapp_daemon_last_run_duration_seconds",
        "daemonapp_daemon_expected_interval_seconds")]


def test_run_durations_of_a_running_app() -> None:
    """A 5 s run and a 0 s run: count 2, sum 5, last 0; the app's start time and no lag."""
    app, clock = make_app()
    clock.advance(1_800_000_000)
    daemon = PendingDaemon(["a"], name="slow", run_every=10)
    app.add(daemon)
    app.startService()
    clock.advance(0)
    clock.advance(5)
    daemon.pending[0].callback(None)
    clock.advance(10)
    samples = _samples(app.metrics_text().decode())
    slow = (("daemon", "slow"),)
    assert samples[("daemonapp_daemon_run_duration_seconds_count", slow)] == 2.0
    assert samples[("daemonapp_daemon_run_duration_seconds_sum", slow)] == 5.0
    assert samples[("daemonapp_daemon_last_run_duration_seconds", slow)] == 0.0
    assert samples[("daemonapp_daemon_expected_interval_seconds", slow)] == 10.0
    assert samples[("daemonapp_start_time_seconds", ())] == 1_800_000_000.0
    assert ("daemonapp_loop_lag_seconds", ()) not in samples


def test_misfires_and_lag_of_a_snapshot() -> None:
    """The loop lag is a gauge when the snapshot has it (a health listener runs the probe)."""
    samples = _samples(render_metrics({"state": "running", "listeners": [], "daemons": [],
                                       "loop_lag": 0.125}).decode())
    assert samples[("daemonapp_loop_lag_seconds", ())] == 0.125
