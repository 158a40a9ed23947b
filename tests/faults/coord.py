"""The coordination load of a fault campaign: watches, a lease, transactions and ranges, with
checks that say exactly what they cover.

``Coordination`` runs beside tests.faults.workload's ``Workload`` (single-key put/get/cas on
``k0``..``k<n>``, checked by tests.linearizability, which covers single keys only) against the
same real cluster under the same nemesis. Each part has its own Client(s) and its own keys, and
records what it saw; ``check`` turns the records into violations after the campaign healed.
Times are ``time.monotonic`` (the workload's clock; the servers' trio clock runs at its rate).

Watchers (``watchers`` of them, each with its own Client) watch the prefix ``k`` from the
revision before the load starts. A watch that fails over resumes inside ``Client.watch`` from
the last revision seen + 1. ``WatchCompacted`` is answered by design: list the prefix again
(a range) and watch from the list's revision + 1; the revisions skipped are a *gap*, counted.
``WatchCancelled`` resumes from its ``resume_from``; ``Unavailable`` from the last revision
seen + 1 (neither leaves a gap). Checked, per watcher:

- revisions never go down, and no ``(revision, key)`` comes twice (no repeat across a resume);
- every event is a put of a value some workload write on that key tried (no delete, no
  phantom), and no value comes twice (a write is applied at most once), whatever its outcome;
- every acknowledged put (``Client.put`` returns its revision: the workload keeps it as the
  operation's result) comes exactly once, at that revision, unless its revision lies in a gap;
- every acknowledged cas that swapped comes exactly once (at most once if the watcher had a
  gap: its revision is not known); a cas acknowledged as not swapped never comes;
- after healing, the watcher has seen up to the prefix's last change at the final listing, and
  each key's last event at or below the listing's revision is the listed value at its
  mod_revision; at a re-listing, each listed key last changed before the gap is what the
  watcher last saw of it;
- two watchers saw the same events at the revisions both covered.

Not covered: events of revisions the watcher never reached (it says how far it got), the order
of a cas among the revisions, values the workload never wrote being absent from the store.

The lease keeper grants a lease (``LEASE_TTL`` s: longer than the nemesis holds a fault, 3 s at
most, so a lease normally survives a round), puts ``l/<id>`` on it, renews it by hand every
third of the TTL and reads the key (linearizable gets) all along; after ``LEASE_HELD`` it
revokes the lease (its key must then be gone) and grants the next. ``LAPSE_SHARE`` of the
leases it stops renewing after a second or three and reads on until the key goes (an expiry
due at the last promise's end, under whatever fault is running). A grant (sent at ``c``) and
each acknowledged keepalive (sent at ``c``) promise the lease lives until at least ``c + TTL``:
the leader sets its deadline from its own clock on arrival or later, and a new leader gives a
full TTL again. Checked: no get that began after the put was acknowledged returns the key
absent, and no keepalive answers "not found", by a return time ``t`` before some promise's
``c + TTL``; a get never returns another value. Absence after the promises ran out is allowed
(an expiry): counted, and a new lease is granted. After a revoke is acknowledged the key must
be gone (read once). Not covered: that an expired lease's key goes promptly (the summary says
how late the latest came), the TTL the server keeps.

Transactions, on ``t/``:

- a counter ``t/counter`` moved by compare-on-mod_revision transactions (read it, then
  ``if mod == m: put n + 1``): each applied increment writes a distinct value, so the final
  value F is the number applied. Checked: acknowledged increments wrote distinct values, all
  at most F, in revision order; acknowledged <= F <= acknowledged + outcome unknown; a
  transaction that failed its compare read back a mod_revision other than the one compared.
- accounts ``t/acct/0..3`` created at 100 each by one transaction, moved by two-key transfers
  (compare both mod_revisions, put both): every prefix range (a linearizable read at one
  revision) and every failed transfer's own range sees all four accounts summing to 400 (a
  transaction is atomic, a range reads one revision). Not covered: which transfers applied.

Ranges, on ``r/``: a writer creates keys ``r/<n>`` (each once, a unique value) and deletes
some; a reader lists the prefix or a sub-range, sometimes with a limit, keys only or count
only. Checked per listing: keys sorted, unique and inside the range asked for; no more than the
limit; ``more`` exactly when keys were left out; count at least the keys given, and between
the keys that must be there (created before the listing began, with no delete begun before it
ended) and the keys that may be (creation begun before it ended, deletion not acknowledged
before it began); every key given was created, has its value, version 1, and its create and
mod revision equal the put's (when acknowledged) and at most the listing's revision; a key
that must be there and would fit in the answer is there; a deleted key is not.

Revisions against real time, over every operation with a known revision (the workload's puts,
and here grants, leased puts, transactions, range puts, listings): if A returned before B was
called, B's revision is at least A's, and greater if B is a write (a command takes a revision
of its own). This covers multi-key transactions and ranges as far as their revisions go; it is
not a linearizability check of their contents.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import trio

from daemon.core.kv import prefix_end
from daemon.client.client import (Client, NoLeader, OperationFailed, OutcomeUnknown, PaxosdError,
                                 Unavailable)
from daemon.client.leases import LeaseNotFound
from daemon.client.txn import compare_create, compare_mod, get_range, put
from daemon.client.watch import WatchCancelled, WatchCompacted
from tests.faults import coord_checks as checks
from tests.linearizability import Operation

__all__ = ["Change", "Coordination", "LEASE_TTL", "LeaseEpoch", "LeaseRead", "Promise",
           "RangeRead", "RangeWrite", "RevOp", "WatchLog"]

WATCH_PREFIX = b"k"
LEASE_PREFIX = b"l/"
RANGE_PREFIX = b"r/"
COUNTER_KEY = b"t/counter"
ACCOUNTS = b"t/acct/"
ACCOUNT_COUNT = 4
ACCOUNT_START = 100
TOTAL = ACCOUNT_COUNT * ACCOUNT_START
LEASE_TTL = 5  # seconds: more than the nemesis holds a fault (3 s at most)
LEASE_READ_EVERY = 0.2  # seconds between two reads of the leased key
LEASE_HELD = (6.0, 12.0)  # seconds the keeper holds one lease before it revokes it
LAPSE_SHARE = 0.3  # the leases the keeper stops renewing (after 1 to 3 s), to see them expire
NOT_APPLIED = (Unavailable, NoLeader)  # the client says the write never reached a node


def _now() -> float:
    return time.monotonic()


class Change(NamedTuple):
    """One event a watcher took."""

    revision: int
    key: bytes
    value: bytes | None
    type: str  # "put" or "delete"


class Promise(NamedTuple):
    """A grant or an acknowledged keepalive: the lease lives at least until ``sent + ttl``."""

    sent: float
    ttl: int


class LeaseRead(NamedTuple):
    call: float
    ret: float
    value: bytes | None


class RevOp(NamedTuple):
    """An acknowledged operation with a known revision, for the real-time order check."""

    call: float
    ret: float
    revision: int
    write: bool  # it took a revision of its own (a command), not a read
    what: str


@dataclass
class WatchLog:
    """What one watcher saw: ``events`` (Changes); ``gaps`` the revision intervals ``(after,
    upto]`` skipped at a compaction; ``relists`` as ``(revision, kvs, seen before)``; ``seen``
    the revision up to which every change was taken."""

    name: str
    start: int = 0  # the watch began after this revision
    seen: int = 0
    events: list = field(default_factory=list)
    gaps: list = field(default_factory=list)
    relists: list = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


@dataclass
class LeaseEpoch:
    """One lease the keeper held: its Promises (the grant and every acknowledged keepalive),
    its key's LeaseReads, the keepalives answered "not found" ``(call, ret)``, how it
    ended."""

    id: int
    ttl: int
    key: bytes = b""
    value: bytes = b""
    put_ret: float | None = None  # the leased put's acknowledgement, None if not acknowledged
    promises: list = field(default_factory=list)
    reads: list = field(default_factory=list)
    not_found: list = field(default_factory=list)
    revoked_at: float | None = None
    lapse_after: float | None = None  # seconds after the put when keepalives stop, if they do
    ended: str = ""
    over: trio.Event = field(default_factory=trio.Event)


@dataclass
class RangeWrite:
    """A create (put) or delete of a key under ``r/``; ``ret`` None: outcome unknown."""

    op: str
    key: bytes
    value: bytes | None
    call: float
    ret: float | None
    revision: int | None = None


@dataclass
class RangeRead:
    start: bytes
    end: bytes  # exclusive
    limit: int
    keys_only: bool
    count_only: bool
    call: float
    ret: float
    response: object  # RangeResponse


@dataclass
class Coordination:
    """The coordination load (see the module docstring): ``prepare`` before the workload
    starts, ``run`` beside it, ``finish`` after healing, then ``check``."""

    endpoints: list[str]
    seed: int = 0
    watchers: int = 2
    timeout: float = 1.5
    attempt_timeout: float = 0.4
    # Seconds between two operations of one task, at most: the workload keeps the larger
    # share of the machine (its history is what the linearizability check has).
    think: float = 0.05
    counts: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    logs: list[WatchLog] = field(default_factory=list)
    epochs: list[LeaseEpoch] = field(default_factory=list)
    increments: list = field(default_factory=list)  # acknowledged: (value, revision)
    increments_unknown: list = field(default_factory=list)  # values maybe written
    range_writes: list[RangeWrite] = field(default_factory=list)
    range_reads: list[RangeRead] = field(default_factory=list)
    revops: list[RevOp] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    final_watch: object = None  # the listing of the watched prefix after healing
    final_counter: int | None = None
    _watch_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    _load_done: trio.Event = field(default_factory=trio.Event)

    def _client(self, timeout: float | None = None, first: int = 0) -> Client:
        """A Client of its own; it tries endpoint ``first`` first (so the watchers start on
        different nodes and fail over at different times)."""
        first %= len(self.endpoints)
        return Client(self.endpoints[first:] + self.endpoints[:first],
                      timeout=timeout or self.timeout, attempt_timeout=self.attempt_timeout)

    async def _think(self, rng: random.Random) -> None:
        await trio.sleep(self.think * rng.random())

    # -------------------------------------------------------------------------- phases

    async def prepare(self, timeout: float = 30.0) -> bool:
        """Note the watched prefix's revision and create the accounts (one transaction, whose
        compare makes a retry harmless); False (and a problem noted) if not done in time."""
        deadline = trio.current_time() + timeout
        async with self._client(2.0) as client:
            listing = await _retry(lambda: client.range(WATCH_PREFIX, prefix=True), deadline)
            if listing is None:
                self.problems.append("coordination: the watched prefix could not be listed")
                return False
            for n in range(self.watchers):
                self.logs.append(WatchLog(f"watcher {n}", listing.revision, listing.revision))
            ops = [put(ACCOUNTS + b"%d" % i, b"%d" % ACCOUNT_START) for i in range(ACCOUNT_COUNT)]
            made = await _retry(lambda: client.txn(
                [compare_create(ACCOUNTS + b"0", "=", 0)], ops, []), deadline)
            if made is None:
                self.problems.append("coordination: the accounts could not be created")
                return False
        return True

    async def run(self, stop: trio.Event, deadline: float) -> None:
        """Run the load until ``stop`` (each task then ends its operation within its timeout)
        and the watchers until ``finish`` ends them; nothing goes past ``deadline``."""
        rng = random.Random(f"coord/{self.seed}")
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watchers)
                try:
                    async with trio.open_nursery() as load:
                        load.start_soon(self._lease_keeper, stop, _fork(rng))
                        for _ in range(2):
                            load.start_soon(self._counter, stop, _fork(rng))
                        for _ in range(2):
                            load.start_soon(self._transfers, stop, _fork(rng))
                        load.start_soon(self._range_writer, stop, _fork(rng))
                        load.start_soon(self._range_reader, stop, _fork(rng))
                finally:
                    self._load_done.set()

    async def finish(self, timeout: float = 30.0) -> None:
        """After healing: wait for the load to end, read the final state, let every watcher
        reach the watched prefix's last change (then end them)."""
        if not self.logs:
            return  # prepare failed: nothing ran
        deadline = trio.current_time() + timeout
        with trio.move_on_at(deadline):
            await self._load_done.wait()
        async with self._client(2.0) as client:
            self.final_watch = await _retry(
                lambda: client.range(WATCH_PREFIX, prefix=True), deadline)
            counter = await _retry(lambda: client.range(COUNTER_KEY), deadline)
            if counter is not None:
                self.final_counter = int(counter.kvs[0].value) if counter.kvs else 0
            for _ in range(3):  # final listings, checked as the others are
                await self._list(client, RANGE_PREFIX, prefix_end(RANGE_PREFIX), 0, False, False)
        if self.final_watch is None or self.final_counter is None:
            self.problems.append("coordination: the final state could not be read in 30 s")
        target = checks.last_change(self.final_watch) if self.final_watch is not None else 0
        with trio.move_on_at(deadline):
            while any(log.seen < target for log in self.logs):
                await trio.sleep(0.05)
        self._watch_scope.cancel()

    # -------------------------------------------------------------------------- watchers

    async def _watchers(self) -> None:
        with self._watch_scope:
            async with trio.open_nursery() as nursery:
                for n, log in enumerate(self.logs):
                    nursery.start_soon(self._watcher, log, n)

    async def _watcher(self, log: WatchLog, n: int) -> None:
        """Follow the prefix from ``log.start`` + 1 until cancelled, resuming as the module
        docstring says. Bounded by the cancel scope ``finish`` ends."""
        async with self._client(3.0, first=n) as client:
            while True:
                watch = client.watch(WATCH_PREFIX, prefix=True, start_revision=log.seen + 1)
                try:
                    async with watch:
                        address = watch.address
                        async for event in watch:
                            if watch.address != address:
                                log.counts["failovers"] += 1
                                address = watch.address
                            log.events.append(Change(event.revision, event.key, event.value,
                                                     event.type))
                            log.seen = max(log.seen, event.revision)
                        log.counts["ended"] += 1
                except WatchCompacted:
                    log.counts["compacted"] += 1
                    _taken(log, watch)
                    await self._relist(client, log)
                except WatchCancelled as exc:
                    log.counts["cancelled"] += 1
                    log.seen = max(log.seen, exc.resume_from - 1)
                except PaxosdError as exc:
                    log.counts[f"resumed after {type(exc).__name__}"] += 1
                    _taken(log, watch)
                    await trio.sleep(0.05)

    async def _relist(self, client: Client, log: WatchLog) -> None:
        """List the prefix again after a compaction; the watch goes on after the listing."""
        listing = await _retry(lambda: client.range(WATCH_PREFIX, prefix=True),
                               trio.current_time() + 60)
        if listing is None:
            return  # watched again from where it was: compacted again, listed again
        log.relists.append((listing.revision, listing.kvs, log.seen))
        if listing.revision > log.seen:
            log.gaps.append((log.seen, listing.revision))
            log.seen = listing.revision

    # -------------------------------------------------------------------------- the lease

    async def _lease_keeper(self, stop: trio.Event, rng: random.Random) -> None:
        async with self._client(first=-1) as client:
            while not stop.is_set():
                await self._lease_epoch(client, stop, rng)

    async def _lease_epoch(self, client: Client, stop: trio.Event, rng) -> None:
        """Grant a lease, put its key, keep it and read it until it is lost, ``stop`` or
        LEASE_HELD runs out; then revoke it (if still held) and read the key once more."""
        call = _now()
        try:
            lease = await client.lease_grant(LEASE_TTL)
        except PaxosdError as exc:
            self.counts[f"lease grant failed: {type(exc).__name__}"] += 1
            await trio.sleep(0.1)
            return
        self.revops.append(RevOp(call, _now(), lease.id, True, "lease grant"))
        epoch = LeaseEpoch(lease.id, lease.ttl, LEASE_PREFIX + b"%d" % lease.id,
                           b"lease-%d" % lease.id, promises=[Promise(call, lease.ttl)])
        self.epochs.append(epoch)
        call = _now()
        try:
            revision = await client.put(epoch.key, epoch.value, lease=lease.id)
        except LeaseNotFound:
            epoch.ended = "expired before its key was put"
        except PaxosdError as exc:
            epoch.ended = f"its put failed: {type(exc).__name__}"
        else:
            epoch.put_ret = _now()
            self.revops.append(RevOp(call, epoch.put_ret, revision, True, "leased put"))
            held = rng.uniform(*LEASE_HELD)
            if rng.random() < LAPSE_SHARE:
                epoch.lapse_after = rng.uniform(1.0, 3.0)
                # Its expiry is due a TTL after the last keepalive, later if the leader changes
                # meanwhile (a new leader gives every lease a full TTL).
                held = epoch.lapse_after + epoch.ttl + 8.0
                self.counts["leases let lapse"] += 1
            with trio.move_on_after(held):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._keepalives, client, epoch, stop)
                    nursery.start_soon(self._lease_reads, client, epoch, stop, rng)
        if not epoch.ended:
            await self._revoke(client, epoch)

    async def _keepalives(self, client: Client, epoch: LeaseEpoch, stop: trio.Event) -> None:
        interval = epoch.ttl / 3
        while not stop.is_set() and not epoch.over.is_set():
            call = _now()
            if epoch.lapse_after is not None and call - epoch.put_ret >= epoch.lapse_after:
                return  # let it lapse: the reads go on until the key is gone
            try:
                ttl = await client.lease_keepalive(epoch.id, timeout=interval)
            except LeaseNotFound:
                epoch.not_found.append((call, _now()))
                self._lease_lost(epoch, "a keepalive found it gone")
                return
            except PaxosdError as exc:
                self.counts[f"keepalive failed: {type(exc).__name__}"] += 1
            else:
                epoch.promises.append(Promise(call, ttl))
                self.counts["keepalives acknowledged"] += 1
            with trio.move_on_after(max(0.0, call + interval - _now())):
                await epoch.over.wait()

    async def _lease_reads(self, client: Client, epoch: LeaseEpoch, stop: trio.Event,
                           rng) -> None:
        while not stop.is_set() and not epoch.over.is_set():
            call = _now()
            try:
                value = await client.get(epoch.key)
            except PaxosdError:
                self.counts["leased key reads failed"] += 1
            else:
                epoch.reads.append(LeaseRead(call, _now(), value))
                if value is None:
                    self._lease_lost(epoch, "its key was read absent")
                    return
            with trio.move_on_after(LEASE_READ_EVERY * (0.5 + rng.random())):
                await epoch.over.wait()

    def _lease_lost(self, epoch: LeaseEpoch, how: str) -> None:
        if not epoch.ended:
            epoch.ended = how
            self.counts["lease expiries seen"] += 1
        epoch.over.set()

    async def _revoke(self, client: Client, epoch: LeaseEpoch) -> None:
        epoch.revoked_at = _now()
        epoch.over.set()
        try:
            existed = await client.lease_revoke(epoch.id)
            value = await client.get(epoch.key)
        except PaxosdError as exc:
            epoch.ended = f"revoked (outcome unknown: {type(exc).__name__})"
            return
        epoch.ended = "revoked" if existed else "revoked, found gone"
        if value is not None:  # revoked now or expired before: either way its keys went
            self.violations.append(f"lease {epoch.id}: revoked, but its key {epoch.key!r} is "
                                   f"still there ({value!r})")

    # -------------------------------------------------------------------------- transactions

    async def _counter(self, stop: trio.Event, rng: random.Random) -> None:
        async with self._client() as client:
            while not stop.is_set():
                await self._think(rng)
                listing = await self._list(client, COUNTER_KEY, None, 0, False, False)
                if listing is None:
                    continue
                kv = listing.kvs[0] if listing.kvs else None
                mod, value = (kv.mod_revision, int(kv.value)) if kv else (0, 0)
                response = await self._txn(
                    client, "increment", [compare_mod(COUNTER_KEY, "=", mod)],
                    [put(COUNTER_KEY, b"%d" % (value + 1))], [get_range(COUNTER_KEY)],
                    lambda: self.increments_unknown.append(value + 1))
                if response is None:
                    continue
                if response.succeeded:
                    self.increments.append((value + 1, response.revision))
                    continue
                self.counts["increments that lost the race"] += 1
                now = response.results[0].kvs
                if (now[0].mod_revision if now else 0) == mod:
                    self.violations.append(
                        f"counter: the compare mod_revision == {mod} failed at revision "
                        f"{response.revision}, yet the failure branch read mod_revision {mod}")

    async def _transfers(self, stop: trio.Event, rng: random.Random) -> None:
        async with self._client() as client:
            while not stop.is_set():
                await self._think(rng)
                listing = await self._list(client, ACCOUNTS, prefix_end(ACCOUNTS), 0, False,
                                           False)
                if listing is None:
                    continue
                self._check_accounts(listing, "a listing")
                if len(listing.kvs) != ACCOUNT_COUNT:
                    continue
                a, b = rng.sample(listing.kvs, 2)
                amount = rng.randint(1, 20)
                response = await self._txn(
                    client, "transfer",
                    [compare_mod(a.key, "=", a.mod_revision), compare_mod(b.key, "=",
                                                                          b.mod_revision)],
                    [put(a.key, b"%d" % (int(a.value) - amount)),
                     put(b.key, b"%d" % (int(b.value) + amount))],
                    [get_range(ACCOUNTS, prefix=True)], lambda: None)
                if response is not None and not response.succeeded:
                    self.counts["transfers that lost the race"] += 1
                    self._check_accounts(response.results[0], "a failed transfer's own range")

    def _check_accounts(self, listing, what: str) -> None:
        self.counts["account listings"] += 1
        total = sum(int(kv.value) for kv in listing.kvs)
        if len(listing.kvs) != ACCOUNT_COUNT or total != TOTAL:
            self.violations.append(
                f"accounts: {what} at revision {listing.revision} found {len(listing.kvs)} "
                f"accounts summing to {total}, expected {ACCOUNT_COUNT} summing to {TOTAL}: "
                + ", ".join(f"{kv.key.decode()}={kv.value.decode()}@{kv.mod_revision}"
                            for kv in listing.kvs))

    async def _txn(self, client: Client, what: str, compares, success, failure, unknown):
        """One transaction, recorded: its response, or None (``unknown()`` called when it may
        have been applied)."""
        call = _now()
        try:
            response = await client.txn(compares, success, failure)
        except trio.Cancelled:
            unknown()
            raise
        except NOT_APPLIED as exc:
            self.counts[f"{what} failed: {type(exc).__name__}"] += 1
            return None
        except (OutcomeUnknown, OperationFailed) as exc:
            self.counts[f"{what} unknown: {type(exc).__name__}"] += 1
            unknown()
            return None
        self.revops.append(RevOp(call, _now(), response.revision, True, what))
        self.counts[f"{what} acknowledged"] += 1
        return response

    # -------------------------------------------------------------------------- ranges

    async def _range_writer(self, stop: trio.Event, rng: random.Random) -> None:
        created: list[bytes] = []
        n = 0
        async with self._client() as client:
            while not stop.is_set():
                await self._think(rng)
                if created and rng.random() < 0.3:
                    key = created.pop(rng.randrange(len(created)))
                    await self._range_write(client, "delete", key, None)
                else:
                    n += 1
                    key = RANGE_PREFIX + b"%06d" % n
                    if await self._range_write(client, "create", key, b"r%d" % n):
                        created.append(key)

    async def _range_write(self, client: Client, op: str, key: bytes, value) -> bool:
        """Create or delete ``key``, recorded; True if acknowledged."""
        write = RangeWrite(op, key, value, _now(), None)
        try:
            if op == "create":
                write.revision = await client.put(key, value)
            else:
                await client.delete(key)
        except trio.Cancelled:
            self.range_writes.append(write)
            raise
        except NOT_APPLIED as exc:
            self.counts[f"range {op} failed: {type(exc).__name__}"] += 1
            return False
        except PaxosdError as exc:
            self.counts[f"range {op} unknown: {type(exc).__name__}"] += 1
            self.range_writes.append(write)
            return False
        write.ret = _now()
        self.range_writes.append(write)
        if write.revision is not None:
            self.revops.append(RevOp(write.call, write.ret, write.revision, True, f"range {op}"))
        return True

    async def _range_reader(self, stop: trio.Event, rng: random.Random) -> None:
        async with self._client() as client:
            while not stop.is_set():
                await self._think(rng)
                start, end = RANGE_PREFIX, prefix_end(RANGE_PREFIX)
                if rng.random() < 0.3:  # a sub-range
                    lo = rng.randrange(1, 200)
                    start, end = RANGE_PREFIX + b"%06d" % lo, RANGE_PREFIX + b"%06d" % (lo + 20)
                count_only = rng.random() < 0.1
                await self._list(client, start, end, rng.choice((0, 0, 0, 1, 3, 10)),
                                 not count_only and rng.random() < 0.2, count_only)

    async def _list(self, client: Client, start: bytes, end: bytes | None, limit: int,
                    keys_only: bool, count_only: bool):
        """A range read, recorded (those under ``r/`` for the range checks); None if it
        failed."""
        call = _now()
        try:
            response = await client.range(start, end, limit=limit, keys_only=keys_only,
                                          count_only=count_only)
        except PaxosdError as exc:
            self.counts[f"range failed: {type(exc).__name__}"] += 1
            return None
        ret = _now()
        self.counts["ranges"] += 1
        self.revops.append(RevOp(call, ret, response.revision, False, "range"))
        if start.startswith(RANGE_PREFIX):
            self.range_reads.append(RangeRead(start, end, limit, keys_only, count_only, call,
                                              ret, response))
        return response

    # -------------------------------------------------------------------------- verdict

    def check(self, history: list[Operation]) -> list[str]:
        """Every violation the records show (see the module docstring), also kept in
        ``violations``."""
        found = list(self.violations)
        for log in self.logs:
            found += checks.check_watch(log, history, self.final_watch)
        found += checks.compare_watchers(self.logs)
        found += checks.check_leases(self.epochs)
        found += checks.check_counter(self.increments, self.increments_unknown,
                                      self.final_counter)
        found += checks.check_ranges(self.range_writes, self.range_reads)
        ops = self.revops + [RevOp(op.call, op.ret, op.result, True, "workload put")
                             for op in history if op.op == "put" and op.ret is not None
                             and type(op.result) is int]
        found += checks.check_revision_order(ops)
        self.counts["operations with revisions ordered"] = len(ops)
        self.violations = found
        return found

    def summary(self) -> list[str]:
        """The lines the campaign's summary prints."""
        return checks.summarize(self)

    def dump(self, directory: Path) -> None:
        """Write the records to ``directory`` (after a violation): ``watch-<n>.txt`` (each
        watcher's events, gaps and re-listings) and ``coord.txt`` (the violations, the lease
        epochs, the counter's increments)."""
        for n, log in enumerate(self.logs):
            lines = [f"# {log.name}: watched ({log.start}, {log.seen}], gaps {log.gaps}, "
                     f"re-listed at {[r[0] for r in log.relists]}, {dict(log.counts)}"]
            lines += [f"{e.revision} {e.type} {e.key!r} {e.value!r}" for e in log.events]
            (directory / f"watch-{n}.txt").write_text("\n".join(lines) + "\n")
        lines = [f"VIOLATION {v}" for v in self.violations]
        for e in self.epochs:
            lines.append(f"lease {e.id} ttl {e.ttl} put acknowledged at {e.put_ret} ended "
                         f"{e.ended!r}; promises {[tuple(p) for p in e.promises]}; not found "
                         f"{e.not_found}; reads {[tuple(r) for r in e.reads]}")
        lines.append(f"counter: final {self.final_counter}; acknowledged (value, revision) "
                     f"{sorted(self.increments)}; unknown {sorted(self.increments_unknown)}")
        (directory / "coord.txt").write_text("\n".join(lines) + "\n")


def _taken(log: WatchLog, watch) -> None:
    """After a watch failed: every change up to ``watch.revision`` was taken (the iterator
    yields what it holds before it raises), so the next watch starts after it."""
    if watch.revision is not None:
        log.seen = max(log.seen, watch.revision)


def _fork(rng: random.Random) -> random.Random:
    return random.Random(rng.random())


async def _retry(call, deadline: float):
    """``await call()`` until it answers or trio's clock passes ``deadline`` (then None)."""
    while trio.current_time() < deadline:
        try:
            return await call()
        except PaxosdError:
            await trio.sleep(0.1)
    return None
