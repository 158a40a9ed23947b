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
about ``max_bytes`` of events (each counted as its key, its value, its previous value and
EVENT_OVERHEAD): beyond either, the oldest revisions go and ``compacted`` rises.

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

# The bytes an event costs besides its key and values: the tuple, the record and its integers.
EVENT_OVERHEAD = 64
# Dropped groups are cut off the front of the list in one go once they are this many.
TRIM_EVERY = 1024


class Compacted(Exception):
    """The changes a watch asks for are no longer all held: the history is compacted at
    ``revision`` (list again, then watch from that list's revision + 1)."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"compacted at revision {revision}: list again, then watch from the "
                         f"list's revision + 1")
        self.revision = revision


class Group(NamedTuple):
    """The changes of one revision, in apply order, and their size in bytes."""

    revision: int
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


class WatchHistory:
    """The changes of the revisions ``(compacted, revision]`` of the store it is attached to."""

    __slots__ = ("kv", "max_revisions", "max_bytes", "groups", "revisions", "head",
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
        self.groups: list[Group] = []
        self.revisions: list[int] = []  # each group's revision, for bisect
        self.head = 0  # groups before it are dropped
        self.compacted = self.revision = kv.revision
        self.bytes = 0

    def take(self, kv) -> tuple[list[Group], bool]:
        """Drain the changes applied since the last take: ``(new groups, replaced)``, the
        groups in revision order; ``replaced`` when ``kv`` is not the store drained before
        (the history then starts again, compacted at ``kv``'s revision, and holds what the
        old store still had only in the groups returned)."""
        old = self.kv
        groups = self._group(old.events)
        old.events.clear()
        if kv is not old:
            old.events = None
            self._attach(kv)
            return groups, True
        self._add(groups)
        self.revision = kv.revision
        self._bound()
        return groups, False

    def _group(self, events: list) -> list[Group]:
        groups: list[Group] = []
        if not events:
            return groups
        current = None
        size = 0
        for event in events:
            rev, key, record, prev = event
            if current is None or rev != current.revision:
                if current is not None:
                    groups.append(current._replace(size=size))
                current = Group(rev, [], 0)
                size = 0
            current.events.append(event)
            size += len(key) + EVENT_OVERHEAD + (0 if record is None else len(record.value)) \
                + (0 if prev is None else len(prev.value))
        groups.append(current._replace(size=size))
        return groups

    def _add(self, groups: list[Group]) -> None:
        for group in groups:
            self.groups.append(group)
            self.revisions.append(group.revision)
            self.bytes += group.size

    def _bound(self) -> None:
        """Drop the oldest revisions beyond the bounds, raising ``compacted``."""
        floor = self.revision - self.max_revisions
        if floor > self.compacted:
            self.compacted = floor
        groups, head = self.groups, self.head
        while head < len(groups) and (groups[head].revision <= self.compacted
                                      or self.bytes > self.max_bytes):
            group = groups[head]
            self.bytes -= group.size
            if group.revision > self.compacted:
                self.compacted = group.revision
            head += 1
        if head >= TRIM_EVERY or (head and head == len(groups)):
            del groups[:head]
            del self.revisions[:head]
            head = 0
        self.head = head

    def since(self, start: int, key: bytes, end: bytes | None, budget: int | None = None,
              prev_kv: bool = True) -> tuple[list[Group], bool]:
        """The held groups from revision ``start`` on, each with only the events of the keys a
        watch of ``(key, end)`` follows (see ``matches``), none left empty, sized as a watch
        with ``prev_kv`` counts them; and whether that is all of them (True) or they stop
        where their size first reached ``budget`` bytes (None: no budget; a group is never
        split). ``Compacted`` if revision ``start`` is not held (at or below ``compacted``)."""
        if start <= self.compacted:
            raise Compacted(self.compacted)
        at = max(self.head, bisect_left(self.revisions, start))
        out = []
        total = 0
        for group in self.groups[at:]:
            if budget is not None and total >= budget:
                return out, False
            found = [e for e in group.events if matches(e[1], key, end)]
            if found:
                size = sum(event_size(e, prev_kv) for e in found)
                out.append(Group(group.revision, found, size))
                total += size
        return out, True

    def held(self) -> list[Group]:
        """Every group held, in revision order (for checks)."""
        return self.groups[self.head:]
