"""Compaction against Phase 1 and 2, scripted message by message.

A duplicated Prepare, a lost Promise and a catch-up snapshot between the two copies:

The acceptor that promised on the first copy installs a snapshot before the second arrives;
the second copy has the same ballot as its promise. It used to be answered with a Promise
that reported only slots from the acceptor's new log start, leaving out the chosen run below
it, and the candidate filled that run with no-ops: two nodes learned different values for the
same slots and acknowledged writes were gone. A Promise must cover [from_slot, commit index]
or be a refusal that sends the candidate to catch up.
"""

from daemon.core.node import CANDIDATE, FOLLOWER, LEADER, CoreConfig
from daemon.core.messages import (Accept, Accepted, CatchupRequest, Prepare, Promise, Reject,
                             SnapshotChunk)
from tests.scripted import ScriptedCluster

# Snapshots every 3 applied slots, no log kept below them: compaction at every turn.
CONFIG = CoreConfig(window=8, snapshot_every=3, log_retain=0)


def test_a_duplicated_prepare_answered_after_a_snapshot_install_loses_no_chosen_slot():
    c = ScriptedCluster([1, 2, 3], CONFIG)

    # Node 1 leads; its first slot (a no-op) is chosen everywhere.
    c.fire(1)
    c.settle()
    old = c.leader()
    assert old.id == 1
    b1 = old.ballot

    # Node 3 is cut off from the leader; writes 1 and 2 are chosen by {1, 2}.
    c.cut |= {(1, 3), (3, 1)}
    for n in (1, 2):
        c.put(1, n)
        c.settle()
    assert c.acknowledged() == [1, 2]

    # Now node 2 is cut off instead. Writes 3..8 are chosen by {1, 3}. Node 3 accepts them
    # though it misses slots 2 and 3, and asks node 1 for those: that request is held back.
    c.cut = {(1, 2), (2, 1)}
    held_asks = []
    for n in range(3, 9):
        c.put(1, n)
        for _ in range(20):
            held_asks += c.take(src=3, kind=CatchupRequest)
            if not c.flight:
                break
            c.deliver([c.flight.pop(0)])
    assert c.acknowledged() == list(range(1, 9))
    assert held_asks, "node 3 asked for the slots it misses"
    three = c.nodes[3]
    assert three.commit_index < 4 and three.log_start <= 4
    assert all(three.log[s][0] == b1 for s in range(4, 10)), "node 3 accepted writes 3..8"
    # The leader has compacted past them: its snapshot is of slot 9.
    assert old.commit_index == 9 and old.log_start == 10

    # Node 3's old request reaches node 1 now; node 1 answers with its snapshot, which is
    # slow on the way back.
    c.deliver(held_asks[:1])
    snapshot = c.take(src=1, dst=3, kind=SnapshotChunk)
    assert len(snapshot) == 1 and snapshot[0][2].index == 9

    # Node 2 stands, from the first slot it does not know chosen. Its Prepare to node 1 is
    # lost; the one to node 3 is duplicated by the network.
    c.fire(2)
    candidate = c.nodes[2]
    assert candidate.role == CANDIDATE
    prepares = c.take(src=2, dst=3, kind=Prepare)
    assert len(prepares) == 1 and prepares[0][2].from_slot <= 4
    b2 = candidate.ballot

    # Copy 1: node 3 promises b2 (reporting writes 3..8 at b1), but that Promise is lost.
    c.deliver(prepares)
    lost = c.take(src=3, dst=2, kind=Promise)
    assert len(lost) == 1 and {s for s, _b, _v in lost[0][2].entries} >= set(range(4, 10))
    assert three.promised == b2

    # The snapshot arrives: node 3 takes it and drops its log up to slot 9.
    c.deliver(snapshot)
    assert three.commit_index == 9 and three.log_start == 10
    c.take(src=3, kind=CatchupRequest)  # what it asks next does not matter here

    # Copy 2, same ballot as node 3's promise. It must not be answered with a Promise that
    # leaves out slots 4..9 (chosen, and node 3 no longer holds them).
    c.deliver(prepares)
    answers = c.take(src=3, dst=2)
    for _s, _d, answer in answers:
        if type(answer) is Promise:
            reported = {s for s, _b, _v in answer.entries}
            assert reported >= set(range(prepares[0][2].from_slot, answer.commit_index + 1)), (
                f"node 3's Promise with commit index {answer.commit_index} reports only "
                f"slots {sorted(reported)}")
    c.deliver(answers)
    c.settle()
    # A client writes to node 2 (refused unless it leads; if it leads, the write takes the
    # first slot it proposes).
    c.put(2, 9)
    c.settle()

    # Whatever node 2 did with that answer, no slot was learned two ways...
    assert not c.divergence(), c.divergence()
    # ...and once everything is healed and time runs, all agree and keep every write.
    c.heal()
    c.advance(3.0)
    assert not c.divergence(), c.divergence()
    leader = c.leader()
    assert {n.role for n in c.nodes.values() if n is not leader} == {FOLLOWER}
    assert leader.role == LEADER
    assert len({n.commit_index for n in c.nodes.values()}) == 1
    assert c.lost_writes() == {}, f"acknowledged writes lost: {c.lost_writes()}"


def test_an_acceptor_refuses_an_equal_ballot_prepare_below_its_log_start():
    c = ScriptedCluster([1, 2, 3], CONFIG)
    c.fire(1)
    c.settle()
    for n in range(1, 7):
        c.put(1, n)
        c.settle()
    c.advance(0.2)
    follower = c.nodes[2]
    assert follower.log_start > 2 and follower.commit_index >= 7
    # A Prepare under the very ballot node 2 promised, from a slot it compacted away.
    ballot = follower.promised
    follower.receive(Prepare(1, ballot, 2), c.now)
    answers = c.take(src=2, dst=1)
    assert [type(m) for _s, _d, m in answers] == [Reject]
    reject = answers[0][2]
    assert reject.ballot == ballot and reject.commit_index == follower.commit_index
    assert follower.promised == ballot  # refusing never lowers the promise


def test_a_leader_stalled_on_slots_a_voter_compacted_as_chosen_stands_down_and_all_catch_up():
    """A new leader re-proposes slots an earlier leader had chosen; the one voter it needs
    learned them chosen and compacted them away, so it cannot vouch for their values and does
    not acknowledge them. The leader stands down instead of resending forever, and an
    election brings everyone past them."""
    c = ScriptedCluster([1, 2, 3], CONFIG)
    c.fire(1)
    c.settle()
    one, two, three = c.nodes[1], c.nodes[2], c.nodes[3]
    # Write 1 is chosen with node 2, which does not hear that it was: the Accepts carrying
    # the commit index are lost on the way to it from then on.
    c.cut = {(1, 3), (3, 1)}
    c.put(1, 1)
    c.deliver(c.take(src=1, dst=2, kind=Accept))
    c.deliver(c.take(src=2, dst=1, kind=Accepted))
    c.cut = {(1, 2), (2, 1)}
    # Writes 2..5 are chosen with node 3, which never gets slot 2 (its asks for it are lost).
    c.lose = lambda src, dst, msg: type(msg) is CatchupRequest or (
        type(msg) is Accept and msg.first_slot <= 2 < msg.first_slot + len(msg.batches))
    for n in range(2, 6):
        c.put(1, n)
        c.settle()
    assert c.acknowledged() == [1, 2, 3, 4, 5]
    assert two.commit_index < 2 and three.commit_index < 2
    assert one.commit_index == 6 and one.log_start == 7  # compacted past all of them
    # Node 1 is cut off; node 2 leads with node 3 and re-proposes slots 2..6...
    c.cut = {(1, 2), (2, 1), (1, 3), (3, 1)}
    c.lose = lambda src, dst, msg: dst == 3 and type(msg) is Accept
    c.fire(2)
    c.settle()
    assert two.role == LEADER and two.commit_index < 2
    stalled_ballot = two.ballot
    # ...but they do not reach node 3, and node 3 then goes quiet: only node 1 can make a
    # quorum with node 2, and it no longer holds those slots.
    c.cut = {(2, 3), (3, 2), (1, 3), (3, 1)}
    c.lose = lambda src, dst, msg: False
    c.advance(1.0)
    assert not c.divergence(), c.divergence()
    assert min(one.commit_index, two.commit_index) >= 6, "node 2 never got past slot 1"
    assert c.leader().ballot > stalled_ballot  # it stood down; an election followed
    c.heal()
    c.advance(2.0)
    assert not c.divergence(), c.divergence()
    assert len({n.commit_index for n in c.nodes.values()}) == 1
    assert c.lost_writes() == {}
