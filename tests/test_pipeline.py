"""The leader's Accept pipeline (daemon.core.pipeline): commands into batches, batches into the
window's slots, Accepts out in runs that fit the message limit, votes counted only for this
ballot from voters under their incarnation, and slots committed only once a quorum holds them."""

import pytest

from daemon.core.messages import OK, OP_PUT, Accept, Accepted, batch_cost, command_cost
from daemon.core.node import CoreConfig, ProtocolError
from daemon.core.pipeline import runs
from tests.scripted import led_by_1

CFG = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.30), window=4)


def cmd(n, size=1):
    return (7, n, OP_PUT, b"k%d" % n, b"v" * size, None)


def test_runs_fit_the_limit_and_a_batch_too_large_goes_alone():
    batches = {1: (cmd(1, 10),), 2: (cmd(2, 10),), 3: (cmd(3, 500),), 4: (cmd(4, 10),)}
    limit = batch_cost(batches[1]) + batch_cost(batches[2])
    got = list(runs(1, 4, batches.get, limit))
    assert got == [(1, (batches[1], batches[2])), (3, (batches[3],)), (4, (batches[4],))]
    assert list(runs(3, 2, batches.get, limit)) == []


def test_a_batch_takes_every_pending_command_when_they_fit():
    c = led_by_1(CFG)
    leader = c.nodes[1]
    leader.role = "follower"  # (keep ready() from batching while the test fills the queue)
    for n in range(1, 4):
        leader.pending.append(cmd(n))
        leader.pending_bytes += command_cost(cmd(n))
    assert leader.pipeline.take_batch() == (cmd(1), cmd(2), cmd(3))
    assert leader.pending == [] and leader.pending_bytes == 0


def test_a_batch_is_cut_by_command_count_and_by_bytes_keeping_the_cost_right():
    cfg = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.30), window=4,
                     max_batch_commands=2, max_batch_bytes=3 * command_cost(cmd(1, 100)))
    c = led_by_1(cfg)
    pipeline, leader = c.nodes[1].pipeline, c.nodes[1]
    pending = [cmd(1), cmd(2), cmd(3), cmd(4, 100), cmd(5, 100), cmd(6, 100), cmd(7, 100)]
    leader.pending.extend(pending)
    leader.pending_bytes = sum(map(command_cost, pending))
    taken = [pipeline.take_batch() for _ in range(4)]
    assert taken == [(cmd(1), cmd(2)), (cmd(3), cmd(4, 100)), (cmd(5, 100), cmd(6, 100)),
                     (cmd(7, 100),)]
    assert leader.pending == [] and leader.pending_bytes == 0


def submitted_one_by_one(count: int):
    """A cluster led by node 1 whose leader was given ``count`` commands one at a time, its
    outputs collected after each (one batch per command: each ready() opens a slot): the
    cluster, the leader and the first slot they went to."""
    c = led_by_1(CFG)
    leader = c.nodes[1]
    first = leader.window.next_slot
    for n in range(1, count + 1):
        leader.submit(("put", n), cmd(n), c.now)
        c.collect()
    return c, leader, first


def test_the_window_bounds_the_slots_in_flight():
    c, leader, first = submitted_one_by_one(6)
    assert leader.window.in_flight == CFG.window
    assert leader.window.next_slot == first + CFG.window
    assert len(leader.pending) == 2  # waiting for room
    c.settle()
    assert sorted(r.req[1] for i, r in c.replies if i == 1 and r.status == OK) == list(range(1, 7))


def test_accepts_go_to_every_member_and_heartbeats_to_the_peers_only():
    c = led_by_1(CFG)
    leader = c.nodes[1]
    leader.submit(("put", 1), cmd(1), c.now)
    out = leader.ready()
    accepts = [(dst, m) for dst, m in out.send if type(m) is Accept]
    assert sorted(dst for dst, _m in accepts) == [1, 2, 3]
    assert len({id(m) for _d, m in accepts}) == 1  # one message, sent to each
    leader.pipeline.broadcast_accept(leader.window.next_slot, ())
    beats = [(dst, m) for dst, m in leader.ready().send if type(m) is Accept]
    assert sorted(dst for dst, _m in beats) == [2, 3] and beats[0][1].batches == ()
    assert leader.pipeline.last_broadcast == c.now


def one_command_in_flight():
    """A cluster led by node 1 with one client command proposed (its Accepts collected, no
    vote counted yet): the cluster, the leader, the leader's commit index and the slot."""
    c = led_by_1(CFG)
    leader = c.nodes[1]
    commit = leader.commit_index
    leader.submit(("put", 1), cmd(1), c.now)
    c.collect()
    return c, leader, commit, commit + 1


def test_a_quorum_of_votes_commits_and_a_single_vote_does_not():
    c, leader, commit, slot = one_command_in_flight()
    leader.receive(Accepted(2, leader.ballot, slot, slot, 0, 0, 0), c.now)
    assert leader.commit_index == commit  # the leader's own vote has not come back yet
    leader.receive(Accepted(3, leader.ballot, slot, slot, 0, 0, 0), c.now)
    assert leader.commit_index == slot and leader.kv.get(b"k1") == b"v"


def test_votes_for_another_ballot_or_from_another_incarnation_do_not_count():
    c, leader, commit, slot = one_command_in_flight()
    leader.receive(Accepted(2, leader.ballot - 1, slot, slot, 0, 0, 0), c.now)
    leader.receive(Accepted(3, leader.ballot, slot, slot, 0, 0, 99), c.now)  # a wiped member
    leader.receive(Accepted(1, leader.ballot + 1, slot, slot, 0, 0, 0), c.now)
    assert leader.commit_index == commit
    assert leader.tracker.count(slot) == 0


def test_commit_never_passes_what_was_proposed():
    c = led_by_1(CFG)
    leader = c.nodes[1]
    with pytest.raises(ProtocolError, match="proposed"):
        leader.pipeline.on_chosen(leader.window.next_slot)


def test_retransmit_resends_to_each_peer_from_its_first_unacknowledged_slot():
    c, leader, first = submitted_one_by_one(3)
    c.take(src=1, kind=Accept)  # all lost
    leader.receive(Accepted(2, leader.ballot, first, first + 1, 0, 0, 0), c.now)
    leader.pipeline.retransmit()
    again = [(dst, m.first_slot, len(m.batches)) for dst, m in leader.ready().send
             if type(m) is Accept]
    assert sorted(again) == [(2, first + 2, 1), (3, first, 3)]


def test_no_slot_is_opened_at_or_beyond_the_fence():
    c = led_by_1(CFG)
    leader = c.nodes[1]
    membership = leader.membership
    membership.fence, membership.fence_slot = leader.window.next_slot + 1, leader.window.next_slot - 1
    for n in range(1, 4):
        leader.submit(("put", n), cmd(n), c.now)
        c.collect()
    assert leader.window.next_slot == leader.membership.fence
    assert len(leader.pending) == 2


def test_a_caught_up_learner_is_proposed_as_a_voter():
    c = led_by_1(CFG)
    leader = c.nodes[1]
    c.cut.add((1, 4))  # node 4 is not running in this script
    leader.change_members("add", ("add", 4, "127.0.0.1:1", "127.0.0.1:2"), c.now)
    c.settle()
    learner = leader.membership.configs[-1].get(4)
    assert learner is not None and not learner.voter
    c.collect()
    leader.pipeline.learner_progress(Accepted(4, leader.ballot, 1, 0, 0, leader.commit_index, 5))
    assert leader.membership.pending_change is not None
    member = next(m for m in leader.membership.pending_change[1] if m.id == 4)
    assert member.voter and member.incarnation == 5
