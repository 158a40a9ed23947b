"""The incarnation of a node that starts on an empty data directory: amnesia-safe by default.

An initial member (one the YAML lists without ``join``) that finds no state and no incarnation
file in its data directory is either starting a brand-new cluster or has lost its data (a disk
replaced, a directory wiped, a machine reinstalled) and been restarted by systemd with the same
command line as always. It cannot tell these apart by looking at itself: a wiped node and a
brand-new one hold exactly the same nothing, so its own "I never promised anything" is no
evidence at all. Taking incarnation 0 after a loss would let it vote, as the member the
configuration names, without the promises and accepted values it forgot, and two quorums could
then choose different values for one slot.

So such a node starts *deciding* (``FreshStart``): it sends ``Probe`` to the other initial
members, and until it has decided it promises nothing, accepts nothing, votes for nothing and
does not stand. Each member answers ``ProbeReply``: ``used`` unless it runs incarnation 0 and
has never promised or accepted anything, learned no chosen slot and holds no snapshot (a member
that is itself still deciding holds nothing and answers "not used").

- One "used" answer, from any member: the cluster has run. The node takes a new random
  incarnation, persists it, and rejoins as a learner exactly as ``serve --join`` does; the
  leader makes it a voter again (under the new incarnation) once it has caught up. This is
  always safe: votes from an incarnation the configuration does not name never count. It is
  also the right outcome for an initial member whose directory is empty because it never
  started while the others ran without it.
- "Not used" from EVERY other initial member: the cluster is new, and the node takes
  incarnation 0.

Why every other member, and not just enough of them to meet every quorum (more than
n - quorum)? Because the danger is not only what a quorum holds but what the node itself
promised before it was wiped, to a candidate that counted on that promise. Say five members,
node X promises ballot b to candidate Y, then loses its disk. With only three "not used"
answers (Z, U, V) X would take incarnation 0 while Y, unasked, is still collecting promises
for b; Z then promises b, and Y leads b on the promises of {Y, X-before-the-wipe, Z}. U stands
with a ballot b' < b, wins {U, X, V} (X promised nothing it remembers) and gets v' chosen in
slot 1; X then accepts Y's v under the higher b, so {Y, Z, X} choose v in slot 1 too
(tests/test_amnesia.py plays this out). With every other member answering, the argument
closes:

1. Every answer was given after this start sent its Probe (the Probe carries a nonce that is
   new for every start and only answers echoing it count), so after the node's previous life
   ended.
2. A node persists its own promise before it sends a Prepare, and accepts nothing unless a
   quorum, which always includes some other member, promised first. Every other member
   answered "never promised anything" after the previous life ended, so before that no one
   but the node itself had sent a Prepare, and no one at all had sent an Accept.
3. So the previous life promised only its own ballots and accepted nothing: it held no
   promise another proposer relied on and no value anyone could have learned. Taking
   incarnation 0 with nothing is exactly what a brand-new member does. (A Prepare of its own
   still in flight may be answered by promises to a ballot it reuses; that ballot has had no
   Phase 2, so they are promises like any other.)

What this does not cover: a majority of the members losing their data at once. If every other
member is wiped or has never started too, nothing distinguishes the cluster from a new one;
the data was lost with the disks, as in any consensus system, and the members start afresh.
The same goes for initial members that were removed from the cluster and are started again
on empty directories: they count as members that lost their data (the README says not to).

The price is availability at a cluster's very first start: every initial member must be up.
A brand-new cluster started all at once (``paxosd cluster``, ``make demo``, the tests) decides
in one round trip. A brand-new cluster with a member down waits, and says so in the log; the
operator who knows the cluster is new starts the others with ``serve --new-cluster`` (like
etcd's ``--initial-cluster-state new``), which takes incarnation 0 without asking. Safe stays
the default: the systemd unit passes neither flag.

This module holds the decision as a small pure object the protocol core owns (time is passed
in), and the node's handlers that run it (``probe`` on every tick while deciding,
``on_probe`` and ``on_probe_reply`` for the two messages); ``settle`` turns the decision into
an ``IncarnationChosen`` the driver persists before anything sent after it (daemon.core.node).
"""

from __future__ import annotations

from fastpath import BALLOT_NONE

from daemon.core.messages import IncarnationChosen, Probe, ProbeReply
from daemon.core.roles import ProtocolError

__all__ = ["NEW", "REJOIN", "FreshStart", "on_probe", "on_probe_reply", "probe", "settle"]

PROBE_INTERVAL = 0.05  # seconds between two Probes to a member that has not answered
NEW = "new"  # a new cluster: incarnation 0
REJOIN = "rejoin"  # the cluster has run: a new incarnation, as a learner


def _ids(ids) -> str:
    return ", ".join(map(str, sorted(ids)))


class FreshStart:
    """The evidence gathered by a node deciding its incarnation on an empty data directory.

    ``others`` are the other initial members; ``nonce`` is new for every start (the core uses
    the incarnation it would rejoin under). ``due(now)`` says whom to (re)send a Probe to;
    ``report`` takes each answer. ``decision`` becomes NEW or REJOIN, never to change again,
    with ``why`` in words for the log.
    """

    @classmethod
    def if_unknown(cls, incarnation: int | None, node_id: int, initial_ids, durable, rng,
                   now: float, interval: float = PROBE_INTERVAL) -> FreshStart | None:
        """None when ``incarnation`` is known; else a FreshStart whose nonce is the random
        incarnation to rejoin under (from ``rng.getrandbits``) unless the cluster is new.
        ValueError if ``durable`` (a daemon.core.node.DurableState) holds anything: a node with
        state has an incarnation."""
        if incarnation is not None:
            return None
        if durable is not None and (durable.promised != BALLOT_NONE or durable.log
                                    or durable.commit_index or durable.snapshot is not None):
            raise ValueError(f"node {node_id}: the incarnation is unknown but the data "
                             "directory holds state")
        return cls(node_id, initial_ids, rng.getrandbits(63) or 1, now, interval)

    def __init__(self, node_id: int, initial_ids, nonce: int, now: float,
                 interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"probe interval must be > 0, got {interval}")
        self.id = node_id
        self.others = tuple(sorted(i for i in initial_ids if i != node_id))
        self.nonce = nonce
        self.interval = interval
        self.next_probe = now
        self.empty: set[int] = set()  # other initial members that answered "never promised"
        self.decision: str | None = None
        self.why = ""
        if not self.others:
            self._decide(NEW, "the only initial member: there is no one else to ask")

    @property
    def waiting_for(self) -> tuple:
        """The other initial members that have not answered "never promised" yet."""
        return tuple(i for i in self.others if i not in self.empty)

    def due(self, now: float) -> tuple:
        """Whom to send a Probe to now: every member still awaited, once per interval."""
        if self.decision is not None or now < self.next_probe:
            return ()
        self.next_probe = now + self.interval
        return self.waiting_for

    def report(self, sender: int, nonce: int, used: bool) -> None:
        """An answer from ``sender``; answers to another start's Probe (``nonce``) are ignored."""
        if self.decision is not None or nonce != self.nonce or sender == self.id:
            return
        if used:
            self._decide(REJOIN, f"node {sender} reports that the cluster has run: rejoining as "
                                 "a learner under a new incarnation")
            return
        if sender not in self.others:
            return  # only initial members vouch for a new cluster
        self.empty.add(sender)
        if not self.waiting_for:
            self._decide(NEW, f"every other initial member (nodes {_ids(self.others)}) reports "
                              "that it never promised anything: the cluster is new")

    def _decide(self, decision: str, why: str) -> None:
        self.decision = decision
        self.why = why


# ------------------------------------------------------------------------------ the node's side
# (``node`` is a daemon.core.node.Node; its ``fresh`` is the FreshStart while deciding, else None.)

def probe(node) -> None:
    """(The node's tick while deciding.) Ask the initial members not yet heard from, now and
    then; a decision already reached (a single initial member has no one to ask: at the
    first tick) is settled instead."""
    fresh = node.fresh
    if fresh.decision is not None:
        settle(node)
        return
    for m in fresh.due(node.now):
        node._out.send.append((m, Probe(node.id, fresh.nonce)))


def on_probe(node, msg: Probe) -> None:
    """Answer a Probe: ``used`` unless this node has decided its incarnation, runs
    incarnation 0 and holds nothing (no promise, no accepted or chosen slot, no snapshot).
    Changes nothing here."""
    used = node.fresh is None and bool(
        node.incarnation or node.promised != BALLOT_NONE or node.max_slot
        or node.commit_index or node.snapshot_index)
    node._out.send.append((msg.sender, ProbeReply(node.id, msg.nonce, used)))


def on_probe_reply(node, msg: ProbeReply) -> None:
    """Take an answer to this start's Probe while deciding, and settle once decided."""
    fresh = node.fresh
    if fresh is None:
        return
    fresh.report(msg.sender, msg.nonce, msg.used)
    if fresh.decision is not None:
        settle(node)


def settle(node) -> None:
    """The incarnation is decided: hand it to the driver to persist. Everything that depends
    on it (a Promise, an Accepted) leaves through send_after_persist, so only once it is
    durable.

    Promises: the node is deciding no more, and runs incarnation 0 only if every other
    initial member said the cluster is new."""
    fresh, node.fresh = node.fresh, None
    if fresh.decision == NEW:
        node.incarnation = 0
    elif not node.incarnation:
        raise ProtocolError(f"node {node.id} rejoins under incarnation 0: {fresh.why}")
    node._out.persist.append(IncarnationChosen(node.incarnation, fresh.why))
    node._reset_election_timer()
