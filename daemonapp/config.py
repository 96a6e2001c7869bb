"""The configuration file API: `load_config` validates a YAML file into a Config,
`build_app` builds the DaemonApp it describes.

The parts live in modules of their own: daemonapp.configfile reads the YAML with
each key's line, daemonapp.configmodel is the Config, daemonapp.configcheck checks
every value (daemonapp.configerrors words its errors) and daemonapp.assembly builds
and starts the app for `daemonapp run` and twistd alike.
"""

from __future__ import annotations

from daemonapp.assembly import build_app
from daemonapp.configcheck import (
    APP_KEYS,
    CGI_KEYS,
    LOCK_KEYS,
    LOG_KEYS,
    PROTOCOLS,
    SECTIONS,
    class_parameters,
    load_config,
    nested_options,
    resolve_daemon_type,
)
from daemonapp.configerrors import MAX_MESSAGE
from daemonapp.configmodel import (
    AppSettings,
    CgiSettings,
    Config,
    ConfigError,
    DaemonSpec,
    ListenerSpec,
    LockSettings,
    LogSettings,
    unix_socket_path,
)
from daemonapp.daemons._build import BUNDLED_DAEMONS, daemon_types

__all__ = [
    "APP_KEYS",
    "BUNDLED_DAEMONS",
    "CGI_KEYS",
    "LOCK_KEYS",
    "LOG_KEYS",
    "MAX_MESSAGE",
    "PROTOCOLS",
    "SECTIONS",
    "AppSettings",
    "CgiSettings",
    "Config",
    "ConfigError",
    "DaemonSpec",
    "ListenerSpec",
    "LockSettings",
    "LogSettings",
    "build_app",
    "class_parameters",
    "daemon_types",
    "load_config",
    "nested_options",
    "resolve_daemon_type",
    "unix_socket_path",
]
