"""The bundled daemons, reachable from YAML by short name (entry points ``daemonapp.daemons``).

- ``file_cleanup``: :class:`daemonapp.daemons.file_cleanup.FileCleanup`
- ``dir_queue``: :class:`daemonapp.daemons.dir_queue.DirQueue`
- ``dir_queue_manager``: :class:`daemonapp.daemons.dir_queue_manager.DirQueueManager`
- ``command``: :class:`daemonapp.daemons.command.Command`

Each is an ordinary Daemon subclass built on the public API; import it from its
module (this package imports nothing, so loading one does not load the others).
"""
