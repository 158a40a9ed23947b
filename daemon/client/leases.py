"""Leases for the client library: the calls behind ``Client.lease_*`` and ``Client.lease``.

    async with client.lease(10) as lease:      # granted, kept alive in the background
        await client.put("services/api/1", "10.0.0.7:80", lease=lease.id)
        ...                                    # the key goes when the lease does
    # revoked on the way out: the key is gone at once

A lease is granted for a TTL in whole seconds (the server raises a TTL shorter than a failover
to its minimum, and says so in ``Lease.ttl``). Keys put with ``lease=ID`` are deleted, through
the log, when the lease is revoked or expires: the cluster's leader expires it once no
keepalive reached it for the TTL (see daemon.core.expiry). ``Client.lease`` sends a keepalive
every third of the TTL; should the lease be lost anyway (the cluster unreachable for longer
than the TTL), ``Lease.lost`` is set and ``Lease.wait_lost`` returns.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from daemon.codec.wire import WireError, decode_lease_result
from daemon.core.leases import check_ttl
from daemon.core.txn import LEASE_NOT_FOUND
from daemon.client.client import OperationFailed, PaxosdError, _as_bytes

__all__ = ["Lease", "LeaseNotFound", "LeaseStatus", "grant", "keep", "keepalive", "lease_result",
           "put_leased", "revoke", "revoke_at", "time_to_live"]

KEEPALIVE_FRACTION = 3  # keepalives per TTL
RETRY_PAUSE = 0.05  # seconds between a failed keepalive and the next


class LeaseNotFound(OperationFailed):
    """The lease named is not there (never granted, revoked or expired)."""

    def __init__(self, lease_id: int) -> None:
        super().__init__(f"lease {lease_id} not found (revoked or expired)")
        self.lease_id = lease_id


@dataclass(slots=True)
class Lease:
    """A granted lease: its ``id`` and ``ttl`` (seconds, as granted); ``lost`` once a
    keepalive found it gone (``Client.lease`` only)."""

    id: int
    ttl: int
    lost: trio.Event = field(default_factory=trio.Event, repr=False)

    async def wait_lost(self) -> None:
        await self.lost.wait()


@dataclass(frozen=True, slots=True)
class LeaseStatus:
    """What ``Client.lease_ttl`` found: the granted ``ttl``, the seconds ``left`` on the
    leader's clock (rounded up), and the ``keys`` attached, in order."""

    id: int
    ttl: int
    left: int
    keys: list[bytes]


def lease_result(op: str, reply):
    """The decoded result of a lease reply; OperationFailed naming ``op`` if malformed."""
    try:
        return decode_lease_result(op, reply.result)
    except WireError as exc:
        raise OperationFailed(f"{op}: {exc}") from None


def _check_id(lease_id) -> int:
    if type(lease_id) is not int or lease_id < 1:
        raise ValueError(f"a lease id is a positive integer, got {lease_id!r}")
    return lease_id


async def grant(client, ttl: int, timeout: float | None,
                session: tuple[int, int] | None = None) -> Lease:
    """Grant a lease of ``ttl`` seconds; ``session``: the ``(client_id, seq)`` to send it
    under (default: one of the client's own), so a retried grant is answered from it."""
    reply = await client._write("lease_grant", b"", check_ttl(ttl, "lease TTL"), None, timeout,
                                session)
    lease_id, granted = lease_result("lease_grant", reply)
    return Lease(lease_id, granted)


async def revoke(client, lease_id: int, timeout: float | None) -> bool:
    return (await revoke_at(client, lease_id, timeout))[0]


async def revoke_at(client, lease_id: int, timeout: float | None,
                    session: tuple[int, int] | None = None) -> tuple[bool, int | None]:
    """Revoke the lease: ``(whether it was there, the revision of the write)``. ``session``:
    as for ``grant``."""
    reply = await client._write("lease_revoke", b"", _check_id(lease_id), None, timeout,
                                session)
    return lease_result("lease_revoke", reply), reply.revision


async def keepalive(client, lease_id: int, timeout: float | None) -> int:
    reply, _ = await client._call("lease_keepalive", b"", _check_id(lease_id), None, 0, 0,
                                  timeout, False)
    ttl = lease_result("lease_keepalive", reply)
    if ttl is None:
        raise LeaseNotFound(lease_id)
    return ttl


async def time_to_live(client, lease_id: int, timeout: float | None) -> LeaseStatus:
    reply, _ = await client._call("lease_ttl", b"", _check_id(lease_id), None, 0, 0, timeout,
                                  False)
    found = lease_result("lease_ttl", reply)
    if found is None:
        raise LeaseNotFound(lease_id)
    return LeaseStatus(lease_id, *found)


async def put_leased(client, key, value, lease_id: int, timeout: float | None) -> int | None:
    """Put ``key`` attached to lease ``lease_id`` (one transaction); its revision."""
    from daemon.client.txn import run_txn  # txn imports the client, as this module does
    op = ["put", _as_bytes(key, "key"), _as_bytes(value, "value"), _check_id(lease_id)]
    response = await run_txn(client, [], [op], [], timeout)
    return response.revision


def lease_refused(result) -> None:
    """Raise LeaseNotFound if a transaction's result says a put named a missing lease."""
    if type(result) in (list, tuple) and len(result) == 2 and result[0] == LEASE_NOT_FOUND:
        raise LeaseNotFound(result[1])


@asynccontextmanager
async def running(fn, *args):
    """Run ``await fn(*args)`` in the background while the block runs; cancel it at the end."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fn, *args)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def keep(client, ttl: int, timeout: float | None):
    """Grant a lease, keep it alive while the block runs, revoke it on the way out."""
    lease = await grant(client, ttl, timeout)
    try:
        async with running(_keep_alive, client, lease):
            yield lease
    finally:
        if not lease.lost.is_set():
            with trio.CancelScope(shield=True):
                try:
                    await revoke(client, lease.id, timeout)
                except PaxosdError:
                    pass  # it expires by itself within its TTL


async def _keep_alive(client, lease: Lease) -> None:
    """Keepalives every TTL / KEEPALIVE_FRACTION, each bounded by that interval; gives up (and
    sets ``lost``) once the lease is gone or a whole TTL passed without an acknowledgement."""
    interval = lease.ttl / KEEPALIVE_FRACTION
    last_ack = trio.current_time()
    while True:
        try:
            await keepalive(client, lease.id, interval)
            last_ack = trio.current_time()
        except LeaseNotFound:
            lease.lost.set()
            return
        except PaxosdError:
            if trio.current_time() - last_ack >= lease.ttl:
                lease.lost.set()
                return
        # After a failure, a short pause: the next try must not spin.
        await trio.sleep_until(max(last_ack + interval, trio.current_time() + RETRY_PAUSE))
