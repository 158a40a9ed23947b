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
  holder counts from), and a keepalive is not acknowledged for a lease whose expiry a previous
  leader already had in the log (the read index covers it: the lease is gone by then).
- A keepalive sets the deadline to ``now + ttl``; one for a lease that is gone, or whose expiry
  is on its way, is answered "not found" (None).
- Each tick, a leader that heard from a quorum of voters within the longest election timeout
  proposes one expiry command (daemon.core.leases) for the leases past their
  deadline; one without that contact expires nothing and starts its clock again (its leases
  get a full TTL once it hears from a quorum). One expiry command is in flight at a time.

Every expiry command has a client id of its own (daemon.core.leases.LEASE_CLIENTS) and the
highest seq, so the store applies it whenever it is chosen. A leader never loses a proposal
while it keeps its ballot (the pipeline retransmits until it is chosen), so the ids of the
expiry in flight are not proposed again until they are gone; a new ballot starts afresh.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from daemon.core.leases import EXPIRY_SEQ, LEASE_CLIENTS, MAX_EXPIRE_IDS, expire_op
from daemon.core.messages import OP_LEASE, command_cost


class LeaseQuery(NamedTuple):
    """A read (daemon.core.reads) that asks the leader's clock: ``op`` "keepalive" or "ttl"."""

    op: str
    lease_id: int


class LeaseClock:
    """The deadlines of the leases, at a leader; ``node`` is the daemon.core.node.Node."""

    __slots__ = ("node", "ballot", "deadlines", "expiring", "proposed_at", "proposed_client")

    def __init__(self, node) -> None:
        self.node = node
        self.ballot = None  # the ballot the deadlines are this node's as leader of
        self.deadlines: dict[int, float] = {}  # lease id -> when it expires
        self.expiring: set[int] = set()  # ids of the expiry command in flight
        self.proposed_at = 0.0
        self.proposed_client = 0  # the client id of the expiry command in flight

    def _own(self) -> None:
        """Start the clock again if this node leads under another ballot than it was kept for."""
        if self.ballot != self.node.ballot:
            self.ballot = self.node.ballot
            self.deadlines.clear()
            self.expiring.clear()

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
        if node.applied_index < node.read_floor:
            return  # a new leader's re-proposals first: an expiry among them is not ours
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
        node = self.node
        client_id = LEASE_CLIENTS | node.rng.getrandbits(62)
        cmd = (client_id, EXPIRY_SEQ, OP_LEASE, b"", expire_op(ids), None)
        node.pending.append(cmd)  # nobody waits for its reply
        node.pending_bytes += command_cost(cmd)
        self.expiring = set(ids)
        self.proposed_at = now
        self.proposed_client = client_id
