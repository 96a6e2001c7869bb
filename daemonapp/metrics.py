"""Prometheus text metrics built from an app's status snapshot (DESIGN §7).

The snapshot (``DaemonApp.snapshot()``, also what the status socket serves) is the
single source; this module only translates it with ``prometheus_client``, so the
numbers shown by ``daemonapp status`` and by a scrape always agree.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_DAEMON_COUNTERS = (
    ("runs", "daemonapp_daemon_runs", "Runs of the daemon, whatever their outcome"),
    ("items", "daemonapp_daemon_items", "Items (do_work calls) finished by the daemon"),
    ("failures", "daemonapp_daemon_failures", "Runs that failed in a hook"),
)
_LISTENER_COUNTERS = (
    ("requests", "daemonapp_listener_requests", "Requests received"),
    ("answered", "daemonapp_listener_answered", "Requests answered by the application"),
    ("rejected_503", "daemonapp_listener_rejected_503", "Requests shed with 503 + Retry-After"),
    ("timeouts_504", "daemonapp_listener_timeouts_504", "Requests past request_timeout"),
    ("errors_500", "daemonapp_listener_errors_500", "Requests the application failed"),
    ("too_large_413", "daemonapp_listener_too_large_413", "Bodies over max_body_bytes"),
    ("too_large_431", "daemonapp_listener_too_large_431", "Parameters over max_param_bytes"),
    ("bad_request_400", "daemonapp_listener_bad_request_400",
     "Requests answered 400 (a length that is not ASCII digits...)"),
    ("spooled", "daemonapp_listener_spooled",
     "Request bodies spooled to disk past the memory budget"),
    ("spool_failed", "daemonapp_listener_spool_failed",
     "Request bodies answered 503 because they could not be spooled"),
    ("refused", "daemonapp_listener_refused",
     "Connections accepted and closed at once past max_connections"),
    ("accept_errors", "daemonapp_listener_accept_errors",
     "accept() failures on the listening socket (EMFILE...)"),
)


class _SnapshotCollector:
    """A prometheus_client collector over one snapshot dict."""

    def __init__(self, snapshot: Mapping[str, Any]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.snapshot
        up = GaugeMetricFamily("daemonapp_up", "1 while the app runs, 0 while it stops",
                               value=1.0 if snap.get("state") == "running" else 0.0)
        yield up
        if snap.get("started_at") is not None:
            yield GaugeMetricFamily("daemonapp_start_time_seconds",
                                    "When the app started, in seconds since the epoch",
                                    value=float(snap["started_at"]))
        if snap.get("loop_lag") is not None:
            yield GaugeMetricFamily("daemonapp_loop_lag_seconds",
                                    "Lateness of the loop-lag probe's timer (only while a "
                                    "listener has health: true)",
                                    value=float(snap["loop_lag"]))
        yield GaugeMetricFamily("daemonapp_uptime_seconds", "Seconds since the app started",
                                value=float(snap.get("uptime") or 0.0))
        yield GaugeMetricFamily("daemonapp_max_lateness_seconds",
                                "Largest start - due time of any run so far",
                                value=float(snap.get("max_lateness") or 0.0))
        daemons = snap.get("daemons") or []
        for key, name, text in _DAEMON_COUNTERS:
            family = CounterMetricFamily(name, text, labels=["daemon"])
            for d in daemons:
                family.add_metric([str(d["name"])], float(d.get(key) or 0))
            yield family
        lateness = GaugeMetricFamily("daemonapp_daemon_lateness_seconds",
                                     "Start - due time of the daemon's last run",
                                     labels=["daemon"])
        delay = GaugeMetricFamily("daemonapp_daemon_current_delay_seconds",
                                  "Delay chosen after the daemon's last run", labels=["daemon"])
        outcome = GaugeMetricFamily("daemonapp_daemon_last_outcome",
                                    "1 for the outcome of the daemon's last run",
                                    labels=["daemon", "outcome"])
        for d in daemons:
            label = str(d["name"])
            lateness.add_metric([label], float(d.get("lateness") or 0.0))
            delay.add_metric([label], float(d.get("current_delay") or 0.0))
            if d.get("last_outcome"):
                outcome.add_metric([label, str(d["last_outcome"])], 1.0)
        yield lateness
        yield delay
        yield outcome
        yield from _supervision(daemons)
        misfires = CounterMetricFamily(
            "daemonapp_daemon_misfires", "Fire times of a clock schedule missed, by reason "
            "(overrun, downtime, suspend, clock_jump, paused), made up or not",
            labels=["daemon", "reason"])
        for d in daemons:
            for reason, count in sorted((d.get("misfires") or {}).items()):
                misfires.add_metric([str(d["name"]), str(reason)], float(count))
        yield misfires
        in_flight = GaugeMetricFamily("daemonapp_in_flight", "Work in flight by kind",
                                      labels=["kind"])
        for kind, count in (snap.get("in_flight") or {}).items():
            in_flight.add_metric([str(kind)], float(count))
        yield in_flight
        listeners = snap.get("listeners") or []
        for key, name, text in _LISTENER_COUNTERS:
            family = CounterMetricFamily(name, text, labels=["listener"])
            for i, listener in enumerate(listeners):
                if key in listener:
                    family.add_metric([_listener_label(listener, i)], float(listener[key]))
            yield family
        timed_out = CounterMetricFamily(
            "daemonapp_listener_timed_out",
            "Connections closed by a header, body, idle or send timeout",
            labels=["listener", "waiting"])
        for i, listener in enumerate(listeners):
            for waiting, count in sorted((listener.get("timed_out") or {}).items()):
                timed_out.add_metric([_listener_label(listener, i), str(waiting)],
                                     float(count))
        yield timed_out
        buffered = GaugeMetricFamily("daemonapp_listener_buffered_bytes",
                                     "Request body bytes held in memory (the budget's use)",
                                     labels=["listener"])
        for i, listener in enumerate(listeners):
            if "buffered_bytes" in listener:
                buffered.add_metric([_listener_label(listener, i)],
                                    float(listener["buffered_bytes"]))
        yield buffered
        receiving = GaugeMetricFamily(
            "daemonapp_listener_receiving",
            "Requests whose body is still arriving, admitted once it is complete "
            "(request buffering: uploads in progress)", labels=["listener"])
        for i, listener in enumerate(listeners):
            if "receiving" in listener:
                receiving.add_metric([_listener_label(listener, i)],
                                     float(listener["receiving"]))
        yield receiving
        jobs = snap.get("jobs") or {}
        by_state = jobs.get("by_state") if isinstance(jobs, Mapping) else None
        if by_state:
            jobs_family = GaugeMetricFamily("daemonapp_jobs", "Jobs in the store by state",
                                            labels=["state"])
            for state, count in sorted(by_state.items()):
                jobs_family.add_metric([str(state)], float(count))
            yield jobs_family


def _supervision(daemons: list[Mapping[str, Any]]) -> Iterator[Any]:
    """Per daemon: runs by outcome, the last success, the failure streak and its alert,
    run durations, the expected interval between runs, and the pause (DESIGN §10).

    Keys a daemon's entry lacks (an app without supervision) give no sample, or 0.
    """
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        SummaryMetricFamily,
    )

    by_outcome = CounterMetricFamily("daemonapp_daemon_runs_by_outcome",
                                     "Runs of the daemon by outcome (worked, yielded, idle, "
                                     "failed, locked-out, timed-out)",
                                     labels=["daemon", "outcome"])
    success = GaugeMetricFamily("daemonapp_daemon_last_success_timestamp_seconds",
                                "When the daemon's last run that did work (worked or "
                                "yielded) ended, in seconds since the epoch",
                                labels=["daemon"])
    streak = GaugeMetricFamily("daemonapp_daemon_consecutive_failures",
                               "Failed or timed-out runs in a row, up to the last run",
                               labels=["daemon"])
    in_alert = GaugeMetricFamily("daemonapp_daemon_in_alert",
                                 "1 while the daemon is in alert (alert_after reached, no "
                                 "recovery yet)", labels=["daemon"])
    duration = SummaryMetricFamily("daemonapp_daemon_run_duration_seconds",
                                   "Duration of the daemon's runs (sum and count)",
                                   labels=["daemon"])
    last_duration = GaugeMetricFamily("daemonapp_daemon_last_run_duration_seconds",
                                      "Duration of the daemon's last run", labels=["daemon"])
    interval = GaugeMetricFamily("daemonapp_daemon_expected_interval_seconds",
                                 "The longest a healthy daemon waits between two runs now "
                                 "(maximum_idle with its jitter; a clock schedule's gap "
                                 "between its last and next fire times)", labels=["daemon"])
    paused = GaugeMetricFamily("daemonapp_daemon_paused", "1 while the daemon is paused",
                               labels=["daemon"])
    for d in daemons:
        label = [str(d["name"])]
        for outcome, count in sorted((d.get("outcomes") or {}).items()):
            by_outcome.add_metric([*label, str(outcome)], float(count))
        if d.get("last_success_at") is not None:
            success.add_metric(label, float(d["last_success_at"]))
        streak.add_metric(label, float(d.get("consecutive_failures") or 0))
        in_alert.add_metric(label, 1.0 if d.get("in_alert") else 0.0)
        duration.add_metric(label, count_value=int(d.get("runs") or 0),
                            sum_value=float(d.get("run_seconds") or 0.0))
        if d.get("last_duration") is not None:
            last_duration.add_metric(label, float(d["last_duration"]))
        if d.get("expected_interval") is not None:
            interval.add_metric(label, float(d["expected_interval"]))
        paused.add_metric(label, 1.0 if d.get("paused") else 0.0)
    yield from (by_outcome, success, streak, in_alert, duration, last_duration, interval,
                paused)


def _listener_label(listener: Mapping[str, Any], index: int) -> str:
    return str(listener.get("name") or listener.get("endpoint") or f"listener{index}")


def render_metrics(snapshot: Mapping[str, Any]) -> bytes:
    """The Prometheus text exposition of ``snapshot``.

    Needs ``prometheus_client`` (``pip install daemonapp[metrics]``).
    """
    try:
        from prometheus_client import CollectorRegistry, generate_latest
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "metrics need prometheus_client: pip install 'daemonapp[metrics]'") from e
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))  # type: ignore[arg-type]
    result: bytes = generate_latest(registry)
    return result
