"""``GET /v1/watch``: the changes of a key or a prefix as Server-Sent Events.

    GET /v1/watch?prefix=jobs/&from_revision=12&prev_kv=true
    Accept: text/event-stream

``key=K`` watches one key, ``prefix=P`` every key that starts with P (percent-encoded bytes,
as everywhere: daemon.gateway.inputs; ``prefix=`` empty: every key); exactly one of the two.
``from_revision=R``: from revision R on (absent or 0: the changes after now);
``prev_kv=true``: each event carries the key's record before the change.

The stream (``text/event-stream``), one event per change of a key, in revision order, each
once::

    event: put
    id: 14:0
    data: {"type":"put","key":"jobs/a","key_encoding":"utf-8","value":"run",...}

``data`` is one line of JSON: ``type`` (put or delete), ``key``, ``value`` (a put's; text when
UTF-8, else base64, ``*_encoding`` saying which: daemon.gateway.encoding), ``revision`` (the
change's), ``create_revision``, ``mod_revision``, ``version``, ``lease`` (a delete's are 0),
and with prev_kv ``prev_kv`` (the record before, or null when the key did not exist).

Ids: ``R:I``, the change's revision R and its index I among the changes of R this watch
sees (0 for the first). One revision can change several keys (a transaction), so the
revision alone cannot say how far a stream that broke in the middle of one got. A client
that reconnects with the standard ``Last-Event-ID: R:I`` (EventSource does) gets the changes
after that one: the rest of R, then R+1 on; ``Last-Event-ID: R`` (a bare revision) means
every change of R was seen: from R+1. The header takes precedence over ``from_revision``
(it is a retry of the same URL). The order of a revision's changes is the order its
transaction made them, the same on every node, so I means the same change on any node.

The stream ends with one last event, after the changes before it, when the watch cannot go on:

- ``event: compacted``, ``data: {"type", "compacted_revision", "detail"}``: the changes from the
  revision asked for are no longer all held. List the keys again (``GET /v1/kv?prefix=P``,
  whose answer names its ``revision``), then watch from that revision + 1;
- ``event: cancelled``, ``data: {"type", "reason", "resume_from", "detail"}``: the server cut the
  watch off (a reader slower than the changes: ``watch.max_pending_bytes``); watch again from
  ``resume_from``;
- ``event: error``, ``data``: a problem (daemon.gateway.problems) with ``resume_from``: no node
  took the watch within the request deadline; retry later from ``resume_from``.

Every HEARTBEAT_S seconds without an event the stream carries a comment (``: keepalive``), so
proxies and load balancers keep an idle stream open. The gateway's watch is the client
library's (daemon.client.watch): when the node it reads from dies it resumes on another by
itself, losing and repeating nothing; only this node's own death breaks the HTTP stream, and
the client then reconnects to another node with Last-Event-ID. The stream ends when the node
stops (SIGTERM) and when the client goes away.

A watch that cannot start is an ordinary error before the stream: 400 for a bad parameter,
503 when no node takes it within the request deadline.
"""

from __future__ import annotations

import json

import trio
from starlette.responses import Response
from starlette.routing import Route

from daemon.client.client import PaxosdError
from daemon.client.watch import WatchCancelled, WatchCompacted
from daemon.gateway.encoding import bytes_fields, kv_json
from daemon.gateway.inputs import query_bytes, query_flag, query_int
from daemon.gateway.problems import ERRORS, Problem, problem
from daemon.gateway.spec import operation, param, problems

__all__ = ["HEARTBEAT_S", "OPENAPI", "EventStream", "event_json", "parse_last_event_id",
           "routes"]

HEARTBEAT_S = 5.0
EVENT_STREAM = "text/event-stream"
_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            # nginx buffers responses unless told not to: an event must go out when it happens
            (b"x-accel-buffering", b"no")]


def event_json(event, prev_kv: bool) -> dict:
    """One daemon.client WatchEvent as the JSON of its ``data`` line (see the module doc)."""
    out = {"type": event.type, **bytes_fields("key", event.key)}
    if event.value is not None:
        out.update(bytes_fields("value", event.value))
    out.update(revision=event.revision, create_revision=event.create_revision,
               mod_revision=event.mod_revision, version=event.version, lease=event.lease)
    if prev_kv:
        out["prev_kv"] = None if event.prev is None else kv_json(event.prev)
    return out


def parse_last_event_id(text: str) -> tuple[int, int | None]:
    """``(revision, index)`` of a Last-Event-ID: ``R:I`` -> (R, I); a bare ``R`` -> (R, None),
    every change of R seen. 400 ``bad-header`` naming it otherwise."""
    revision, sep, index = text.strip().partition(":")
    parts = [revision] + ([index] if sep else [])
    if not all(p.isascii() and p.isdigit() and len(p) <= 19 for p in parts):
        raise Problem(400, "bad-header", f"header Last-Event-ID: expected REVISION:INDEX (an "
                      f"id of this stream) or a revision, got {text[:40]!r}")
    return int(revision), (int(index) if sep else None)


def _frame(kind: str, data: dict, event_id: str | None = None) -> bytes:
    head = f"event: {kind}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return (head + "data: " + json.dumps(data, separators=(",", ":")) + "\n\n").encode()


class _Position:
    """Where the stream is: the last change sent (its revision and index in that revision),
    and which changes of the start revision a resumed stream already had."""

    def __init__(self, start: int, skip_through: int | None) -> None:
        self.revision = start - 1 if start else 0
        self.index = -1
        self.start = start
        self.skip_through = skip_through  # indices 0..skip_through of ``start`` were sent

    def advance(self, revision: int) -> str | None:
        """The id of the next change (of ``revision``), or None if it was sent before."""
        if revision == self.revision:
            self.index += 1
        else:
            self.revision, self.index = revision, 0
        if (self.skip_through is not None and revision == self.start
                and self.index <= self.skip_through):
            return None
        return f"{revision}:{self.index}"


class EventStream:
    """The ASGI response of one watch: opens it, streams its events and heartbeats, and ends
    on a terminal event, the client's leaving or the node's stopping (see the module doc)."""

    def __init__(self, gateway, key: bytes, prefix: bool, start: int,
                 skip_through: int | None, prev_kv: bool) -> None:
        self.gateway = gateway
        self.key, self.prefix, self.prev_kv = key, prefix, prev_kv
        self.position = _Position(start, skip_through)
        self._send = None
        self._lock = trio.Lock()
        self._last_send = 0.0

    async def __call__(self, scope, receive, send) -> None:
        watch = self.gateway.client.watch(self.key, prefix=self.prefix,
                                          start_revision=self.position.start,
                                          prev_kv=self.prev_kv)
        try:
            ending = await self._start(watch, scope, receive, send)
            if ending is False:
                return
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            self._send = send
            await self._emit(b"")
            if ending is not None:
                await self._emit(ending)
            else:
                await self._run(watch, receive)
            await self._finish()
        finally:
            with trio.CancelScope(shield=True):
                await watch.aclose()

    async def _start(self, watch, scope, receive, send):
        """Open the watch: None when open (or still waiting for its first reply at the
        request deadline), a terminal frame to stream alone (compacted), or False once an
        error response was sent instead of a stream."""
        try:
            with trio.move_on_after(self.gateway.timeout):
                await watch.start()
        except WatchCompacted as exc:
            return self._compacted(exc)
        except (PaxosdError, ValueError) as exc:
            status, code = next((s, c) for cls, s, c in ERRORS if isinstance(exc, cls))
            await problem(status, code, f"watch: {exc}")(scope, receive, send)
            return False
        return None

    async def _run(self, watch, receive) -> None:
        """Events, heartbeats, and the two ways the stream ends from outside, until one ends."""
        async with trio.open_nursery() as nursery:
            async def until(fn):
                await fn()
                nursery.cancel_scope.cancel()

            nursery.start_soon(until, lambda: self._pump(watch))
            nursery.start_soon(until, self._heartbeat)
            nursery.start_soon(until, lambda: _disconnected(receive))
            nursery.start_soon(until, self.gateway.server.stopping.wait)

    async def _pump(self, watch) -> None:
        """Every change as an event; the watch's end as the terminal event."""
        try:
            async for event in watch:
                event_id = self.position.advance(event.revision)
                if event_id is not None:
                    await self._emit(_frame(event.type, event_json(event, self.prev_kv),
                                            event_id))
        except WatchCompacted as exc:
            await self._emit(self._compacted(exc))
        except WatchCancelled as exc:
            await self._emit(_frame("cancelled", {
                "type": "cancelled", "reason": exc.reason, "resume_from": exc.resume_from,
                "detail": f"{exc}: watch again from revision {exc.resume_from}"}))
        except PaxosdError as exc:
            # every change up to watch.revision was taken (and sent) before the failure
            resume = self.position.start if watch.revision is None else watch.revision + 1
            await self._emit(_frame("error", {
                "type": "urn:paxosd:problem:unavailable", "status": 503, "code": "unavailable",
                "detail": f"watch: {exc}", "resume_from": resume}))

    def _compacted(self, exc: WatchCompacted) -> bytes:
        return _frame("compacted", {
            "type": "compacted", "compacted_revision": exc.revision,
            "detail": f"the changes from revision {self.position.start} are compacted (at "
                      f"revision {exc.revision}): list the keys again, then watch from the "
                      f"list's revision + 1"})

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep_until(self._last_send + HEARTBEAT_S)
            if trio.current_time() >= self._last_send + HEARTBEAT_S:
                await self._emit(b": keepalive\n\n")

    async def _emit(self, chunk: bytes) -> None:
        async with self._lock:  # the pump and the heartbeat write one whole frame at a time
            await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
            self._last_send = trio.current_time()

    async def _finish(self) -> None:
        with trio.move_on_after(1.0):  # a client that left may never take it
            async with self._lock:
                await self._send({"type": "http.response.body", "body": b"",
                                  "more_body": False})


async def _disconnected(receive) -> None:
    """Returns once the client has gone away."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _params(request) -> tuple[bytes, bool, int, int | None, bool]:
    """(key, prefix, start revision, indices of it already sent, prev_kv) from the query and
    Last-Event-ID; 400 naming what was wrong."""
    key, prefix = query_bytes(request, "key"), query_bytes(request, "prefix")
    if (key is None) == (prefix is None):
        raise Problem(400, "bad-parameter", "give key=K (one key) or prefix=P (every key that "
                      "starts with P), exactly one of them")
    if key == b"":
        raise Problem(400, "bad-parameter", "query parameter 'key': empty (for every key, "
                      "give prefix= empty)")
    start = query_int(request, "from_revision", 0)
    skip_through = None
    last_id = request.headers.get("last-event-id")
    if last_id is not None and last_id.strip():
        revision, index = parse_last_event_id(last_id)
        start, skip_through = (revision + 1, None) if index is None else (revision, index)
    return (key if prefix is None else prefix, prefix is not None, start, skip_through,
            query_flag(request, "prev_kv"))


def routes(gateway) -> list:
    async def watch(request):
        key, prefix, start, skip_through, prev_kv = _params(request)
        if request.method == "HEAD":  # starlette serves HEAD with GET: no stream, no watch
            return Response(media_type=EVENT_STREAM)
        return EventStream(gateway, key, prefix, start, skip_through, prev_kv)

    return [Route("/v1/watch", watch, methods=["GET"])]


OPENAPI = {
    "/v1/watch": {"get": operation(
        "Watch a key or a prefix: every change as a Server-Sent Event (event put or delete, id "
        "REVISION:INDEX, data JSON), in revision order, each once; resumes after "
        "Last-Event-ID; ends with a compacted, cancelled or error event when it cannot go on", {
            "200": {"description": "The event stream", "content": {EVENT_STREAM: {}}},
            **problems(400, 503)}, [
            param("key", "query", "Watch this key (percent-encoded); or prefix"),
            param("prefix", "query", "Watch every key that starts with this (empty: every key)"),
            param("from_revision", "query", "From this revision on (absent or 0: from now)",
                  {"type": "integer"}),
            param("prev_kv", "query", "true: each event carries the record before the change",
                  {"type": "boolean"}),
            param("Last-Event-ID", "header", "Resume after this event (REVISION:INDEX, or a "
                  "revision: after all of it); takes precedence over from_revision")])},
}
