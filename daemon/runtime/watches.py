"""A node's watches: the client connections that follow keys, fed from its applied state.

Any node serves watches (a follower too), from the changes its own store applies: the core loop
calls ``deliver`` once per iteration (per batch of applied commands, not per command), which
drains the store's changes into the node's ``WatchHistory`` (daemon.core.watch) and sends each
watch the changes of the keys it follows. The wire shapes are daemon.codec.wire's.

What a watch is promised:
- Changes in revision order, from its start revision on, each once; the changes of one
  revision in one "events" reply (a reply carries one or more whole revisions, and no reply
  outgrows ``max_reply_bytes``: a revision whose changes alone would is cut off, with reason).
- A start revision at or below the history's ``compacted`` gets "compacted" (never a gap); so
  does a watch that had not seen every revision up to a store the node replaced (a snapshot
  from the leader), at that store's revision.
- A watch that starts behind the present catches up from the history, at most
  ``max_pending_bytes / 2`` queued at a time, then follows live changes.
- Memory stays bounded: the changes queued for a connection and not yet taken by its writer
  are counted (``ClientConnection.watch_bytes``); a watch whose changes would take them past
  ``max_pending_bytes`` (unless nothing is queued) is cancelled with a reason that names the
  limit and the revision to resume from.
- The watches of a closed connection are dropped (``forget_closed``, on every tick).

Every reply a watch gets after its first is one more the connection's writer counts as sent,
so each one adds to ``conn.outstanding`` (the reader's request accounting stays balanced).
"""

from __future__ import annotations

from daemon.codec.wire import WATCH_PREV_KV, encode_events, events_frame, events_reply_tail
from daemon.core.messages import CANCELLED, COMPACTED, ERROR, OK
from daemon.core.watch import Compacted, Group, WatchHistory, select

__all__ = ["Watcher", "Watches"]

MAX_WATCHES_PER_CONNECTION = 10_000


class Watcher:
    """One watch: the connection and req_id its replies go to, the keys it follows and the
    next revision it is to be told about."""

    __slots__ = ("conn", "req_id", "key", "end", "prev_kv", "next")

    def __init__(self, conn, req_id: int, key: bytes, end: bytes | None, prev_kv: bool,
                 next_revision: int) -> None:
        self.conn = conn
        self.req_id = req_id
        self.key = key
        self.end = end
        self.prev_kv = prev_kv
        self.next = next_revision

    @property
    def filter(self) -> tuple:
        return (self.key, self.end, self.prev_kv)


class Watches:
    """The watches of one node; ``history`` is attached to the node's store."""

    def __init__(self, kv, settings, max_reply_bytes: int) -> None:
        self.history = WatchHistory(kv, settings.history_revisions, settings.history_bytes)
        self.max_pending = settings.max_pending_bytes
        self.max_reply = max_reply_bytes
        self.by_conn: dict = {}  # conn -> {req_id: Watcher}
        self.synced: dict = {}  # filter -> {Watcher: None}: told every revision held
        self.unsynced: dict = {}  # Watcher -> None: still catching up from the history
        # Synced watches have been told every revision up to here (their ``next`` is only
        # kept up to date when they get a reply: theirs is max(next, told + 1)).
        self.told = self.history.revision
        self.delivered = 0  # events sent, for the metrics and the benchmark

    # -- requests ----------------------------------------------------------------------------

    def request(self, conn, req, leader: str | None) -> None:
        """A decoded "watch" or "unwatch" request from ``conn``: answered at once."""
        if req.op == "unwatch":
            self._unwatch(conn, req.req_id, req.client_id, leader)
            return
        history = self.history
        mine = self.by_conn.get(conn, {})
        if req.req_id in mine or len(mine) >= MAX_WATCHES_PER_CONNECTION:
            why = (f"req_id {req.req_id} already names a watch of this connection"
                   if req.req_id in mine else
                   f"already {len(mine)} watches on this connection (the most it may have)")
            conn.push([req.req_id, ERROR, why, leader, history.revision])
            return
        start = req.seq or history.revision + 1
        if start <= history.compacted:
            conn.push([req.req_id, COMPACTED, history.compacted, leader, history.compacted])
            return
        watcher = Watcher(conn, req.req_id, req.key, req.arg1, bool(req.client_id & WATCH_PREV_KV),
                          start)
        self.by_conn.setdefault(conn, {})[req.req_id] = watcher  # only an accepted watch
        conn.push([req.req_id, OK, start - 1, leader, start - 1])
        if start <= history.revision:
            self.unsynced[watcher] = None
        else:
            self.synced.setdefault(watcher.filter, {})[watcher] = None

    def _unwatch(self, conn, req_id: int, watch_id: int, leader: str | None) -> None:
        watcher = self.by_conn.get(conn, {}).get(watch_id)
        if watcher is not None:
            self._end(watcher, CANCELLED, "cancelled by the client", leader)
        conn.push([req_id, OK, watcher is not None, leader, self.history.revision])

    # -- delivery ----------------------------------------------------------------------------

    def deliver(self, kv, leader: str | None) -> None:
        """Drain the store's new changes and send them on; let lagging watches catch up."""
        history = self.history
        before = history.kv.revision  # of the store drained (it may be replaced meanwhile)
        chunks, replaced = history.take(kv)
        if chunks and self.synced:
            self._fan_out(chunks[0].events, before if replaced else history.revision, leader)
        if replaced:
            self.told = max(self.told, before)
            for watchers in list(self.synced.values()):
                for watcher in list(watchers):
                    if max(watcher.next, self.told + 1) <= history.compacted:
                        self._end(watcher, COMPACTED, history.compacted, leader)
        self.told = history.revision
        if self.unsynced:
            self._catch_up(leader)

    def _fan_out(self, events: list, upto: int, leader: str | None) -> None:
        """Send ``events`` (the changes up to revision ``upto``) to every synced watch: the
        replies are made once per distinct filter, and only the req_id differs."""
        first = events[0][0]
        told = self.told
        for flt, watchers in list(self.synced.items()):
            key, end, prev_kv = flt
            shared = self._chunks(select(events, key, end, 0, prev_kv)[0], prev_kv, upto,
                                  leader)
            for watcher in list(watchers):
                if watcher.next <= first:
                    chunks = shared
                else:  # started ahead of this node (it resumed here from a faster one)
                    chunks = self._chunks(select(events, key, end, watcher.next, prev_kv)[0],
                                          prev_kv, upto, leader)
                if chunks and not watcher.conn.closed:
                    watcher.next = max(watcher.next, told + 1)
                    self._send(watcher, chunks, leader)

    def _catch_up(self, leader: str | None) -> None:
        """Send each lagging watch the next part of what the history holds for it, while its
        connection has less than half of ``max_pending`` queued."""
        history = self.history
        budget = self.max_pending // 2
        for watcher in list(self.unsynced):
            conn = watcher.conn
            if conn.closed:
                self._drop(watcher)
                continue
            if conn.watch_bytes >= budget:
                continue  # the writer has not taken what went before: wait for it
            try:
                groups, complete = history.since(watcher.next, watcher.key, watcher.end,
                                                 budget - conn.watch_bytes, watcher.prev_kv)
            except Compacted as exc:
                self._end(watcher, COMPACTED, exc.revision, leader)
                continue
            upto = history.revision if complete else groups[-1].revision
            chunks = self._chunks(groups, watcher.prev_kv, upto, leader)
            if not self._send(watcher, chunks, leader):
                continue
            watcher.next = upto + 1
            if complete:
                del self.unsynced[watcher]
                self.synced.setdefault(watcher.filter, {})[watcher] = None

    def _chunks(self, groups: list[Group], prev_kv: bool, upto: int,
                leader: str | None) -> list:
        """The "events" replies of ``groups`` (select's), the last naming revision ``upto``:
        ``(tail, size, revision, count)`` each (tail: wire.events_reply_tail's, encoded once for
        every watch that gets it), whole revisions, none over ``max_reply`` unless a revision
        alone is (then its size says so)."""
        replies: list = []
        current: list = []
        size = 0
        last = 0
        max_reply = self.max_reply
        for group in groups:
            if current and size + group.size > max_reply:
                replies.append((events_reply_tail(current, leader, last), size, last,
                                len(current)))
                current, size = [], 0
            current.extend(encode_events((group,), prev_kv))
            size += group.size
            last = group.revision
        if current:
            replies.append((events_reply_tail(current, leader, upto), size, last, len(current)))
        return replies

    def _send(self, watcher: Watcher, replies: list, leader: str | None) -> bool:
        """Queue ``replies`` (``_chunks``') for ``watcher``; False if the watch was cut off
        instead (too slow, or a revision too large for a reply)."""
        conn = watcher.conn
        for i, (tail, size, last, count) in enumerate(replies):
            if size > self.max_reply:
                self._end(watcher, CANCELLED, f"the changes of revision {last} take {size} "
                          f"bytes, more than a reply may ({self.max_reply}); resume from "
                          f"revision {last + 1}", leader)
                return False
            if conn.watch_bytes and conn.watch_bytes + size > self.max_pending:
                self._end(watcher, CANCELLED, f"too slow: {conn.watch_bytes} bytes of changes "
                          f"not yet read by the client, and watch.max_pending_bytes is "
                          f"{self.max_pending}; resume from revision {watcher.next}", leader)
                return False
            conn.push_frame(events_frame(watcher.req_id, tail))
            conn.outstanding += 1
            conn.watch_bytes += size
            self.delivered += count
            if i < len(replies) - 1:
                watcher.next = last + 1
        return True

    # -- ending watches ----------------------------------------------------------------------

    def _end(self, watcher: Watcher, status: str, result, leader: str | None) -> None:
        """Tell the watch it ended (compacted or cancelled), and forget it."""
        if watcher not in self.unsynced:
            watcher.next = max(watcher.next, self.told + 1)
        self._drop(watcher)
        conn = watcher.conn
        if not conn.closed:
            conn.push([watcher.req_id, status, result, leader, watcher.next - 1])
            conn.outstanding += 1

    def _drop(self, watcher: Watcher) -> None:
        mine = self.by_conn.get(watcher.conn)
        if mine is not None and mine.get(watcher.req_id) is watcher:
            del mine[watcher.req_id]
            if not mine:
                del self.by_conn[watcher.conn]
        self.unsynced.pop(watcher, None)
        flt = watcher.filter
        watchers = self.synced.get(flt)
        if watchers is not None:
            watchers.pop(watcher, None)
            if not watchers:
                del self.synced[flt]

    def forget_closed(self) -> None:
        """Drop every watch of a connection that has closed."""
        for conn in [c for c in self.by_conn if c.closed]:
            for watcher in list(self.by_conn[conn].values()):
                self._drop(watcher)
            self.by_conn.pop(conn, None)

    def count(self) -> int:
        return sum(map(len, self.by_conn.values()))
