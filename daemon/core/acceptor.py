"""The acceptor: what a node promises and accepts, what it learns from the commit index that
comes with an Accept, and how it compacts its log below a snapshot.

The acceptor's state is the node's (``promised``, ``log``, ``max_slot``, ``commit_index``,
``log_start``: elections, catch-up and status read it too); this object holds the rules:

- the promise never goes down (a Prepare or Accept below it is refused with a Reject);
- a Promise covers ``[from_slot, commit_index]`` in full or is not sent;
- an Accepted acknowledges only slots held at its ballot, after they are persisted;
- a chosen slot never changes: a slot known chosen is never rewritten by an Accept;
- the commit index is taken from an Accept only over slots held at the Accept's ballot.
"""

from __future__ import annotations

from fastpath import BALLOT_CHOSEN, BALLOT_NONE

from daemon.core.messages import (
    AcceptRecord,
    Accept,
    Accepted,
    ChosenRecord,
    CommitRecord,
    Prepare,
    Promise,
    PromiseRecord,
    Reject,
    Snapshot,
    batch_cost,
)
from daemon.core.roles import FOLLOWER, ProtocolError


class Acceptor:
    """The acceptor and its log, for one node."""

    __slots__ = ("node",)

    def __init__(self, node) -> None:
        self.node = node

    def on_prepare(self, msg: Prepare) -> None:
        """Promise ``msg.ballot`` and report every slot from ``msg.from_slot`` up: chosen ones
        (up to the commit index at least) as BALLOT_CHOSEN, the rest at the ballot held.

        Promises: a Promise covers ``[from_slot, commit_index]`` in full, or none is sent; an
        acceptor that compacted past ``from_slot``, or is too far ahead to report it all,
        refuses with a Reject carrying its commit index, whatever the ballot (an equal one
        too: a duplicated Prepare, a boundary Prepare under the election's ballot), so the
        candidate catches up instead of taking a gap for a hole. The promise never goes down.
        """
        node = self.node
        b = msg.ballot
        node._observe(b)
        behind = (node.commit_index - msg.from_slot + 1 > node.config.behind_limit
                  or msg.from_slot < node.log_start)
        if b < node.promised or behind:
            node._out.send.append((msg.sender, Reject(node.id, b, node.promised, node.commit_index)))
            return
        if b > node.promised:
            node.promised = b
            node._out.persist.append(PromiseRecord(b))
            if node.role != FOLLOWER and b > node.ballot:
                # Clients are sent to the node we handed over to, if this is it standing.
                handover = node.handoff.handover
                handed = handover is not None and handover.target == msg.sender
                node._step_down(msg.sender if handed else None)
        log = node.log
        commit = node.commit_index
        entries = []
        size = 0
        for slot in range(msg.from_slot, node.max_slot + 1):
            entry = log.get(slot)
            if entry is not None:
                entries.append((slot, BALLOT_CHOSEN if slot <= commit else entry[0], entry[1]))
                size += batch_cost(entry[1])
        if size > 2 * node.config.max_message_bytes:
            # Too much to report in one message: the candidate must catch up first. The
            # promise itself stands (it is already in the log), which is always safe.
            node._out.send.append((msg.sender, Reject(node.id, b, node.promised, node.commit_index)))
            return
        covered = sum(1 for e in entries if e[0] <= commit)
        if covered != max(0, commit - msg.from_slot + 1):
            raise ProtocolError(f"node {node.id}: a Promise from slot {msg.from_slot} would report "
                                f"{covered} of the chosen slots up to {commit}")
        node._out.send_after_persist.append(
            (msg.sender, Promise(node.id, b, commit, tuple(entries), node.incarnation)))

    def on_accept(self, msg: Accept) -> None:
        """Accept the run if ``msg.ballot`` is at least the promise, raising the promise to it;
        learn the commit index that came with it.

        Promises: an Accepted goes out only after what it acknowledges is persisted, and it
        acknowledges only slots this node holds at that ballot. A slot already known chosen is
        kept (never rewritten) and acknowledged only if the Accept carries the very value it
        holds chosen: an acceptor never lends its vote to a value it knows was not chosen.
        The promise never goes down.
        """
        node = self.node
        b = msg.ballot
        node._observe(b)
        if b < node.promised:
            node._out.send.append((msg.sender, Reject(node.id, b, node.promised, node.commit_index)))
            return
        if msg.sender != node.id:
            if node.role != FOLLOWER:
                node._step_down(msg.sender)  # a leader with a ballot >= ours is live
            node.leader_id = msg.sender
            node._reset_election_timer()
        raised = b > node.promised
        if raised:
            node.promised = b
        batches = msg.batches
        first = msg.first_slot
        last = first + len(batches) - 1
        acked = first
        if batches:
            # Slots already known chosen keep their value; accept the rest of the run.
            commit = node.commit_index
            skip = max(0, commit + 1 - first)
            if skip and not self.holds_chosen(first, batches[:skip]):
                acked = min(first + skip, last + 1)
            if skip < len(batches):
                log = node.log
                start = first + skip
                assert start > commit, "an Accept never rewrites a chosen slot"
                if raised or any(log.get(s, (BALLOT_NONE,))[0] != b for s in range(start, last + 1)):
                    run = batches[skip:] if skip else batches
                    for i, batch in enumerate(run):
                        log[start + i] = (b, batch)
                    if last > node.max_slot:
                        node.max_slot = last
                    node._out.persist.append(AcceptRecord(b, start, run))
                    raised = False
        if raised:
            node._out.persist.append(PromiseRecord(b))
        node._out.send_after_persist.append(
            (msg.sender, Accepted(node.id, b, acked, last, msg.read_round, node.commit_index,
                                  node.incarnation)))
        if msg.commit_index > node.commit_index:
            self.learn_commit(msg.commit_index, b, msg.sender)

    def holds_chosen(self, first: int, batches: tuple) -> bool:
        """Whether this node holds ``batches`` as the chosen values of slots from ``first``
        (a retransmit or a re-proposal of what it already learned; compacted slots cannot be
        compared, so they are not acknowledged)."""
        log = self.node.log
        for i, batch in enumerate(batches):
            entry = log.get(first + i)
            if entry is None or entry[1] != batch:
                return False
        return True

    def learn_commit(self, commit_index: int, ballot: int, source: int) -> None:
        """Take slots up to ``commit_index`` as chosen where this node holds them at ``ballot``
        (the ballot the commit index came with); ask ``source`` for the rest.

        Promises: the commit index moves only forward, and only over slots held at
        ``ballot`` or already known chosen (a value accepted under an older ballot may never
        have been chosen: it is asked for instead).
        """
        node = self.node
        log = node.log
        slot = node.commit_index
        while slot < commit_index:
            entry = log.get(slot + 1)
            if entry is None or (entry[0] != ballot and entry[0] != BALLOT_CHOSEN):
                break
            slot += 1
        if slot > node.commit_index:
            node._set_commit(slot)
        if commit_index > node.commit_index:
            node.catchup.ask(source)

    def take_snapshot(self) -> None:
        """Snapshot the state machine at the applied index and compact the log below it,
        keeping ``log_retain`` chosen slots for followers slightly behind.

        Promises: only applied (so chosen) slots are dropped; the Snapshot handed out to
        persist rebuilds the acceptor state above it.
        """
        node = self.node
        index = node.applied_index
        image = node.kv.image()
        node.snapshot_index, node.snapshot_image = index, image
        node._out.persist.append(Snapshot(index, image, self.checkpoint(index)))
        log = node.log
        start = max(node.log_start, index - node.config.log_retain + 1)
        for slot in range(node.log_start, start):
            log.pop(slot, None)
        node.log_start = start
        assert start <= node.applied_index + 1, "compaction never drops a slot not yet applied"

    def checkpoint(self, index: int) -> tuple:
        """Records that rebuild the acceptor state above ``index`` on top of a snapshot there:
        the promise, the log above ``index`` in runs by ballot, and the commit index."""
        node = self.node
        log = node.log
        records = [PromiseRecord(node.promised)]
        run_ballot, run_first, run = None, 0, []

        def close_run():
            records.append(ChosenRecord(run_first, tuple(run)) if run_ballot == BALLOT_CHOSEN
                           else AcceptRecord(run_ballot, run_first, tuple(run)))

        for slot in range(index + 1, node.max_slot + 1):
            entry = log.get(slot)
            if run and (entry is None or entry[0] != run_ballot or slot != run_first + len(run)):
                close_run()
                run = []
            if entry is not None:
                if not run:
                    run_ballot, run_first = entry[0], slot
                run.append(entry[1])
        if run:
            close_run()
        records.append(CommitRecord(node.commit_index))
        return tuple(records)
