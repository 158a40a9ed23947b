"""Deliberately broken cores for the simulator (``python -m tests.simulator --bug NAME``): each
shows that a check sees one class of bug. Register one with ``@bug("name")``.

The three compaction defects a review found (each fixed in daemon.core.node) come back here one by
one: ``promise-gap`` (an equal-ballot Prepare answered after compacting past its from_slot, with
chosen slots left out), ``fills-chosen`` (a new leader that does not look at its promises'
commit indexes and no-op-fills the slots they leave out) and ``acks-skipped`` (an acceptor that
acknowledges slots it skipped as already chosen, holding them or not).
"""

from __future__ import annotations

import dataclasses

from fastpath import BALLOT_CHOSEN

from daemon.core.election import Election
from daemon.core.node import FOLLOWER, Node
from daemon.core.messages import IncarnationChosen, Prepare, Promise, PromiseRecord

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


@bug("promise-gap")
class _PromiseGap(Node):
    """Broken on purpose: a Prepare at the very ballot already promised (a duplicate, or a
    boundary Prepare under the election's ballot) is answered with a Promise even after the
    acceptor compacted past its from_slot, so the chosen slots below the log start are left
    out. (The "behind" refusal held only for a higher ballot.)"""

    def _on_prepare(self, msg):
        if msg.ballot != self.promised or not self._behind(msg):
            super()._on_prepare(msg)
            return
        self._observe(msg.ballot)
        self._promise_what_is_held(msg)

    def _behind(self, msg) -> bool:
        return (self.commit_index - msg.from_slot + 1 > self.config.behind_limit
                or msg.from_slot < self.log_start)

    def _promise_what_is_held(self, msg) -> None:
        log, commit = self.log, self.commit_index
        entries = tuple((s, BALLOT_CHOSEN if s <= commit else log[s][0], log[s][1])
                        for s in range(msg.from_slot, self.max_slot + 1) if s in log)
        self._out.send_after_persist.append(
            (msg.sender, Promise(self.id, msg.ballot, commit, entries, self.incarnation)))

    _handlers = {**Node._handlers, Prepare: _on_prepare}  # (the core dispatches by table)


@bug("fills-chosen")
class _FillsChosen(_PromiseGap):
    """Broken on purpose: a new leader (or one at a configuration boundary) does not look at
    its promises' commit indexes and no-op-fills the slots they leave out. It only acts on a
    gap, so its acceptors leave one whenever they compacted past a Prepare's from_slot, for
    any ballot (with ``promise-gap``'s acceptors gaps are rare). The acceptors' check sees
    the gap first; with ``--skip-check promise-covers`` the leader-side check sees the fill."""

    def _on_prepare(self, msg):
        if msg.ballot < self.promised or msg.from_slot >= self.log_start:
            super()._on_prepare(msg)
            return
        self._observe(msg.ballot)
        if msg.ballot > self.promised:
            self.promised = msg.ballot
            self._out.persist.append(PromiseRecord(msg.ballot))
            if self.role != FOLLOWER and msg.ballot > self.ballot:
                self._step_down(None)
        self._promise_what_is_held(msg)

    class election_type(Election):
        def chosen_unreported(self, promises, best, first):
            return False

    _handlers = {**Node._handlers, Prepare: _on_prepare}


@bug("acks-skipped")
class _AcksSkipped(Node):
    """Broken on purpose: an acceptor acknowledges the whole run of an Accept, the slots it
    skipped as already chosen included, whether or not it still holds them (compacted) and
    whatever value it holds there."""

    def _holds_chosen(self, first, batches):
        return True
