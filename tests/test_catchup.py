"""Catch-up (daemon.core.catchup.CatchupExchange): a node behind asks, at a bounded rate, for the chosen
slots it misses; a member serves only chosen slots, or its snapshot chunk by chunk to a node
behind its oldest retained slot; a snapshot is installed whole, from one member, in order."""

import random

import pytest

from fastpath import BALLOT_CHOSEN

from daemon.core.catchup import IncomingSnapshot
from daemon.core.kv import encode_image
from daemon.core.messages import OP_PUT, Catchup, CatchupRequest, ChosenRecord, Snapshot, SnapshotChunk
from daemon.core.node import CoreConfig, Node, ProtocolError
from tests.scripted import ScriptedCluster

CFG = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.30), window=8)


def write(n):
    return ((7, n, OP_PUT, b"k%d" % n, b"v%d" % n, None),)


def lone(cfg=CFG, node_id=2):
    """A follower of three that nobody talks to: its catch-up is driven by hand."""
    return Node(node_id, [1, 2, 3], cfg, random.Random(node_id), 0.0)


def sent(node, kind):
    return [(dst, msg) for dst, msg in node.ready().send if type(msg) is kind]


def test_asks_are_rate_limited_and_an_answer_lifts_the_limit():
    node = lone()
    node.now = 1.0
    node.catchup.ask(1)
    node.catchup.ask(3)  # within a heartbeat interval: not sent
    assert sent(node, CatchupRequest) == [(1, CatchupRequest(2, 1))]
    node.receive(Catchup(1, 1, (write(1),), 5), 1.01)  # the answer: ask again at once
    assert sent(node, CatchupRequest) == [(1, CatchupRequest(2, 2))]
    node.now = 1.01 + 2 * CFG.heartbeat_interval
    node.catchup.ask(3)
    assert sent(node, CatchupRequest) == [(3, CatchupRequest(2, 2))]


def test_a_node_never_asks_itself():
    node = lone()
    node.now = 1.0
    node.catchup.ask(2)
    assert sent(node, CatchupRequest) == []


def test_a_member_serves_only_chosen_slots_up_to_catchup_slots():
    cfg = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.30), window=8, catchup_slots=2)
    node = lone(cfg, node_id=1)
    node.receive(Catchup(3, 1, (write(1), write(2), write(3)), 3), 1.0)
    node.log[4] = (5, write(4))  # accepted, not chosen
    node.max_slot = 4
    node.ready()
    node.receive(CatchupRequest(2, 2), 1.0)
    assert sent(node, Catchup) == [(2, Catchup(1, 2, (write(2), write(3)), 3))]
    node.receive(CatchupRequest(2, 4), 1.0)  # nothing chosen there: no answer
    node.receive(CatchupRequest(2, 0), 1.0)
    assert sent(node, Catchup) == []


def test_learning_extends_the_chosen_prefix_and_never_rewrites_a_chosen_slot():
    node = lone()
    node.receive(Catchup(1, 1, (write(1), write(2)), 2), 1.0)
    assert node.commit_index == 2 and node.kv.get(b"k2") == b"v2"
    persisted = node.ready().persist
    assert ChosenRecord(1, (write(1), write(2))) in persisted
    # An overlapping run: slots 1-2 keep their value, slot 3 is learned.
    node.receive(Catchup(3, 1, (write(9), write(9), write(3)), 3), 1.0)
    assert [node.log[s][1] for s in (1, 2, 3)] == [write(1), write(2), write(3)]
    assert all(node.log[s][0] == BALLOT_CHOSEN for s in (1, 2, 3))
    # Not contiguous with the prefix: nothing learned, nothing asked on its account.
    node.receive(Catchup(1, 6, (write(6),), 6), 1.0)
    assert node.commit_index == 3 and 6 not in node.log


def test_a_learner_behind_the_commit_index_it_is_told_asks_the_sender_for_more():
    node = lone()
    node.receive(Catchup(3, 1, (write(1),), 10), 1.0)
    assert sent(node, CatchupRequest) == [(3, CatchupRequest(2, 2))]


def snapshot_source(slots=6, chunk=16):
    """Node 1, with a snapshot at ``slots`` and the log below it compacted."""
    cfg = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.30), window=8,
                     snapshot_every=slots, log_retain=0, snapshot_chunk_bytes=chunk)
    node = lone(cfg, node_id=1)
    node.receive(Catchup(3, 1, tuple(write(n) for n in range(1, slots + 1)), slots), 1.0)
    assert node.snapshot_index == slots and node.log_start == slots + 1
    node.ready()
    return node, cfg


def test_a_snapshot_arrives_one_chunk_per_request_and_is_installed_whole():
    source, cfg = snapshot_source()
    learner = lone(cfg, node_id=2)
    blob = encode_image(source.snapshot_image)
    assert len(blob) > 2 * cfg.snapshot_chunk_bytes
    now = 1.0
    learner.now = now
    learner.catchup.ask(1)
    chunks = 0
    for _ in range(100):
        requests = sent(learner, CatchupRequest)
        if not requests:
            break
        assert len(requests) == 1  # never a second stream
        source.receive(requests[0][1], now)
        answers = sent(source, SnapshotChunk)
        if learner.snapshot_index == 6:
            assert answers == [] and requests[0][1].from_slot == 7  # installed: the slots after it
            break
        assert len(answers) == 1 and len(answers[0][1].data) <= cfg.snapshot_chunk_bytes
        chunks += 1
        if learner.catchup.incoming is not None:
            assert learner.snapshot_index == 0  # nothing installed before the last chunk
        now += 0.001
        learner.receive(answers[0][1], now)
        incoming = learner.catchup.incoming
        if incoming is not None:
            assert isinstance(incoming, IncomingSnapshot)
            assert (incoming.index, incoming.total, incoming.sender) == (6, len(blob), 1)
            assert incoming.last_chunk == now and bytes(incoming.buf) == blob[:len(incoming.buf)]
    assert chunks == -(-len(blob) // cfg.snapshot_chunk_bytes)
    assert learner.snapshot_index == learner.commit_index == learner.applied_index == 6
    assert learner.kv.get(b"k6") == b"v6" and learner.catchup.incoming is None


def test_chunks_out_of_order_or_from_another_member_are_not_taken():
    source, cfg = snapshot_source()
    learner = lone(cfg, node_id=2)
    blob = encode_image(source.snapshot_image)
    size = cfg.snapshot_chunk_bytes
    learner.receive(SnapshotChunk(1, 6, size, len(blob), blob[size:2 * size]), 1.0)
    assert learner.catchup.incoming is None  # only the start of a snapshot begins one
    learner.receive(SnapshotChunk(1, 6, 0, len(blob), blob[:size]), 1.0)
    learner.receive(SnapshotChunk(1, 6, 2 * size, len(blob), blob[2 * size:3 * size]), 1.0)
    assert len(learner.catchup.incoming.buf) == size  # overtaking chunk dropped
    learner.receive(SnapshotChunk(3, 6, 0, len(blob) + 1, blob[:size]), 1.01)
    assert learner.catchup.incoming.sender == 1  # another member's snapshot: ignored
    # While the snapshot arrives, asks go to the member sending it, whoever they name.
    learner.ready()
    learner.now = 1.5
    learner.catchup.ask(3)
    assert [dst for dst, _m in sent(learner, CatchupRequest)] == [1]


def test_installing_a_snapshot_never_takes_the_commit_index_back():
    source, _cfg = snapshot_source()
    node = lone()
    node.receive(Catchup(1, 1, tuple(write(n) for n in range(1, 8)), 7), 1.0)
    with pytest.raises(ProtocolError, match="back"):
        node.catchup.install_snapshot(6, source.snapshot_image, b"")


def test_an_installed_snapshot_is_persisted_with_the_acceptor_state_above_it():
    source, cfg = snapshot_source()
    node = lone(cfg)
    node.log[9] = (5, write(9))
    node.max_slot = 9
    node.catchup.install_snapshot(6, source.snapshot_image, encode_image(source.snapshot_image))
    snap = [r for r in node.ready().persist if type(r) is Snapshot]
    assert len(snap) == 1 and snap[0].index == 6
    assert node.log_start == 7 and min(node.log) == 9


def test_a_leader_learns_nothing_from_catchup():
    c = ScriptedCluster([1, 2, 3], CFG)
    c.fire(1)
    c.settle()
    leader = c.leader()
    commit = leader.commit_index
    leader.receive(Catchup(2, commit + 1, (write(1),), commit + 1), c.now)
    assert leader.commit_index == commit
