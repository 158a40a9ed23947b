"""A fault-injecting TCP proxy for the peer links of a test cluster.

The transport makes ONE connection per pair of members, and the member with the lower id dials
the one with the higher id (daemon.runtime.transport). So each pair ``(lo, hi)`` gets one listener here,
on the dialled side: node ``lo``'s configuration names it as node ``hi``'s peer address, and
every connection accepted on it is forwarded to ``hi``'s real peer listener. Bytes from ``lo``
to ``hi`` travel "up" the proxied connection, bytes from ``hi`` to ``lo`` "down"; each
direction is cut on its own.

What a cut does, and why it never corrupts a stream:

- Bytes arriving in a cut direction are dropped (counted), and the connection is marked. A TCP
  stream cannot lose bytes in the middle and go on, so a marked connection is closed, both
  sides, when that direction is healed: the nodes see a stall followed by a reset, as after a
  real outage, never a frame with a piece missing.
- The other direction keeps flowing: a one-way cut leaves the connection half working (for
  instance the leader's Accepts arrive, the followers' Accepteds do not) until it heals.
- New connections during a cut are accepted and forwarded, so their hello is dropped like any
  other byte and the dialer times out, as it would on a network that loses packets.
- An end of stream or error in a cut direction is not passed on either: the other side hangs
  until the heal closes it.

Other faults: ``delay`` holds each chunk in one direction for a while (order kept), ``reset``
closes every connection of a link at once (a TCP reset; the dialer reconnects).

Listeners are bound when the proxy is made (port 0, so the ports are free by construction), and
served by ``run`` in a trio nursery.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterable

import trio

__all__ = ["FaultProxy"]

CHUNK = 64 * 1024
UPSTREAM_DIAL_TIMEOUT = 1.0
_NET_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class _Connection:
    __slots__ = ("link", "scope", "dropped_in")

    def __init__(self, link: tuple[int, int]) -> None:
        self.link = link
        self.scope = trio.CancelScope()
        self.dropped_in: set[tuple[int, int]] = set()  # directions that lost bytes


class FaultProxy:
    """One listener per pair of ``nodes``, forwarding to ``upstream[hi]`` on 127.0.0.1."""

    def __init__(self, upstream: dict[int, int]) -> None:
        self.upstream = dict(upstream)
        ids = sorted(upstream)
        self.links = [(lo, hi) for i, lo in enumerate(ids) for hi in ids[i + 1:]]
        self._sockets: dict[tuple[int, int], socket.socket] = {}
        self.ports: dict[tuple[int, int], int] = {}
        try:
            for link in self.links:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self._sockets[link] = sock
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", 0))
                sock.listen(128)
                self.ports[link] = sock.getsockname()[1]
        except BaseException:
            self.close()
            raise
        self.blocked: frozenset[tuple[int, int]] = frozenset()  # (src, dst): dropped
        self.delay: dict[tuple[int, int], float] = {}  # (src, dst) -> seconds per chunk
        self._connections: set[_Connection] = set()
        self.stats: Counter = Counter()

    def port(self, a: int, b: int) -> int:
        """The proxy port that stands for the link between nodes ``a`` and ``b``."""
        return self.ports[(min(a, b), max(a, b))]

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()

    # -- faults ----------------------------------------------------------------------------------

    def set_blocked(self, directions: Iterable[tuple[int, int]]) -> None:
        """Drop every byte sent from ``src`` to ``dst`` for each ``(src, dst)`` given (and only
        those: directions not named are healed)."""
        self.blocked = frozenset(directions)
        for conn in list(self._connections):
            if conn.dropped_in - self.blocked:
                self.stats["closed at heal"] += 1
                conn.scope.cancel()

    def set_delay(self, direction: tuple[int, int], seconds: float) -> None:
        self.delay[direction] = seconds

    def reset(self, a: int, b: int) -> int:
        """Close every connection of the link between ``a`` and ``b``; how many there were."""
        link = (min(a, b), max(a, b))
        n = 0
        for conn in list(self._connections):
            if conn.link == link:
                conn.scope.cancel()
                n += 1
        return n

    def heal(self) -> None:
        self.delay.clear()
        self.set_blocked(())

    # -- serving ---------------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for link, sock in self._sockets.items():
                listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                nursery.start_soon(trio.serve_listeners, self._handler(link), [listener])
            task_status.started()

    def _handler(self, link: tuple[int, int]):
        async def handle(downstream: trio.SocketStream) -> None:
            await self._forward(link, downstream)
        return handle

    async def _forward(self, link: tuple[int, int], downstream: trio.SocketStream) -> None:
        lo, hi = link
        conn = _Connection(link)
        self._connections.add(conn)
        self.stats["connections"] += 1
        upstream = None
        try:
            with conn.scope:
                with trio.move_on_after(UPSTREAM_DIAL_TIMEOUT):
                    try:
                        upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream[hi])
                    except OSError:
                        pass
                if upstream is None:
                    return  # the node is down: the dialer sees its connection closed
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, conn, downstream, upstream, (lo, hi))
                    nursery.start_soon(self._pump, conn, upstream, downstream, (hi, lo))
        finally:
            self._connections.discard(conn)
            for stream in (downstream, upstream):
                if stream is not None:
                    await trio.aclose_forcefully(stream)

    async def _pump(self, conn: _Connection, source, sink, direction: tuple[int, int]) -> None:
        try:
            while True:
                data = await source.receive_some(CHUNK)
                if not data:
                    break
                delay = self.delay.get(direction)
                if delay:
                    await trio.sleep(delay)
                if direction in self.blocked:
                    conn.dropped_in.add(direction)
                    self.stats[f"bytes dropped {direction[0]}->{direction[1]}"] += len(data)
                    continue
                await sink.send_all(data)
        except _NET_ERRORS:
            pass
        if direction in self.blocked:
            # Say nothing to the other side now: it learns at the heal (set_blocked closes it).
            conn.dropped_in.add(direction)
            return
        conn.scope.cancel()
