"""The leader's lease clock: keepalives, time-to-live, and the decision that a lease expired.

A lease's deadline lives only in the leader's memory, on its monotonic clock (the ``now`` the
driver passes in): the state machine holds TTLs, never times, and clients never send one.

- A leader starts every lease it has not yet seen at ``now + ttl``: a new leader (or one that
  regained a quorum) extends every lease by its TTL before it expires any, so a failover never
  expires a lease by itself. The clock belongs to one ballot: it starts again with each.
- A keepalive, and a time-to-live question, are reads (daemon.core.reads): answered only after
  a quorum confirmed this leader's ballot since the request arrived, and after the state
  machine applied the read index. So a deposed leader acknowledges no keepalive (the new leader,
  elected after that confirmation, starts the lease at its own ``now + ttl``, later than the
  holder counts from).
- The epoch. Before a leader answers any keepalive or proposes any expiry under its ballot, it
  proposes an epoch command (daemon.core.leases) and waits until its store has applied it. The
  store skips an expiry decided under a ballot below its epoch. Without this, an expiry a
  deposed leader proposed and only a minority accepted could still be chosen later (a leader
  after the next one may find it in its Phase 1 and propose it again) and end a lease that the
  leader in between had renewed. With it, an expiry that takes effect was decided by the leader
  of the latest epoch, and every earlier expiry either took effect before that epoch (and the
  lease was gone before any keepalive of that leader) or takes none.
- A keepalive sets the deadline to ``now + ttl``; one for a lease that is gone, or whose expiry
  is on its way, is answered "not found" (None).
Every expiry command has a client id of its own (daemon.core.leases.LEASE_CLIENTS) and the
highest seq, so the store applies it whenever it is chosen. A leader never loses a proposal
while it keeps its ballot (the pipeline retransmits until it is chosen), so the ids of the
expiry in flight are not proposed again until they are gone; a new ballot starts afresh.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from daemon.core.leases import EXPIRY_SEQ, LEASE_CLIENTS, MAX_EXPIRE_IDS, epoch_op, expire_op
from daemon.core.messages import OP_LEASE, command_cost


class LeaseQuery(NamedTuple):
    """A read (daemon.core.reads) that asks the leader's clock: ``op`` "keepalive" or "ttl"."""

    op: str
    lease_id: int


class LeaseClock:
    """The deadlines of the leases, at a leader; ``node`` is the daemon.core.node.Node."""

    __slots__ = ("node", "ballot", "deadlines", "expiring", "proposed_at", "proposed_client",
                 "epoch_proposed")

    def __init__(self, node) -> None:
        self.node = node
        self.ballot = None  # the ballot the deadlines are this node's as leader of
        self.deadlines: dict[int, float] = {}  # lease id -> when it expires
        self.expiring: set[int] = set()  # ids of the expiry command in flight
        self.proposed_at = 0.0
        self.proposed_client = 0  # the client id of the expiry command in flight
        self.epoch_proposed = False  # this ballot's epoch command is on its way

    def _own(self) -> None:
        """Start the clock again if this node leads under another ballot than it was kept for."""
        if self.ballot != self.node.ballot:
            self.ballot = self.node.ballot
            self.deadlines.clear()
            self.expiring.clear()
            self.epoch_proposed = False

    def ready(self) -> bool:
        """Whether this leader's epoch is in effect (its store applied the epoch command of its
        ballot); if not, the command is proposed (once per ballot)."""
        self._own()
        node = self.node
        if node.kv.lease_epoch == node.ballot:
            return True
        if not self.epoch_proposed:
            self.epoch_proposed = True
            self._submit(epoch_op(node.ballot))
        return False

    def answer(self, query: LeaseQuery, now: float):
        """The result of a confirmed LeaseQuery."""
        if query.op == "keepalive":
            return self.keepalive(query.lease_id, now)
        return self.time_to_live(query.lease_id, now)

    def keepalive(self, lease_id: int, now: float) -> int | None:
        """A confirmed keepalive: the lease's TTL (its deadline now + TTL), or None if it is
        gone or its expiry is on its way."""
        self._own()
        lease = self.node.kv.leases.get(lease_id)
        if lease is None or lease_id in self.expiring:
            return None
        self.deadlines[lease_id] = now + lease[0]
        return lease[0]

    def time_to_live(self, lease_id: int, now: float) -> list | None:
        """``[granted TTL, seconds left (rounded up), keys attached (sorted)]``, or None if the
        lease is gone."""
        self._own()
        lease = self.node.kv.leases.get(lease_id)
        if lease is None:
            return None
        deadline = self.deadlines.setdefault(lease_id, now + lease[0])
        left = 0 if lease_id in self.expiring else max(0, math.ceil(deadline - now))
        return [lease[0], left, sorted(lease[1])]

    def tick(self, now: float) -> None:
        """At a leader: propose the expiry of the leases past their deadline, if it may."""
        self._own()
        node = self.node
        leases = node.kv.leases
        if self.expiring:
            self.expiring.intersection_update(leases)
            if self.expiring:
                return  # one expiry in flight at a time
        if not self._quorum_heard(now):
            self.deadlines.clear()  # full TTLs again once a quorum is heard from
            return
        if not leases or not self.ready():
            return
        deadlines = self.deadlines
        due = []
        for lease_id, (ttl, _keys) in leases.items():
            deadline = deadlines.get(lease_id)
            if deadline is None:
                deadlines[lease_id] = now + ttl
            elif deadline <= now:
                due.append(lease_id)
                if len(due) == MAX_EXPIRE_IDS:
                    break
        if len(deadlines) > 2 * len(leases) + 64:  # forget the deadlines of leases gone
            for lease_id in [i for i in deadlines if i not in leases]:
                del deadlines[lease_id]
        if due:
            self._propose(due, now)

    def _quorum_heard(self, now: float) -> bool:
        node = self.node
        since = now - node.config.election_timeout[1]
        heard = node.heard
        fresh = sum(1 for m in node.voters if m == node.id or heard.get(m, -1e18) >= since)
        return fresh >= node.quorum

    def _propose(self, ids: list, now: float) -> None:
        self.proposed_client = self._submit(expire_op(self.node.ballot, ids))
        self.expiring = set(ids)
        self.proposed_at = now

    def _submit(self, blob: bytes) -> int:
        """Queue the lease command ``blob`` under a client id of its own; that id."""
        node = self.node
        client_id = LEASE_CLIENTS | node.rng.getrandbits(62)
        cmd = (client_id, EXPIRY_SEQ, OP_LEASE, b"", blob, None)
        node.pending.append(cmd)  # nobody waits for its reply
        node.pending_bytes += command_cost(cmd)
        return client_id
