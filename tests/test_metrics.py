"""Prometheus text from an app's snapshot."""

from __future__ import annotations

from daemonapp.metrics import render_metrics
from daemonapp.testing import FakeDaemon, make_app


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


def test_misfires_by_reason() -> None:
    """A clock schedule's misfires appear as a counter by daemon and reason."""
    text = render_metrics({"state": "running", "listeners": [], "daemons": [
        {"name": "nightly", "misfires": {"overrun": 2, "downtime": 1}}]}).decode()
    assert 'daemonapp_daemon_misfires_total{daemon="nightly",reason="downtime"} 1.0' in text
    assert 'daemonapp_daemon_misfires_total{daemon="nightly",reason="overrun"} 2.0' in text
