"""The replicated state machine: a key-value store with client sessions.

Every replica applies the same chosen batches in the same slot order, so everything here must
depend only on the commands and their order: no clock, no randomness, no iteration over a set.

Client sessions give at-most-once application. Each command carries (client_id, seq); a session
remembers the last seq applied for its client and that command's outcome. A retry of the last
seq gets the remembered outcome instead of being applied again; an older seq is STALE (the
client has moved on, so nobody waits for it). A client keeps one command outstanding per
session; a client that pipelines uses one session per outstanding command.
Sessions beyond ``max_sessions`` are evicted least recently used first, in apply order, which
is the same on every replica.

Eviction must not let an old retry in again. The store keeps ``evicted_at``: the count of
applied commands when it last evicted a session. A command of a client with no session is
applied only if its seq is above ``evicted_at``; otherwise it is refused (SESSION_EXPIRED, with
``evicted_at`` as the result) and not applied. Why that is enough: a session's first seq is
1, or one above the horizon it was refused at, so it is at most the applied count at which
that command is applied; each later command of the session is applied after the one before
(one command in flight per session), so its seq stays at most its applied count too. A
command applied and then evicted therefore has a seq at or below every later ``evicted_at``,
and no retry of it is applied again. A client told SESSION_EXPIRED for a command it never sent
before starts the session again at ``evicted_at + 1``; for one it may have sent, the outcome
is unknown.

Revisions. The store's revision counts the write commands it applied: each applied command
(put, delete, cas, and the membership's own puts) takes the next revision, whether or not it
changed a key; a command not applied (a retry answered from its session, STALE,
SESSION_EXPIRED) takes none. So a revision names one write, a failed cas or a delete of a
missing key included (its reply says where it was ordered), and a revision may change no key:
whoever follows changes (a watch) must take gaps as "nothing changed there". The revision is
``applied_commands``, which every image has carried since the first format: an image from
before revisions were recorded implies its revision exactly, and every replica computes the
same revision for the same applied prefix whichever image it started from.

Every key has a ``fastpath.KeyRecord``: its value, ``create_revision`` (the revision that
created it, since it was last deleted), ``mod_revision`` (its latest write), ``version`` (1
after the create, +1 per write; a delete ends it, a re-create starts at 1 again) and
``lease`` (0: none, else the id of the lease it is attached to). A key restored from an image of the old
format (values only) has ``create_revision = mod_revision = 0`` (before revisions were
recorded: 0 is below every real revision) and version 1.

Leases (daemon.core.leases). ``leases`` maps a lease's id to ``(ttl, keys)``, ``keys`` a dict
used as an ordered set of the keys attached to it. A write to a key attached to a lease goes
through the Python path (``apply_other``), which keeps ``keys`` right; a plain put detaches
the key, as etcd's does. The lease ops (grant, revoke, expire) are log commands like any other.

Events. When ``events`` is a list (a node that serves watches sets it), every change of a key
appends ``(revision, key, record or None (deleted), previous record or None)`` to it, in apply
order, and adds its size (key, value and EVENT_OVERHEAD) to ``event_bytes``; whoever set it
drains both (daemon.core.watch).

Ranges. The keys are kept sorted (``sortedcontainers.SortedList``) for ranges, lazily: the
apply loop only appends each created or deleted key to ``touched`` (a C list append, and only
when a key appears or goes, not on overwrites), and the next range folds ``touched`` into the
index. When ``touched`` outgrows the store (plus ``touched_slack``) the loop drops the index
instead, and the next range sorts the keys again. Why SortedList: a well-kept pure-Python
structure with O(log n) insert, delete and position lookups (so a count is two bisects), and
an index that is never on the apply loop's path; a C structure in fastpath would buy nothing
the lazy fold does not, at the cost of a B-tree to write and keep.
"""

from __future__ import annotations

from typing import NamedTuple

from fastpath import EVENT_OVERHEAD, KeyRecord, apply_commands, dumps, loads
from sortedcontainers import SortedList

from daemon.core.messages import (
    OK,
    OP_CAS,
    OP_DELETE,
    OP_LEASE,
    OP_PUT,
    OP_TXN,
    SESSION_EXPIRED,
    STALE,
)

# The 5th item of an image: 3 = records, revisions and leases (a 6th item, {id: ttl}, and a 7th,
# the lease epoch); 2 = no leases; 1 (no 5th item) = values only.
IMAGE_FORMAT = 3
TOUCHED_SLACK = 4096  # created or deleted keys kept for the index beyond the store's size
# An upper bound on the CBOR bytes of one range entry besides its key and value: the array
# head, two string heads and four 64-bit integers.
RANGE_ENTRY_OVERHEAD = 64


class RangeQuery(NamedTuple):
    """A read of the keys in ``[start, end)`` (``end`` b"": every key from ``start`` on;
    None: the key ``start`` alone), at most ``limit`` of them (0: no limit)."""

    start: bytes
    end: bytes | None = None
    limit: int = 0
    keys_only: bool = False
    count_only: bool = False


class RangeResult(NamedTuple):
    """What a range read found: ``kvs`` ((key, KeyRecord) pairs, in key order), ``count`` (the
    keys in the range, whatever the limit), ``more`` (keys in the range after the last in
    ``kvs``), ``keys_only`` (the query's: a reply leaves the values out)."""

    kvs: list
    count: int
    more: bool
    keys_only: bool = False


def prefix_end(prefix: bytes) -> bytes:
    """The end of the range of the keys that start with ``prefix``: the smallest key above
    them all, or b"" (no end) when there is none (``prefix`` empty or all 0xff bytes)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b""
    return stripped[:-1] + bytes([stripped[-1] + 1])


def encode_image(image) -> bytes:
    """A state machine image (KVStore.image) as canonical CBOR, each record as the array
    ``[value, create_revision, mod_revision, version, lease]``."""
    data = {key: list(record.astuple()) for key, record in image[0].items()}
    return dumps([data, *image[1:]])


def decode_image(blob: bytes) -> list:
    """The image ``encode_image`` wrote, as ``KVStore.image`` gives it (records as KeyRecords,
    sessions as tuples); an image of the first format (values only, 3 or 4 items) is read as
    the module docstring says. Raises ValueError, naming what is wrong, if it is not one."""
    image = loads(blob)
    if (type(image) is not list or len(image) not in (3, 4, 5, 6, 7) or type(image[0]) is not dict
            or type(image[1]) is not dict or any(type(n) is not int for n in image[2:5])):
        raise ValueError("not a key-value state machine image")
    fmt = image[4] if len(image) >= 5 else 1
    if fmt not in (1, 2, IMAGE_FORMAT) or len(image) != (7 if fmt == IMAGE_FORMAT else len(image)):
        raise ValueError(f"key-value image format {fmt} with {len(image)} items: this version "
                         f"reads formats 1 to {IMAGE_FORMAT}")
    data, sessions, applied = image[:3]
    leases, epoch = (image[5], image[6]) if fmt == IMAGE_FORMAT else ({}, 0)
    if type(epoch) is not int or epoch < 0:
        raise ValueError(f"key-value image: the lease epoch must be a ballot, got {epoch!r:.60}")
    if type(leases) is not dict or any(type(i) is not int or type(t) is not int
                                       for i, t in leases.items()):
        raise ValueError(f"key-value image: leases must map ids to TTLs, got {leases!r:.60}")
    # An image from before the horizon was kept: take every seq applied so far as expired.
    evicted_at = image[3] if len(image) > 3 else applied
    # Sessions of the first format have no revision: their replies are said to be at the
    # image's (no lower than where they were applied).
    try:
        sessions = {c: tuple(s) if len(s) == 4 else (*s, applied) for c, s in sessions.items()}
        data = {key: _record(value, fmt) for key, value in data.items()}
    except TypeError as exc:  # a field of the wrong type (KeyRecord, len, tuple say which)
        raise ValueError(f"key-value image: {exc}") from None
    for key, record in data.items():
        if record.lease and record.lease not in leases:
            raise ValueError(f"key-value image: key {key!r:.40} is attached to lease "
                             f"{record.lease}, which the image does not hold")
    return [data, sessions, applied, evicted_at, IMAGE_FORMAT, leases, epoch]


def _record(value, fmt: int) -> KeyRecord:
    """A key's record as an image of format ``fmt`` holds it."""
    if fmt == 1:
        if type(value) is not bytes:
            raise ValueError(f"key-value image: a value must be bytes, got {value!r}")
        return KeyRecord(value, 0, 0, 1, 0)  # before revisions were recorded: see the docstring
    if type(value) is not list or len(value) != 5:
        raise ValueError(f"key-value image: a record must be [value, create_revision, "
                         f"mod_revision, version, lease], got {value!r}")
    return KeyRecord(*value)


class KVStore:
    """Keys and values are bytes. ``apply(cmd)`` returns ``(status, result, revision)``."""

    __slots__ = ("data", "sessions", "max_sessions", "applied_commands", "evicted_at",
                 "touched", "touched_slack", "index", "leases", "lease_epoch", "events",
                 "event_bytes")

    def __init__(self, max_sessions: int = 100_000) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.data: dict[bytes, KeyRecord] = {}
        # client_id -> (last seq, status, result, revision); insertion order = least recently
        # used first.
        self.sessions: dict[int, tuple[int, str, object, int]] = {}
        self.max_sessions = max_sessions
        self.applied_commands = 0  # = the revision: see the module docstring
        self.evicted_at = 0  # applied_commands when a session was last evicted
        self.touched: list[bytes] = []  # keys created or deleted since the index was folded
        self.touched_slack = TOUCHED_SLACK
        self.index: SortedList | None = None  # the keys in order, but for ``touched``
        self.leases: dict[int, tuple[int, dict]] = {}  # id -> (ttl, keys attached)
        self.lease_epoch = 0  # the ballot of the latest leader's epoch command (leases)
        self.events: list | None = None  # changes of keys, when someone drains them
        self.event_bytes = 0  # the size of ``events``

    @property
    def revision(self) -> int:
        """The revision of the store: the count of write commands applied."""
        return self.applied_commands

    def get(self, key: bytes) -> bytes | None:
        record = self.data.get(key)
        return None if record is None else record.value

    def record(self, key: bytes) -> KeyRecord | None:
        return self.data.get(key)

    def apply(self, cmd: tuple) -> tuple[str, object, int]:
        client_id, seq = cmd[0], cmd[1]
        sessions = self.sessions
        session = sessions.get(client_id)
        if session is not None:
            last_seq = session[0]
            if seq == last_seq:
                return session[1], session[2], session[3]
            if seq < last_seq:
                return STALE, None, self.applied_commands
            del sessions[client_id]  # re-inserted below, at the most recent end
        elif seq <= self.evicted_at:
            return SESSION_EXPIRED, self.evicted_at, self.applied_commands
        revision = self.applied_commands + 1
        result = self.apply_other(cmd, revision)
        self.applied_commands = revision
        sessions[client_id] = (seq, OK, result, revision)
        if len(sessions) > self.max_sessions:
            del sessions[next(iter(sessions))]
            self.evicted_at = revision
        if len(self.touched) > len(self.data) + self.touched_slack:
            self.touched.clear()
            self.index = None
        return OK, result, revision

    def _write(self, key: bytes, value: bytes, found: KeyRecord | None, revision: int,
               lease: int = 0) -> None:
        """Put ``value`` at ``key`` (``found``: its record, or None) as of ``revision``,
        attached to ``lease`` (0: none; the caller checked that it exists)."""
        if found is None:
            record = KeyRecord(value, revision, revision, 1, lease)
            self.touched.append(key)
        else:
            record = KeyRecord(value, found.create_revision, revision, found.version + 1, lease)
            if found.lease and found.lease != lease:
                del self.leases[found.lease][1][key]
        if lease and (found is None or found.lease != lease):
            self.leases[lease][1][key] = None
        self.data[key] = record
        if self.events is not None:
            self.events.append((revision, key, record, found))
            self.event_bytes += len(key) + len(value) + EVENT_OVERHEAD

    def remove(self, key: bytes, revision: int) -> None:
        """Delete ``key`` (it exists) as of ``revision``, detaching it from its lease."""
        found = self.data.pop(key)
        self.touched.append(key)
        if found.lease:
            del self.leases[found.lease][1][key]
        if self.events is not None:
            self.events.append((revision, key, None, found))
            self.event_bytes += len(key) + EVENT_OVERHEAD

    def apply_other(self, cmd: tuple, revision: int):
        """The result of ``cmd`` applied as the command of ``revision``; its session is the
        caller's to record. The C loop hands over only what it does not do itself: a
        transaction, a lease op, a write to a key attached to a lease. ValueError for an
        unknown op."""
        op, key = cmd[2], cmd[3]
        found = self.data.get(key)
        if op == OP_PUT:
            self._write(key, cmd[4], found, revision)
            return None
        if op == OP_CAS:
            result = (None if found is None else found.value) == cmd[4]
            if result:
                self._write(key, cmd[5], found, revision)
            return result
        if op == OP_DELETE:
            if found is not None:
                self.remove(key, revision)
            return found is not None
        if op == OP_TXN:
            from daemon.core.txn import apply_txn  # txn imports this module
            return apply_txn(self, cmd[4], revision)
        if op == OP_LEASE:
            from daemon.core.leases import apply_lease  # leases imports this module
            return apply_lease(self, cmd[4], revision)
        raise ValueError(f"command {cmd!r}: unknown op {op!r}")

    def apply_batch(self, batch, results: list | None = None) -> None:
        """``apply`` each command of ``batch`` in order, in one C loop (fastpath); with
        ``results``, append each command's ``(status, result, revision)`` to that list."""
        apply_commands(self, batch, results, OP_PUT, OP_DELETE, OP_CAS, OK, STALE, SESSION_EXPIRED)

    # -------------------------------------------------------------------------------- ranges

    def sorted_keys(self) -> SortedList:
        """Every key, in order: the index with ``touched`` folded in (or sorted again)."""
        index = self.index
        touched = self.touched
        if index is None:
            index = self.index = SortedList(self.data)
        elif touched:
            data = self.data
            for key in dict.fromkeys(touched):  # each once, in a deterministic order
                if key in data:
                    if key not in index:
                        index.add(key)
                else:
                    index.discard(key)
        touched.clear()
        return index

    def range(self, query: RangeQuery, max_bytes: int) -> RangeResult:
        """The keys ``query`` asks for, in order, cut where the next entry would take the
        reply past ``max_bytes`` (keys, values and RANGE_ENTRY_OVERHEAD each; the first entry
        always goes in) or past ``query.limit``; ``more`` says whether the range holds keys
        after the last one given."""
        start, end = query.start, query.end
        if end is None:
            record = self.data.get(start)
            found = [] if record is None else [start]
            return self._collect(found, len(found), query, max_bytes)
        keys, count = self.keys_in(start, end)
        return self._collect(keys, count, query, max_bytes)

    def keys_in(self, start: bytes, end: bytes):
        """The keys in ``[start, end)`` (``end`` b"": every key from ``start`` on), in order,
        as an iterator over the sorted index, and how many there are."""
        index = self.sorted_keys()
        lo = index.bisect_left(start)
        hi = index.bisect_left(end) if end else len(index)
        count = max(0, hi - lo)
        return (index.islice(lo, hi) if count else ()), count

    def _collect(self, keys, count: int, query: RangeQuery, max_bytes: int) -> RangeResult:
        if query.count_only:
            return RangeResult([], count, False, query.keys_only)
        data = self.data
        keys_only = query.keys_only
        limit = query.limit or count
        kvs = []
        size = 0
        for key in keys:
            if len(kvs) >= limit:
                break
            record = data[key]
            size += len(key) + RANGE_ENTRY_OVERHEAD + (0 if keys_only else len(record.value))
            if size > max_bytes and kvs:
                break
            kvs.append((key, record))
        return RangeResult(kvs, count, len(kvs) < count, keys_only)

    # -------------------------------------------------------------------------------- images

    def image(self) -> list:
        """A copy of the whole state (dict copies: C-speed); ``encode_image`` turns it into
        bytes, which can happen elsewhere while this store goes on applying commands: records
        are immutable."""
        return [dict(self.data), dict(self.sessions), self.applied_commands, self.evicted_at,
                IMAGE_FORMAT, {i: ttl for i, (ttl, _keys) in self.leases.items()},
                self.lease_epoch]

    @classmethod
    def from_image(cls, image, max_sessions: int = 100_000) -> "KVStore":
        """The store ``image`` (from ``image`` or ``decode_image``) holds."""
        kv = cls(max_sessions)
        data, sessions, kv.applied_commands, kv.evicted_at = image[:4]
        kv.data = dict(data)
        kv.sessions = dict(sessions)
        leases = image[5] if len(image) > 5 else {}
        kv.lease_epoch = image[6] if len(image) > 6 else 0
        kv.leases = {i: (ttl, {}) for i, ttl in sorted(leases.items())}
        for key in sorted(k for k, r in kv.data.items() if r.lease):
            kv.leases[kv.data[key].lease][1][key] = None
        return kv

    def state(self) -> tuple:
        """A comparable image of the replica's state (for the simulator's checks)."""
        return (tuple(sorted((k, r.astuple()) for k, r in self.data.items())),
                tuple((c, (*s[:2], _hashable(s[2]), s[3])) for c, s in self.sessions.items()),
                self.evicted_at, self.applied_commands, self.lease_epoch,
                tuple(sorted((i, ttl, tuple(sorted(keys))) for i, (ttl, keys) in self.leases.items())))


def _hashable(result):
    """A session's result, its lists (a transaction's) as tuples, so that states compare in
    sets."""
    if type(result) is list:
        return tuple(map(_hashable, result))
    return result
