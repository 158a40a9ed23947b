"""The paxosd client library (trio), and a small synchronous wrapper.

    async with Client.connect(["127.0.0.1:7001", "127.0.0.1:7002"]) as client:
        await client.put("k", "v")
        assert await client.get("k") == b"v"
        listing = await client.range("services/", prefix=True)  # kvs, count, more, revision

    with SyncClient(["127.0.0.1:7001"]) as client:
        client.put(b"k", b"v")

The wire protocol: frames are a 4-byte big-endian length and a CBOR payload. A client frame is
an array of requests ``[req_id, op, client_id, seq, key, arg1, arg2]``; a server frame is an
array of replies ``[req_id, status, result, leader, revision]``, in any order (see
daemon.codec.wire for "range" and the rest). Many requests are in flight
per connection: one reader task per connection routes replies to their callers by ``req_id``,
and one sender task writes whatever the callers queued since its last write as one frame.

What the library promises:

- Leader discovery: a call goes to the node believed to lead (at first, the endpoints in turn),
  follows ``not_leader`` redirects, reconnects after a lost connection, and backs off (capped,
  jittered) on ``busy`` or while no leader is known, until the call's deadline.
- At-most-once writes: a write keeps the same session ``(client_id, seq)`` through every retry,
  so the cluster applies it at most once. A session carries one write at a time; concurrent
  writes each take a session from a pool that grows on demand.
- When a write's deadline passes after it may have reached a node, the library cannot know
  whether it was applied and says so with ``OutcomeUnknown``; it never reports such a write as
  failed. Reads are retried freely.

For a cluster whose client port uses TLS (``client_tls``), pass ``ssl_context``, e.g.
``daemon.runtime.security.client_context(cacert="ca.pem", cert="me.pem", key="me-key.pem")``: the
server's certificate must chain to the CA and name the host of the endpoint dialed.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import secrets
import ssl
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from fastpath import DEFAULT_MAX_FRAME, FrameError, FrameReader, dumps, encode_frames, loads

from daemon.codec.wire import (
    MAX_PORT,
    MAX_RANGE_LIMIT,
    RANGE_COUNT_ONLY,
    RANGE_KEYS_ONLY,
    ClientReply,
    WireError,
    decode_range_result,
    decode_reply,
    encode_request,
)
from daemon.core.kv import prefix_end
from daemon.core.messages import BUSY, ERROR, NOT_LEADER, OK, SESSION_EXPIRED, STALE

__all__ = [
    "DEFAULT_ATTEMPT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "Client",
    "KeyValue",
    "NoLeader",
    "OperationFailed",
    "OutcomeUnknown",
    "PaxosdError",
    "RangeResponse",
    "SessionExpired",
    "SyncClient",
    "Unavailable",
    "format_address",
    "parse_endpoint",
]

# A write whose session is refused as expired starts it again above the horizon at most this
# many times (each refusal means another session was evicted meanwhile).
MAX_SESSION_RESTARTS = 3

DEFAULT_TIMEOUT = 5.0
# One attempt waits at most this long for its reply before the call tries the other endpoints:
# a leader that is paused (SIGSTOP, a stuck disk) keeps its TCP connections open.
DEFAULT_ATTEMPT_TIMEOUT = 2.0
# Dialing one endpoint gives up after this long, so a black-holed host does not eat a deadline.
DIAL_TIMEOUT = 1.0
# Backoff between retries: BACKOFF_BASE * 2**k, capped, times a random factor in [0.5, 1].
BACKOFF_BASE = 0.005
BACKOFF_CAP = 0.1
# The sender splits what is queued into frames of at most this many requests or bytes.
MAX_FRAME_REQUESTS = 4096
MAX_FRAME_PAYLOAD = 4 * 1024 * 1024
RECEIVE_CHUNK = 256 * 1024
MAX_CLIENT_ID = 2**63 - 1


# ---------------------------------------------------------------------------------------------
# Errors.


class PaxosdError(Exception):
    """Base class of every error the client library raises."""


class Unavailable(PaxosdError):
    """No endpoint could be reached before the deadline; nothing was sent."""


class NoLeader(Unavailable):
    """Endpoints answered, but none of them was the leader before the deadline.

    For a read this is final: it was not served. A write that reached a node is never reported
    with this error (see ``OutcomeUnknown``).
    """


class OutcomeUnknown(PaxosdError):
    """A write's deadline passed after the write may have reached a node.

    It may or may not have been applied, and it may still be applied later. It is applied at
    most once, whatever happens.
    """


class OperationFailed(PaxosdError):
    """The cluster answered the request with an error (``error`` or ``stale``)."""


class SessionExpired(OperationFailed):
    """The cluster evicted the write's session (``client_id``), so it refused the write
    without applying it. A session that sent nothing since may start again at seq
    ``horizon + 1``; ``Client``'s own writes do that by themselves."""

    def __init__(self, message: str, horizon: int) -> None:
        super().__init__(message)
        self.horizon = horizon


class _ConnectionLost(Exception):
    """Internal: the connection carrying a request went away before its reply came."""


class _DialFailed(_ConnectionLost):
    """Internal: no connection could be opened to the endpoint."""


# ---------------------------------------------------------------------------------------------
# Addresses.


def parse_endpoint(endpoint: str | tuple[str, int] | Sequence) -> tuple[str, int]:
    """``"host:port"``, ``"[v6addr]:port"`` or ``(host, port)`` as ``(host, port)``.

    ValueError, naming the endpoint, for anything else.
    """
    if isinstance(endpoint, str):
        host, sep, port_text = endpoint.strip().rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= MAX_PORT:
            raise ValueError(
                f"endpoint {endpoint!r}: expected host:port with a port from 1 to {MAX_PORT}")
        return host, int(port_text)
    if isinstance(endpoint, (tuple, list)) and len(endpoint) == 2:
        host, port = endpoint
        if isinstance(host, str) and host and isinstance(port, int) and 1 <= port <= MAX_PORT:
            return host, port
    raise ValueError(f"endpoint {endpoint!r}: expected 'host:port' or (host, port)")


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _canonical(endpoint: Any) -> str:
    return format_address(*parse_endpoint(endpoint))


def _as_bytes(value: str | bytes | bytearray | memoryview, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be str or bytes, got {type(value).__name__}")


def _range_end(start: bytes, range_end, prefix: bool, what: str) -> bytes | None:
    """Where a range from ``start`` ends (None: ``start`` alone; b"": no end); ``what``
    begins the error's message."""
    if prefix:
        if range_end is not None:
            raise ValueError(f"{what}give range_end or prefix, not both")
        return prefix_end(start)
    return None if range_end is None else _as_bytes(range_end, "range_end")


def _range_flags(keys_only: bool, count_only: bool) -> int:
    return (RANGE_KEYS_ONLY if keys_only else 0) | (RANGE_COUNT_ONLY if count_only else 0)


def _range_response(decoded, revision: int | None) -> "RangeResponse":
    """A decoded ``[kvs, count, more]`` range result as a RangeResponse."""
    kvs, count, more = decoded
    return RangeResponse([KeyValue(*entry) for entry in kvs], count, more, revision)


def _arg_size(arg) -> int:
    """The encoded size of a request argument: its length for bytes (the common case, cheap),
    the CBOR's for anything else (a transaction's lists, a lease's integer)."""
    if type(arg) is bytes:
        return len(arg)
    return 0 if arg is None else len(dumps(arg))


def _dial_reason(exc: OSError) -> str:
    """Why a dial failed, in the words of the underlying error ("Connection refused").

    trio.open_tcp_stream raises "all attempts to connect to ... failed" from a group of the
    per-address errors; the first of those is the one worth showing.
    """
    cause = exc.__cause__
    while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    for error in (cause, exc):
        if isinstance(error, OSError) and error.errno:
            return os.strerror(error.errno)
    return exc.strerror or str(exc)


def _stream_error(exc: BaseException) -> str:
    """What broke a stream: trio wraps a TLS alert (the server refused our certificate) in a
    BrokenResourceError whose own text is empty."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return f"TLS: {cause.reason or cause}"
    return str(exc) or (str(cause) if cause is not None else "") or type(exc).__name__


def _backoff(attempt: int) -> float:
    return min(BACKOFF_CAP, BACKOFF_BASE * 2**min(attempt, 16)) * random.uniform(0.5, 1.0)


# ---------------------------------------------------------------------------------------------
# One connection: a sender that coalesces, a reader that routes replies by req_id.


class _Waiter:
    __slots__ = ("event", "reply", "error", "sent")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reply: ClientReply | None = None
        self.error: BaseException | None = None
        self.sent = False  # handed to the socket (the server may have it)


class _Connection:
    """A client connection to one node. ``run`` is its background task."""

    def __init__(self, address: str, stream: trio.SocketStream, max_frame: int) -> None:
        self.address = address
        self.stream = stream
        self.reader = FrameReader(max_frame)
        self.waiting: dict[int, _Waiter] = {}
        self.outbox: list[tuple[list, _Waiter]] = []
        self.has_work = trio.Event()
        self.scope = trio.CancelScope()
        self.closed = False
        self.reason = ""
        # req_id -> the callback of a request answered by a stream of replies (a watch,
        # daemon.client.watch): called with each reply, and with None when the connection is lost.
        self.streams: dict[int, Any] = {}

    def open_stream(self, req: list, on_reply) -> None:
        """Send ``req`` and hand each reply to its req_id to ``on_reply`` (None: the connection
        is lost), until ``streams.pop(req_id)``."""
        if self.closed:
            raise _ConnectionLost(f"{self.address}: {self.reason}")
        self.streams[req[0]] = on_reply
        self.outbox.append((req, _Waiter()))
        self.has_work.set()

    async def request(self, req: list, waiter: _Waiter) -> ClientReply:
        """Send ``req`` and wait for its reply; _ConnectionLost if the connection dies first.

        If the caller is cancelled before the sender took the request, it is withdrawn and
        ``waiter.sent`` stays False: the server never saw it.
        """
        if self.closed:
            raise _ConnectionLost(f"{self.address}: {self.reason}")
        req_id = req[0]
        self.waiting[req_id] = waiter
        entry = (req, waiter)
        self.outbox.append(entry)
        self.has_work.set()
        try:
            await waiter.event.wait()
        finally:
            self.waiting.pop(req_id, None)
            if not waiter.sent:
                try:
                    self.outbox.remove(entry)
                except ValueError:
                    pass
        if waiter.error is not None:
            raise waiter.error
        return waiter.reply  # type: ignore[return-value]

    async def run(self) -> None:
        """Send and receive until the connection fails or is closed; never raises."""
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_loop)
                    await self._receive_loop()
                    nursery.cancel_scope.cancel()
        finally:
            self._fail(self.reason or "connection closed")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)

    def close(self, reason: str = "connection closed by the client") -> None:
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.reason = reason
        self.scope.cancel()
        waiting, self.waiting = self.waiting, {}
        error = _ConnectionLost(f"{self.address}: {self.reason}")
        for waiter in waiting.values():
            if waiter.error is None and waiter.reply is None:
                waiter.error = error
                waiter.event.set()
        self.outbox.clear()
        streams, self.streams = self.streams, {}
        for on_reply in streams.values():
            on_reply(None)

    async def _send_loop(self) -> None:
        try:
            while True:
                self.has_work = trio.Event()
                if not self.outbox:
                    await self.has_work.wait()
                taken, self.outbox = self.outbox, []
                frames = []
                batch: list = []
                size = 0
                for req, waiter in taken:
                    waiter.sent = True
                    batch.append(req)
                    size += 32 + _arg_size(req[4]) + _arg_size(req[5]) + _arg_size(req[6])
                    if len(batch) >= MAX_FRAME_REQUESTS or size >= MAX_FRAME_PAYLOAD:
                        frames.append(batch)
                        batch, size = [], 0
                if batch:
                    frames.append(batch)
                await self.stream.send_all(encode_frames(frames))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(f"send failed: {_stream_error(exc)}")
        except Exception as exc:  # a bug or an unencodable request: fail loudly, not silently
            self._fail(f"send failed: {type(exc).__name__}: {exc}")

    async def _receive_loop(self) -> None:
        try:
            while True:
                data = await self.stream.receive_some(RECEIVE_CHUNK)
                if not data:
                    self._fail("connection closed by the server")
                    return
                for payload in self.reader.feed(data):
                    self._dispatch(loads(payload))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(f"receive failed: {_stream_error(exc)}")
        except (FrameError, WireError, _ProtocolViolation) as exc:
            self._fail(f"protocol error from the server: {exc}")
        except Exception as exc:
            self._fail(f"receive failed: {type(exc).__name__}: {exc}")

    def _dispatch(self, replies: Any) -> None:
        if not isinstance(replies, list):
            raise _ProtocolViolation(f"expected an array of replies, got {type(replies).__name__}")
        for obj in replies:
            reply = decode_reply(obj)  # WireError naming the field for a malformed one
            stream = self.streams.get(reply.req_id)
            if stream is not None:
                stream(reply)
                continue
            waiter = self.waiting.pop(reply.req_id, None)
            if waiter is not None:  # else: a request its caller gave up on
                waiter.reply = reply
                waiter.event.set()


class _ProtocolViolation(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Results.


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as a range read found it (value None with keys_only)."""

    key: bytes
    value: bytes | None
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class RangeResponse:
    """What ``Client.range`` found: ``kvs`` in key order, ``count`` (the keys in the range,
    whatever the limit), ``more`` (keys follow the last one given) and ``revision`` (the
    store revision it was read at)."""

    kvs: list[KeyValue]
    count: int
    more: bool
    revision: int | None


# ---------------------------------------------------------------------------------------------
# Sessions.


class _Session:
    """``(client_id, seq)``: the cluster applies each seq of a client at most once."""

    __slots__ = ("client_id", "seq")

    def __init__(self) -> None:
        self.client_id = secrets.randbelow(MAX_CLIENT_ID) + 1  # random, nonzero, 63 bits
        self.seq = 0


# ---------------------------------------------------------------------------------------------
# The client.


@dataclass(slots=True)
class _Call:
    """One call's progress over its attempts (Client._call)."""

    op: str
    client_id: int
    seq: int
    write: bool
    address: str | None  # the node the call is pinned to (status), or None
    timeout: float
    deadline: float
    attempt_timeout: float  # how long one attempt waits for its reply
    attempt: int = 0
    maybe_sent: bool = False  # some attempt may have reached a node
    answered: bool = False  # some node answered, but not with the operation's outcome
    problem: str | None = None  # the last thing that went wrong, for the error message
    dial_failed: bool = False  # ... and it was that no connection could be opened
    closed: bool = False  # the client was closed under the call


class _ClusterOps:
    """The cluster operations of ``Client`` (status, leadership, membership): a class of their
    own so that each class stays one screenful of concerns. They use ``Client._call``."""

    async def status(self, endpoint: str | tuple[str, int] | None = None, *,
                     timeout: float | None = None) -> dict:
        """One node's status map (the node at ``endpoint``, default the leader or any node),
        with ``"endpoint"`` added: the address that answered."""
        address = None if endpoint is None else _canonical(endpoint)
        reply, answered_by = await self._call("status", b"", None, None, 0, 0, timeout, False,
                                              address)
        result = reply.result
        if not isinstance(result, dict):
            raise OperationFailed(f"status: the server returned {result!r:.100}, expected a map")
        return {**result, "endpoint": answered_by}

    async def transfer_leader(self, node_id: int, *, timeout: float | None = None) -> None:
        """Ask the leader to hand leadership to ``node_id`` and wait until it has: the leader
        lets its slots in flight be chosen, then the target stands at once."""
        await self._call("transfer", b"", None, None, node_id, 0, timeout, False)
        deadline = trio.current_time() + (self.timeout if timeout is None else timeout)
        while trio.current_time() < deadline:
            rows = await self.cluster_status(timeout=max(0.1, min(1.0, deadline - trio.current_time())))
            if any(r.get("id") == node_id and r.get("role") == "leader" for r in rows):
                self.leader = None  # rediscover on the next call
                return
            await trio.sleep(0.02)
        raise OperationFailed(f"node {node_id} did not take over leadership in time")

    async def member_add(self, node_id: int, peer: str, client: str, *,
                         timeout: float | None = None) -> None:
        """Add node ``node_id`` (peers dial it at ``peer``, clients at ``client``, both
        "host:port"): it joins as a learner, and the leader makes it a voter once it has
        caught up. Returns once the configuration with the learner is chosen."""
        try:
            await self._call("member_add", peer.encode(), client.encode(), None, node_id, 0,
                             timeout, False)
        except OperationFailed as exc:
            # A retry of an add that was chosen meanwhile is told the member exists.
            if "already a member" not in str(exc) or not await self._is_member(
                    node_id, (peer, client), timeout):
                raise

    async def member_remove(self, node_id: int, *, timeout: float | None = None) -> None:
        """Remove member ``node_id`` (the leader asked to remove itself hands leadership over
        first; the request then follows it). Returns once the configuration is chosen."""
        try:
            await self._call("member_remove", b"", None, None, node_id, 0, timeout, False)
        except OperationFailed as exc:
            if "is not a member" not in str(exc) or await self._is_member(node_id, None, timeout):
                raise

    async def members(self, *, timeout: float | None = None) -> dict:
        """The membership as the leader (or any node) knows it: ``{"members": [{"id", "peer",
        "client", "voter", "incarnation"}, ...], "effective": slot, "yaml_members": [ids],
        "endpoint": who answered}``."""
        st = await self.status(timeout=timeout)
        return {"members": [dict(zip(("id", "peer", "client", "voter", "incarnation"), m))
                            for m in st.get("members", [])],
                "effective": st.get("members_effective"),
                "yaml_members": st.get("yaml_members"), "endpoint": st["endpoint"]}

    async def _is_member(self, node_id: int, addresses, timeout) -> bool:
        for m in (await self.members(timeout=timeout))["members"]:
            if m["id"] == node_id:
                return addresses is None or (m["peer"], m["client"]) == tuple(addresses)
        return False

    async def cluster_status(self, *, timeout: float | None = None) -> list[dict]:
        """The status of every endpoint, asked concurrently, in endpoint order.

        An endpoint that does not answer in time is ``{"endpoint": address, "error": message}``.
        """
        results: list[dict] = [{} for _ in self.endpoints]

        async def ask(i: int, address: str) -> None:
            try:
                results[i] = await self.status(address, timeout=timeout)
            except PaxosdError as exc:
                results[i] = {"endpoint": address, "error": str(exc)}

        async with trio.open_nursery() as nursery:
            for i, address in enumerate(self.endpoints):
                nursery.start_soon(ask, i, address)
        return results


class _CoordinationOps:
    """The coordination calls of ``Client`` (range deletes, leases, locks, watch), each a thin
    door to the module that does the work (daemon.client.txn, leases, lock, watch): a class of
    their own, as _ClusterOps, so that each class stays one screenful of concerns."""

    async def delete_range(self, key: str | bytes, range_end: str | bytes | None = None, *,
                           prefix: bool = False, timeout: float | None = None) -> int:
        """Remove the keys in ``[key, range_end)`` (or that start with ``key``, ``prefix``) as
        one write; the count removed."""
        from daemon.client.txn import delete, run_txn  # it builds on this module
        response = await run_txn(self, [], [delete(key, range_end, prefix=prefix)], [], timeout)
        return response.results[0]

    async def lease_grant(self, ttl: int, *, timeout: float | None = None):
        """Grant a lease of ``ttl`` seconds; its Lease (id, ttl as granted)."""
        from daemon.client import leases  # it builds on this module
        return await leases.grant(self, ttl, timeout)

    async def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> bool:
        """End the lease and delete its keys; False if it was already gone."""
        from daemon.client import leases
        return await leases.revoke(self, lease_id, timeout)

    async def lease_keepalive(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Renew the lease for its TTL (returned); LeaseNotFound if it is gone."""
        from daemon.client import leases
        return await leases.keepalive(self, lease_id, timeout)

    async def lease_ttl(self, lease_id: int, *, timeout: float | None = None):
        """The lease's LeaseStatus (TTL, seconds left, keys); LeaseNotFound if it is gone."""
        from daemon.client import leases
        return await leases.time_to_live(self, lease_id, timeout)

    def lock(self, name: str | bytes, *, ttl: int = 10, timeout: float | None = None):
        """An async context manager: the lock ``name`` acquired (waiting in line as long as
        it takes), held while the block runs, released after; yields a HeldLock whose
        ``fence`` guards writes (see daemon.client.lock). ``ttl``: its lease's, the time a
        holder that died keeps the lock."""
        from daemon.client.lock import hold
        return hold(self, name, ttl, timeout)

    def lease(self, ttl: int, *, timeout: float | None = None):
        """An async context manager: a lease granted, kept alive while the block runs and
        revoked at its end (see daemon.client.leases)."""
        from daemon.client import leases
        return leases.keep(self, ttl, timeout)

    def watch(self, key: str | bytes, range_end: str | bytes | None = None, *,
              prefix: bool = False, start_revision: int = 0, prev_kv: bool = False):
        """The changes of the keys ``range`` would read for the same arguments, from revision
        ``start_revision`` on (0: the next one), as an async iterator of daemon.client.watch's
        WatchEvent (use ``async with client.watch(...) as events``); see that module."""
        from daemon.client.watch import Watch  # it builds on this module
        return Watch(self, _as_bytes(key, "key"), range_end, prefix, start_revision, prev_kv)


class Client(_ClusterOps, _CoordinationOps):
    """A trio client of a paxosd cluster.

    Use ``async with Client.connect(endpoints) as client`` (its background tasks live in a
    nursery of its own), or ``client = await Client.connect(endpoints)`` and ``await
    client.aclose()`` (its background tasks are trio system tasks, ended by ``aclose`` or by
    the end of ``trio.run``). ``Client(endpoints)`` makes a client without contacting anyone.

    Every method takes ``timeout`` (seconds, default the client's): the deadline of the whole
    call, retries included. Keys and values are str (encoded as UTF-8) or bytes; values come
    back as bytes.
    """

    def __init__(
        self,
        endpoints: Iterable[str | tuple[str, int]],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        max_frame: int = DEFAULT_MAX_FRAME,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoints: list[str] = []
        for endpoint in endpoints:
            address = _canonical(endpoint)
            if address not in self.endpoints:
                self.endpoints.append(address)
        if not self.endpoints:
            raise ValueError("a client needs at least one endpoint")
        if not timeout > 0 or not attempt_timeout > 0:
            raise ValueError("timeout and attempt_timeout must be positive")
        self.timeout = float(timeout)
        self.attempt_timeout = float(attempt_timeout)
        self.max_frame = max_frame
        self.ssl_context = ssl_context  # None: plain TCP
        self.leader: str | None = None  # the address believed to lead
        self.revision = 0  # the highest store revision a reply has named
        self._next_endpoint = 0
        self._connections: dict[str, _Connection] = {}
        self._dialing: dict[str, trio.Event] = {}
        self._dial_errors: dict[str, str] = {}
        self._req_ids = itertools.count(1)
        self._sessions: list[_Session] = []
        self._nursery: trio.Nursery | None = None
        self._closed = False

    # -------------------------------------------------------------------------- lifecycle

    @classmethod
    def connect(
        cls, endpoints: Iterable[str | tuple[str, int]], timeout: float = DEFAULT_TIMEOUT, **kwargs
    ) -> _Connecting:
        """A client connected to one of ``endpoints`` (Unavailable if none answers in time).

        Await it, or use it as an async context manager.
        """
        return _Connecting(cls(endpoints, timeout=timeout, **kwargs))

    async def __aenter__(self) -> Client:
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        return self

    async def __aexit__(self, *exc_info) -> bool:
        try:
            await self.aclose()
        finally:
            # Even when aclose is cancelled (its checkpoint raises Cancelled in a cancelled
            # scope), the nursery must be exited, or trio's task tree is left corrupted.
            nursery_manager, self._nursery = self._nursery_manager, None
            # The background tasks never raise and aclose has cancelled them, so the nursery
            # only waits for them to end. The body's own exception is not handed to the
            # nursery: it propagates as itself, not wrapped in an ExceptionGroup.
            await nursery_manager.__aexit__(None, None, None)
        return False

    async def aclose(self) -> None:
        """Close every connection. Calls still running fail; the client cannot be reused."""
        self._closed = True
        for connection in list(self._connections.values()):
            connection.close()
        self._connections.clear()
        await trio.lowlevel.checkpoint()

    async def _probe(self) -> None:
        """Open a connection to the first endpoint that accepts one (tried in turn)."""
        deadline = trio.current_time() + self.timeout
        attempt = 0
        with trio.move_on_at(deadline):
            while True:
                for _ in self.endpoints:
                    address = self._target()
                    try:
                        await self._connection(address)
                        return
                    except _ConnectionLost:
                        self._forget(address)
                await trio.sleep(_backoff(attempt))
                attempt += 1
        raise Unavailable(self._unreachable_message(self.timeout))

    # -------------------------------------------------------------------------- operations

    async def put(self, key: str | bytes, value: str | bytes, *, lease: int = 0,
                  fence: tuple | None = None, timeout: float | None = None) -> int | None:
        """Set ``key`` to ``value`` (attached to ``lease``, if not 0: see daemon.client.leases;
        LeaseNotFound if it is gone); returns the revision of the write (None from a server
        before revisions). With ``fence`` (a held lock's ``(key, revision)``: see
        daemon.client.lock), only while that lock has not moved on (else FencedOut)."""
        if fence is not None:
            from daemon.client.lock import fenced_write
            from daemon.client.txn import put
            op = put(key, value, lease)
            return (await fenced_write(self, fence, [op], timeout)).revision
        if lease:
            from daemon.client.leases import put_leased  # it builds on this module
            return await put_leased(self, key, value, lease, timeout)
        return (await self._write("put", key, _as_bytes(value, "value"), None, timeout)).revision

    async def get(self, key: str | bytes, *, timeout: float | None = None,
                  endpoint: str | tuple[str, int] | None = None) -> bytes | None:
        """The value of ``key`` (linearizable), or None when it is absent. ``endpoint``: read
        through that node only (no redirects: it must lead)."""
        address = None if endpoint is None else _canonical(endpoint)
        reply, _ = await self._call("get", _as_bytes(key, "key"), None, None, 0, 0, timeout,
                                    False, address)
        result = reply.result
        if result is not None and not isinstance(result, bytes):
            raise OperationFailed(
                f"get: the server returned {result!r:.100}, expected bytes or null")
        return result

    async def delete(self, key: str | bytes, *, fence: tuple | None = None,
                     timeout: float | None = None) -> bool:
        """Remove ``key``; True if it existed. ``fence``: as for ``put``."""
        if fence is not None:
            from daemon.client.lock import fenced_write
            from daemon.client.txn import delete
            return bool((await fenced_write(self, fence, [delete(key)], timeout)).results[0])
        return bool((await self._write("delete", key, None, None, timeout)).result)

    async def cas(
        self,
        key: str | bytes,
        expected: str | bytes | None,
        new: str | bytes,
        *,
        timeout: float | None = None,
    ) -> bool:
        """Set ``key`` to ``new`` if its value is ``expected`` (None: if it is absent).

        True if the swap happened.
        """
        old = None if expected is None else _as_bytes(expected, "expected")
        return bool((await self._write("cas", key, old, _as_bytes(new, "new"), timeout)).result)

    async def range(
        self,
        key: str | bytes,
        range_end: str | bytes | None = None,
        *,
        prefix: bool = False,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        timeout: float | None = None,
    ) -> RangeResponse:
        """The keys in ``[key, range_end)`` (``range_end`` None: ``key`` alone; b"": every key
        from ``key`` on; ``prefix``: every key that starts with ``key``), in key order, read
        linearizably, with their revisions. At most ``limit`` of them (0: no limit), and no
        more than fit in one reply: ``more`` says whether the range holds keys after the last
        one given (continue from ``kvs[-1].key + b"\\x00"``). ``keys_only`` leaves the values
        out (None), ``count_only`` the keys too (only ``count``)."""
        start = _as_bytes(key, "key")
        end = _range_end(start, range_end, prefix, "range: ")
        if type(limit) is not int or not 0 <= limit <= MAX_RANGE_LIMIT:
            raise ValueError(f"range: limit must be an integer in [0, {MAX_RANGE_LIMIT}], "
                             f"got {limit!r}")
        flags = _range_flags(keys_only, count_only)
        reply, target = await self._call("range", start, end, None, limit, flags, timeout, False)
        try:
            decoded = decode_range_result(reply.result)
        except WireError as exc:
            raise OperationFailed(f"range: {target}: {exc}") from None
        return _range_response(decoded, reply.revision)

    async def txn(self, compares, success, failure=(), *,
                  timeout: float | None = None):
        """Apply the transaction: if every compare holds, the ``success`` ops, else the
        ``failure`` ops, as one write (one revision, at most once). Build the compares and ops
        with daemon.client.txn's helpers; returns its TxnResponse."""
        from daemon.client.txn import run_txn  # it builds on this module
        return await run_txn(self, compares, success, failure, timeout)

    async def submit(
        self,
        op: str,
        key: str | bytes,
        arg1: str | bytes | None = None,
        arg2: str | bytes | None = None,
        *,
        client_id: int,
        seq: int,
        timeout: float | None = None,
    ) -> Any:
        """The low-level call: send one request under the session ``(client_id, seq)`` the
        caller manages, with the same leader discovery, retries and errors as the methods
        above. Returns the operation's result."""
        write = op in ("put", "delete", "cas")
        a1 = None if arg1 is None else _as_bytes(arg1, "arg1")
        a2 = None if arg2 is None else _as_bytes(arg2, "arg2")
        reply, _ = await self._call(op, _as_bytes(key, "key"), a1, a2, client_id, seq, timeout,
                                    write)
        return reply.result

    # -------------------------------------------------------------------------- machinery

    async def _write(self, op: str, key: Any, arg1: bytes | None, arg2: bytes | None,
                     timeout: float | None, session: tuple[int, int] | None = None
                     ) -> ClientReply:
        if session is not None:  # the caller's own (client_id, seq), as is: see submit
            reply, _ = await self._call(op, _as_bytes(key, "key"), arg1, arg2, *session,
                                        timeout, True)
            return reply
        session = self._sessions.pop() if self._sessions else _Session()
        session.seq += 1
        try:
            for restart in range(MAX_SESSION_RESTARTS + 1):
                try:
                    reply, _ = await self._call(op, _as_bytes(key, "key"), arg1, arg2,
                                                session.client_id, session.seq, timeout, True)
                    return reply
                except SessionExpired as exc:
                    # Refused before any copy of it could have been applied: not applied.
                    session.seq = exc.horizon + 1
                    if restart == MAX_SESSION_RESTARTS:
                        raise
        finally:
            # Whatever the outcome, this seq is spent: the next write on the session uses a
            # higher one, and a late copy of this one is then refused as stale.
            self._sessions.append(session)

    async def _call(self, op: str, key: bytes, arg1: bytes | None, arg2: bytes | None,
                    client_id: int, seq: int, timeout: float | None, write: bool,
                    address: str | None = None, *, attempt_timeout: float | None = None
                    ) -> tuple[ClientReply, str]:
        """Send the request until a definite answer or the deadline (see the module doc).

        Returns ``(the OK reply, the address that answered)``. ``address`` pins the call to one node
        (no redirects, and no more than two dials), as status does. ``attempt_timeout``: how
        long each attempt waits for its reply (default the client's).
        """
        if self._closed:
            raise PaxosdError("the client is closed")
        timeout = self.timeout if timeout is None else timeout
        call = _Call(op, client_id, seq, write, address, timeout,
                     trio.current_time() + timeout,
                     self.attempt_timeout if attempt_timeout is None else attempt_timeout)
        while True:
            now = trio.current_time()
            if now >= call.deadline:
                break
            if self._closed:
                call.closed, call.problem = True, "the client was closed"
                break
            target = address or self._target()
            sent_before = call.maybe_sent  # an earlier attempt may be applied yet
            reply, lost = await self._attempt(call, target, now, key, arg1, arg2)
            if lost is not None:
                pause = self._after_lost(call, target, lost)
            elif reply is None:
                pause = self._after_silence(call, target)
            elif reply.status == OK:
                if address is None and op != "status":
                    self.leader = target
                if reply.revision is not None and reply.revision > self.revision:
                    self.revision = reply.revision
                return reply, target
            else:
                pause = self._after_refusal(call, target, reply, sent_before)
            if pause is None:
                break
            if pause:
                await trio.sleep_until(min(call.deadline,
                                           trio.current_time() + _backoff(call.attempt)))
            call.attempt += 1
        raise self._give_up(call)

    async def _attempt(self, call: _Call, target: str, now: float, key: bytes,
                       arg1: bytes | None, arg2: bytes | None
                       ) -> tuple[ClientReply | None, _ConnectionLost | None]:
        """One try of ``call`` at ``target``: ``(reply, None)``, ``(None, why the connection
        was lost)``, or ``(None, None)`` when no reply came in time. One cancel scope bounds it
        by the call's deadline and by its attempt_timeout, whichever comes first."""
        waiter = _Waiter()
        with trio.CancelScope(deadline=min(call.deadline, now + call.attempt_timeout)):
            try:
                connection = await self._connection(target)
                req = encode_request(next(self._req_ids), call.op, call.client_id, call.seq, key,
                                     arg1, arg2)
                return await connection.request(req, waiter), None
            except _ConnectionLost as exc:
                return None, exc
            finally:
                call.maybe_sent = call.maybe_sent or waiter.sent
        return None, None

    def _after_lost(self, call: _Call, target: str, lost: _ConnectionLost) -> bool | None:
        """The connection to ``target`` was lost (or never opened): whether to pause before the
        next attempt, or None to give up (a pinned call dials at most twice)."""
        call.problem = str(lost)
        call.dial_failed = isinstance(lost, _DialFailed)
        if call.address is not None and call.attempt >= 1:
            return None
        self._forget(target)
        return call.address is not None or self._tried_all(call.attempt)

    def _after_silence(self, call: _Call, target: str) -> bool | None:
        """``target`` did not answer within attempt_timeout: try another node at once (None
        when the call's deadline has passed)."""
        if trio.current_time() >= call.deadline:
            return None
        # Paused or overloaded: ask another node (a retried write is still applied at most
        # once, and a redirect brings us back if it leads).
        call.problem = f"{target} did not answer within {call.attempt_timeout:g} s"
        call.dial_failed = False
        self._forget(target)
        return False

    def _after_refusal(self, call: _Call, target: str, reply: ClientReply,
                       sent_before: bool) -> bool:
        """A reply other than OK: raise the final ones (error, session expired, stale); for
        not_leader and busy, whether to pause before the next attempt."""
        op, status, result = call.op, reply.status, reply.result
        if status == ERROR:
            raise OperationFailed(f"{op}: {target}: {result}")
        if status == SESSION_EXPIRED:
            if sent_before:
                raise OutcomeUnknown(
                    f"{op}: outcome unknown: the session of client {call.client_id} expired "
                    f"while seq {call.seq} was being retried; it may have been applied once")
            raise SessionExpired(
                f"{op}: {target}: the session of client {call.client_id} expired; seq "
                f"{call.seq} was not applied (start again above {result})", result)
        if status == STALE:
            raise OperationFailed(
                f"{op}: {target}: stale session: seq {call.seq} of client {call.client_id} is "
                f"older than the last one it applied")
        call.answered = True
        if status == NOT_LEADER:
            leader = reply.leader
            call.problem = f"{target} is not the leader" + (
                f" (leader: {leader})" if leader else " and knows of none")
            if call.address is None and self._redirect(target, leader):
                return call.attempt > 2  # follow a fresh redirect at once
            return True
        assert status == BUSY, status  # decode_reply lets no other status through
        call.problem = f"{target} is busy"
        return True

    def _give_up(self, call: _Call) -> PaxosdError:
        """The error a call that found no definite answer before its deadline ends with."""
        op, timeout, address = call.op, call.timeout, call.address
        last = f" (last: {call.problem})" if call.problem else ""
        if call.write and call.maybe_sent:
            return OutcomeUnknown(
                f"{op}: outcome unknown: the write may or may not have been applied "
                f"(no definite answer within {timeout:g} s{last})"
            )
        if call.closed:
            return PaxosdError(f"{op}: the client is closed")
        if address is not None:
            if call.dial_failed and address in self._dial_errors:
                return Unavailable(f"{op}: {address}: {self._dial_errors[address]}")
            return Unavailable(f"{op}: {address}: no answer within {timeout:g} s{last}")
        if call.answered:
            return NoLeader(f"{op}: no leader answered within {timeout:g} s{last}")
        if call.problem is not None and not call.dial_failed:
            return Unavailable(f"{op}: no endpoint answered within {timeout:g} s{last}")
        return Unavailable(f"{op}: {self._unreachable_message(timeout)}")

    def _unreachable_message(self, timeout: float) -> str:
        details = "; ".join(
            f"{a}: {self._dial_errors[a]}" for a in self.endpoints if a in self._dial_errors
        )
        return f"no endpoint answered within {timeout:g} s" + (f" ({details})" if details else "")

    def _target(self) -> str:
        """Where the next unpinned request goes: the leader if known, else the next endpoint."""
        if self.leader is not None:
            return self.leader
        return self.endpoints[self._next_endpoint % len(self.endpoints)]

    def _tried_all(self, attempt: int) -> bool:
        """Pause after a lost connection only once every endpoint was tried in this round."""
        return (attempt + 1) % len(self.endpoints) == 0

    def _forget(self, address: str) -> None:
        """``address`` failed us: stop sending there; the next target is another node."""
        if self.leader == address:
            self.leader = None
        if self.endpoints[self._next_endpoint % len(self.endpoints)] == address:
            self._next_endpoint += 1

    def _redirect(self, target: str, leader: Any) -> bool:
        """Follow a not_leader answer from ``target``; True if it named another node."""
        hint = None
        if isinstance(leader, str):
            try:
                hint = _canonical(leader)
            except ValueError:
                pass
        if hint is not None and hint != target:
            self.leader = hint
            return True
        self._forget(target)
        return False

    async def _connection(self, address: str) -> _Connection:
        """The open connection to ``address``, dialing it if needed; _ConnectionLost if not."""
        connection = self._connections.get(address)
        if connection is not None and not connection.closed:
            return connection
        dialing = self._dialing.get(address)
        if dialing is not None:
            await dialing.wait()
            connection = self._connections.get(address)
            if connection is not None and not connection.closed:
                return connection
            raise _DialFailed(f"{address}: {self._dial_errors.get(address, 'cannot connect')}")
        if self._closed:
            raise _ConnectionLost(f"{address}: the client is closed")
        done = self._dialing[address] = trio.Event()
        try:
            host, port = parse_endpoint(address)
            stream = None
            with trio.move_on_after(DIAL_TIMEOUT):
                try:
                    stream = await trio.open_tcp_stream(host, port)
                except OSError as exc:
                    self._dial_errors[address] = f"cannot connect: {_dial_reason(exc)}"
                    raise _DialFailed(f"{address}: {self._dial_errors[address]}") from None
            if stream is None:
                self._dial_errors[address] = f"cannot connect within {DIAL_TIMEOUT:g} s"
                raise _DialFailed(f"{address}: {self._dial_errors[address]}")
            if self.ssl_context is not None:
                stream = await self._tls_handshake(address, host, stream)
            self._dial_errors.pop(address, None)
            connection = _Connection(address, stream, self.max_frame)
            self._connections[address] = connection
            self._spawn(self._run_connection, connection)
            return connection
        finally:
            del self._dialing[address]
            done.set()

    async def _tls_handshake(self, address: str, host: str, stream) -> trio.SSLStream:
        tls = trio.SSLStream(stream, self.ssl_context, server_hostname=host)
        problem = None
        with trio.move_on_after(DIAL_TIMEOUT):
            try:
                await tls.do_handshake()
                return tls
            except (OSError, trio.BrokenResourceError) as exc:
                problem = f"TLS handshake failed: {_stream_error(exc)}"
        await trio.aclose_forcefully(stream)
        self._dial_errors[address] = problem or f"no TLS handshake within {DIAL_TIMEOUT:g} s"
        raise _DialFailed(f"{address}: {self._dial_errors[address]}")

    async def _run_connection(self, connection: _Connection) -> None:
        try:
            await connection.run()
        finally:
            if self._connections.get(connection.address) is connection:
                del self._connections[connection.address]

    def _spawn(self, fn, *args) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)
        else:
            # Used without ``async with``: the task must outlive the caller's scopes. It never
            # raises (see _Connection.run), so it cannot take the run down.
            trio.lowlevel.spawn_system_task(fn, *args, name=f"paxosd client {args[0].address}")


class _Connecting:
    """What ``Client.connect`` returns: awaitable, and an async context manager."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def __await__(self):
        return self._connect().__await__()

    async def _connect(self) -> Client:
        await self.client._probe()
        return self.client

    async def __aenter__(self) -> Client:
        await self.client.__aenter__()
        try:
            await self.client._probe()
        except BaseException as exc:
            await self.client.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self.client

    async def __aexit__(self, *exc_info) -> bool | None:
        return await self.client.__aexit__(*exc_info)


# ---------------------------------------------------------------------------------------------
# The synchronous wrapper.


class SyncClient:
    """The same client for synchronous code: a trio loop runs in a background thread.

    ``SyncClient(endpoints, timeout=5.0)`` connects (Unavailable if no endpoint answers); the
    methods block and raise the same errors as ``Client``'s. Safe to call from several threads
    at once (each call is a task in the loop). ``close()`` (or ``with``) ends the thread.
    """

    def __init__(self, endpoints: Iterable[str | tuple[str, int]], timeout: float = DEFAULT_TIMEOUT,
                 **kwargs) -> None:
        self._client = Client(endpoints, timeout=timeout, **kwargs)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,),
                                        name="paxosd-client", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    @classmethod
    def connect(cls, endpoints: Iterable[str | tuple[str, int]], timeout: float = DEFAULT_TIMEOUT,
                **kwargs) -> SyncClient:
        """The same as the constructor, named like ``Client.connect``."""
        return cls(endpoints, timeout, **kwargs)

    async def _main(self) -> None:
        try:
            async with _Connecting(self._client) as client:
                self._token = trio.lowlevel.current_trio_token()
                self._stop = trio.Event()
                self._started.set()
                await self._stop.wait()
                del client
        except BaseException as exc:  # reported to the constructor's caller
            if self._started.is_set():
                raise
            self._error = exc
            self._started.set()

    def _run(self, method: str, *args, **kwargs) -> Any:
        return self._run_fn(functools.partial(getattr(self._client, method), *args, **kwargs))

    def _run_fn(self, fn) -> Any:
        """``await fn()`` in the client's loop."""
        if self._token is None or not self._thread.is_alive():
            raise PaxosdError("the client is closed")
        try:
            return trio.from_thread.run(fn, trio_token=self._token)
        except trio.RunFinishedError:
            raise PaxosdError("the client is closed") from None

    def put(self, key, value, *, lease=0, fence=None, timeout=None) -> int | None:
        return self._run("put", key, value, lease=lease, fence=fence, timeout=timeout)

    def get(self, key, *, timeout=None) -> bytes | None:
        return self._run("get", key, timeout=timeout)

    def delete(self, key, *, fence=None, timeout=None) -> bool:
        return self._run("delete", key, fence=fence, timeout=timeout)

    def cas(self, key, expected, new, *, timeout=None) -> bool:
        return self._run("cas", key, expected, new, timeout=timeout)

    def delete_range(self, key, range_end=None, *, prefix=False, timeout=None) -> int:
        return self._run("delete_range", key, range_end, prefix=prefix, timeout=timeout)

    def lease_grant(self, ttl, *, timeout=None):
        return self._run("lease_grant", ttl, timeout=timeout)

    def lease_revoke(self, lease_id, *, timeout=None) -> bool:
        return self._run("lease_revoke", lease_id, timeout=timeout)

    def lease_keepalive(self, lease_id, *, timeout=None) -> int:
        return self._run("lease_keepalive", lease_id, timeout=timeout)

    def lease_ttl(self, lease_id, *, timeout=None):
        return self._run("lease_ttl", lease_id, timeout=timeout)

    def range(self, key, range_end=None, **kwargs) -> RangeResponse:
        return self._run("range", key, range_end, **kwargs)

    def txn(self, compares, success, failure=(), *, timeout=None):
        return self._run("txn", compares, success, failure, timeout=timeout)

    def status(self, endpoint=None, *, timeout=None) -> dict:
        return self._run("status", endpoint, timeout=timeout)

    def watch(self, key, range_end=None, **kwargs):
        """``Client.watch`` as a blocking iterator (daemon.client.watch.SyncWatch)."""
        from daemon.client.watch import SyncWatch  # it builds on this module
        return SyncWatch(self, self._client.watch(key, range_end, **kwargs))

    def cluster_status(self, *, timeout=None) -> list[dict]:
        return self._run("cluster_status", timeout=timeout)

    def submit(self, op, key, arg1=None, arg2=None, *, client_id, seq, timeout=None) -> Any:
        return self._run("submit", op, key, arg1, arg2, client_id=client_id, seq=seq,
                         timeout=timeout)

    def close(self) -> None:
        """End the background loop and its connections (idempotent)."""
        if self._token is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

