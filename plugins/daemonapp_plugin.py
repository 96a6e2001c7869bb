"""twistd dropin: ``twistd -n daemonapp -c etc/daemons.yaml``."""

from twisted.application.service import ServiceMaker

daemonapp = ServiceMaker(
    "daemonapp", "daemonapp.tap", "Run daemons, listeners and jobs from a YAML file", "daemonapp"
)
