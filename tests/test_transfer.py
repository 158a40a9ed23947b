"""Leadership transfer (daemon.core.transfer), driven through its node's Transfer object."""

import pytest

from daemon.core.messages import ERROR, NOT_LEADER, OK, TimeoutNow
from daemon.core.node import CANDIDATE, FOLLOWER, LEADER
from daemon.core.roles import ProtocolError
from daemon.core.transfer import Handover
from tests.test_core import Cluster, put


def led(n=3):
    c = Cluster(n)
    c.advance(1.0)
    leader = c.leader()
    target = next(i for i in c.ids if i != leader.id)
    return c, leader, target


def replies(c, node, req):
    return [r for r in c.replies[node.id] if r.req == req]


def test_a_handover_names_its_fields_and_is_one_value():
    h = Handover(2, "t", 1.5, OK)
    assert (h.target, h.req, h.deadline, h.status) == (2, "t", 1.5, OK)
    assert h._replace(req=None) == Handover(2, None, 1.5, OK)
    with pytest.raises(AttributeError):
        h.target = 3  # a handover changes only by being replaced


def test_the_target_is_told_only_once_nothing_is_in_flight_and_only_once():
    c, leader, target = led()
    c.cut |= {(leader.id, i) for i in c.ids}  # nothing the leader sends arrives
    leader.submit("w", put(1, 1, b"k", b"v"), c.now)
    c.pump()
    assert leader.window.in_flight == 1
    ballot = leader.ballot
    leader.handoff.request("t", target)
    c.pump()
    timeouts = [m for src, _, m in c.sent if src == leader.id and type(m) is TimeoutNow]
    assert not timeouts and leader.handoff.handover.req == "t"  # the write is not chosen yet
    c.cut.clear()
    c.advance(0.1)  # the retransmitted write is chosen, then the target is told
    timeouts = [(dst, m) for src, dst, m in c.sent if src == leader.id and type(m) is TimeoutNow]
    assert timeouts == [(target, TimeoutNow(leader.id, ballot))]
    assert [(r.status, r.leader) for r in replies(c, leader, "t")] == [(OK, target)]
    assert [r.status for r in replies(c, leader, "w")] == [OK]
    assert c.nodes[target].role == LEADER and leader.role == FOLLOWER
    assert leader.handoff.handover is None


def test_a_second_request_while_one_is_in_progress_is_refused_naming_the_first():
    c, leader, target = led()
    other = next(i for i in c.ids if i not in (leader.id, target))
    c.cut |= {(target, leader.id)}  # not hearing the target: the handover waits
    c.advance(0.2)
    leader.handoff.request("t1", target)
    leader.handoff.request("t2", other)
    leader.handoff.request("t3", leader.id)
    c.pump()
    got = {r.req: r for r in c.replies[leader.id]}
    assert (got["t2"].status, got["t2"].result) == (ERROR, f"already handing over to node {target}")
    assert (got["t3"].status, got["t3"].leader) == (OK, leader.id)
    assert "t1" not in got and leader.handoff.handover.target == target


def test_a_target_not_told_by_the_deadline_is_given_up_with_an_error():
    c, leader, target = led()
    c.cut |= {(target, leader.id)}
    c.advance(0.2)
    leader.transfer_leadership("t", target, c.now)
    deadline = leader.handoff.handover.deadline
    assert deadline == pytest.approx(c.now + 2 * c.nodes[target].config.election_timeout[1])
    c.advance(deadline - c.now + 0.05)
    assert [(r.status, r.result) for r in replies(c, leader, "t")] == [
        (ERROR, f"node {target} did not catch up in time")]
    assert leader.handoff.handover is None and leader.role == LEADER


def test_a_target_told_that_never_stands_is_forgotten_at_the_deadline():
    c, leader, target = led()
    c.cut |= {(leader.id, target)}  # the TimeoutNow is lost (so is everything else to it)
    leader.transfer_leadership("t", target, c.now)
    c.pump()
    assert [r.status for r in replies(c, leader, "t")] == [OK]
    assert leader.handoff.handover.req is None
    leader.handoff.expire(leader.handoff.handover.deadline)
    assert leader.handoff.handover is not None  # not past it yet
    leader.handoff.expire(leader.handoff.handover.deadline + 0.01)
    assert leader.handoff.handover is None and leader.role == LEADER


def test_a_leader_stepping_down_answers_a_request_not_yet_answered():
    c, leader, target = led()
    c.cut |= {(target, leader.id)}
    c.advance(0.2)
    leader.transfer_leadership("t", target, c.now)
    out = []
    leader.handoff.abandon(out, 7)
    assert [(r.req, r.status, r.leader) for r in out] == [("t", NOT_LEADER, 7)]
    assert leader.handoff.handover is None
    leader.handoff.abandon(out, 7)
    assert len(out) == 1


def test_timeout_now_counts_only_from_the_leader_followed_at_the_ballot_promised():
    c, leader, target = led()
    node = c.nodes[target]
    node.handoff.on_timeout_now(TimeoutNow(leader.id, leader.ballot - 1))
    other = next(i for i in c.ids if i not in (leader.id, target))
    node.handoff.on_timeout_now(TimeoutNow(other, leader.ballot))
    assert node.role == FOLLOWER
    node.handoff.on_timeout_now(TimeoutNow(leader.id, leader.ballot))
    assert node.role == CANDIDATE and node.ballot > leader.ballot


def test_timeout_now_that_leaves_the_node_below_the_senders_ballot_is_a_protocol_error():
    c, leader, target = led()
    node = c.nodes[target]

    class Stuck(type(node.election)):
        def start(self):
            pass  # broken on purpose: does not stand

    node.election = Stuck(node, node.configuration)
    with pytest.raises(ProtocolError, match="told to stand"):
        node.handoff.on_timeout_now(TimeoutNow(leader.id, leader.ballot))


def test_a_leader_leaving_hands_over_to_the_voter_heard_from_most_recently():
    c, leader, target = led()
    others = [i for i in c.ids if i != leader.id]
    c.cut |= {(others[0], leader.id)}
    c.advance(0.2)
    assert leader.handoff.successor(exclude=leader.id) == others[1]
    c.cut |= {(others[1], leader.id)}
    c.advance(0.2)
    assert leader.handoff.successor(exclude=leader.id) is None
    leader.handoff.leave("r")
    assert [(r.status, r.result) for r in leader._out.replies] == [
        (ERROR, "no other voting member is in contact to take over")]

