"""daemonapp.daemons."""
