"""Peer connections: one TCP connection per pair of members, framed CBOR both ways.

The member with the lower id dials the one with the higher id; messages then flow both ways on
that one connection. The dialer reconnects with capped exponential backoff and jitter. Each
connection opens with a hello in each direction (``daemon.wire``): a peer of another cluster,
another protocol version, an unknown id or our own id is refused and the reason logged.

Sending never blocks the protocol core: ``Transport.send`` appends to a bounded per-peer queue
(when full, the oldest message is dropped: the protocol retransmits what matters) and the peer's
sender task writes everything queued since its last write with one ``send_all`` of
``fastpath.encode_frames``. Inbound frames are cut by ``fastpath.FrameReader`` (the length is
checked against ``limits.max_frame_bytes`` before the body is read), decoded and validated by
``wire.decode_peer``, and handed to ``deliver`` one list per received chunk. A bad frame or an
invalid message logs one line and closes that connection only.
"""

from __future__ import annotations

import os
import random
from collections import deque
from typing import Awaitable, Callable

import trio

from fastpath import FrameError, FrameReader, dumps, encode_frame, encode_frames, loads

from daemon import wire
from daemon.log import node_logger

__all__ = ["PeerLink", "Transport"]

HELLO_TIMEOUT = 2.0  # seconds for the hello exchange, per connection
CONNECT_TIMEOUT = 2.0
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
SEND_QUEUE_LIMIT = 1024  # messages per peer; beyond it the oldest is dropped
RECEIVE_BYTES = 256 * 1024
HELLO_MAX_FRAME = 4096  # a connection that has not said hello may not make us buffer more

_NET_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class PeerLink:
    """What this node knows of one peer: its send queue and whether it is reachable."""

    def __init__(self, peer_id: int, address) -> None:
        self.id = peer_id
        self.address = address
        self.queue: deque = deque()
        self.dropped = 0  # messages dropped because the queue was full
        self.sent = 0  # messages written to the peer (counted per write, for the metrics)
        self.received = 0  # valid messages received from the peer
        self.connected = False  # a connection with a completed hello is up
        self._has_work = trio.Event()
        self._generation = 0
        self._scope: trio.CancelScope | None = None
        self._down_reported = False
        self._last_refusal: str | None = None
        self._send_error: str | None = None

    def put(self, msg) -> None:
        queue = self.queue
        if len(queue) >= SEND_QUEUE_LIMIT:
            queue.popleft()
            self.dropped += 1
        queue.append(msg)
        self._has_work.set()


class Transport:
    """The peer side of one node.

    ``deliver(msgs)`` is awaited with each list of validated messages received from a peer (its
    waiting is the backpressure on that peer's connection). Run with ``nursery.start(run)``:
    started once the peer listener is bound.
    """

    def __init__(self, config, deliver: Callable[[list], Awaitable[None]], log=None) -> None:
        self.config = config
        self.id = config.node_id
        self.cluster = config.cluster
        self.members = frozenset(config.member_ids)
        self.max_frame = config.limits.max_frame_bytes
        self.deliver = deliver
        self.log = log or node_logger(self.id, "paxosd.transport")
        self.links = {m.id: PeerLink(m.id, m.peer) for m in config.members if m.id != self.id}
        self._hello = encode_frame(dumps(wire.encode_hello(self.cluster, self.id)))
        self._rng = random.Random()
        self.auth_failures = 0  # connections refused by TLS or the secret check

    # -- the core's side -------------------------------------------------------------------------

    def send(self, peer_id: int, msg) -> None:
        """Queue ``msg`` for ``peer_id``; never blocks."""
        self.links[peer_id].put(msg)

    def reachable(self) -> dict[int, bool]:
        return {peer_id: link.connected for peer_id, link in self.links.items()}

    # -- tasks -----------------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        me = self.config.member(self.id).peer
        try:
            listeners = await trio.open_tcp_listeners(me.port, host=me.host)
        except OSError as exc:
            raise OSError(f"cannot listen for peers on {me}: {exc.strerror or exc}") from None
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._accept, listeners)
            for link in self.links.values():
                if link.id > self.id:
                    nursery.start_soon(self._dial, link)
            task_status.started(listeners)

    async def _accept(self, stream: trio.SocketStream) -> None:
        async with stream:
            where = _remote(stream)
            reader = FrameReader(HELLO_MAX_FRAME)
            try:
                with trio.fail_after(HELLO_TIMEOUT):
                    payloads = await _receive_frames(stream, reader)
                    if payloads is None:
                        return  # closed before saying anything: a port probe
                    hello = loads(payloads[0])
                    try:
                        peer_id = wire.check_hello(hello, self.cluster, self.members, self.id)
                        if peer_id > self.id:
                            raise wire.HelloError(
                                f"node {peer_id} dialed node {self.id}, but the lower id dials")
                    except wire.HelloError:
                        # Answer a well-formed hello anyway, so the other side can log why.
                        await stream.send_all(self._hello)
                        raise
                    if len(payloads) > 1 or reader.buffered:
                        raise wire.WireError("sent more than a hello before the answer")
                    await stream.send_all(self._hello)
            except trio.TooSlowError:
                self.log.warning("peer connection from %s refused: no hello within %g s",
                                 where, HELLO_TIMEOUT)
                return
            except (FrameError, wire.WireError) as exc:
                self.log.error("peer connection from %s refused: %s", where, exc)
                return
            except _NET_ERRORS:
                return
            await self._run_connection(self.links[peer_id], stream, FrameReader(self.max_frame), [])

    async def _dial(self, link: PeerLink) -> None:
        backoff = BACKOFF_MIN
        address = link.address
        while True:
            stream = None
            try:
                with trio.fail_after(CONNECT_TIMEOUT + HELLO_TIMEOUT):
                    stream = await trio.open_tcp_stream(address.host, address.port)
                    await stream.send_all(self._hello)
                    reader = FrameReader(self.max_frame)
                    payloads = await _receive_frames(stream, reader)
                    if payloads is None:
                        raise trio.BrokenResourceError("closed the connection during the hello")
                    peer_id = wire.check_hello(loads(payloads[0]), self.cluster, self.members,
                                               self.id)
                    if peer_id != link.id:
                        raise wire.HelloError(f"node {peer_id} answered at the address of "
                                              f"node {link.id}")
            except (trio.TooSlowError, FrameError, wire.WireError, *_NET_ERRORS) as exc:
                if stream is not None:
                    await trio.aclose_forcefully(stream)
                self._dial_failed(link, exc)
                await trio.sleep(backoff * self._rng.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            except BaseException:
                if stream is not None:
                    await trio.aclose_forcefully(stream)
                raise
            backoff = BACKOFF_MIN
            link._last_refusal = None
            async with stream:
                await self._run_connection(link, stream, reader, payloads[1:])
            await trio.sleep(BACKOFF_MIN * self._rng.uniform(0.5, 1.0))

    def _dial_failed(self, link: PeerLink, exc: BaseException) -> None:
        if isinstance(exc, (wire.WireError, FrameError)):
            why = f"refused by peer {link.id} at {link.address}: {exc}"
            if why != link._last_refusal:  # a configuration error: say it once, loudly
                link._last_refusal = why
                self.log.error("%s", why)
            return
        if not link._down_reported:
            link._down_reported = True
            if isinstance(exc, trio.TooSlowError):
                why = "timed out"
            else:
                why = _reason(exc)
            self.log.info("peer %d unreachable at %s (%s); retrying", link.id, link.address, why)

    async def _run_connection(self, link: PeerLink, stream, reader: FrameReader,
                              payloads: list) -> None:
        """Carry messages both ways until the connection fails or a newer one replaces it."""
        link._generation += 1
        generation = link._generation
        if link._scope is not None:
            link._scope.cancel()  # one connection per pair: the newer one wins
        why = None
        link._send_error = None
        try:
            async with trio.open_nursery() as nursery:
                link._scope = nursery.cancel_scope
                link.connected = True
                link._down_reported = False
                self.log.info("peer %d up (%s)", link.id, _remote(stream))
                nursery.start_soon(self._send_loop, link, stream, nursery.cancel_scope)
                why = await self._receive_loop(link, stream, reader, payloads)
                nursery.cancel_scope.cancel()
        finally:
            if link._generation == generation:
                link.connected = False
                link._scope = None
                link._down_reported = True
                why = link._send_error or why or "shutting down"
                self.log.info("peer %d down: %s", link.id, why)

    async def _receive_loop(self, link: PeerLink, stream, reader: FrameReader,
                            payloads: list) -> str:
        """Deliver what the peer sends; return why the connection ended."""
        members = self.members
        decode = wire.decode_peer
        deliver = self.deliver
        peer_id = link.id
        try:
            while True:
                if payloads:
                    msgs = []
                    for payload in payloads:
                        msg = decode(loads(payload), members)
                        if msg.sender != peer_id:
                            raise wire.WireError(f"{type(msg).__name__}.sender: expected {peer_id} "
                                                 f"(the peer of this connection), got {msg.sender}")
                        msgs.append(msg)
                    link.received += len(msgs)
                    await deliver(msgs)
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    return "connection closed by the peer"
                payloads = reader.feed(data)
        except (FrameError, wire.WireError) as exc:
            self.log.warning("bad frame from peer %d, closing the connection: %s", peer_id, exc)
            return f"bad frame: {exc}"
        except _NET_ERRORS as exc:
            return f"connection lost ({exc or type(exc).__name__})"

    async def _send_loop(self, link: PeerLink, stream, scope: trio.CancelScope) -> None:
        queue = link.queue
        max_frame = self.max_frame
        try:
            while True:
                if not queue:
                    await link._has_work.wait()
                link._has_work = trio.Event()
                if not queue:
                    continue
                objs = [wire.encode_peer(m) for m in queue]
                queue.clear()
                link.sent += len(objs)
                data = encode_frames(objs)
                if len(data) - 4 > max_frame:
                    data = self._drop_oversized(link, objs)
                await stream.send_all(data)
        except _NET_ERRORS as exc:
            link._send_error = f"send failed ({exc or type(exc).__name__})"
            scope.cancel()

    def _drop_oversized(self, link: PeerLink, objs: list) -> bytes:
        """Frames that the peer would refuse (and close the connection for) are not sent."""
        frames = [encode_frame(dumps(obj)) for obj in objs]
        kept = [f for f in frames if len(f) - 4 <= self.max_frame]
        for f in frames:
            if len(f) - 4 > self.max_frame:
                self.log.error("not sending a message of %d bytes to peer %d: more than "
                               "limits.max_frame_bytes (%d)", len(f) - 4, link.id, self.max_frame)
        return b"".join(kept)


async def _receive_frames(stream, reader: FrameReader) -> list | None:
    """Read until at least one complete frame; its payloads, or None at end of stream."""
    while True:
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            return None
        payloads = reader.feed(data)
        if payloads:
            return payloads


def _reason(exc: BaseException) -> str:
    """The innermost OS-level reason (trio wraps "connection refused" in a generic error)."""
    cause = exc.__cause__
    while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    for e in (cause, exc):
        if isinstance(e, OSError) and e.errno:
            return os.strerror(e.errno).lower()
    return str(exc) or type(exc).__name__


def _remote(stream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except (OSError, AttributeError, ValueError):
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
