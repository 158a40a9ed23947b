"""Peer connections: one TCP connection per pair of members, framed CBOR both ways.

The member with the lower id dials the one with the higher id; messages then flow both ways on
that one connection. The dialer reconnects with capped exponential backoff and jitter. Each
connection opens with a hello in each direction (``daemon.codec.wire``): a peer of another cluster,
another protocol version, an unknown id or our own id is refused and the reason logged.

Before any protocol message is read, a peer proves who it is when the configuration asks
(``daemon.runtime.security``): with ``tls`` the connection is mutual TLS against the cluster's CA (the
handshake comes first, before the hello); with ``auth.secret_file`` the hello carries a nonce
each way and both sides prove the secret, the acceptor first, then the acceptor says "welcome"
and only then does the dialer send protocol messages. A connection that fails either check is
closed and the reason logged: once per reason and remote host per REFUSAL_LOG_INTERVAL on the
accepting side, once per reason on the dialing side until a connection succeeds.

Sending never blocks the protocol core: ``Transport.send`` appends to a bounded per-peer queue
(when full, the oldest message is dropped: the protocol retransmits what matters) and the peer's
sender task writes everything queued since its last write with one ``send_all`` of
``fastpath.encode_frames``. Inbound frames are cut by ``fastpath.FrameReader`` (the length is
checked against ``limits.max_frame_bytes`` before the body is read), decoded and validated by
``wire.decode_peer_payload``, and handed to ``deliver`` one list per received chunk. A bad frame or an
invalid message logs one line and closes that connection only.
"""

from __future__ import annotations

import logging
import os
import random
from collections import deque
from typing import Awaitable, Callable

import trio

from fastpath import FrameError, FrameReader, dumps, encode_frame, encode_frames, loads

from daemon.runtime import security
from daemon.codec import wire
from daemon.runtime.config import ConfigError, parse_address
from daemon.runtime.log import Throttle, node_logger
from daemon.runtime.net import NET_ERRORS, listen, remote_address, tls_failure
from daemon.runtime.timeline import ENABLED as TIMELINE, mark

__all__ = ["PeerLink", "Transport"]

HELLO_TIMEOUT = 2.0  # seconds for the hello exchange, per connection
CONNECT_TIMEOUT = 2.0
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
SEND_QUEUE_LIMIT = 1024  # messages per peer; beyond it the oldest is dropped
RECEIVE_BYTES = 256 * 1024
HELLO_MAX_FRAME = 4096  # a connection that has not said hello may not make us buffer more
REFUSAL_LOG_INTERVAL = 60.0  # seconds; the same refusal from the same host is logged once in it


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
        self.members = set(config.member_ids)  # who may connect; grows with the membership
        self.max_frame = config.limits.max_frame_bytes
        self.deliver = deliver
        self.log = log or node_logger(self.id, "paxosd.transport")
        self.links = {m.id: PeerLink(m.id, m.peer) for m in config.members if m.id != self.id}
        self._hello = encode_frame(dumps(wire.encode_hello(self.cluster, self.id)))
        self._rng = random.Random()
        self.auth_failures = 0  # connections refused by TLS or the secret check
        # ConfigError here if a file cannot be used; a node does not start half-protected.
        self.secret, warnings = security.load_secret(config)
        for warning in warnings:
            self.log.warning("%s: %s", config.path, warning)
        self._tls_server, self._tls_dialer = security.peer_contexts(config) or (None, None)
        self._refusals = Throttle(REFUSAL_LOG_INTERVAL)
        self._nursery: trio.Nursery | None = None
        self.unroutable = 0  # messages for a node this transport has no address of

    @property
    def protection(self) -> str:
        """How peers prove who they are, for the log."""
        parts = (["mutual TLS"] if self._tls_server is not None else []) + \
                (["cluster secret"] if self.secret is not None else [])
        return " + ".join(parts) or "none (no tls, no auth.secret_file)"

    # -- the core's side -------------------------------------------------------------------------

    def send(self, peer_id: int, msg) -> None:
        """Queue ``msg`` for ``peer_id``; never blocks."""
        link = self.links.get(peer_id)
        if link is None:
            self.unroutable += 1
            return
        link.put(msg)

    def set_peers(self, addresses: dict) -> None:
        """Membership changed: ``addresses`` maps member id -> "host:port" of every member the
        node knows. New members get a link (and a dialer, when this node has the lower id);
        a member whose address changed is dialed there from the next attempt on. Links to
        former members stay (the core stops sending to them)."""
        for peer_id, text in addresses.items():
            if peer_id == self.id:
                continue
            try:
                address = parse_address(text, f"the address of member {peer_id} in the log")
            except ConfigError as exc:
                self.log.error("%s", exc)
                continue
            self.members.add(peer_id)
            link = self.links.get(peer_id)
            if link is None:
                link = self.links[peer_id] = PeerLink(peer_id, address)
                self.log.info("peer %d joins at %s", peer_id, address)
                if peer_id > self.id and self._nursery is not None:
                    self._nursery.start_soon(self._dial, link)
            elif link.address != address:
                self.log.info("peer %d moves from %s to %s", peer_id, link.address, address)
                link.address = address

    def reachable(self) -> dict[int, bool]:
        return {peer_id: link.connected for peer_id, link in self.links.items()}

    # -- tasks -----------------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await listen(self.config.member(self.id).peer, "peers")
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._accept, listeners)
            self._nursery = nursery
            for link in list(self.links.values()):
                if link.id > self.id:
                    nursery.start_soon(self._dial, link)
            task_status.started(listeners)

    async def _accept(self, raw: trio.SocketStream) -> None:
        async with raw:
            where = remote_address(raw)
            stream = raw
            try:
                with trio.fail_after(HELLO_TIMEOUT):
                    if self._tls_server is not None:
                        stream = trio.SSLStream(raw, self._tls_server, server_side=True)
                        await stream.do_handshake()
                    peer_id = await self._handshake_as_acceptor(stream)
                    if peer_id is None:
                        return  # closed before saying anything: a port probe
            except trio.TooSlowError:
                self._refused(where, f"no hello within {HELLO_TIMEOUT:g} s", logging.WARNING)
                return
            except wire.AuthError as exc:
                self._refused(where, str(exc), auth=True)
                return
            except (FrameError, wire.WireError) as exc:
                self._refused(where, str(exc))
                return
            except NET_ERRORS as exc:
                why = tls_failure(exc)
                if why is not None:
                    self._refused(where, f"TLS handshake failed: {why}", auth=True)
                return
            await self._run_connection(self.links[peer_id], stream, FrameReader(self.max_frame), [])

    async def _handshake_as_acceptor(self, stream) -> int | None:
        """The hello (and with the secret, the proofs) on an accepted connection: the peer's
        id once it may send protocol messages, None if it closed without a word."""
        reader = FrameReader(HELLO_MAX_FRAME)
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            return None
        if self._tls_server is None and data[:2] == b"\x16\x03":
            raise wire.AuthError("the peer opened with a TLS handshake, and this node has no "
                                 "tls section: configure tls on every member or on none")
        payloads = reader.feed(data) or await _receive_frames(stream, reader)
        if payloads is None:
            return None
        secret = self.secret
        hello = loads(payloads[0])
        nonce = os.urandom(security.NONCE_BYTES) if secret is not None else None
        try:
            peer_id = wire.check_hello(hello, self.cluster, self.members, self.id,
                                       secret=secret is not None)
            if peer_id > self.id:
                raise wire.HelloError(
                    f"node {peer_id} dialed node {self.id}, but the lower id dials")
        except wire.HelloError:
            # Answer a well-formed hello anyway, so the other side can log why.
            await stream.send_all(self._hello_frame(nonce))
            raise
        if len(payloads) > 1 or reader.buffered:
            raise wire.WireError("sent more than a hello before the answer")
        if secret is None:
            await stream.send_all(self._hello)
            return peer_id
        transcript = (peer_id, self.id, hello[4], nonce)  # dialer, acceptor and their nonces
        proof = security.prove(secret, security.ROLE_ACCEPTOR, self.cluster, *transcript)
        await stream.send_all(encode_frames([wire.encode_hello(self.cluster, self.id, nonce),
                                             wire.encode_proof(proof)]))
        payloads = await _receive_frames(stream, reader)
        if payloads is None:
            raise wire.AuthError(f"node {peer_id} closed the connection instead of proving the "
                                 f"cluster secret")
        value = _auth_step(payloads[0], peer_id, "proof", "this node's proof", wire.WireError)
        await self._check_proof(stream, value, security.ROLE_DIALER, transcript)
        if len(payloads) > 1 or reader.buffered:
            raise wire.WireError(f"node {peer_id} sent more than its proof before the answer")
        await stream.send_all(encode_frame(dumps(wire.encode_welcome())))
        return peer_id

    async def _handshake_as_dialer(self, link: PeerLink, stream) -> tuple[FrameReader, list]:
        """The hello (and with the secret, the proofs) on a dialed connection: the reader and
        the protocol payloads already received."""
        secret = self.secret
        nonce = os.urandom(security.NONCE_BYTES) if secret is not None else None
        await stream.send_all(self._hello_frame(nonce))
        reader = FrameReader(self.max_frame)
        payloads = await self._next_frames(stream, reader, [], "the hello")
        hello = loads(payloads[0])
        peer_id = wire.check_hello(hello, self.cluster, self.members, self.id,
                                   secret=secret is not None)
        if peer_id != link.id:
            raise wire.HelloError(f"node {peer_id} answered at the address of node {link.id}")
        if secret is None:
            return reader, payloads[1:]
        transcript = (self.id, peer_id, nonce, hello[4])  # dialer, acceptor and their nonces
        payloads = await self._next_frames(stream, reader, payloads[1:], "authentication")
        value = _auth_step(payloads[0], peer_id, "proof", "the connection", wire.HelloError)
        await self._check_proof(stream, value, security.ROLE_ACCEPTOR, transcript)
        proof = security.prove(secret, security.ROLE_DIALER, self.cluster, *transcript)
        await stream.send_all(encode_frame(dumps(wire.encode_proof(proof))))
        payloads = await self._next_frames(stream, reader, payloads[1:], "authentication")
        _auth_step(payloads[0], peer_id, "welcome", "this node's proof", wire.HelloError)
        return reader, payloads[1:]

    def _hello_frame(self, nonce: bytes | None) -> bytes:
        """This node's hello, framed: with ``nonce`` when it has the cluster secret."""
        if nonce is None:
            return self._hello
        return encode_frame(dumps(wire.encode_hello(self.cluster, self.id, nonce)))

    async def _check_proof(self, stream, proof: bytes, role: bytes, transcript: tuple) -> None:
        """Accept the peer's ``proof`` of the cluster secret (as ``role``, over ``transcript``:
        dialer id, acceptor id, dialer nonce, acceptor nonce), or tell the peer it failed and
        raise AuthError. The one check of a proof, on either side of the handshake."""
        if security.verify(self.secret, proof, role, self.cluster, *transcript):
            return
        peer_id = transcript[0] if role == security.ROLE_DIALER else transcript[1]
        await stream.send_all(encode_frame(dumps(wire.encode_refusal(
            "authentication failed: the proof does not match the cluster secret"))))
        raise wire.AuthError(f"node {peer_id} failed authentication: its proof does not "
                             f"match the cluster secret (auth.secret_file differs?)")

    @staticmethod
    async def _next_frames(stream, reader: FrameReader, payloads: list, during: str) -> list:
        """``payloads`` if there are any, else the next frames from ``stream``."""
        if payloads:
            return payloads
        payloads = await _receive_frames(stream, reader)
        if payloads is None:
            raise trio.BrokenResourceError(f"closed the connection during {during}")
        return payloads

    def _refused(self, where: str, why: str, level: int = logging.ERROR, *,
                 auth: bool = False) -> None:
        """Log a refused inbound connection: once per (host, reason) per REFUSAL_LOG_INTERVAL,
        saying how many more there were since (a misconfigured peer redials every few seconds;
        a scanner may connect as fast as it likes)."""
        if auth:
            self.auth_failures += 1
        unsaid = self._refusals.check((where.rpartition(":")[0] or where, why),
                                      trio.current_time())
        if unsaid is not None:
            more = f" ({unsaid} more like it since the last report)" if unsaid else ""
            self.log.log(level, "peer connection from %s refused: %s%s", where, why, more)

    async def _dial(self, link: PeerLink) -> None:
        backoff = BACKOFF_MIN
        while True:
            address = link.address
            raw = stream = None
            try:
                with trio.fail_after(CONNECT_TIMEOUT + HELLO_TIMEOUT):
                    raw = stream = await trio.open_tcp_stream(address.host, address.port)
                    if self._tls_dialer is not None:
                        stream = trio.SSLStream(raw, self._tls_dialer,
                                                server_hostname=address.host)
                        await stream.do_handshake()
                    reader, payloads = await self._handshake_as_dialer(link, stream)
            except (trio.TooSlowError, FrameError, wire.WireError, *NET_ERRORS) as exc:
                if raw is not None:
                    await trio.aclose_forcefully(raw)
                self._dial_failed(link, exc)
                await trio.sleep(backoff * self._rng.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            except BaseException:
                if raw is not None:
                    await trio.aclose_forcefully(raw)
                raise
            backoff = BACKOFF_MIN
            link._last_refusal = None
            try:
                await self._run_connection(link, stream, reader, payloads)
            finally:
                await trio.aclose_forcefully(stream)
            await trio.sleep(BACKOFF_MIN * self._rng.uniform(0.5, 1.0))

    def _dial_failed(self, link: PeerLink, exc: BaseException) -> None:
        tls = tls_failure(exc)
        if tls is not None:
            exc = wire.AuthError(f"TLS handshake failed: {tls}")
        if isinstance(exc, (wire.WireError, FrameError)):
            if isinstance(exc, wire.AuthError):
                self.auth_failures += 1
            why = f"connection to peer {link.id} at {link.address} refused: {exc}"
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
                self.log.info("peer %d up (%s%s)", link.id, remote_address(stream),
                              ", TLS" if isinstance(stream, trio.SSLStream) else "")
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
        decode = wire.decode_peer_payload
        deliver = self.deliver
        peer_id = link.id
        rx_mark = f"peer_rx{peer_id}"
        try:
            while True:
                if payloads:
                    msgs = []
                    for payload in payloads:
                        msg = decode(payload, members)
                        if msg.sender != peer_id:
                            raise wire.WireError(f"{type(msg).__name__}.sender: expected {peer_id} "
                                                 f"(the peer of this connection), got {msg.sender}")
                        msgs.append(msg)
                    link.received += len(msgs)
                    await deliver(msgs)
                data = await stream.receive_some(RECEIVE_BYTES)
                if TIMELINE:
                    mark(rx_mark)
                if not data:
                    return "connection closed by the peer"
                payloads = reader.feed(data)
        except (FrameError, wire.WireError) as exc:
            self.log.warning("bad frame from peer %d, closing the connection: %s", peer_id, exc)
            return f"bad frame: {exc}"
        except NET_ERRORS as exc:
            return f"connection lost ({exc or type(exc).__name__})"

    async def _send_loop(self, link: PeerLink, stream, scope: trio.CancelScope) -> None:
        queue = link.queue
        max_frame = self.max_frame
        wake_mark, sent_mark = f"peer_tx_wake{link.id}", f"peer_tx_sent{link.id}"
        try:
            while True:
                if not queue:
                    await link._has_work.wait()
                if TIMELINE:
                    mark(wake_mark)
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
                if TIMELINE:
                    mark(sent_mark)
        except NET_ERRORS as exc:
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


_EXPECTED = {"proof": "its proof of the cluster secret", "welcome": "'welcome'"}


def _auth_step(payload: bytes, peer_id: int, expected: str, refusing: str,
               unexpected: type[Exception]):
    """The value of the peer's handshake step ``payload``, which must be ``expected`` ("proof"
    or "welcome"): AuthError if the peer refused instead (``refusing``: what it refused),
    ``unexpected`` if it sent another step."""
    kind, value = wire.decode_auth_step(loads(payload))
    if kind == "refused":
        raise wire.AuthError(f"node {peer_id} refused {refusing}: {value}")
    if kind != expected:
        raise unexpected(f"node {peer_id}: expected {_EXPECTED[expected]}, got {kind!r}")
    return value


def _reason(exc: BaseException) -> str:
    """The innermost OS-level reason (trio wraps "connection refused" in a generic error)."""
    cause = exc.__cause__
    while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    for e in (cause, exc):
        if isinstance(e, OSError) and e.errno:
            return os.strerror(e.errno).lower()
    return str(exc) or type(exc).__name__
