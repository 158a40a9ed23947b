"""The configuration list and membership changes (daemon.core.configs), driven directly and
through a small cluster."""

import pytest

from daemon.core.configs import NO_FENCE, Membership
from daemon.core.kv import KVStore
from daemon.core.membership import MEMBERS_KEY, Member, config_batch, initial_configuration
from daemon.core.messages import ERROR, NOOP, NOT_LEADER, OK
from daemon.core.roles import ProtocolError
from tests.test_core import Cluster, put

INITIAL = initial_configuration({1: ("h1:p", "h1:c"), 2: ("h2:p", "h2:c"), 3: ("h3:p", "h3:c")})


def with_four(voter=False, incarnation=0):
    return INITIAL.with_member(Member(4, "h4:p", "h4:c", voter, incarnation))


def test_each_slot_is_proposed_in_the_configuration_in_effect_there():
    m = Membership(None, INITIAL)
    assert m.config_at(1) is INITIAL and m.latest is INITIAL
    m.apply(5, config_batch(5, 13, with_four(), INITIAL))
    assert [c.effective for c in m.configs] == [0, 13] and m.version == 1
    assert m.config_at(12) is INITIAL and m.config_at(13).ids == (1, 2, 3, 4)
    assert m.latest.slot == 5


def test_a_configuration_no_slot_can_be_proposed_in_any_more_is_forgotten():
    m = Membership(None, INITIAL)
    m.apply(5, config_batch(5, 13, with_four(), INITIAL))
    m.apply(14, config_batch(14, 22, with_four(True, 7), m.latest))
    assert [c.effective for c in m.configs] == [13, 22]  # slot 15 on: never the initial one


def test_the_same_command_applied_twice_changes_nothing_and_other_batches_are_ignored():
    m = Membership(None, INITIAL)
    batch = config_batch(5, 13, with_four(), INITIAL)
    m.apply(5, batch)
    m.apply(5, batch)
    m.apply(6, NOOP)
    m.apply(7, (put(1, 1, b"k", b"v"),))
    assert len(m.configs) == 2 and m.version == 1


def test_a_broken_or_misplaced_configuration_command_is_a_protocol_error():
    m = Membership(None, INITIAL)
    with pytest.raises(ProtocolError, match="slot 6 holds the configuration command of slot 5"):
        m.apply(6, config_batch(5, 13, with_four(), INITIAL))
    broken = ((0, 5, 1, MEMBERS_KEY, b"\xa0", None),)
    with pytest.raises(ProtocolError, match="slot 5 holds a broken configuration command"):
        m.apply(5, broken)


def test_two_configurations_taking_effect_at_one_slot_are_a_protocol_error():
    m = Membership(None, INITIAL)
    m.apply(5, config_batch(5, 13, with_four(), INITIAL))
    with pytest.raises(ProtocolError, match="both take effect at slot 13"):
        m.apply(6, config_batch(6, 13, with_four(True, 7), INITIAL))


def test_the_configurations_come_back_from_a_snapshots_state_machine():
    m = Membership(None, INITIAL)
    kv = KVStore(10)
    m.from_store(kv)
    assert m.configs == [INITIAL] and m.version == 1
    kv.apply_batch(config_batch(5, 13, with_four(), INITIAL))
    m.from_store(kv)
    assert [c.effective for c in m.configs] == [0, 13] and m.version == 2


def test_addresses_cover_every_known_member_and_an_unknown_address_never_hides_a_known_one():
    m = Membership(None, INITIAL)
    m.apply(5, config_batch(5, 13, with_four(), INITIAL))
    anonymous = initial_configuration([1, 2, 3, 5])
    got = m.addresses(anonymous)
    assert got == {1: ("h1:p", "h1:c"), 2: ("h2:p", "h2:c"), 3: ("h3:p", "h3:c"),
                   4: ("h4:p", "h4:c"), 5: (None, None)}


def test_a_leader_stepping_down_answers_every_change_asked_and_lifts_the_fence():
    m = Membership(None, INITIAL)
    m.pending_change = ("p", with_four())
    m.change_waiting[9] = "q"
    m.fence, m.fence_slot = 17, 9
    out = []
    m.abandon(out, 2)
    assert [(r.req, r.status, r.leader) for r in out] == [("p", NOT_LEADER, 2), ("q", NOT_LEADER, 2)]
    assert m.pending_change is None and not m.change_waiting
    assert (m.fence, m.fence_slot) == (NO_FENCE, 0)


def test_the_fence_lifts_when_its_configuration_command_is_applied_and_the_asker_hears_ok():
    c = Cluster(3)
    c.advance(1.0)
    leader = c.leader()
    c.cut |= {(leader.id, i) for i in c.ids if i != leader.id}  # not chosen yet
    leader.change_members("add", ("add", 4, "h4:p", "h4:c"), c.now)
    c.pump()  # proposed: the fence is up
    slot = leader.membership.fence_slot
    assert slot and leader.membership.fence == slot + leader.config.window
    assert leader.membership.in_progress().startswith("a membership change is in progress")
    c.cut.clear()
    c.advance(0.2)
    assert (leader.membership.fence, leader.membership.fence_slot) == (NO_FENCE, 0)
    [reply] = [r for r in c.replies[leader.id] if r.req == "add"]
    assert reply.status == OK and reply.result.endswith("1, 2, 3, 4 (learner)")
    # Idle no-ops brought it into effect (after a boundary): the next change may come.
    assert leader.active is leader.configuration and leader.membership.in_progress() == ""


def test_changes_refused_say_why():
    c = Cluster(3)
    c.advance(1.0)
    leader = c.leader()
    follower = next(n for n in c.nodes.values() if n is not leader)
    follower.change_members("f", ("add", 4, "h", "h"), c.now)
    for req, change in [("id", ("add", 0, "h", "h")), ("dup", ("add", 2, "h", "h")),
                        ("who", ("remove", 9)), ("what", ("swap", 2))]:
        leader.change_members(req, change, c.now)
    got = {r.req: (r.status, r.result) for r in leader._out.replies}
    assert got == {"id": (ERROR, "member id 0 is not in 1..65535"),
                   "dup": (ERROR, "node 2 is already a member"),
                   "who": (ERROR, "node 9 is not a member"),
                   "what": (ERROR, "unknown membership change 'swap'")}
    assert [(r.status, r.leader) for r in follower._out.replies] == [(NOT_LEADER, leader.id)]


def test_removing_a_voter_needs_a_quorum_of_the_rest_in_contact():
    c = Cluster(3)
    c.advance(1.0)
    leader = c.leader()
    a, b = [i for i in c.ids if i != leader.id]
    c.cut |= {(b, leader.id)}
    c.advance(1.0)
    assert leader.membership.quorum_left_without(b)  # the leader and a
    assert not leader.membership.quorum_left_without(a)  # the leader alone of {leader, b}
    leader.change_members("r", ("remove", a), c.now)
    [reply] = leader._out.replies
    assert reply.status == ERROR and "fewer voters in contact" in reply.result
