"""Loopback ports for the servers that the tests, ``paxosd bench`` and the benchmark scripts
start. Standard library only: the peer benchmarks (bench/peers/) import it too.

A port found free by binding port 0 comes from the kernel's ephemeral range, the same range it
draws the local ports of outgoing connections and of later ``bind(0)`` calls from: between the
test choosing it and the node binding it, a client connection or a proxy listener may take it,
and the node then fails to start. Ports here come from below the ephemeral range, where the
kernel hands out nothing on its own; each is checked free by binding it.
"""

from __future__ import annotations

import random
import socket

__all__ = ["free_ports"]

_FALLBACK_RANGE = (32768, 60999)
_rng = random.SystemRandom()


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
            return low, high
    except (OSError, ValueError):
        return _FALLBACK_RANGE


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now, outside the ephemeral range when it leaves
    room (ports 10000 up to its start), else from the kernel (bind to port 0)."""
    low, _ = _ephemeral_range()
    socks: list[socket.socket] = []
    try:
        if low - 10000 >= 1000:
            tries = 0
            while len(socks) < n:
                tries += 1
                if tries > 100 * n:
                    raise RuntimeError(f"no {n} free ports found in 10000-{low - 1}")
                s = socket.socket()
                try:
                    s.bind(("127.0.0.1", _rng.randrange(10000, low)))
                except OSError:
                    s.close()
                    continue
                socks.append(s)
        else:
            for _ in range(n):
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
