"""Leases in the state machine: grant, revoke, expire, and the keys attached to them.

A lease is a TTL and the keys attached to it (a put names the lease: a transaction's put op
``["put", key, value, lease]``, see daemon.core.txn). When a lease ends, by a revoke or by the
leader's decision that it expired (daemon.core.expiry), every key attached to it is deleted, in
key order, by that one command: at one revision, as one group of events.

Every lease op is one log command ``(client_id, seq, OP_LEASE, b"", blob, None)``, ``blob`` the
canonical CBOR of the op:

- ``["grant", ttl]``  -> ``[id, ttl]``. The id is the grant's revision: unique, deterministic,
  increasing. ``ttl`` is in whole seconds, from ``MIN_TTL`` (the server raises a shorter one to
  the minimum for its election timeout, ``min_ttl``, as etcd does) to ``MAX_TTL``.
- ``["revoke", id]``  -> True if the lease was there (its keys are deleted), else False.
- ``["epoch", ballot]``  -> the store's lease epoch, raised to ``ballot``: a leader's first
  lease command under its ballot (daemon.core.expiry). It answers no keepalive and proposes no
  expiry before its epoch command is applied.
- ``["expire", ballot, [id, ...]]``  -> the count of leases it ended. Proposed only by the
  leader of ``ballot``, under a reserved client id (``LEASE_CLIENTS``); an id that is gone
  (revoked, or already expired by an earlier copy) is skipped, so expiry is idempotent. An
  expiry decided under a ballot below the store's lease epoch is stale and ends nothing: a
  later leader has started its clock since (giving every lease a full TTL, and perhaps renewing
  it), and Paxos may still choose a proposal a deposed leader left behind, after the new
  leader's epoch. So every expiry that takes effect was decided by the leader whose epoch was
  the latest, and no other leader answered a keepalive in between.

Keepalives and time-to-live questions are not commands: the leader answers them from its clock
after a read-index round (daemon.core.expiry), since a lease's deadline is the leader's, not the
state machine's (nothing here reads a clock).
"""

from __future__ import annotations

import math

from fastpath import U64_MAX, dumps, loads

__all__ = ["EXPIRY_SEQ", "LEASE_CLIENTS", "LeaseError", "apply_lease", "decode_lease_op",
           "epoch_op", "expire_op", "grant_op", "min_ttl", "revoke_op"]

# Client ids from LEASE_CLIENTS on are the leader's expiry commands' (no client may use them):
# each expiry command has a client id of its own, drawn at random from that range, and seq
# U64_MAX, so the store always applies it (no session to be stale against; above every
# eviction horizon).
LEASE_CLIENTS = 1 << 63
EXPIRY_SEQ = U64_MAX
MIN_TTL = 1  # seconds
MAX_TTL = 9_000_000_000  # seconds (etcd's bound)
MAX_EXPIRE_IDS = 1024  # lease ids in one expiry command
LEASE_OPS = ("grant", "revoke", "epoch", "expire")


class LeaseError(ValueError):
    """A lease op of the wrong shape; the text names the field and what was wrong."""


def min_ttl(election_timeout: tuple[float, float]) -> int:
    """The shortest TTL a server grants with this election timeout: a lease must outlive a
    failover (a new leader is elected within about twice the longest timeout), else it could
    expire while its holder looks for the new leader."""
    return max(MIN_TTL, math.ceil(2 * election_timeout[1]))


def _id(value, where: str) -> int:
    if type(value) is not int or not 1 <= value <= U64_MAX:
        raise LeaseError(f"{where}: expected a lease id in [1, {U64_MAX}], got {value!r:.60}")
    return value


def check_ttl(value, where: str = "ttl") -> int:
    """``value`` as a TTL in seconds; LeaseError naming ``where`` if it is not one."""
    if type(value) is not int or not MIN_TTL <= value <= MAX_TTL:
        raise LeaseError(f"{where}: expected whole seconds in [{MIN_TTL}, {MAX_TTL}], "
                         f"got {value!r:.60}")
    return value


def grant_op(ttl: int) -> bytes:
    return dumps(["grant", check_ttl(ttl)])


def revoke_op(lease_id: int) -> bytes:
    return dumps(["revoke", _id(lease_id, "lease id")])


def epoch_op(ballot: int) -> bytes:
    return dumps(["epoch", ballot])


def expire_op(ballot: int, ids) -> bytes:
    return dumps(["expire", ballot, [_id(i, "lease id") for i in ids]])


def decode_lease_op(blob) -> tuple:
    """The checked op ``(name, argument, ballot)`` a command's blob holds (``ballot`` 0 but for
    epoch and expire); LeaseError if none."""
    try:
        op = loads(blob) if type(blob) is bytes else None
    except ValueError as exc:
        raise LeaseError(f"lease op: not CBOR: {exc}") from None
    if (type(op) is not list or len(op) not in (2, 3) or op[0] not in LEASE_OPS
            or type(op[0]) is not str or len(op) != (3 if op[0] == "expire" else 2)):
        raise LeaseError(f"lease op: expected [grant|revoke|epoch, argument] or [expire, "
                         f"ballot, ids], got {op!r:.60}")
    name = op[0]
    if name == "grant":
        return name, check_ttl(op[1], "lease grant.ttl"), 0
    if name == "revoke":
        return name, _id(op[1], "lease revoke.id"), 0
    ballot = _ballot(op[1], f"lease {name}.ballot")
    if name == "epoch":
        return name, None, ballot
    ids = op[2]
    if type(ids) is not list or not 1 <= len(ids) <= MAX_EXPIRE_IDS:
        raise LeaseError(f"lease expire: expected 1 to {MAX_EXPIRE_IDS} ids, got {ids!r:.60}")
    return name, [_id(i, f"lease expire[{n}]") for n, i in enumerate(ids)], ballot


def _ballot(value, where: str) -> int:
    if type(value) is not int or not 1 <= value <= U64_MAX:
        raise LeaseError(f"{where}: expected a ballot in [1, {U64_MAX}], got {value!r:.60}")
    return value


def apply_lease(kv, blob: bytes, revision: int):
    """Apply the lease op ``blob`` holds to the store ``kv`` (daemon.core.kv.KVStore) as the
    command of ``revision``; its result as the module docstring says. Deterministic."""
    name, arg, ballot = decode_lease_op(blob)
    if name == "grant":
        kv.leases[revision] = (arg, {})
        return [revision, arg]
    if name == "revoke":
        return end_lease(kv, arg, revision)
    if name == "epoch":
        kv.lease_epoch = max(kv.lease_epoch, ballot)
        return kv.lease_epoch
    if ballot < kv.lease_epoch:
        return 0  # decided before a later leader started its clock: stale
    return sum(end_lease(kv, lease_id, revision) for lease_id in arg)


def end_lease(kv, lease_id: int, revision: int) -> bool:
    """End lease ``lease_id`` (if it is there), deleting its keys in key order."""
    lease = kv.leases.get(lease_id)
    if lease is None:
        return False
    for key in sorted(lease[1]):
        kv.remove(key, revision)
    del kv.leases[lease_id]
    return True
