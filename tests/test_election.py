"""Phase 1 (daemon.core.election), driven through a node's Election object."""

import random

import pytest

from fastpath import BALLOT_CHOSEN, ballot_pack

from daemon.core.election import best_reported
from daemon.core.membership import Configuration, Member
from daemon.core.messages import NOOP, CatchupRequest, Prepare, Promise, PromiseRecord, Reject, TimeoutNow
from daemon.core.node import CANDIDATE, FOLLOWER, LEADER, Node
from daemon.core.roles import ProtocolError
from tests.test_core import CFG, Cluster, put


def node(n=3, node_id=1):
    return Node(node_id, list(range(1, n + 1)), CFG, random.Random(node_id), 0.0)


def w(i):
    return (put(i, 1, b"k%d" % i, b"v"),)


def test_the_highest_ballot_reported_wins_each_slot_from_the_first_asked():
    a = Promise(2, 9, 0, ((1, 3, w(1)), (2, 3, w(2)), (3, 5, w(3))), 0)
    b = Promise(3, 9, 0, ((2, 4, w(20)), (3, 4, w(30)), (5, 4, w(5))), 0)
    assert best_reported([a, b], 2) == {2: (4, w(20)), 3: (5, w(3)), 5: (4, w(5))}
    assert best_reported([], 1) == {}


def test_standing_takes_a_ballot_above_all_seen_and_persists_it_before_any_prepare():
    one = node()
    one.max_seen = ballot_pack(7, 3)
    one.election.start()
    out = one.ready()
    assert one.role == CANDIDATE and one.ballot > ballot_pack(7, 3) and one.promised == one.ballot
    assert out.persist == [PromiseRecord(one.ballot)] and out.send == []
    assert out.send_after_persist == [(m, Prepare(1, one.ballot, 1)) for m in (1, 2, 3)]
    assert one.election.from_slot == 1 and one.election.prep_config.voters == (1, 2, 3)


def test_only_promises_from_the_voters_asked_under_their_incarnation_count():
    one = node()
    one.election.start()
    b = one.ballot
    one.election.on_promise(Promise(2, b, 0, (), 5))  # another incarnation than the one named
    one.election.on_promise(Promise(9, b, 0, (), 0))  # not a member
    one.election.on_promise(Promise(2, b - 1, 0, (), 0))  # another ballot
    assert one.role == CANDIDATE and one.election.promises == {}
    one.election.on_promise(Promise(1, b, 0, (), 0))
    assert one.role == CANDIDATE
    one.election.on_promise(Promise(2, b, 0, (), 0))
    assert one.role == LEADER and one.leader_id == 1 and one.election.promises == {}


def standing_with_its_own_promise():
    """Node 1 standing, its own Promise counted (one more makes it leader): the node, the ballot."""
    one = node()
    one.election.start()
    b = one.ballot
    one.election.on_promise(Promise(1, b, 0, (), 0))
    return one, b


def test_a_new_leader_learns_what_is_reported_chosen_and_reproposes_the_rest_with_noops():
    one, b = standing_with_its_own_promise()
    one.election.on_promise(Promise(2, b, 2, ((1, BALLOT_CHOSEN, w(1)), (2, BALLOT_CHOSEN, w(2)),
                                              (4, 3, w(4))), 0))
    assert one.role == LEADER and one.commit_index == 2
    assert one.log[1] == (BALLOT_CHOSEN, w(1)) and one.log[2] == (BALLOT_CHOSEN, w(2))
    # Slot 3 is a hole (no-op), slot 4 is re-proposed; reads wait until both are chosen.
    assert one.window.get(3) == NOOP and one.window.get(4) == w(4)
    assert one.read_floor == 4


def test_a_promise_whose_commit_index_covers_an_unreported_slot_sends_the_candidate_to_catch_up():
    one, b = standing_with_its_own_promise()
    # Node 2 says slots up to 3 are chosen but reports slot 3 only as accepted.
    one.election.on_promise(Promise(2, b, 3, ((1, BALLOT_CHOSEN, w(1)), (2, BALLOT_CHOSEN, w(2)),
                                              (3, 4, w(3))), 0))
    out = one.ready()
    assert one.role == FOLLOWER and one.commit_index == 0 and 3 not in one.log
    assert [(d, m) for d, m in out.send if type(m) is CatchupRequest] == [(2, CatchupRequest(1, 1))]


def test_a_higher_promise_in_a_reject_stops_a_candidate_and_a_more_chosen_one_sends_it_to_catch_up():
    one = node()
    one.election.start()
    one.ready()
    b = one.ballot
    one.election.on_reject(Reject(2, b, b + 1, 0))
    assert one.role == FOLLOWER and one.max_seen == b + 1
    one.election.start()
    one.ready()
    one.election.on_reject(Reject(3, one.ballot, one.ballot, 9))  # its own ballot, more chosen
    out = one.ready()
    assert one.role == CANDIDATE
    assert [(d, m) for d, m in out.send if type(m) is CatchupRequest] == [(3, CatchupRequest(1, 1))]


def test_a_reject_that_leaves_a_leader_below_the_promise_it_reports_is_a_protocol_error():
    c = Cluster(3)
    c.advance(1.0)
    one = c.leader()
    one._step_down = lambda leader: None  # broken on purpose: stepping down does nothing
    with pytest.raises(ProtocolError, match="still leader"):
        one.election.on_reject(Reject(2, one.ballot, one.ballot + 1, 0))


def test_a_node_deciding_its_incarnation_or_not_a_voter_does_not_stand():
    deciding = Node(1, [1, 2, 3], CFG, random.Random(1), 0.0, None, None)
    assert deciding.fresh is not None and not deciding.election.may_stand()
    learner = Node(4, [1, 2, 3], CFG, random.Random(4), 0.0, None, 77)
    assert not learner.election.may_stand()
    assert node().election.may_stand()


def test_a_leader_not_in_the_next_configuration_hands_over_to_a_voter_of_it_and_steps_down():
    c = Cluster(3)
    c.advance(1.0)
    leader = c.leader()
    others = [i for i in c.ids if i != leader.id]
    nxt = Configuration(20, tuple(Member(i) for i in others), 12)
    leader.election.start_boundary(nxt, 20)
    out = leader.ready()
    timeouts = [(d, m) for d, m in out.send if type(m) is TimeoutNow]
    assert len(timeouts) == 1 and timeouts[0][0] in others
    assert leader.role == FOLLOWER and leader.leader_id == timeouts[0][0]
    assert leader.election.boundary is None


def test_a_boundary_asks_the_next_configuration_and_ends_with_it_in_use():
    c = Cluster(3)
    c.advance(1.0)
    leader = c.leader()
    leader.submit("w", put(1, 1, b"k", b"v"), c.now)
    c.pump()
    slot = leader.commit_index + 1
    nxt = Configuration(slot, leader.active.members, slot - 1)  # as if chosen, same members
    leader.membership.configs.append(nxt)
    leader.election.start_boundary(nxt, slot)
    assert leader.election.boundary == {} and leader.election.boundary_slot == slot
    out = leader.ready()
    assert sorted(d for d, m in out.send if m == Prepare(leader.id, leader.ballot, slot)) == [1, 2, 3]
    leader.election.on_promise(Promise(1, leader.ballot, slot - 1, (), 0))
    leader.election.send_boundary_prepare()  # (again, on the tick) to those not answered
    out = leader.ready()
    assert sorted(d for d, m in out.send if type(m) is Prepare) == [2, 3]
    leader.election.on_promise(Promise(2, leader.ballot, slot - 1, (), 0))
    assert leader.election.boundary is None and leader.active is nxt and leader.role == LEADER
    assert leader.membership.fence_slot == 0 and leader.read_floor >= slot
