"""Deliberately broken cores for the simulator (``python -m tests.simulator --bug NAME``): each
shows that a check sees one class of bug. Register one with ``@bug("name")``.

The three compaction defects a review found (each fixed in daemon.core.node) come back here one by
one: ``promise-gap`` (an equal-ballot Prepare answered after compacting past its from_slot, with
chosen slots left out), ``fills-chosen`` (a new leader that does not look at its promises'
commit indexes and no-op-fills the slots they leave out) and ``acks-skipped`` (an acceptor that
acknowledges slots it skipped as already chosen, holding them or not). ``local-range`` answers
range reads from local state (tests/sim_reads.py's check sees it). ``keepalive-unconfirmed``,
``lease-clock-kept`` and ``no-lease-epoch`` break the leader's lease clock (tests/sim_leases.py's
and tests/sim_reads.py's checks see them).
"""

from __future__ import annotations

import dataclasses

from fastpath import BALLOT_CHOSEN

from daemon.core.acceptor import Acceptor
from daemon.core.election import Election
from daemon.core.expiry import LeaseClock, LeaseQuery
from daemon.core.node import FOLLOWER, LEADER, Node
from daemon.core.messages import OK, IncarnationChosen, Promise, PromiseRecord, Reply
from daemon.core.reads import RANGE_REPLY_MARGIN

BUGS: dict = {}  # name -> a deliberately broken Node subclass (python -m tests.simulator --bug)


def bug(name: str):
    """Register the decorated Node subclass as the broken core ``--bug name`` runs."""
    def register(cls):
        if name in BUGS:
            raise ValueError(f"a bug named {name!r} is already registered")
        BUGS[name] = cls
        return cls
    return register


@bug("answers-before-persist")
class _AnswersBeforePersist(Node):
    """Broken on purpose: Promise and Accepted leave before the records they vouch for."""

    def ready(self):
        out = super().ready()
        out.send.extend(out.send_after_persist)
        out.send_after_persist = []
        return out


@bug("skips-reproposal")
class _SkipsReproposal(Node):
    """Broken on purpose: a new leader ignores the values its promises report."""

    class election_type(Election):
        def become_leader(self):
            for promise in self.promises.values():
                object.__setattr__(promise, "entries", ())
            super().become_leader()


@bug("forgets-promise")
class _ForgetsPromise(Node):
    """Broken on purpose: the promise is never written to the log."""

    def ready(self):
        out = super().ready()
        out.persist = [r for r in out.persist if type(r).__name__ != "PromiseRecord"]
        return out


@bug("ignores-incarnation")
class _IgnoresIncarnation(Node):
    """Broken on purpose: a promise counts whatever incarnation it comes from, so a member
    whose disk was wiped answers a Prepare without the values it had accepted."""

    def receive(self, msg, now):
        if type(msg).__name__ == "Promise":
            for cfg in self.membership.configs + [self.active, self.election.prep_config]:
                m = cfg.get(msg.sender)
                if m is not None and m.voter:
                    msg = dataclasses.replace(msg, incarnation=m.incarnation)
                    break
        super().receive(msg, now)


@bug("trusts-an-empty-disk")
class _TrustsAnEmptyDisk(Node):
    """Broken on purpose: the old default. A member restarted on an empty data directory
    takes incarnation 0 at once and votes without the promises it forgot."""

    def __init__(self, node_id, members, config, rng, now, durable=None, incarnation=0):
        super().__init__(node_id, members, config, rng, now, durable,
                         0 if incarnation is None else incarnation)
        if incarnation is None:
            self._out.persist.append(IncarnationChosen(0, "taken on its own word"))


class _WithAcceptor(Node):
    """A core whose acceptor is ``acceptor_class`` (a broken one) instead of the real one."""

    acceptor_class = Acceptor

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.acceptor = self.acceptor_class(self)  # (the core dispatches through node.acceptor)


class _PromiseGapAcceptor(Acceptor):
    """See ``promise-gap``."""

    def on_prepare(self, msg):
        node = self.node
        if msg.ballot != node.promised or not self._behind(msg):
            super().on_prepare(msg)
            return
        node._observe(msg.ballot)
        self._promise_what_is_held(msg)

    def _behind(self, msg) -> bool:
        node = self.node
        return (node.commit_index - msg.from_slot + 1 > node.config.behind_limit
                or msg.from_slot < node.log_start)

    def _promise_what_is_held(self, msg) -> None:
        node = self.node
        log, commit = node.log, node.commit_index
        entries = tuple((s, BALLOT_CHOSEN if s <= commit else log[s][0], log[s][1])
                        for s in range(msg.from_slot, node.max_slot + 1) if s in log)
        node._out.send_after_persist.append(
            (msg.sender, Promise(node.id, msg.ballot, commit, entries, node.incarnation)))


@bug("promise-gap")
class _PromiseGap(_WithAcceptor):
    """Broken on purpose: a Prepare at the very ballot already promised (a duplicate, or a
    boundary Prepare under the election's ballot) is answered with a Promise even after the
    acceptor compacted past its from_slot, so the chosen slots below the log start are left
    out. (The "behind" refusal held only for a higher ballot.)"""

    acceptor_class = _PromiseGapAcceptor


class _FillsChosenAcceptor(_PromiseGapAcceptor):
    """See ``fills-chosen``: a Prepare from below the log start is answered with what is
    held, for any ballot."""

    def on_prepare(self, msg):
        node = self.node
        if msg.ballot < node.promised or msg.from_slot >= node.log_start:
            super().on_prepare(msg)
            return
        node._observe(msg.ballot)
        if msg.ballot > node.promised:
            node.promised = msg.ballot
            node._out.persist.append(PromiseRecord(msg.ballot))
            if node.role != FOLLOWER and msg.ballot > node.ballot:
                node._step_down(None)
        self._promise_what_is_held(msg)


@bug("fills-chosen")
class _FillsChosen(_WithAcceptor):
    """Broken on purpose: a new leader (or one at a configuration boundary) does not look at
    its promises' commit indexes and no-op-fills the slots they leave out. It only acts on a
    gap, so its acceptors leave one whenever they compacted past a Prepare's from_slot, for
    any ballot (with ``promise-gap``'s acceptors gaps are rare). The acceptors' check sees
    the gap first; with ``--skip-check promise-covers`` the leader-side check sees the fill."""

    acceptor_class = _FillsChosenAcceptor

    class election_type(Election):
        def chosen_unreported(self, promises, best, first):
            return False


class _AcksSkippedAcceptor(Acceptor):
    """See ``acks-skipped``."""

    def holds_chosen(self, first, batches):
        return True


@bug("acks-skipped")
class _AcksSkipped(_WithAcceptor):
    """Broken on purpose: an acceptor acknowledges the whole run of an Accept, the slots it
    skipped as already chosen included, whether or not it still holds them (compacted) and
    whatever value it holds there."""

    acceptor_class = _AcksSkippedAcceptor


@bug("local-range")
class _LocalRange(Node):
    """Broken on purpose: a range read is answered at once from this node's applied state,
    leader or not, without the read index (so it may be stale)."""

    def read(self, req, key, now):
        if type(key) is bytes:
            return super().read(req, key, now)
        self.now = now
        kv = self.kv
        self._out.replies.append(Reply(req, OK, kv.range(key, self.config.max_message_bytes
                                                         - RANGE_REPLY_MARGIN), None, kv.revision))


@bug("keepalive-unconfirmed")
class _KeepaliveUnconfirmed(Node):
    """Broken on purpose: a node that believes it leads answers a keepalive at once from its
    own clock, without a read-index round (a deposed leader renews leases the new one expires)."""

    def read(self, req, key, now):
        if type(key) is not LeaseQuery or self.role != LEADER:
            return super().read(req, key, now)
        self.now = now
        self._out.replies.append(Reply(req, OK, self.lease_clock.answer(key, now), None,
                                       self.kv.revision))


@bug("lease-clock-kept")
class _LeaseClockKept(Node):
    """Broken on purpose: a leader keeps its lease deadlines from an earlier ballot (so a lease
    another leader renewed meanwhile expires on the old deadline)."""

    class _KeptClock(LeaseClock):
        __slots__ = ()

        def _own(self):
            self.ballot = self.node.ballot

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lease_clock = self._KeptClock(self)


@bug("no-lease-epoch")
class _NoLeaseEpoch(Node):
    """Broken on purpose: a leader renews and expires leases without its epoch command first,
    so an expiry a deposed leader left behind can be chosen after another leader renewed the
    lease (the bug seed 319208 found)."""

    class _NoEpochClock(LeaseClock):
        __slots__ = ()

        def ready(self):
            self._own()
            return True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lease_clock = self._NoEpochClock(self)
