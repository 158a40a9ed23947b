"""The simulator's safety checks, run on every step of a run (see tests.simulator).

Learner side:
- no two nodes learn different values for a slot (checked when a commit index advances, before
  compaction can drop the values), and a node's chosen log never changes;
- an applied prefix never changes: each node's applied history is a hash chain over the batches
  it applied, slot by slot; every node, in every boot, must reach the same link at each slot;
  snapshots taken or installed at one slot hold the same state machine image everywhere.

Acceptor side, on every message a node answers with:
- a Promise answering Prepare(b, from_slot) covers [from_slot, its commit index]: every slot
  there is reported, with its chosen value (an acceptor that compacted past from_slot must refuse
  instead, whatever the ballot);
- an Accepted(b, first..last) answering an Accept covers only slots the acceptor holds at b
  with the value the Accept carried, or holds chosen with that same value (in its log: a slot
  it compacted away is not held);
- a node's promise never goes down: not within a boot, and not across a restart below what
  its completed writes made durable;
- a Promise or Accepted for ballot b leaves only once the node's disk holds a promise of at
  least b (safety rule 1, checked on what the driver actually sends).

Leader side, when a node starts to lead (or finishes Phase 1 at a configuration boundary):
- every slot up to the highest commit index among the promises it counted is either learned or
  proposed with its chosen value: no slot a promise says is chosen is filled with anything else.
"""

from __future__ import annotations

import hashlib

from fastpath import BALLOT_CHOSEN

from daemon.core.catchup import CatchupExchange
from daemon.core.node import LEADER
from daemon.core.messages import Accept, Accepted, Prepare, Promise


class Violation(AssertionError):
    """A safety or liveness property failed; the message says which and where."""


GENESIS = b""


# Checks that may be switched off (python -m tests.simulator --skip-check NAME), to see what a
# defect leads to past the first check it trips.
OPTIONAL_CHECKS = ("promise-covers", "accepted-holds", "applied-history", "leader-fills")


class Checker:
    """What the cluster has learned, and the checks against it."""

    def __init__(self, skip=()) -> None:
        unknown = set(skip) - set(OPTIONAL_CHECKS)
        if unknown:
            raise ValueError(f"unknown checks {sorted(unknown)}: expected some of {OPTIONAL_CHECKS}")
        self.check_promises = "promise-covers" not in skip
        self.check_accepted = "accepted-holds" not in skip
        self.check_history = "applied-history" not in skip
        self.check_leader = "leader-fills" not in skip
        self.chosen: dict[int, tuple] = {}  # slot -> the batch chosen there
        self.chosen_commands: set[tuple[int, int]] = set()
        self.chain: dict[int, bytes] = {0: GENESIS}  # slot -> the applied history's link there
        self.images: dict[int, bytes] = {}  # snapshot index -> encoded state machine image

    def node_class(self, base):
        """``base`` (a Node class), with commit, apply and snapshot install reported here."""
        checker = self

        class CheckedCatchupExchange(CatchupExchange):
            def install_snapshot(self, index, image, blob):
                super().install_snapshot(index, image, blob)
                self.node.sim_chain = (index, checker.chain.get(index))

        class Checked(base):
            def _set_commit(self, commit_index):
                checker.learned(self, commit_index)
                super()._set_commit(commit_index)

            def _apply(self):
                start, end = self.applied_index, self.commit_index
                log = self.log
                batches = [log[s][1] for s in range(start + 1, end + 1)] if end > start else ()
                super()._apply()
                if batches and checker.check_history:
                    checker.applied(self, start, batches)

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.catchup = CheckedCatchupExchange(self)

            class election_type(base.election_type):
                def become_leader(self):
                    node, promises = self.node, list(self.promises.values())
                    super().become_leader()
                    if node.role == LEADER and checker.check_leader:
                        checker.leads(node, promises, node.commit_index + 1)

                def finish_boundary(self, cfg):
                    node = self.node
                    promises, first = list(self.boundary.values()), self.boundary_slot
                    super().finish_boundary(cfg)
                    if node.role == LEADER and self.boundary is None and checker.check_leader:
                        checker.leads(node, promises, first)

        return Checked

    # -------------------------------------------------------------------------- leader

    def leads(self, node, promises, first: int) -> None:
        """``node`` leads on ``promises``, learning up to ``first - 1`` and proposing from
        ``first``: every slot a promise's commit index covers gets its chosen value."""
        window, queued = node.window, node.queued_batches
        for promise in promises:
            for slot in range(first, promise.commit_index + 1):
                if slot < window.next_slot:
                    proposed = window.get(slot)
                elif slot - window.next_slot < len(queued):
                    proposed = queued[slot - window.next_slot]
                else:
                    proposed = None
                want = self.chosen.get(slot)
                if want is None or proposed != want:
                    raise Violation(
                        f"node {node.id} leads at ballot {node.ballot:#x} proposing {proposed!r} "
                        f"for slot {slot}, which node {promise.sender}'s Promise (commit index "
                        f"{promise.commit_index}) says is chosen as {want!r}")

    # -------------------------------------------------------------------------- learner

    def learned(self, node, commit_index: int) -> None:
        chosen = self.chosen
        log = node.log
        for slot in range(node.commit_index + 1, commit_index + 1):
            batch = log[slot][1]
            known = chosen.get(slot)
            if known is None:
                chosen[slot] = batch
                for cmd in batch:
                    self.chosen_commands.add((cmd[0], cmd[1]))
            elif known != batch:
                raise Violation(f"slot {slot}: node {node.id} learned {batch!r} but {known!r} "
                                "was chosen")

    def applied(self, node, start: int, batches) -> None:
        """``node`` applied ``batches`` to slots start+1.. : extend its chain, compare links."""
        link = getattr(node, "sim_chain", None)
        digest = link[1] if link is not None and link[0] == start else self.chain.get(start)
        chain = self.chain
        slot = start
        for batch in batches:
            slot += 1
            known = chain.get(slot)
            if digest is None:  # a snapshot from before anyone applied (cannot happen)
                digest = known
                continue
            digest = hashlib.blake2b(digest + repr(batch).encode(), digest_size=16).digest()
            if known is None:
                chain[slot] = digest
            elif known != digest:
                raise Violation(f"node {node.id} applied a history that differs at slot {slot} "
                                f"from what other nodes (or its earlier boots) applied")
        node.sim_chain = (slot, digest)

    def snapshot_written(self, node_id: int, index: int, blob: bytes) -> None:
        known = self.images.setdefault(index, blob)
        if known != blob:
            raise Violation(f"node {node_id} wrote a snapshot at slot {index} whose state machine "
                            "image differs from another node's at that slot")

    # -------------------------------------------------------------------------- acceptor

    def answers(self, node, cause, ready) -> None:
        """Check what ``node`` answered ``cause`` (a decoded Prepare or Accept) with."""
        if type(cause) is Prepare and self.check_promises:
            for dest, msg in ready.send_after_persist:
                if type(msg) is Promise and dest == cause.sender and msg.ballot == cause.ballot:
                    self._promise_covers(node, cause, msg)
        elif type(cause) is Accept and cause.batches and self.check_accepted:
            for dest, msg in ready.send_after_persist:
                if type(msg) is Accepted and dest == cause.sender and msg.ballot == cause.ballot:
                    self._accepted_holds(node, cause, msg)

    def _promise_covers(self, node, prepare: Prepare, promise: Promise) -> None:
        chosen = self.chosen
        reported = {slot: (ballot, batch) for slot, ballot, batch in promise.entries}
        for slot, (ballot, batch) in reported.items():
            if ballot == BALLOT_CHOSEN and chosen.get(slot, batch) != batch:
                raise Violation(f"node {node.id}'s Promise for ballot {prepare.ballot:#x} reports "
                                f"slot {slot} chosen with {batch!r}, but {chosen[slot]!r} was")
        for slot in range(prepare.from_slot, promise.commit_index + 1):
            entry = reported.get(slot)
            if entry is None:
                raise Violation(
                    f"node {node.id}'s Promise to {prepare.sender} for ballot {prepare.ballot:#x} "
                    f"(Prepare from slot {prepare.from_slot}, its commit index "
                    f"{promise.commit_index}) leaves out chosen slot {slot} (its log starts at "
                    f"{node.log_start})")
            want = chosen.get(slot)
            if want is not None and entry[1] != want:
                raise Violation(f"node {node.id}'s Promise for ballot {prepare.ballot:#x} reports "
                                f"{entry[1]!r} for chosen slot {slot}, but {want!r} was chosen")

    def _accepted_holds(self, node, accept: Accept, accepted: Accepted) -> None:
        log = node.log
        ballot = accept.ballot
        for slot in range(accepted.first_slot, accepted.last_slot + 1):
            batch = accept.batches[slot - accept.first_slot]
            entry = log.get(slot)
            if entry is not None and entry[0] == ballot and entry[1] == batch:
                continue
            if slot <= node.commit_index and entry is not None and entry[1] == batch:
                continue  # held chosen with that very value (a compacted slot is not held)
            raise Violation(
                f"node {node.id} acknowledged slot {slot} at ballot {ballot:#x} (Accepted "
                f"{accepted.first_slot}..{accepted.last_slot}) holding "
                f"{entry!r} instead of the Accept's {batch!r} (commit index {node.commit_index})")

    # -------------------------------------------------------------------------- per node

    def node_state(self, sim) -> None:
        """After each of a node's steps: its chosen log and its promise only move forward."""
        node = sim.node
        if node.applied_index > node.commit_index:
            raise Violation(f"node {sim.id} applied {node.applied_index} beyond commit "
                            f"{node.commit_index}")
        if node.promised < sim.promised:
            raise Violation(f"node {sim.id}'s promise went down from {sim.promised:#x} to "
                            f"{node.promised:#x}")
        sim.promised = node.promised
        log = node.log
        chosen = self.chosen
        for slot in range(max(sim.checked_commit, node.log_start - 1) + 1, node.commit_index + 1):
            if log[slot][1] != chosen[slot]:
                raise Violation(f"slot {slot}: node {sim.id} holds {log[slot][1]!r} but "
                                f"{chosen[slot]!r} was chosen")
        sim.checked_commit = node.commit_index

    def sent(self, sim, messages) -> None:
        """``messages`` leave ``sim``'s node now: each Promise and Accepted must be durable."""
        durable = sim.storage.durable_promise
        for _, msg in messages:
            t = type(msg)
            if (t is Promise or t is Accepted) and msg.ballot > durable:
                raise Violation(f"node {sim.id} sent a {t.__name__} for ballot {msg.ballot:#x} "
                                f"while its disk held the promise {durable:#x}")

    def booted(self, sim) -> None:
        """A restarted node's promise is at least what its completed writes made durable."""
        durable = sim.storage.durable_promise
        if sim.node.promised < durable:
            raise Violation(f"node {sim.id} restarted with promise {sim.node.promised:#x}, below "
                            f"the promise {durable:#x} its disk had made durable")
        sim.promised = sim.node.promised
