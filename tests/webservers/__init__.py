"""Integration tests with real web servers that spawn `daemonapp run` (DESIGN §4)."""
