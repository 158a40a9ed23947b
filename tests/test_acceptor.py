"""The acceptor (daemon.core.acceptor.Acceptor) and the learner's commit (Node._set_commit),
driven message by message on one node: the promise never goes down, a Promise covers
[from_slot, commit index] or is refused, a chosen slot never changes, an Accepted acknowledges
only what is held at its ballot, and the commit index never goes back nor passes the log."""

import random

import pytest

from fastpath import BALLOT_CHOSEN, ballot_pack

from daemon.core.messages import (
    OP_PUT,
    Accept,
    Accepted,
    AcceptRecord,
    Catchup,
    CatchupRequest,
    Prepare,
    Promise,
    PromiseRecord,
    Reject,
)
from daemon.core.node import CoreConfig, DurableState, Node, ProtocolError

CFG = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.30), window=8)
B1, B2, B3 = ballot_pack(1, 1), ballot_pack(2, 1), ballot_pack(3, 3)


def write(n):
    return ((7, n, OP_PUT, b"k%d" % n, b"v%d" % n, None),)


def acceptor(cfg=CFG):
    return Node(2, [1, 2, 3], cfg, random.Random(2), 0.0)


def answers(node):
    out = node.ready()
    return out, [m for _d, m in out.send + out.send_after_persist]


def test_the_promise_never_goes_down():
    node = acceptor()
    node.receive(Prepare(1, B2, 1), 1.0)
    out, msgs = answers(node)
    assert out.persist == [PromiseRecord(B2)] and msgs == [Promise(2, B2, 0, (), 0)]
    assert [d for d, _m in out.send_after_persist] == [1]  # only once the promise is durable
    node.receive(Prepare(1, B1, 1), 1.0)
    node.receive(Accept(1, B1, 0, 1, (write(1),), 0), 1.0)
    out, msgs = answers(node)
    assert msgs == [Reject(2, B1, B2, 0)] * 2 and out.persist == []
    assert node.promised == B2 and 1 not in node.log


def test_an_accept_under_a_higher_ballot_raises_the_promise_and_is_acknowledged_after_persisting():
    node = acceptor()
    node.receive(Accept(3, B3, 0, 1, (write(1), write(2)), 4), 1.0)
    out, msgs = answers(node)
    assert node.promised == B3 and node.log[1] == (B3, write(1))
    assert out.persist == [AcceptRecord(B3, 1, (write(1), write(2)))]
    assert out.send == [] and msgs == [Accepted(2, B3, 1, 2, 4, 0, 0)]


def test_a_promise_reports_chosen_slots_as_chosen_and_the_rest_at_their_ballot():
    node = acceptor()
    node.receive(Catchup(1, 1, (write(1), write(2)), 2), 1.0)
    node.receive(Accept(1, B1, 2, 3, (write(3),), 0), 1.0)
    node.ready()
    node.receive(Prepare(3, B3, 1), 1.0)
    _out, msgs = answers(node)
    assert msgs == [Promise(2, B3, 2, ((1, BALLOT_CHOSEN, write(1)), (2, BALLOT_CHOSEN, write(2)),
                                       (3, B1, write(3))), 0)]


def test_a_prepare_from_below_the_log_start_is_refused_whatever_the_ballot():
    cfg = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.30), window=8,
                     snapshot_every=4, log_retain=0)
    node = acceptor(cfg)
    node.receive(Prepare(1, B2, 1), 1.0)
    node.receive(Catchup(1, 1, tuple(write(n) for n in range(1, 5)), 4), 1.0)
    assert node.log_start == 5
    node.ready()
    for ballot in (B2, B3):  # the very ballot promised (a duplicate) and a higher one
        node.receive(Prepare(1, ballot, 3), 1.0)
        _out, msgs = answers(node)
        assert [type(m) for m in msgs] == [Reject] and msgs[0].commit_index == 4


def test_a_chosen_slot_is_never_rewritten_and_acknowledged_only_for_its_own_value():
    node = acceptor()
    node.receive(Catchup(1, 1, (write(1), write(2)), 2), 1.0)
    node.ready()
    # A re-proposal of slot 2 with another value, and slot 3: slot 2 keeps its chosen value
    # and is not acknowledged; slot 3 is.
    node.receive(Accept(3, B3, 0, 2, (write(9), write(3)), 0), 1.0)
    _out, msgs = answers(node)
    assert node.log[2] == (BALLOT_CHOSEN, write(2)) and node.log[3] == (B3, write(3))
    assert msgs == [Accepted(2, B3, 3, 3, 0, 2, 0)]
    # The very value it holds chosen: acknowledged from slot 2.
    node.receive(Accept(3, B3, 0, 2, (write(2), write(3)), 0), 1.0)
    _out, msgs = answers(node)
    assert msgs == [Accepted(2, B3, 2, 3, 0, 2, 0)]


def test_the_commit_index_is_learned_only_over_slots_held_at_its_ballot():
    node = acceptor()
    node.receive(Accept(1, B1, 0, 1, (write(1), write(2)), 0), 1.0)
    node.receive(Accept(3, B3, 0, 2, (write(9),), 0), 1.0)  # slot 2 now at B3, slot 1 at B1
    node.ready()
    # A commit index of 2 that comes with B3: slot 1 is held at B1 only, so nothing is
    # learned, and the sender is asked for the chosen slots.
    node.receive(Accept(3, B3, 2, 3, (), 0), 1.0)
    out, _msgs = answers(node)
    assert node.commit_index == 0
    assert [m for _d, m in out.send if type(m) is CatchupRequest] == [CatchupRequest(2, 1)]


def test_the_commit_index_never_goes_back_nor_passes_the_log():
    node = acceptor()
    node.receive(Catchup(1, 1, (write(1), write(2)), 2), 1.0)
    with pytest.raises(ProtocolError, match="go back"):
        node._set_commit(1)
    with pytest.raises(ProtocolError, match="passes the log"):
        node._set_commit(3)
    assert node.commit_index == 2


def test_a_snapshots_checkpoint_rebuilds_the_acceptor_state_above_it():
    cfg = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.30), window=8,
                     snapshot_every=2, log_retain=0)
    node = acceptor(cfg)
    node.receive(Accept(1, B1, 0, 1, (write(1), write(2), write(3), write(4)), 0), 1.0)
    node.receive(Accept(1, B1, 2, 5, (), 0), 1.0)  # slots 1-2 chosen: a snapshot at 2
    snapshot = [r for r in node.ready().persist if type(r).__name__ == "Snapshot"][-1]
    assert snapshot.index == 2 and node.log_start == 3
    again = DurableState.from_records(snapshot.checkpoint, snapshot)
    assert again.promised == node.promised == B1
    assert again.log == {3: (B1, write(3)), 4: (B1, write(4))}
    assert again.commit_index == 2
