"""The client's watch: the changes of a key, a prefix or a range, as an async iterator.

    async with client.watch("jobs/", prefix=True, prev_kv=True) as events:
        async for event in events:          # one WatchEvent per change of a key
            print(event.type, event.key, event.value, event.revision)

    for event in sync_client.watch("jobs/", prefix=True):   # SyncClient: a blocking iterator
        ...

Events come one by one, in revision order, each once; the changes of one revision come one
after the other (a transaction's), ``revision`` saying which. ``Watch.revision`` is the
revision up to which every change has been yielded or is waiting in the iterator.

A watch is served by the node it is connected to (any member, the leader or not), from that
node's applied state. When the connection is lost, the watch opens again on another node (the
endpoints in turn, within the client's timeout) from the last revision it saw + 1, so no change
is lost or repeated; a node that has not applied that far yet holds the watch until it has.
What it cannot promise it raises: ``WatchCompacted`` when the changes from the revision asked
for are no longer all held (read the keys again, then watch from that read's revision + 1),
``WatchCancelled`` when the server cut the watch off (too slow a reader: its reason says the
limit, ``resume_from`` where to go on), ``Unavailable`` when no node took the watch in time.

The events not yet taken by the application are bounded (MAX_QUEUED_REPLIES replies): an
application that does not keep up gets ``WatchCancelled`` rather than a client that grows.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass

import trio

from daemon.codec.wire import (WireError, decode_events, encode_unwatch_request,
                               encode_watch_request)
from daemon.core.messages import CANCELLED, COMPACTED, EVENTS, OK
from daemon.client.client import (KeyValue, OperationFailed, PaxosdError, Unavailable,
                                 _backoff, _ConnectionLost, _range_end)

__all__ = ["MAX_QUEUED_REPLIES", "SyncWatch", "Watch", "WatchCancelled", "WatchCompacted",
           "WatchError", "WatchEvent"]

MAX_QUEUED_REPLIES = 4096


class WatchError(PaxosdError):
    """A watch that cannot go on."""


class WatchCompacted(WatchError):
    """The changes from the revision asked for are no longer all held: the history is
    compacted at ``revision``. Read the keys again, then watch from that read's revision + 1."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"watch: compacted at revision {revision}: list again, then watch "
                         f"from the list's revision + 1")
        self.revision = revision


class WatchCancelled(WatchError):
    """The server (or the client, for an application that did not keep up) ended the watch;
    ``reason`` says why, ``resume_from`` is the revision to watch from to go on."""

    def __init__(self, reason: str, resume_from: int) -> None:
        super().__init__(f"watch cancelled: {reason}")
        self.reason = reason
        self.resume_from = resume_from


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change of a key: ``type`` "put" or "delete"; a put's value and record (a delete's
    value None and its record fields 0); ``revision`` the revision of the change; ``prev`` the
    key's record before it (with ``prev_kv``, when the key existed), else None."""

    type: str
    key: bytes
    value: bytes | None
    create_revision: int
    mod_revision: int
    version: int
    lease: int
    revision: int
    prev: KeyValue | None = None


def _event(revision: int, key: bytes, record, prev) -> WatchEvent:
    before = None if prev is None else KeyValue(key, *prev)
    if record is None:
        return WatchEvent("delete", key, None, 0, 0, 0, 0, revision, before)
    return WatchEvent("put", key, *record, revision, before)


class Watch:
    """An async iterator of the changes of a key, a prefix or a range (``Client.watch``)."""

    def __init__(self, client, key: bytes, range_end, prefix: bool, start_revision: int,
                 prev_kv: bool) -> None:
        if type(start_revision) is not int or start_revision < 0:
            raise ValueError(f"watch: start_revision must be an integer >= 0, got "
                             f"{start_revision!r}")
        self.client = client
        self.key = key
        self.end = _range_end(key, range_end, prefix, "watch: ")
        self.prev_kv = prev_kv
        self.start_revision = start_revision
        self.revision: int | None = None  # every change up to here is taken (None: not started)
        self.address: str | None = None  # the node serving the watch
        self._conn = None
        self._req_id = 0
        self._replies: deque = deque()
        self._arrived: trio.Event | None = None
        self._events: deque = deque()
        self._closed = False
        self._failure: BaseException | None = None

    async def __aenter__(self) -> Watch:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    def __aiter__(self) -> Watch:
        return self

    async def start(self) -> int:
        """Open the watch (``async with`` does) and return the revision it starts after: every
        change after it is yielded. Raises what the iterator would (WatchCompacted, ...)."""
        while self.revision is None and not self._events:
            await self._step()
        if self._events and self._events[0] is None:
            await self.__anext__()  # raises the failure
        return self.revision

    async def __anext__(self) -> WatchEvent:
        while not self._events:
            await self._step()
        event = self._events.popleft()
        if event is None:  # where the events stop, the watch failed
            raise self._failure
        return event

    async def aclose(self) -> None:
        """End the watch (the server forgets it); the iterator then stops."""
        self._closed = True
        self._events.clear()
        self._close_stream(unwatch=True)
        await trio.lowlevel.checkpoint()

    # -- the stream --------------------------------------------------------------------------

    async def _step(self) -> None:
        """Open the stream, wait for a reply, or take one."""
        if self._closed:
            raise StopAsyncIteration
        if self._conn is None:
            await self._open()
        elif not self._replies:
            self._arrived = trio.Event()
            await self._arrived.wait()
        else:
            self._take(self._replies.popleft())

    async def _open(self) -> None:
        """Start the watch on a node: the client's target first, then the endpoints in turn,
        until one takes it or the client's timeout passes (Unavailable)."""
        client = self.client
        deadline = trio.current_time() + client.timeout
        problem = "no endpoint tried"
        attempt = 0
        while trio.current_time() < deadline and not client._closed:
            address = client._target()
            start = self.start_revision if self.revision is None else self.revision + 1
            try:
                with trio.move_on_at(deadline):
                    conn = await client._connection(address)
                    self._req_id = next(client._req_ids)
                    self._replies.clear()
                    conn.open_stream(encode_watch_request(self._req_id, start, self.key,
                                                          self.end, self.prev_kv),
                                     functools.partial(self._on_reply, conn))
                    self._conn, self.address = conn, address
                    return
            except _ConnectionLost as exc:
                problem = str(exc)
            client._forget(address)
            if client._tried_all(attempt):
                await trio.sleep_until(min(deadline, trio.current_time() + _backoff(attempt)))
            attempt += 1
        raise Unavailable(f"watch: no node took the watch within {client.timeout:g} s "
                          f"(last: {problem})")

    def _on_reply(self, conn, reply) -> None:
        if conn is not self._conn:
            return
        if reply is not None and len(self._replies) >= MAX_QUEUED_REPLIES:
            self._fail(WatchCancelled(f"the application did not keep up: "
                                      f"{MAX_QUEUED_REPLIES} replies not yet taken",
                                      self._resume_from()), unwatch=True)
            return
        self._replies.append(reply)
        if self._arrived is not None:
            self._arrived.set()

    def _take(self, reply) -> None:
        """One reply of the stream (None: the connection was lost: open the watch again)."""
        if reply is None:
            self._conn = None
            self.client._forget(self.address)
            return
        status, result = reply.status, reply.result
        if status == EVENTS:
            try:
                events = decode_events(result)
            except WireError as exc:
                self._fail(OperationFailed(f"watch: {self.address}: {exc}"))
                return
            seen = self.revision if self.revision is not None else -1
            for revision, key, record, prev in events:
                if revision > seen:  # a change already taken is never taken twice
                    self._events.append(_event(revision, key, record, prev))
            self.revision = max(seen, reply.revision)
        elif status == OK:
            if self.revision is None and type(result) is int:
                self.revision = result
        elif status == COMPACTED:
            self._fail(WatchCompacted(result))
        elif status == CANCELLED:
            self._fail(WatchCancelled(str(result), reply.revision + 1))
        else:
            self._fail(OperationFailed(f"watch: {self.address}: {status}: {result}"))

    def _fail(self, error: BaseException, unwatch: bool = False) -> None:
        """End the iterator with ``error`` (after the events already queued)."""
        self._close_stream(unwatch)
        self._closed = True
        self._failure = error
        self._events.append(None)

    def _resume_from(self) -> int:
        return (self.revision or 0) + 1

    def _close_stream(self, unwatch: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.streams.pop(self._req_id, None)
        if unwatch and not conn.closed:
            req_id = next(self.client._req_ids)
            conn.open_stream(encode_unwatch_request(req_id, self._req_id),
                             lambda reply: conn.streams.pop(req_id, None))
        if self._arrived is not None:
            self._arrived.set()


class SyncWatch:
    """``Watch`` for synchronous code (``SyncClient.watch``): a blocking iterator of
    WatchEvents, with the same errors; ``close()`` (or ``with``) ends it."""

    def __init__(self, sync_client, watch: Watch) -> None:
        self._sync = sync_client
        self._watch = watch

    @property
    def revision(self) -> int | None:
        return self._watch.revision

    def __iter__(self) -> SyncWatch:
        return self

    def __next__(self) -> WatchEvent:
        try:
            return self._sync._run_fn(self._watch.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._sync._run_fn(self._watch.aclose)

    def __enter__(self) -> SyncWatch:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
