"""The node's side of deciding its incarnation (daemon.core.incarnation's handlers)."""

import random

import pytest

from daemon.core.incarnation import NEW, PROBE_INTERVAL, on_probe, on_probe_reply, probe, settle
from daemon.core.messages import IncarnationChosen, Probe, ProbeReply
from daemon.core.node import CoreConfig, DurableState, Node
from daemon.core.roles import ProtocolError

CFG = CoreConfig(window=8)


def deciding(node_id=1, ids=(1, 2, 3)):
    node = Node(node_id, list(ids), CFG, random.Random(node_id), 0.0, None, None)
    assert node.fresh is not None
    return node


def test_probes_go_to_the_members_still_awaited_once_per_interval():
    one = deciding()
    probe(one)
    nonce = one.fresh.nonce
    assert one.ready().send == [(2, Probe(1, nonce)), (3, Probe(1, nonce))]
    one.now = PROBE_INTERVAL / 2
    probe(one)
    assert one.ready().send == []
    on_probe_reply(one, ProbeReply(2, nonce, False))
    one.now = PROBE_INTERVAL
    probe(one)
    assert one.ready().send == [(3, Probe(1, nonce))]


def test_every_other_member_answering_never_promised_settles_incarnation_zero_once():
    one = deciding()
    nonce = one.fresh.nonce
    on_probe_reply(one, ProbeReply(2, nonce, False))
    assert one.fresh is not None
    on_probe_reply(one, ProbeReply(3, nonce, False))
    out = one.ready()
    assert one.fresh is None and one.incarnation == 0
    assert [type(r) for r in out.persist] == [IncarnationChosen]
    assert out.persist[0].incarnation == 0
    on_probe_reply(one, ProbeReply(3, nonce, True))  # late: nothing changes any more
    assert one.incarnation == 0 and not one.ready()


def test_one_used_answer_settles_the_new_incarnation():
    one = deciding()
    nonce = one.fresh.nonce
    on_probe_reply(one, ProbeReply(3, nonce, True))
    out = one.ready()
    assert one.fresh is None and one.incarnation == nonce != 0
    assert out.persist[0].incarnation == nonce


def test_a_single_initial_member_settles_at_its_first_probe():
    one = deciding(1, (1,))
    assert one.fresh.decision == NEW
    probe(one)
    assert one.fresh is None and one.incarnation == 0 and one.ready().send == []


def test_a_probe_is_answered_used_exactly_when_the_node_has_run():
    fresh = Node(2, [1, 2, 3], CFG, random.Random(2), 0.0)
    on_probe(fresh, Probe(1, 42))
    assert fresh.ready().send == [(1, ProbeReply(2, 42, False))]
    promised = Node(2, [1, 2, 3], CFG, random.Random(2), 0.0, DurableState(promised=5))
    on_probe(promised, Probe(1, 42))
    assert promised.ready().send == [(1, ProbeReply(2, 42, True))]
    rejoined = Node(2, [1, 2, 3], CFG, random.Random(2), 0.0, None, 99)
    on_probe(rejoined, Probe(1, 42))
    assert rejoined.ready().send == [(1, ProbeReply(2, 42, True))]
    still_deciding = deciding(2)
    on_probe(still_deciding, Probe(1, 42))
    assert still_deciding.ready().send == [(1, ProbeReply(2, 42, False))]
    assert still_deciding.fresh is not None  # answering changes nothing


def test_settling_a_rejoin_without_an_incarnation_is_a_protocol_error():
    one = deciding()
    one.fresh.report(2, one.fresh.nonce, True)
    one.incarnation = 0  # broken on purpose
    with pytest.raises(ProtocolError, match="rejoins under incarnation 0"):
        settle(one)
