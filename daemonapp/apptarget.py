"""Which app a command talks to: ``TARGET`` is its state_dir or its YAML file.

`daemonapp status`, `history` and the control commands (trigger, pause, resume,
reload) all find their app here, with the same default and the same messages:
``TARGET`` as given (a directory, or a YAML file), else ``$DAEMONAPP_CONFIG``, else
``./var``. A file's state_dir is read by the CGI frontend's line scan first (fast, and
a file being edited, whose reload was refused, still names the app that runs); the
YAML is parsed and checked only when the scan is unsure, or when the command needs the
app's settings (``history`` reads ``app.history``).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from daemonapp.configmodel import AppSettings

__all__ = ["DEFAULT_STATE_DIR", "ENV_CONFIG", "EXIT_USAGE", "AppTarget", "find_app"]

ENV_CONFIG = "DAEMONAPP_CONFIG"
#: The state_dir of a command given neither TARGET nor $DAEMONAPP_CONFIG.
DEFAULT_STATE_DIR = "var"
#: The exit status of a command whose TARGET names no state_dir (a file that does not
#: check and that the scan cannot read either).
EXIT_USAGE = 2


class AppTarget(NamedTuple):
    """The app a command talks to."""

    #: Its state_dir (the status socket, the run history, pauses live there).
    state_dir: str
    #: The YAML file it was found through, None for a state_dir.
    config: str | None = None
    #: The file's ``app`` settings, when the command asked for them and the file checks.
    app: AppSettings | None = None

    @property
    def status_socket(self) -> str:
        """The app's status socket (commands and status go there)."""
        from daemonapp.status import status_socket_path

        return status_socket_path(self.state_dir)


def find_app(target: str | None, command: str, *, settings: bool = False
             ) -> AppTarget | int:
    """The app of ``TARGET`` for ``daemonapp COMMAND``, or EXIT_USAGE once the errors
    are printed (each on a line of its own, then one line that names the command).

    ``settings``: parse the file for the app's settings too (``AppTarget.app``). A file
    that does not check then still gives the state_dir the scan finds, with a warning
    that its settings are not known.
    """
    if target is not None and not os.path.isfile(target):
        return AppTarget(target)
    path = target or os.environ.get(ENV_CONFIG)
    if not path:
        return AppTarget(DEFAULT_STATE_DIR)
    from daemonapp.cgi_frontend import scan_state_dir

    scanned = scan_state_dir(path) if os.path.isfile(path) else None
    if scanned is not None and not settings:
        return AppTarget(scanned, path)
    from daemonapp.config import ConfigError, load_config

    try:
        app = load_config(path).app
    except ConfigError as e:
        if scanned is not None:
            print(f"daemonapp: {command}: warning: {path} has {len(e.messages)} error(s); "
                  f"its app settings are not known (daemonapp check {path})",
                  file=sys.stderr)
            return AppTarget(scanned, path)
        for message in e.messages:
            print(message, file=sys.stderr)
        print(f"daemonapp: {command}: cannot tell the state_dir of {path} "
              f"({len(e.messages)} error(s))", file=sys.stderr)
        return EXIT_USAGE
    return AppTarget(app.state_dir, path, app)
