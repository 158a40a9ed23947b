"""The watch history: the recent changes of a node's store, grouped by revision (IO-free).

A node that serves watches attaches a ``WatchHistory`` to its store (``KVStore.events``, see
daemon.core.kv) and drains it once per loop iteration with ``take``. The history holds the
changes of every revision in ``(compacted, revision]``: a revision that changed no key holds
nothing (revisions are +1 per applied write command, whether or not it changed a key), and a
transaction's changes are one group, as all changes of one revision are. A watch that resumes
from a revision at or below ``compacted`` cannot be told everything it missed: ``since`` raises
``Compacted`` (the client lists again, then watches from the list's revision + 1), never a
silent gap.

Bounds. The history holds at most ``max_revisions`` revisions (``revision - compacted``) and
at most ``max_bytes`` of events (each counted as its key, its value and EVENT_OVERHEAD, summed
by the store as it records: ``KVStore.event_bytes``): beyond either, the oldest revisions go
and ``compacted`` rises.

Cost. Every change applied passes through here whether anyone watches or not, so ``take``
does no Python step per change: it takes the store's list over as one ``Chunk``, with the size
the store summed (in the C apply loop). Grouping by revision and matching keys happen when a watch is served (``select``).

A replaced store. A node that installs a snapshot from the leader replaces its store
(daemon.core.catchup), and a node's store is built and the committed log applied before anyone
attaches: the changes before the attached store's revision were never seen. So at attach, and
whenever ``take`` meets a store that is not the one it drained (it first drains what the old
one still held), ``compacted`` becomes that store's revision; the caller cancels, with
``Compacted``, every watch that had not seen up to there (``take`` says so by returning True
as ``replaced``).

An event is the store's tuple ``(revision, key, record or None (deleted), previous record or
None)``, records being ``fastpath.KeyRecord``.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import NamedTuple

from fastpath import EVENT_OVERHEAD

# Dropped chunks are cut off the front of the list in one go once they are this many.
TRIM_EVERY = 1024


class Compacted(Exception):
    """The changes a watch asks for are no longer all held: the history is compacted at
    ``revision`` (list again, then watch from that list's revision + 1)."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"compacted at revision {revision}: list again, then watch from the "
                         f"list's revision + 1")
        self.revision = revision


class Group(NamedTuple):
    """The changes of one revision (those a watch follows), in apply order, and their size."""

    revision: int
    events: list
    size: int


class Chunk(NamedTuple):
    """The changes one ``take`` drained, as the store appended them: revisions ``first`` to
    ``last`` (the first and the last that changed a key), and their size in bytes."""

    first: int
    last: int
    events: list
    size: int


def event_size(event: tuple, prev_kv: bool = True) -> int:
    """The bytes ``event`` counts for (its previous value only with ``prev_kv``)."""
    _rev, key, record, prev = event
    size = len(key) + EVENT_OVERHEAD
    if record is not None:
        size += len(record.value)
    if prev_kv and prev is not None:
        size += len(prev.value)
    return size


def matches(key: bytes, start: bytes, end: bytes | None) -> bool:
    """Whether ``key`` is what a watch of ``start`` (``end`` None: that key alone; b"": every
    key from ``start`` on; else the keys in ``[start, end)``) follows."""
    if end is None:
        return key == start
    return start <= key and (not end or key < end)


def select(events, key: bytes, end: bytes | None, start: int = 0, prev_kv: bool = True,
           budget: int | None = None) -> tuple[list[Group], bool]:
    """The changes among ``events`` (in apply order) of revision ``start`` on to the keys a
    watch of ``(key, end)`` follows, grouped by revision, each group sized as a watch with
    ``prev_kv`` counts it; and whether that is all of them (True), or they stop at the first
    group boundary where their size reached ``budget`` (None: no budget)."""
    groups: list[Group] = []
    current: list | None = None
    revision = size = total = 0
    for event in events:
        rev = event[0]
        if rev < start or not matches(event[1], key, end):
            continue
        if rev != revision:
            if current is not None:
                groups.append(Group(revision, current, size))
                total += size
                if budget is not None and total >= budget:
                    return groups, False
            current, revision, size = [], rev, 0
        current.append(event)
        size += event_size(event, prev_kv)
    if current is not None:
        groups.append(Group(revision, current, size))
    return groups, True


class WatchHistory:
    """The changes of the revisions ``(compacted, revision]`` of the store it is attached to,
    as the chunks ``take`` drained (a chunk may begin at or below ``compacted``: those of its
    changes are not held)."""

    __slots__ = ("kv", "max_revisions", "max_bytes", "chunks", "lasts", "head",
                 "compacted", "revision", "bytes")

    def __init__(self, kv, max_revisions: int, max_bytes: int) -> None:
        if max_revisions < 1 or max_bytes < 1:
            raise ValueError(f"a watch history holds at least one revision and one byte, got "
                             f"{max_revisions} revisions and {max_bytes} bytes")
        self.max_revisions = max_revisions
        self.max_bytes = max_bytes
        self.kv = None
        self._attach(kv)

    def _attach(self, kv) -> None:
        """Follow ``kv`` from its present revision on: nothing before it is held."""
        self.kv = kv
        kv.events = []
        kv.event_bytes = 0
        self.chunks: list[Chunk] = []
        self.lasts: list[int] = []  # each chunk's last revision, for bisect
        self.head = 0  # chunks before it are dropped
        self.compacted = self.revision = kv.revision
        self.bytes = 0

    def take(self, kv) -> tuple[list[Chunk], bool]:
        """Drain the changes applied since the last take: ``(new chunks, replaced)`` (at most
        one chunk); ``replaced`` when ``kv`` is not the store drained before (the history then
        starts again, compacted at ``kv``'s revision, and holds what the old store still had
        only in the chunk returned). The store's list is taken over, not copied."""
        old = self.kv
        events = old.events
        new = []
        if events:
            old.events = []
            new.append(Chunk(events[0][0], events[-1][0], events, old.event_bytes))
            old.event_bytes = 0
        if kv is not old:
            old.events = None
            self._attach(kv)
            return new, True
        if new:
            self.chunks.append(new[0])
            self.lasts.append(new[0].last)
            self.bytes += new[0].size
        self.revision = kv.revision
        self._bound()
        return new, False

    def _bound(self) -> None:
        """Drop the oldest revisions beyond the bounds, raising ``compacted``."""
        floor = self.revision - self.max_revisions
        if floor > self.compacted:
            self.compacted = floor
        chunks, head = self.chunks, self.head
        while head < len(chunks) and (chunks[head].last <= self.compacted
                                      or self.bytes > self.max_bytes):
            chunk = chunks[head]
            self.bytes -= chunk.size
            if chunk.last > self.compacted:
                self.compacted = chunk.last
            head += 1
        if head >= TRIM_EVERY or (head and head == len(chunks)):
            del chunks[:head]
            del self.lasts[:head]
            head = 0
        self.head = head

    def since(self, start: int, key: bytes, end: bytes | None, budget: int | None = None,
              prev_kv: bool = True) -> tuple[list[Group], bool]:
        """``select`` over the held changes, from revision ``start`` on. ``Compacted`` if
        revision ``start`` is not held (at or below ``compacted``)."""
        if start <= self.compacted:
            raise Compacted(self.compacted)
        at = max(self.head, bisect_left(self.lasts, start))
        return select(self._events(at), key, end, start, prev_kv, budget)

    def _events(self, at: int):
        for chunk in self.chunks[at:]:
            yield from chunk.events

    def held(self) -> list[Group]:
        """Every change held, grouped by revision (for checks)."""
        return select(self._events(self.head), b"", b"", self.compacted + 1)[0]

    def held_bytes(self) -> int:
        """The size of the chunks held (for checks: ``bytes`` must equal it)."""
        return sum(chunk.size for chunk in self.chunks[self.head:])
