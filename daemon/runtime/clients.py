"""The client port of a node: connections in, requests to the core, replies out.

Each connection has a reader and a writer task. The reader cuts request frames
(``fastpath.FrameReader``, bounded by ``limits.max_frame_bytes``), splits the plain requests
off in one C pass (``fastpath.split_requests``), decodes the rest (``wire.decode_request``)
and hands them on through the callbacks the server gives: commands and reads to ``submit``,
leadership transfers to ``transfer``, membership changes to ``change_members``; "status" is
answered at once. A connection holds at most ``MAX_IN_FLIGHT_PER_CLIENT`` requests not yet
answered (the reader waits), and the port at most ``limits.max_clients`` connections (more
are refused and the refusal logged, once per reason and host per REFUSAL_LOG_INTERVAL). The
writer sends every reply queued since its last write in one ``send_all``, in frames of at most
MAX_REPLIES_PER_FRAME replies; a range reply (up to ``max_frame_bytes / 2``, queued with
``push_alone``) goes in a frame of its own, so no frame outgrows the limit; a watch's changes
come encoded as a frame already (``push_frame``).

With ``client_tls`` the TLS handshake comes first, within CLIENT_HANDSHAKE_TIMEOUT. A client
that breaks the protocol is logged and disconnected; one that half-closes gets its pending
replies for up to CLIENT_DRAIN_TIMEOUT.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import trio

from fastpath import (FrameError, FrameReader, encode_frames, loads, push_replies,
                      split_requests)

from daemon.codec import wire
from daemon.core.expiry import LeaseQuery
from daemon.core.kv import RangeResult
from daemon.core.leases import grant_op, min_ttl, revoke_op
from daemon.core.membership import MEMBERS_KEY
from daemon.core.messages import ERROR, NOT_LEADER, OK, OP_LEASE, OP_TXN
from daemon.runtime.log import Throttle
from daemon.runtime.net import NET_ERRORS, listen, remote_address, tls_failure
from daemon.runtime.security import server_context
from daemon.runtime.timeline import ENABLED as TIMELINE, mark

__all__ = ["ClientConnection", "ClientPort", "queue_replies"]

CLIENT_RECEIVE_BYTES = 256 * 1024
MAX_IN_FLIGHT_PER_CLIENT = 16384  # requests read from one connection but not yet answered
MAX_REPLIES_PER_FRAME = 4096
CLIENT_DRAIN_TIMEOUT = 5.0  # after a client half-closes, how long its pending replies may take
CLIENT_HANDSHAKE_TIMEOUT = 5.0  # seconds for a client's TLS handshake (client_tls)
REFUSAL_LOG_INTERVAL = 60.0  # seconds; a repeated refusal of clients is logged once in it


class ClientConnection:
    """One client connection: replies waiting to be written, and how many requests are open.

    A reply's tag (what the core answers with) is ``(connection, req_id)``; ``push`` queues a
    reply ``[req_id, status, result, leader, revision]`` for the writer, ``push_alone`` one
    that must have a frame of its own (a tuple, so the writer tells it apart)."""

    __slots__ = ("stream", "replies", "outstanding", "closed", "has_replies", "progress",
                 "alone", "watch_bytes")

    def __init__(self, stream) -> None:
        self.stream = stream
        self.replies: list = []
        self.outstanding = 0
        self.closed = False
        self.has_replies = trio.Event()
        self.progress = trio.Event()
        self.alone = 0  # replies queued with push_alone
        self.watch_bytes = 0  # bytes of watch changes queued since the writer last took them

    def push(self, reply: list) -> None:
        self.replies.append(reply)
        self.has_replies.set()

    def push_alone(self, reply: list) -> None:
        self.replies.append(tuple(reply))
        self.alone += 1
        self.has_replies.set()

    def push_frame(self, frame: bytes) -> None:
        """Queue one reply already encoded as a whole frame (a watch's changes, encoded once
        for every watch they go to: daemon.runtime.watches)."""
        self.replies.append(frame)
        self.alone += 1
        self.has_replies.set()


class ClientPort:
    """The client listener of node ``node_id`` and its connections.

    ``submit(work)`` is awaited with each list of ``(is_read, tag, command tuple | key)``;
    ``transfer(tag, node_id)`` and ``change_members(tag, ("add", id, peer, client) |
    ("remove", id))`` with those requests; ``watch(conn, request)`` with "watch" and "unwatch";
    ``status()`` gives the map a "status" request
    answers; ``leader()`` the leader's client address (or None). Run with
    ``nursery.start(run)``: started once the listener is bound.
    """

    def __init__(self, config, node_id: int, log, *,
                 submit: Callable[[list], Awaitable[None]],
                 transfer: Callable[[tuple, int], Awaitable[None]],
                 change_members: Callable[[tuple, tuple], Awaitable[None]],
                 status: Callable[[], dict], leader: Callable[[], str | None],
                 watch: Callable[[tuple, wire.Request], Awaitable[None]] | None = None,
                 snapshots=None) -> None:
        self.config = config
        self.id = node_id
        self.log = log
        self.count = 0  # open connections
        self.tls = (server_context(config, config.client_tls, "client_tls")
                    if config.client_tls is not None else None)
        self._submit = submit
        self._transfer = transfer
        self._change_members = change_members
        self._status = status
        self._leader = leader
        self._watch = watch  # "watch" and "unwatch" requests (daemon.runtime.watches)
        self.snapshots = snapshots  # "snapshot" requests (daemon.runtime.backup)
        self._refusals = Throttle(REFUSAL_LOG_INTERVAL)
        # A shorter TTL is raised to this: a lease must outlive a failover (daemon.core.leases).
        self.min_ttl = min_ttl(config.timing.election_timeout_s)

    @property
    def protection(self) -> str:
        """Whether clients connect over TLS, for the log."""
        if self.tls is None:
            return "off"
        return "on" if self.config.client_tls.ca is None else "on, client certificates required"

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await listen(self.config.member(self.id).client, "clients")
        handler = self._connection
        if self.tls is not None:
            listeners = [trio.SSLListener(listener, self.tls) for listener in listeners]
            handler = self._tls_connection
        await trio.serve_listeners(handler, listeners, task_status=task_status)

    async def _tls_connection(self, stream: trio.SSLStream) -> None:
        """A client_tls connection: the TLS handshake first, then the client protocol."""
        try:
            with trio.fail_after(CLIENT_HANDSHAKE_TIMEOUT):
                await stream.do_handshake()
        except (trio.TooSlowError, *NET_ERRORS) as exc:
            why = (f"none within {CLIENT_HANDSHAKE_TIMEOUT:g} s"
                   if isinstance(exc, trio.TooSlowError) else tls_failure(exc))
            if why is not None:
                self._refused(stream, f"TLS handshake failed: {why}")
            await trio.aclose_forcefully(stream)
            return
        await self._connection(stream)

    def _refused(self, stream, why: str) -> None:
        where = remote_address(stream)
        unsaid = self._refusals.check((where.rpartition(":")[0], why), trio.current_time())
        if unsaid is not None:
            more = f" ({unsaid} more like it since the last report)" if unsaid else ""
            self.log.warning("client connection from %s refused: %s%s", where, why, more)

    async def _connection(self, stream) -> None:
        async with stream:
            if self.count >= self.config.limits.max_clients:
                self._refused(stream, f"already {self.count} clients (limits.max_clients)")
                return
            self.count += 1
            conn = ClientConnection(stream)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, conn, nursery.cancel_scope)
                    if await self._reader(conn):
                        with trio.move_on_after(CLIENT_DRAIN_TIMEOUT):
                            while conn.outstanding:
                                await conn.progress.wait()
                    nursery.cancel_scope.cancel()
            finally:
                conn.closed = True
                self.count -= 1

    async def _reader(self, conn: ClientConnection) -> bool:
        """Read request frames until the client closes (True) or breaks the protocol (False)."""
        reader = FrameReader(self.config.limits.max_frame_bytes)
        stream = conn.stream
        submit = self._submit
        try:
            while True:
                while conn.outstanding >= MAX_IN_FLIGHT_PER_CLIENT:
                    await conn.progress.wait()
                data = await stream.receive_some(CLIENT_RECEIVE_BYTES)
                if TIMELINE:
                    mark("client_read")
                if not data:
                    return True
                for payload in reader.feed(data):
                    frame = loads(payload)
                    if type(frame) is not list:
                        raise wire.WireError(f"client frame: expected an array of requests, "
                                             f"got {type(frame).__name__}")
                    # The plain requests in one C pass (fastpath); the rest one by one.
                    work, rest = split_requests(frame, conn, wire.CLIENT_OPCODES)
                    conn.outstanding += len(work)
                    for obj in rest:
                        conn.outstanding += 1
                        await self._request(conn, obj, work)
                    if work:
                        await submit(work)
        except (FrameError, wire.WireError) as exc:
            self.log.warning("closing client connection %s: %s", remote_address(stream), exc)
            return False
        except NET_ERRORS:
            return False

    async def _request(self, conn: ClientConnection, obj, work: list) -> None:
        """One request the C pass left: answered here, handed on, or added to ``work``."""
        try:
            req = wire.decode_request(obj)
        except wire.BadRequest as exc:
            conn.push([exc.req_id, ERROR, str(exc), self._leader(), None])
            return
        op = req.op
        tag = (conn, req.req_id)
        if op == "get":
            work.append((True, tag, req.key))
        elif op == "range":
            work.append((True, tag, wire.range_query(req)))
        elif op == "status":
            status = self._status()
            conn.push([req.req_id, OK, status, self._leader(), status.get("revision")])
        elif op == "transfer":
            await self._transfer(tag, req.client_id)
        elif op == "member_add":
            await self._change_members(tag, ("add", req.client_id, req.key.decode(),
                                             req.arg1.decode()))
        elif op == "member_remove":
            await self._change_members(tag, ("remove", req.client_id))
        elif op in wire.WATCH_OPS:
            if self._watch is None:
                conn.push([req.req_id, ERROR, "this port serves no watches", self._leader(), None])
            else:
                await self._watch(conn, req)
        elif op == "txn":  # arg1: the transaction's CBOR (wire.decode_request made it)
            work.append((False, tag, (req.client_id, req.seq, OP_TXN, b"", req.arg1, None)))
        elif op == "snapshot":
            self._snapshot(conn, req, work)
        elif op in wire.LEASE_READS:  # the leader's clock answers, after a read-index round
            work.append((True, tag, LeaseQuery(op.removeprefix("lease_"), req.arg1)))
        elif op in wire.LEASE_WRITES:
            blob = (grant_op(max(req.arg1, self.min_ttl)) if op == "lease_grant"
                    else revoke_op(req.arg1))
            work.append((False, tag, (req.client_id, req.seq, OP_LEASE, b"", blob, None)))
        else:
            work.append((False, tag, (req.client_id, req.seq, wire.CLIENT_OPCODES[op], req.key,
                                      req.arg1, req.arg2)))

    def _snapshot(self, conn: ClientConnection, req: wire.Request, work: list) -> None:
        """A "snapshot" request: a new one starts as a linearizable read (of the membership
        key) whose reply the SnapshotSink takes; a chunk of a kept one is answered at once."""
        if self.snapshots is None:
            conn.push([req.req_id, ERROR, "this port serves no snapshots", self._leader(), None])
        elif req.arg1 is None:
            work.append((True, (self.snapshots.sink(conn), req.req_id), MEMBERS_KEY))
        else:
            conn.push_alone(self.snapshots.chunk(req.req_id, req.arg1, req.seq, self._leader()))

    async def _writer(self, conn: ClientConnection, scope: trio.CancelScope) -> None:
        stream = conn.stream
        try:
            while True:
                if not conn.replies:
                    await conn.has_replies.wait()
                if TIMELINE:
                    mark("client_writer_wake")
                conn.has_replies = trio.Event()
                replies, conn.replies = conn.replies, []
                conn.watch_bytes = 0
                if not replies:
                    continue
                if conn.alone:
                    conn.alone = 0
                    data = _encode_apart(_frames_apart(replies))
                elif len(replies) <= MAX_REPLIES_PER_FRAME:
                    data = encode_frames((replies,))
                else:
                    data = encode_frames([replies[i:i + MAX_REPLIES_PER_FRAME]
                                          for i in range(0, len(replies), MAX_REPLIES_PER_FRAME)])
                await stream.send_all(data)
                if TIMELINE:
                    mark("client_written")
                conn.outstanding -= len(replies)
                conn.progress.set()
                conn.progress = trio.Event()
        except NET_ERRORS:
            scope.cancel()


def queue_replies(replies: list, address: dict, current: str | None,
                  applied_revision: int) -> None:
    """Queue each ``Reply`` on its connection (the tag's first item), in order; none on a
    closed one. Its leader field says ``current`` (the leader's client address), or for NOT_LEADER
    the client address ``address`` maps the reply's leader id to; a reply that reflects no
    state (revision None) says ``applied_revision``; a range's result goes in a frame of its
    own. The common replies go in one C loop (fastpath.push_replies), the rest here."""
    i, n = 0, len(replies)
    while i < n:
        i = push_replies(replies, i, ClientConnection, RangeResult, NOT_LEADER, current,
                         applied_revision)
        if i < n:
            _queue_reply(replies[i], address, current, applied_revision)
            i += 1


def _queue_reply(reply, address: dict, current: str | None, applied_revision: int) -> None:
    """One reply as ``queue_replies`` says, the general way."""
    conn, req_id = reply.req
    if conn.closed:
        return
    status = reply.status
    leader = address.get(reply.leader) if status == NOT_LEADER else current
    revision = reply.revision
    result = reply.result
    if type(result) is RangeResult:
        conn.push_alone([req_id, status, wire.encode_range_result(result), leader, revision])
        return
    conn.push([req_id, status, result, leader,
               applied_revision if revision is None else revision])


def _frames_apart(replies: list) -> list:
    """``replies`` in frames of at most MAX_REPLIES_PER_FRAME, each ``push_alone`` reply (a
    tuple) in a frame of its own; a ``push_frame`` reply (bytes) is a frame already."""
    frames: list = []
    run: list = []
    for reply in replies:
        if type(reply) is tuple or type(reply) is bytes:
            if run:
                frames.append(run)
                run = []
            frames.append([reply] if type(reply) is tuple else reply)
        else:
            run.append(reply)
            if len(run) == MAX_REPLIES_PER_FRAME:
                frames.append(run)
                run = []
    if run:
        frames.append(run)
    return frames


def _encode_apart(frames: list) -> bytes:
    """The bytes of ``frames`` (``_frames_apart``'s): the encoded ones as they are, the others
    encoded, as few calls as the order allows."""
    parts: list = []
    run: list = []
    for frame in frames:
        if type(frame) is bytes:
            if run:
                parts.append(encode_frames(run))
                run = []
            parts.append(frame)
        else:
            run.append(frame)
    if run:
        parts.append(encode_frames(run))
    return parts[0] if len(parts) == 1 else b"".join(parts)
