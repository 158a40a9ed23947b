"""Loopback ports for the servers tests start: ``free_ports``, defined in daemon.tools.ports
(``paxosd bench`` and the benchmark scripts use the same one)."""

from daemon.tools.ports import free_ports

__all__ = ["free_ports"]
