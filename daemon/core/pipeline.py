"""The leader's Accept pipeline: client commands into batches, batches into slots of the window,
Accepts out, Accepteds in, chosen slots released in order.

    pending commands --take_batch--> a batch --fill_window--> a slot of the window
        --broadcast_accept--> Accept to every member --on_accepted--> the quorum tracker
        --on_chosen--> the commit index (Node._set_commit applies and answers clients)

The window (fastpath.SlotWindow) bounds the slots in flight; the quorum tracker
(fastpath.QuorumTracker) says when a quorum of voters holds a slot at this leader's ballot.
Both, the queue of re-proposals and the pending commands belong to the node (elections and
configuration changes reset them); this object holds the work done on them.

This is the hot path: the work here is per batch and per message, never per command beyond
what fastpath does (batches are taken as whole tuples, costs summed only when a run is cut).
"""

from __future__ import annotations

from fastpath import BALLOT_CHOSEN

from daemon.core.membership import (
    CONFIG_CLIENT,
    Member,
    config_batch,
    config_of_batch,
    decode_configuration,
)
from daemon.core.messages import (
    CMD_CLIENT,
    NOOP,
    Accept,
    Accepted,
    ChosenRecord,
    batch_cost,
    command_cost,
)
from daemon.core.roles import LEADER, ProtocolError


def runs(first: int, last: int, batch_of, limit: int):
    """Slots first..last as (start, batches) runs, each within ``limit`` bytes (a batch larger
    than ``limit`` goes alone)."""
    start, batches, size = first, [], 0
    for slot in range(first, last + 1):
        batch = batch_of(slot)
        cost = batch_cost(batch)
        if batches and size + cost > limit:
            yield start, tuple(batches)
            start, batches, size = slot, [], 0
        batches.append(batch)
        size += cost
    if batches:
        yield start, tuple(batches)


class AcceptPipeline:
    """Proposing and confirming slots, for one node while it leads."""

    __slots__ = ("node", "last_broadcast")

    def __init__(self, node) -> None:
        self.node = node
        self.last_broadcast = node.now  # when an Accept (or heartbeat) last went to everyone

    def fill_window(self) -> None:
        """Open slots while the window has room: re-proposals first, then a membership change,
        then client commands, then (idle, with a configuration pending) no-ops; send them as
        Accepts, in runs that fit the message limit.

        Promises: no slot at or beyond the fence (the effective slot of a configuration
        command not yet chosen) is opened, nor any while a boundary Phase 1 runs; a slot
        proposed in another configuration than the active one first starts that boundary.
        """
        node = self.node
        window = node.window
        queued = node.queued_batches
        membership, election, handoff = node.membership, node.election, node.handoff
        configs = membership.configs
        limit = node.config.max_message_bytes
        first = window.next_slot
        batches = []
        run_bytes = 0
        while window.has_room():
            slot = window.next_slot
            if slot >= membership.fence or election.boundary is not None:
                break  # wait for the configuration command to be chosen / for promises
            if node.active is not configs[-1] and membership.config_at(slot) != node.active:
                if not window.in_flight:
                    if batches:
                        self.broadcast_accept(first, tuple(batches))
                        batches = []
                    election.start_boundary(membership.config_at(slot), slot)
                break
            if queued:
                batch = queued.popleft()
                cost = batch_cost(batch)
                if len(batch) == 1 and batch[0][CMD_CLIENT] == CONFIG_CLIENT:
                    self.fence_for(slot, batch)
            elif (membership.pending_change is not None and handoff.handover is None
                  and not membership.fence_slot):
                batch = self._change_batch(slot)
                cost = batch_cost(batch)
            elif node.pending and handoff.handover is None:
                before = node.pending_bytes
                batch = self.take_batch()
                cost = before - node.pending_bytes
            elif slot < configs[-1].effective and node.active is not configs[-1]:
                batch = NOOP  # idle: no-ops bring the next configuration into effect
                cost = batch_cost(batch)
            else:
                break
            if batches and run_bytes + cost > limit:
                self.broadcast_accept(first, tuple(batches))
                first, batches, run_bytes = window.next_slot, [], 0
            window.open(batch)
            batches.append(batch)
            run_bytes += cost
        if batches:
            self.broadcast_accept(first, tuple(batches))
        if window.next_slot > node.membership.fence and node.membership.fence_slot:
            raise ProtocolError(f"node {node.id}: slot {window.next_slot - 1} opened beyond the "
                                f"fence at {node.membership.fence}")

    def _change_batch(self, slot: int) -> tuple:
        """The pending membership change as the configuration command of ``slot``, fencing
        the slots from its effective slot until it is chosen."""
        # (Not while another configuration command is in flight: one re-proposed from the
        # promises may be, though none was when the change was asked for.)
        node = self.node
        req, members = node.membership.pending_change
        node.membership.pending_change = None
        # Configurations take effect in the order they are chosen, whatever window the
        # leader that proposed the one before had.
        latest = node.membership.configs[-1]
        effective = max(slot + node.config.window, latest.effective + 1)
        batch = config_batch(slot, effective, members, latest)
        node.membership.fence, node.membership.fence_slot = effective, slot
        if req is not None:
            node.membership.change_waiting[slot] = req
        return batch

    def fence_for(self, slot: int, batch: tuple) -> None:
        """A re-proposed configuration command in ``slot``: no slot from its effective slot
        on until it is chosen. Promises: the fence only comes down here, never goes up."""
        node = self.node
        value = config_of_batch(batch)
        if value is not None:
            effective = decode_configuration(value)[0].effective
            if effective < node.membership.fence:
                node.membership.fence, node.membership.fence_slot = effective, slot

    def take_batch(self) -> tuple:
        """The next batch of pending commands, in arrival order: all of them if they fit
        max_batch_commands and max_batch_bytes, else the longest prefix that does (at least
        one command). Promises: ``node.pending_bytes`` stays the cost of what is pending."""
        node = self.node
        pending = node.pending
        cfg = node.config
        if len(pending) <= cfg.max_batch_commands and node.pending_bytes <= cfg.max_batch_bytes:
            batch = tuple(pending)
            pending.clear()
            node.pending_bytes = 0
            return batch
        size = 0
        n = 0
        limit = min(len(pending), cfg.max_batch_commands)
        while n < limit:
            cost = command_cost(pending[n])
            if n and size + cost > cfg.max_batch_bytes:
                break
            size += cost
            n += 1
        batch = tuple(pending[:n])
        del pending[:n]
        node.pending_bytes -= size
        return batch

    def broadcast_accept(self, first_slot: int, batches: tuple) -> None:
        """Send ``batches`` from ``first_slot`` to every member (this node too: its own vote
        counts once its write is durable), or, with no batches, a heartbeat to the peers. It
        carries the commit index and the current read round.

        Promises: the read round counts as sent (a read arriving next opens a new one)."""
        node = self.node
        reads = node.reads
        msg = Accept(node.id, node.ballot, node.commit_index, first_slot, batches, reads.round)
        reads.round_sent = True
        send = node._out.send
        for m in (node.members if batches else node.peers):
            send.append((m, msg))
        self.last_broadcast = node.now

    def retransmit(self) -> None:
        """Resend in-flight slots to each peer that has not acknowledged them, from the first
        it has not acknowledged, in runs that fit the message limit.

        Promises: only slots in the window are resent, with the values first proposed there,
        under this leader's ballot."""
        node = self.node
        window = node.window
        tracker = node.tracker
        index = node.index
        send = node._out.send
        limit = node.config.max_message_bytes
        read_round = node.reads.round
        for m in node.voters:
            if m == node.id:
                continue
            bit = 1 << index[m]
            first = None
            for slot in range(window.first_slot, window.next_slot):
                if not tracker.acked(slot) & bit:
                    first = slot
                    break
            if first is None:
                continue
            for start, batches in runs(first, window.next_slot - 1, window.get, limit):
                send.append((m, Accept(node.id, node.ballot, node.commit_index, start, batches,
                                       read_round)))
        node.reads.round_sent = True
        node.last_progress = node.now

    def on_accepted(self, msg: Accepted) -> None:
        """A member holds slots at this leader's ballot: count its vote (a voter under the
        incarnation the configuration names) or its progress (a learner), note the read round
        and commit index it reports, and release what a quorum now holds.

        Promises: only Accepteds for this leader's ballot count, and only from voters under
        their configured incarnation.
        """
        node = self.node
        if node.role != LEADER or msg.ballot != node.ballot:
            return
        sender = msg.sender
        if node.vote_incarnation.get(sender, -1) != msg.incarnation:
            self.learner_progress(msg)  # a learner, or a member back under a new incarnation
            return
        node.contact[sender] = node.heard[sender] = node.now
        if msg.commit_index > node.voter_commit:
            node.voter_commit = msg.commit_index
        peer_read_round = node.peer_read_round
        if msg.read_round > peer_read_round[sender]:
            peer_read_round[sender] = msg.read_round
        if msg.first_slot <= msg.last_slot:
            new = node.tracker.record(node.index[sender], msg.ballot, msg.first_slot, msg.last_slot)
            if new != -1:
                self.on_chosen(new)
        reads = node.reads
        if reads.queue:
            reads.serve()

    def learner_progress(self, msg: Accepted) -> None:
        """Make a learner a voter once it has caught up (under the incarnation it runs).
        Promises: at most one membership change at a time, none during a hand-over."""
        node = self.node
        sender = msg.sender
        latest = node.membership.configs[-1]
        member = latest.get(sender)
        if (member is None or (member.voter and member.incarnation == msg.incarnation)
                or msg.commit_index + node.config.catchup_slots < node.commit_index
                or node.handoff.handover is not None or node.membership.in_progress()):
            return
        promoted = Member(sender, member.peer, member.client, True, msg.incarnation)
        node.membership.pending_change = (None, latest.with_member(promoted))

    def on_chosen(self, commit_index: int) -> None:
        """A quorum holds every slot up to ``commit_index`` at this leader's ballot: release
        them from the window and commit them.

        Promises: commit never passes what a quorum accepted (the slots released are exactly
        those the window had in flight up to ``commit_index``); a slot this node does not hold
        at its ballot is written chosen, with the value the quorum holds.
        """
        node = self.node
        start = node.commit_index + 1
        if not start <= commit_index < node.window.next_slot:
            raise ProtocolError(f"node {node.id}: slots {start}..{commit_index} reported chosen, "
                                f"but slots up to {node.window.next_slot - 1} are proposed")
        batches = node.window.advance(commit_index)
        if len(batches) != commit_index - start + 1:
            raise ProtocolError(f"window released {len(batches)} batches for slots {start}..{commit_index}")
        log = node.log
        ballot = node.ballot
        missing = False
        for i, batch in enumerate(batches):
            slot = start + i
            entry = log.get(slot)
            if entry is None or entry[0] != ballot:
                missing = True
                log[slot] = (BALLOT_CHOSEN, batch)
        if commit_index > node.max_slot:
            node.max_slot = commit_index
        if missing:
            node._out.persist.append(ChosenRecord(start, tuple(batches)))
        node.last_progress = node.now
        node._set_commit(commit_index)
