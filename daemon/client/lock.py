"""Locks (and leader elections) for the client library, built on leases, transactions and
watch; with fencing tokens the cluster checks.

    async with client.lock("jobs/migrate", ttl=10) as held:
        # held.key, held.revision: the fencing token
        await client.put("jobs/state", "running", fence=held.fence)   # refused once lost

The recipe (etcd's, with its fencing made a server-side check):

- A lock NAME is the keys under ``NAME/``. A contender holds a lease (kept alive while it
  waits and holds) and creates the key ``NAME/<lease id in hex>`` attached to it, in one
  transaction; the key's ``create_revision`` is its place in the queue.
- The holder is the contender whose key has the lowest create revision. Every other waits,
  with a watch, for the deletion of the key just before its own (only that one: when a lock is
  released, one waiter wakes, not all), then looks again.
- The holder's fencing token is its key's create revision. A write fenced with
  ``(key, revision)`` is a transaction that runs only if that key still exists with that
  create revision: once the holder released the lock, or its lease expired (its process died
  or was cut off for longer than the TTL), the key is gone and the write is refused
  (``FencedOut``), at the cluster, whatever the old holder believes. None of etcd, ZooKeeper or
  Consul checks fences for you; here a fenced write cannot land after the lock moved on.
- Releasing deletes the key (and revokes the lease); a holder that dies loses the lock when its
  lease expires, within its TTL plus an election timeout.

An election is the same recipe: the holder is the leader, and the fencing token its term.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from daemon.core.kv import prefix_end
from daemon.client.client import OperationFailed, PaxosdError, _as_bytes
from daemon.client.leases import running

__all__ = ["FencedOut", "HeldLock", "fenced_write", "hold"]


class FencedOut(OperationFailed):
    """A fenced write refused: the lock it names has moved on (its holder's key is gone or was
    made again since)."""

    def __init__(self, fence: tuple[bytes, int]) -> None:
        key, revision = fence
        super().__init__(f"fenced write refused: the lock key {key!r} no longer has create "
                         f"revision {revision} (the lock moved on)")
        self.fence = fence


@dataclass(slots=True)
class HeldLock:
    """A lock this client holds: ``key`` (its key under the lock's name), ``revision`` (the
    fencing token), ``lease`` (the lease keeping it), and ``lost`` (set if the lease was lost
    while held: the lock may be someone else's now)."""

    name: bytes
    key: bytes
    revision: int
    lease: object
    lost: trio.Event = field(default_factory=trio.Event, repr=False)

    @property
    def fence(self) -> tuple[bytes, int]:
        """``(key, revision)``, to pass as ``fence=`` to a write."""
        return self.key, self.revision


def _fence(fence) -> tuple[bytes, int]:
    if (not isinstance(fence, tuple) or len(fence) != 2 or type(fence[1]) is not int
            or fence[1] < 1):
        raise ValueError(f"a fence is (lock key, revision > 0), got {fence!r}")
    return _as_bytes(fence[0], "fence key"), fence[1]


async def fenced_write(client, fence, ops: list, timeout: float | None):
    """Run ``ops`` (daemon.client.txn ops) as one transaction if the lock key of ``fence`` still
    has its create revision; FencedOut if not. Returns the TxnResponse."""
    from daemon.client.txn import compare_create
    key, revision = _fence(fence)
    response = await client.txn([compare_create(key, "=", revision)], ops, [], timeout=timeout)
    if not response.succeeded:
        raise FencedOut((key, revision))
    return response


async def _enqueue(client, name: bytes, lease_id: int) -> tuple[bytes, int]:
    """Create this contender's key (or find it, on a retry); its key and create revision."""
    from daemon.client.txn import compare_create, get_range, put
    key = name + b"/" + b"%016x" % lease_id
    response = await client.txn([compare_create(key, "=", 0)], [put(key, b"", lease_id)],
                                [get_range(key)])
    if response.succeeded:
        return key, response.revision
    return key, response.results[0].kvs[0].create_revision


async def _predecessor(client, name: bytes, revision: int):
    """The key queued just before ``revision`` (None: this contender holds the lock), and the
    revision to watch after: the first reply's (a long queue takes several replies, and a key
    of the first may be deleted before the last is read)."""
    prefix = name + b"/"
    end = prefix_end(prefix)
    found = await client.range(prefix, end, keys_only=True)
    read_at = found.revision
    before = [kv for kv in found.kvs if kv.create_revision < revision]
    while found.more:  # a long queue: read on
        found = await client.range(found.kvs[-1].key + b"\x00", end, keys_only=True)
        before += [kv for kv in found.kvs if kv.create_revision < revision]
    if not before:
        return None, read_at
    return max(before, key=lambda kv: kv.create_revision).key, read_at


async def _wait_deleted(client, key: bytes, after: int) -> None:
    """Return once ``key`` is deleted at a revision above ``after``."""
    async with client.watch(key, start_revision=after + 1) as events:
        async for event in events:
            if event.type == "delete":
                return


@asynccontextmanager
async def hold(client, name, ttl: int, timeout: float | None):
    """Acquire the lock ``name`` (waiting as long as it takes), hold it while the block runs,
    release it after. Yields a HeldLock."""
    name = _as_bytes(name, "lock name")
    if not name or b"\x00" in name:
        raise ValueError(f"a lock name is a non-empty key without NUL bytes, got {name!r}")
    async with client.lease(ttl, timeout=timeout) as lease:
        key, revision = await _enqueue(client, name, lease.id)
        try:
            while True:
                before, read_at = await _predecessor(client, name, revision)
                if before is None:
                    break
                with trio.CancelScope() as scope:
                    async with running(_cancel_when, lease.lost, scope):
                        await _wait_deleted(client, before, read_at)
                if lease.lost.is_set():
                    raise PaxosdError(f"lock {name!r}: the lease was lost while waiting")
            held = HeldLock(name, key, revision, lease)
            async with running(_mark_lost, lease, held):
                yield held
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await client.delete(key, timeout=timeout)
                except PaxosdError:
                    pass  # the lease's revocation (or expiry) deletes it too


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _mark_lost(lease, held: HeldLock) -> None:
    await lease.wait_lost()
    held.lost.set()
