"""Phase 1 of Multi-Paxos for one node: standing for election, and again at a boundary.

A node stands with a ballot above every ballot it has seen, persists its own promise, and
sends Prepare(ballot, from_slot) to the voters of the configuration ``from_slot`` is proposed
in. Once a quorum of those voters, each under the incarnation that configuration names, has
promised, the node learns what the promises report chosen, re-proposes the highest-ballot value
of every other reported slot (no-ops in the holes) and leads.

A leader whose window reaches a slot proposed in another configuration runs Phase 1 again,
under its ballot, with a quorum of that configuration, from that slot (the *boundary*): until
those promises are in, no slot from the boundary on is proposed.

The promises rules both share (safety rule 2, and the compaction rules in DESIGN.md):
- a leader proposes only under a ballot a quorum promised, and re-proposes what they report;
- no slot a promise's commit index says is chosen is ever no-op-filled: if the promises do
  not report one, the node steps down and catches up from the member that knows it.

The state of its own is the promises gathered (``promises`` for an election, ``boundary`` at a
boundary). The ballot, the role and everything the leader then runs with live on the node
(daemon.core.node), which this object reads and sets as its protocol step requires.
"""

from __future__ import annotations

from fastpath import BALLOT_CHOSEN, ballot_next

from daemon.core.membership import Configuration
from daemon.core.messages import NOOP, ChosenRecord, Prepare, Promise, PromiseRecord, Reject, TimeoutNow
from daemon.core.roles import CANDIDATE, FOLLOWER, LEADER, ProtocolError

__all__ = ["Election", "best_reported"]


def best_reported(promises, first: int) -> dict[int, tuple[int, tuple]]:
    """slot -> (ballot, batch) of the highest ballot any promise reports, from ``first``."""
    best: dict[int, tuple[int, tuple]] = {}
    for promise in promises:
        for slot, b, batch in promise.entries:
            if slot >= first and (slot not in best or b > best[slot][0]):
                best[slot] = (b, batch)
    return best


class Election:
    """Phase 1 for ``node``: its candidacy (``promises`` from ``from_slot`` in ``prep_config``)
    and, as leader, the promises of a configuration boundary (``boundary`` from
    ``boundary_slot``; None when no boundary is in progress)."""

    def __init__(self, node, initial: Configuration) -> None:
        self.node = node
        self.promises: dict[int, Promise] = {}
        self.from_slot = 0
        self.prep_config: Configuration = initial  # the configuration a Phase 1 runs in
        self.boundary: dict | None = None  # promises for the next configuration (leader)
        self.boundary_slot = 0

    # -------------------------------------------------------------------------- standing

    def may_stand(self) -> bool:
        """A node stands for election only as a voter, under its own incarnation, both now and
        in the latest configuration it knows (a member being removed does not stand)."""
        node = self.node
        if node.fresh is not None:
            return False
        inc = node.incarnation
        return (node.membership.config_at(node.commit_index + 1).votes(node.id, inc)
                and node.configuration.votes(node.id, inc))

    def start(self) -> None:
        """Stand: a ballot above every ballot seen, promised by this node itself.

        Promises: the new ballot is above the node's promise (the promise never goes down) and
        is persisted before any Prepare under it leaves (the Prepares go out through
        send_after_persist), so a restart can never pick the same ballot again.
        """
        node = self.node
        before = node.promised
        node.role = CANDIDATE
        node.leader_id = None
        ballot = ballot_next(max(node.max_seen, node.promised), node.id)
        node.ballot = ballot
        node.max_seen = ballot
        self.promises = {}
        self.from_slot = node.commit_index + 1
        self.prep_config = node.membership.config_at(self.from_slot)
        node.promised = ballot
        node._out.persist.append(PromiseRecord(ballot))
        prepare = Prepare(node.id, ballot, self.from_slot)
        for m in self.prep_config.voters:
            node._out.send_after_persist.append((m, prepare))
        node._reset_election_timer()
        if not ballot > before:
            raise ProtocolError(f"node {node.id}: ballot {ballot:#x} does not exceed the "
                                f"promise {before:#x}")

    def on_promise(self, msg: Promise) -> None:
        """Count a Promise for this node's ballot: towards its candidacy, or (as leader) towards
        the boundary in progress. Only voters of the configuration the Prepare went to count,
        under the incarnation it names; a quorum of them completes that Phase 1."""
        node = self.node
        if msg.ballot != node.ballot:
            return
        if node.role == CANDIDATE:
            cfg = self.prep_config
            if cfg.votes(msg.sender, msg.incarnation):
                self.promises[msg.sender] = msg
                if len(self.promises) >= len(cfg.voters) // 2 + 1:
                    self.become_leader()
        elif node.role == LEADER and self.boundary is not None:
            cfg = node.membership.config_at(self.boundary_slot)
            if cfg.votes(msg.sender, msg.incarnation):
                self.boundary[msg.sender] = msg
                if len(self.boundary) >= len(cfg.voters) // 2 + 1:
                    self.finish_boundary(cfg)

    def become_leader(self) -> None:
        """A quorum promised ``node.ballot``: learn what the promises report chosen, re-propose
        the highest-ballot value of every other reported slot and no-ops in the holes, then
        lead.

        Promises: every slot up to the highest commit index among the promises is learned as
        chosen (never no-op-filled); if the promises do not report one of them, this node
        does not lead but steps down and catches up. Commit never passes what is chosen. The
        re-proposals start right after the commit index, and reads wait until they are chosen.
        """
        node = self.node
        ballot = node.ballot
        best = self.best_reported(self.promises.values(), node.commit_index + 1)
        if self.chosen_unreported(self.promises.values(), best, node.commit_index + 1):
            return
        # Values the promises report chosen are learned at once, as a contiguous run.
        chosen = []
        slot = node.commit_index + 1
        while slot in best and best[slot][0] == BALLOT_CHOSEN:
            chosen.append(best.pop(slot)[1])
            slot += 1
        if chosen:
            start = node.commit_index + 1
            for i, batch in enumerate(chosen):
                node.log[start + i] = (BALLOT_CHOSEN, batch)
            node.max_slot = max(node.max_slot, start + len(chosen) - 1)
            node._out.persist.append(ChosenRecord(start, tuple(chosen)))
            node._set_commit(start + len(chosen) - 1)
        queued = node.queued_batches
        top = max(best, default=node.commit_index)
        for s in range(node.commit_index + 1, top + 1):
            entry = best.get(s)
            if entry is not None and entry[0] == BALLOT_CHOSEN:
                raise ProtocolError(f"slot {s} reported chosen beyond a hole in the chosen prefix")
            queued.append(entry[1] if entry is not None else NOOP)
        if not queued:
            queued.append(NOOP)
        # Reads wait until every re-proposed slot is chosen: only then does the commit index
        # cover everything a previous leader may have acknowledged.
        node.read_floor = node.commit_index + len(queued)
        node.role = LEADER
        node.leader_id = node.id
        self.promises = {}
        node._use(self.prep_config)
        node.tracker.reset(ballot, node.commit_index)
        node.window.reset(node.commit_index + 1)
        node.contact = {m: node.now for m in node.members}
        node.heard = {}  # voter -> last Accepted under its incarnation
        node.voter_commit = 0  # the highest commit index a voter reported under this ballot
        node.peer_read_round = {m: 0 for m in node.voters}
        node.last_progress = node.now
        node.pipeline.fill_window()

    best_reported = staticmethod(best_reported)

    def chosen_unreported(self, promises, best: dict, first: int) -> bool:
        """Whether a promise's commit index says a slot from ``first`` on is chosen that no
        promise reports chosen. Then this node must not fill it: it steps down and asks the
        member that knows for the chosen slots (it stands again once caught up)."""
        node = self.node
        source = max(promises, key=lambda p: p.commit_index)
        for slot in range(first, source.commit_index + 1):
            entry = best.get(slot)
            if entry is None or entry[0] != BALLOT_CHOSEN:
                node._step_down(None)
                node.catchup.ask(source.sender)
                return True
        return False

    def on_reject(self, msg: Reject) -> None:
        """A higher promise makes a leader or candidate step down. A refusal at its own ballot
        from a member that knows more chosen slots (it compacted past our Prepare, or we are
        too far behind) sends a candidate, and a leader stuck at a configuration boundary, to
        catch up from it instead of asking again and again.

        Promises: afterwards this node neither leads nor stands under a ballot below the
        promise the Reject reports."""
        node = self.node
        node._observe(msg.promised)
        if node.role != FOLLOWER and msg.promised > node.ballot:
            node._step_down(None)
        elif (node.role == LEADER and self.boundary is not None and msg.ballot == node.ballot
              and msg.commit_index > node.commit_index):
            node._step_down(None)
        if node.role != LEADER and msg.commit_index > node.commit_index:
            node.catchup.ask(msg.sender)
        if node.role != FOLLOWER and node.ballot < msg.promised:
            raise ProtocolError(f"node {node.id} is still {node.role} at ballot {node.ballot:#x} "
                                f"after a Reject reporting promise {msg.promised:#x}")

    # -------------------------------------------------------------------------- boundary

    def start_boundary(self, cfg: Configuration, slot: int) -> None:
        """Slots from ``slot`` on are proposed in ``cfg``: Phase 1 with a quorum of it first.
        A leader that is not a voter of ``cfg`` hands over to one that is and steps down."""
        node = self.node
        if not cfg.votes(node.id, node.incarnation) and node.active.votes(node.id, node.incarnation):
            # Leaving: hand over to a voter of the new configuration and step down.
            target = None
            heard = sorted(((node.contact.get(m, -1e9), m) for m in cfg.voters), reverse=True)
            if heard:
                target = heard[0][1]
                node._out.send.append((target, TimeoutNow(node.id, node.ballot)))
            node._step_down(target)
            return
        self.boundary = {}
        self.boundary_slot = slot
        self.send_boundary_prepare()

    def send_boundary_prepare(self) -> None:
        """Send the boundary Prepare to the voters of the boundary's configuration that have
        not promised yet (again now and then: a Prepare may be lost like any message)."""
        node = self.node
        boundary = self.boundary
        prepare = Prepare(node.id, node.ballot, self.boundary_slot)
        for m in node.membership.config_at(self.boundary_slot).voters:
            if m not in boundary:
                node._out.send.append((m, prepare))

    def finish_boundary(self, cfg: Configuration) -> None:
        """A quorum of ``cfg`` promised this leader's ballot from the boundary slot: re-propose
        what they report there (the highest ballot per slot, chosen values first) and no-ops
        in the holes, then lead in ``cfg``.

        Promises: no slot that a promise's commit index says is chosen is no-op-filled; if the
        promises do not report every such slot, this node steps down and catches up instead.
        Otherwise the boundary is over, the fence lifted, and ``cfg`` is the one in use.
        """
        node = self.node
        slot = self.boundary_slot
        best = self.best_reported(self.boundary.values(), slot)
        if self.chosen_unreported(self.boundary.values(), best, slot):
            return
        self.boundary = None
        queued = node.queued_batches
        queued.clear()
        node.membership.lift_fence()
        for s in range(slot, max(best, default=slot - 1) + 1):
            entry = best.get(s)
            queued.append(entry[1] if entry is not None else NOOP)
        if not queued:
            queued.append(NOOP)  # a slot chosen in this configuration, for reads
        node.read_floor = max(node.read_floor, slot - 1 + len(queued))
        contact = node.contact
        node._use(cfg)
        node.tracker.reset(node.ballot, node.commit_index)
        node.contact = {m: contact.get(m, node.now) for m in cfg.ids}
        node.peer_read_round = {m: node.peer_read_round.get(m, 0) for m in cfg.voters}
        if node.active is not cfg:
            raise ProtocolError(f"node {node.id}: the boundary at slot {slot} ended outside its "
                                "configuration")

