"""twistd plugin: ``twistd -n daemonapp -c etc/daemons.yaml``.

Config errors are a ``usage.UsageError`` raised in ``postOptions``: twistd prints
the usage and every error, and exits with its usage-error status (1). twistd
itself always exits 0 after the reactor stopped; an app that abandoned work at
stop_timeout makes the process exit 1 through an ``atexit`` hook that runs after
twistd removed its pid file.
"""

from __future__ import annotations

import os
import pwd

from twisted.application.service import IService
from twisted.python import usage

from daemonapp.assembly import Assembly
from daemonapp.config import Config, ConfigError, load_config

__all__ = ["Options", "makeService"]

ENV_CONFIG = "DAEMONAPP_CONFIG"


class Options(usage.Options):
    """twistd daemonapp options."""

    synopsis = "[-c CONFIG]"
    longdesc = ("Run the daemons and listeners of a daemonapp YAML file (DAEMONAPP_CONFIG "
                "when -c is not given). Check a file first with `daemonapp check FILE`.")
    optParameters = [
        ["config", "c", None, "the YAML configuration file (default: $DAEMONAPP_CONFIG)"],
    ]

    config: Config | None = None

    def postOptions(self) -> None:
        path = self["config"] or os.environ.get(ENV_CONFIG)
        if not path:
            raise usage.UsageError("a configuration file is required: -c FILE "
                                   f"(or set {ENV_CONFIG})")
        self["config"] = path
        try:
            self.config = load_config(path, check_state_dir=True,
                                      owners=_state_dir_owners(self))
        except ConfigError as e:
            raise usage.UsageError(
                f"{len(e.messages)} error(s) in {path}:\n" + "\n".join(e.messages)) from None


def _switched_ids(options: usage.Options) -> tuple[int | None, int | None]:
    """twistd's --uid and --gid when root will switch to them, else (None, None)."""
    parent = getattr(options, "parent", None)
    if parent is None or os.getuid() != 0:
        return None, None
    uid, gid = parent.get("uid"), parent.get("gid")
    if uid is not None and gid is None:
        gid = pwd.getpwuid(uid).pw_gid
    return uid, gid


def _state_dir_owners(options: usage.Options) -> tuple[int, ...]:
    """Who may own state_dir besides us: the --uid that root hands it over to."""
    uid, _ = _switched_ids(options)
    return () if uid is None else (uid,)


def _hand_over_state_dir(options: Options, state_dir: str) -> None:
    """Give the state directory to twistd's --uid/--gid.

    makeService runs before twistd sheds its privileges, so a state_dir created
    here by root would be closed to the app once it runs as --uid.
    """
    uid, gid = _switched_ids(options)
    if uid is None and gid is None:
        return
    # the assembly checked it is no symlink; never follow one swapped in since
    os.chown(state_dir, -1 if uid is None else uid, -1 if gid is None else gid,
             follow_symlinks=False)


def makeService(options: Options) -> IService:
    """The DaemonApp of the configuration (it stops the reactor when it ends)."""
    config = options.config
    if config is None:  # postOptions was bypassed (a test calling makeService directly)
        config = load_config(options["config"])
    assembly = Assembly(config, owners=_state_dir_owners(options))
    app = assembly.build(stop_reactor=True, handle_signals=True)
    _hand_over_state_dir(options, config.app.state_dir)
    # (its exit status reaches twistd's exit by itself: DaemonApp.startService)
    assembly.when_listening(app)
    return app
