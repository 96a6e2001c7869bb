"""daemonapp.examples."""
