"""What `daemonapp check` prints of a valid file: the app's settings, the resolved
schedule of every daemon (with its idle backoff), the listeners and the CGI frontend's
settings."""

from __future__ import annotations

import time
from datetime import datetime
from typing import IO, Any

from daemonapp.configcheck import nested_options, resolve_daemon_type
from daemonapp.configmodel import Config
from daemonapp.crontimes import CronTimes, load_zone

__all__ = ["duration_text", "print_check"]


def duration_text(seconds: float | None) -> str:
    """A duration as people write it: 90 -> "1m30s", 0.25 -> "250ms", None -> "-"."""
    if seconds is None:
        return "-"
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    whole = round(seconds)
    if abs(seconds - whole) > 1e-9 or whole < 60:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _backoff_text(daemon: Any) -> str:
    from daemonapp.daemon import idle_delays

    delays = idle_delays(daemon.run_every, daemon.increase_idle_by, daemon.multiply_idle_by,
                         daemon.maximum_idle, count=8)
    shown: list[str] = []
    for delay in delays:
        shown.append(duration_text(delay))
        if delay >= daemon.maximum_idle:
            shown.append("...")
            break
    return ", ".join(shown)


def _schedule_row(name: str, type_name: str, daemon: Any) -> list[str]:
    if daemon.schedule is not None:  # a clock schedule: see its own table
        return [name, type_name, "-", "-", "-", str(daemon.priority), daemon.lock or "-"]
    return [name, type_name, duration_text(daemon.run_every), _backoff_text(daemon),
            duration_text(daemon.maximum_idle), str(daemon.priority), daemon.lock or "-"]


def _clock_row(name: str, daemon: Any, app_zone: str | None, count: int = 3) -> list[str]:
    """A clock-scheduled daemon's expression, zone and next fire times from now."""
    zone_name = daemon.timezone or app_zone
    zone = load_zone(zone_name)
    times = CronTimes(daemon.schedule, zone)
    fires: list[str] = []
    t = time.time()
    for _ in range(count):
        t = times.next_after(t)
        fires.append(datetime.fromtimestamp(t, zone).isoformat(timespec="minutes"))
    return [name, daemon.schedule, zone_name or "system", daemon.catch_up,
            duration_text(daemon.misfire_grace), ", ".join(fires)]


def _nested_row(name: str, section: dict[str, Any]) -> list[str]:
    """The schedule of the children a daemon builds from a nested section."""
    from daemonapp.daemon import Daemon

    cls = resolve_daemon_type(section["type"])
    attributes = {k: v for k, v in section.items() if k in Daemon.ATTRIBUTES}
    attributes.setdefault("run_every", cls.run_every or 1.0)
    for key in Daemon.ATTRIBUTES:
        if key not in attributes and key in vars(Daemon) and hasattr(cls, key):
            attributes[key] = getattr(cls, key)
    return _schedule_row(name, str(section["type"]), Daemon(name="template", **attributes))


def _print_table(headers: list[str], rows: list[list[str]], out: IO[str]) -> None:
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) if rows else len(headers[i])
              for i in range(len(headers))]
    for row in [headers, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def print_check(config: Config, out: IO[str]) -> None:
    """The report of a file that passed `load_config`."""
    print(f"{config.path}: OK: {len(config.daemons)} daemon(s), "
          f"{len(config.listeners)} listener(s)", file=out)
    print(f"state_dir: {config.app.state_dir}", file=out)
    app = config.app
    print("app: " + ", ".join(
        f"{key} {duration_text(getattr(app, key))}"
        for key in ("stay_alive_for", "shutdown_after", "shutdown_if_idle", "stop_timeout")),
        file=out)
    rows = []
    clock_rows = []
    for spec in config.daemons:
        daemon = spec()
        rows.append(_schedule_row(spec.name, spec.type_name, daemon))
        if daemon.schedule is not None:
            clock_rows.append(_clock_row(spec.name, daemon, app.timezone))
        for key in nested_options(spec.cls):
            section = spec.options.get(key)
            if isinstance(section, dict):
                rows.append(_nested_row(f"{spec.name}/<{key}>", section))
    if rows:
        print("", file=out)
        _print_table(["DAEMON", "TYPE", "RUN_EVERY", "IDLE BACKOFF", "MAXIMUM_IDLE",
                      "PRIORITY", "LOCK"], rows, out)
    if clock_rows:
        print("", file=out)
        _print_table(["DAEMON", "SCHEDULE", "TIMEZONE", "CATCH_UP", "MISFIRE_GRACE",
                      "NEXT FIRE TIMES"], clock_rows, out)
    if config.listeners:
        print("", file=out)
        lrows = []
        for listener in config.listeners:
            serves = [f"{key} {listener.options[key]}" for key in ("wsgi", "native")
                      if key in listener.options]
            if listener.options.get("jobs"):
                serves.append("jobs")
            lrows.append([str(listener.index), listener.protocol,
                          listener.endpoint or "fd:0 (inherited)", ", ".join(serves) or "-"])
        _print_table(["LISTENER", "PROTOCOL", "ENDPOINT", "SERVES"], lrows, out)
    if config.cgi_configured:
        cgi = config.cgi
        chosen = config.cgi_listener()
        print("", file=out)
        print(f"cgi: min_load {cgi.min_load:g}, max_load "
              f"{'-' if cgi.max_load is None else f'{cgi.max_load:g}'}, start_timeout "
              f"{duration_text(cgi.start_timeout)}, lock_timeout "
              f"{duration_text(cgi.lock_timeout)}, listener "
              f"{chosen.index if chosen is not None else '-'}", file=out)
