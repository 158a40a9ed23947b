"""The read index (daemon.core.reads.ReadIndex): a leader answers a read only once a quorum
confirmed its ballot in a round opened after the read arrived, and once its state machine has
applied the read's index; reads are answered in arrival order, and refused on stepping down."""

from daemon.core.messages import NOT_LEADER, OK, OP_PUT, Accept, Accepted
from daemon.core.node import CoreConfig
from tests.scripted import led_by_1

CFG = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.30), window=8)


def replies_of(c, node_id):
    return [(r.req, r.status, r.result) for i, r in c.replies if i == node_id]


def test_a_read_opens_a_round_that_the_next_accept_carries():
    c = led_by_1(CFG)
    reads = c.nodes[1].reads
    before = reads.round
    c.nodes[1].read("r1", b"k", c.now)
    c.nodes[1].read("r2", b"k", c.now)  # the same round: no Accept went out in between
    assert reads.round == before + 1 and not reads.round_sent
    assert [q[3] for q in reads.queue] == [before + 1] * 2
    accepts = [m for _s, _d, m in c.take(src=1, kind=Accept)]
    assert accepts and all(a.read_round == before + 1 for a in accepts)
    assert reads.round_sent
    c.nodes[1].read("r3", b"k", c.now)
    assert reads.queue[-1][3] == before + 2


def test_a_read_is_answered_only_once_a_quorum_echoes_its_round():
    c = led_by_1(CFG)
    leader = c.nodes[1]
    leader.read("r", b"k", c.now)
    c.collect()
    assert replies_of(c, 1) == []
    # The followers' Accepteds for the heartbeat carrying the round are held back.
    c.deliver(c.take(src=1, kind=Accept))
    held = c.take(dst=1, kind=Accepted)
    assert held and replies_of(c, 1) == []
    c.deliver(held[:1])  # one follower + the leader: a quorum of three
    assert replies_of(c, 1) == [("r", OK, None)]
    assert not leader.reads.queue


def test_an_echo_of_an_older_round_does_not_answer_a_newer_read():
    c = led_by_1(CFG)
    leader = c.nodes[1]
    round_ = leader.reads.round
    leader.read("r", b"k", c.now)
    old = Accepted(2, leader.ballot, 1, 0, round_, 0, 0)
    leader.receive(old, c.now)
    leader.receive(Accepted(3, leader.ballot, 1, 0, round_, 0, 0), c.now)
    c.collect()
    assert replies_of(c, 1) == []
    leader.receive(Accepted(2, leader.ballot, 1, 0, round_ + 1, 0, 0), c.now)
    c.collect()
    assert replies_of(c, 1) == [("r", OK, None)]


def test_a_read_waits_until_its_read_index_is_applied():
    c = led_by_1(CFG)
    leader = c.nodes[1]
    leader.read_floor = leader.commit_index + 1  # as a new leader with a slot re-proposed
    leader.read("r", b"k1", c.now)
    leader.submit(("put", 1), (7, 1, OP_PUT, b"k1", b"v1", None), c.now)
    # Confirm the round without letting the write be chosen yet: only heartbeats' echoes.
    for peer in (2, 3):
        leader.receive(Accepted(peer, leader.ballot, 1, 0, leader.reads.round, 0, 0), c.now)
    c.collect()
    assert [r for r in replies_of(c, 1) if r[0] == "r"] == []
    c.settle()
    # Slot commit + 1 holds the write: the read sees it, answered after the write's reply.
    assert replies_of(c, 1) == [(("put", 1), OK, None), ("r", OK, b"v1")]


def test_reads_are_answered_in_arrival_order():
    c = led_by_1(CFG)
    leader = c.nodes[1]
    for n in range(5):  # one round: none answered before the next arrives
        leader.read(("r", n), b"k", c.now)
    c.collect()
    leader.read(("r", 5), b"k", c.now)  # the next round
    c.settle()
    assert [r[0] for r in replies_of(c, 1)] == [("r", n) for n in range(6)]


def test_a_follower_refuses_a_read_naming_the_leader():
    c = led_by_1(CFG)
    c.nodes[2].read("r", b"k", c.now)
    c.collect()
    assert [(r.req, r.status, r.leader) for i, r in c.replies if i == 2] == [("r", NOT_LEADER, 1)]
    assert not c.nodes[2].reads.queue


def test_stepping_down_refuses_every_waiting_read_and_keeps_none():
    c = led_by_1(CFG)
    leader = c.nodes[1]
    leader.read("a", b"k", c.now)
    leader.read("b", b"k", c.now)
    leader.reads.refuse_all(3)
    c.collect()
    assert [(r.req, r.status, r.leader) for i, r in c.replies if i == 1] == [
        ("a", NOT_LEADER, 3), ("b", NOT_LEADER, 3)]
    assert not leader.reads.queue


def test_serving_does_nothing_at_a_follower():
    c = led_by_1(CFG)
    follower = c.nodes[2]
    follower.reads.queue.append(("x", b"k", 0, 0))  # as if left from its leadership
    follower.reads.serve()
    c.collect()
    assert [r for i, r in c.replies if i == 2] == []


def test_the_only_voter_answers_a_read_with_no_write_to_carry_it():
    # A one-member cluster (what paxosd recover makes) sends no Accept a voter could echo:
    # its own ballot is the quorum's confirmation, so an idle leader still answers reads.
    c = led_by_1(CFG, ids=(1,))
    c.settle()
    leader = c.nodes[1]
    leader.read("r", b"k", c.now)
    c.settle()
    assert replies_of(c, 1) == [("r", OK, None)]
    assert not leader.reads.queue
