"""Scenario tests of the protocol core, driven by hand: each reads as a small script."""

import ast
import random
from pathlib import Path

import pytest

from daemon.core.node import CANDIDATE, FOLLOWER, LEADER, CoreConfig, DurableState, Node
from daemon.runtime.durability import DurabilityGate
from daemon.core.messages import (
    NOT_LEADER,
    OK,
    OP_CAS,
    OP_DELETE,
    OP_PUT,
    STALE,
    Accept,
    Accepted,
    AcceptRecord,
    CommitRecord,
    Prepare,
    Promise,
    PromiseRecord,
    Reject,
)
from fastpath import BALLOT_CHOSEN, ballot_pack

CFG = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.30), window=8)


class Cluster:
    """Instant network and instant disks; messages can be held back per link."""

    def __init__(self, n=3, cfg=CFG, durable=None):
        self.ids = list(range(1, n + 1))
        self.now = 0.0
        self.nodes = {i: Node(i, self.ids, cfg, random.Random(i), 0.0, (durable or {}).get(i)) for i in self.ids}
        self.gates = {}  # node id -> its DurabilityGate (nodes may be added or replaced)
        self.records = {i: [] for i in self.ids}
        self.replies = {i: [] for i in self.ids}
        self.cut = set()  # (src, dst) links that lose messages
        self.sent = []

    def pump(self, limit=10_000):
        queue = []
        for _ in range(limit):
            for i, node in self.nodes.items():
                gate = self.gates.setdefault(i, DurabilityGate())
                out = gate.take(node.ready())
                self.records[i].extend(out.records)
                self.replies[i].extend(out.replies)
                # An instant disk: every hand-off is durable as soon as it is made.
                for dst, msg in out.send + gate.durable(gate.handed):
                    self.sent.append((i, dst, msg))
                    if (i, dst) not in self.cut:
                        queue.append((dst, msg))
            if not queue:
                return
            dst, msg = queue.pop(0)
            if dst in self.nodes:  # else a machine not started (yet)
                self.nodes[dst].receive(msg, self.now)
        raise AssertionError("messages kept flowing")

    def advance(self, seconds, step=0.01):
        end = self.now + seconds
        while self.now < end:
            self.now += step
            for node in self.nodes.values():
                node.tick(self.now)
            self.pump()

    def leader(self):
        leaders = [n for n in self.nodes.values() if n.role == LEADER]
        assert len(leaders) == 1, [n.status() for n in self.nodes.values()]
        return leaders[0]


def put(cid, seq, key, value):
    return (cid, seq, OP_PUT, key, value, None)


def test_a_cluster_elects_one_leader_and_commits_a_write():
    c = Cluster()
    c.advance(1.0)
    leader = c.leader()
    leader.submit("r1", put(7, 1, b"k", b"v"), c.now)
    c.pump()
    assert [(r.req, r.status) for r in c.replies[leader.id]] == [("r1", OK)]
    c.advance(0.2)  # the commit index reaches followers on the next heartbeat
    for node in c.nodes.values():
        assert node.kv.get(b"k") == b"v"
        assert node.commit_index == leader.commit_index


def test_followers_redirect_clients_to_the_leader():
    c = Cluster()
    c.advance(1.0)
    leader = c.leader()
    follower = next(n for n in c.nodes.values() if n.role == FOLLOWER)
    follower.submit("r", put(1, 1, b"k", b"v"), c.now)
    follower.read("g", b"k", c.now)
    c.pump()
    assert [(r.status, r.leader) for r in c.replies[follower.id]] == [(NOT_LEADER, leader.id)] * 2


def test_a_retried_command_applies_once_and_an_older_one_is_stale():
    c = Cluster()
    c.advance(1.0)
    leader = c.leader()
    leader.submit("a", (5, 1, OP_CAS, b"k", None, b"one"), c.now)
    c.pump()
    leader.submit("b", (5, 1, OP_CAS, b"k", None, b"one"), c.now)  # retry: same session, same seq
    c.pump()
    leader.submit("c", (5, 2, OP_DELETE, b"k", None, None), c.now)
    c.pump()
    leader.submit("d", (5, 1, OP_CAS, b"k", None, b"one"), c.now)  # seq already passed
    c.pump()
    got = [(r.req, r.status, r.result) for r in c.replies[leader.id]]
    assert got == [("a", OK, True), ("b", OK, True), ("c", OK, True), ("d", STALE, None)]


def test_an_acceptor_promises_only_after_persisting_and_reports_accepted_entries():
    node = Node(2, [1, 2, 3], CFG, random.Random(0), 0.0)
    b1 = ballot_pack(1, 1)
    x = (put(1, 1, b"x", b"x"),)
    node.receive(Accept(1, b1, 0, 1, (x,), 0), 0.0)
    node.ready()
    b2 = ballot_pack(2, 3)
    node.receive(Prepare(3, b2, 1), 0.0)
    out = node.ready()
    assert out.persist == [PromiseRecord(b2)]
    assert out.send == []  # the Promise waits for the record to be durable
    (dst, promise), = out.send_after_persist
    assert dst == 3 and promise == Promise(2, b2, 0, ((1, b1, x),))


def test_an_acceptor_rejects_lower_ballots_naming_its_promise():
    node = Node(2, [1, 2, 3], CFG, random.Random(0), 0.0)
    high, low = ballot_pack(5, 3), ballot_pack(4, 1)
    node.receive(Prepare(3, high, 1), 0.0)
    node.ready()
    node.receive(Accept(1, low, 0, 1, ((),), 0), 0.0)
    node.receive(Prepare(1, low, 1), 0.0)
    out = node.ready()
    assert out.persist == []
    assert [m for _, m in out.send] == [Reject(2, low, high, 0)] * 2


def test_accepting_under_a_higher_ballot_raises_the_promise():
    node = Node(2, [1, 2, 3], CFG, random.Random(0), 0.0)
    b = ballot_pack(3, 1)
    node.receive(Accept(1, b, 0, 1, ((put(1, 1, b"k", b"v"),),), 0), 0.0)
    out = node.ready()
    assert node.promised == b
    assert out.persist == [AcceptRecord(b, 1, ((put(1, 1, b"k", b"v"),),))]
    assert DurableState.from_records(out.persist).promised == b
    assert [m for _, m in out.send_after_persist] == [Accepted(2, b, 1, 1, 0)]


def test_a_new_leader_reproposes_the_highest_ballot_value_and_fills_holes_with_noops():
    # Node 1 stands; its promises report slot 1 at two ballots and slot 3 once; slot 2 is a hole.
    node = Node(1, [1, 2, 3], CFG, random.Random(0), 0.0)
    node.tick(1.0)
    assert node.role == CANDIDATE
    b = node.ballot
    node.ready()
    old, older = ballot_pack(0, 3), ballot_pack(0, 2)
    new, stale, c3 = ((put(1, 1, b"k", b"new"),), (put(1, 1, b"k", b"stale"),), (put(2, 1, b"c", b"c"),))
    node.receive(Promise(2, b, 0, ((1, old, new), (3, old, c3))), 1.0)
    node.receive(Promise(3, b, 0, ((1, older, stale),)), 1.0)
    assert node.role == LEADER
    out = node.ready()
    accepts = [m for dst, m in out.send if dst == 2]
    assert accepts == [Accept(1, b, 0, 1, (new, (), c3), 0)]


def test_a_new_leader_learns_values_its_promises_report_chosen():
    node = Node(1, [1, 2, 3], CFG, random.Random(0), 0.0)
    node.tick(1.0)
    b = node.ballot
    node.ready()
    a, bb = (put(1, 1, b"a", b"1"),), (put(1, 2, b"b", b"2"),)
    node.receive(Promise(2, b, 2, ((1, BALLOT_CHOSEN, a), (2, BALLOT_CHOSEN, bb))), 1.0)
    node.receive(Promise(3, b, 0, ()), 1.0)
    assert node.role == LEADER
    assert node.commit_index == 2 and node.kv.get(b"b") == b"2"
    out = node.ready()
    assert CommitRecord(2) in out.persist
    # It still proposes a slot under its own ballot before serving reads.
    assert [m.first_slot for d, m in out.send if d == 2 and m.batches] == [3]


def test_a_follower_takes_a_commit_index_only_for_entries_at_that_ballot():
    # Node 3 holds slot 1 from an old ballot whose value was never chosen.
    node = Node(3, [1, 2, 3], CFG, random.Random(0), 0.0)
    old, new = ballot_pack(1, 2), ballot_pack(2, 1)
    node.receive(Accept(2, old, 0, 1, (("never chosen",),), 0), 0.0)
    node.ready()
    node.receive(Accept(1, new, 1, 2, (("x",),), 0), 0.0)  # slot 2 at the new ballot, commit 1
    out = node.ready()
    assert node.commit_index == 0  # slot 1 is held at the old ballot: not taken as chosen
    assert [type(m).__name__ for _, m in out.send] == ["CatchupRequest"]


def test_a_leader_steps_down_on_a_higher_ballot_and_tells_waiting_clients():
    c = Cluster()
    c.advance(1.0)
    leader = c.leader()
    for other in c.nodes.values():
        if other is not leader:
            c.cut.add((other.id, leader.id))
    leader.submit("w", put(1, 1, b"k", b"v"), c.now)
    c.pump()
    higher = ballot_pack(1000, 3 if leader.id != 3 else 2)
    leader.receive(Reject(2, leader.ballot, higher, 0), c.now)
    c.pump()
    assert leader.role == FOLLOWER
    assert [(r.req, r.status) for r in c.replies[leader.id]] == [("w", NOT_LEADER)]


def test_a_paused_old_leader_does_not_serve_reads_after_a_new_leader_commits():
    c = Cluster()
    c.advance(1.0)
    old = c.leader()
    old.submit("w1", put(1, 1, b"k", b"v1"), c.now)
    c.pump()
    # The old leader is cut off (paused): the others elect a new leader and overwrite k.
    for i in c.ids:
        if i != old.id:
            c.cut |= {(old.id, i), (i, old.id)}
    saved, c.nodes = c.nodes, {i: n for i, n in c.nodes.items() if i != old.id}
    c.advance(1.0)
    new = c.leader()
    new.submit("w2", put(2, 1, b"k", b"v2"), c.now)
    c.pump()
    assert c.replies[new.id][-1].status == OK
    # The old leader wakes up, reachable again, and is asked to read k at once.
    c.nodes = saved
    c.cut.clear()
    old.read("r", b"k", c.now)
    c.pump()
    answers = [r for r in c.replies[old.id] if r.req == "r"]
    assert answers and answers[0].status == NOT_LEADER


def test_a_read_waits_for_a_quorum_to_confirm_the_ballot():
    c = Cluster()
    c.advance(1.0)
    leader = c.leader()
    for i in c.ids:
        if i != leader.id:
            c.cut.add((i, leader.id))
    leader.read("r", b"k", c.now)
    c.pump()
    assert not [r for r in c.replies[leader.id] if r.req == "r"]
    c.cut.clear()
    leader.tick(c.now + 0.06)  # the next heartbeat carries the read round again
    c.pump()
    assert [(r.req, r.status, r.result) for r in c.replies[leader.id]] == [("r", OK, None)]


def test_a_restarted_node_rebuilds_its_state_from_its_records():
    c = Cluster()
    c.advance(1.0)
    leader = c.leader()
    for seq in range(1, 6):
        leader.submit(seq, put(9, seq, b"k%d" % seq, b"v"), c.now)
        c.pump()
    c.advance(0.2)
    fid = next(i for i in c.ids if i != leader.id)
    state = DurableState.from_records(c.records[fid])
    again = Node(fid, c.ids, CFG, random.Random(1), c.now, state)
    assert again.commit_index == c.nodes[fid].commit_index
    assert again.kv.state() == c.nodes[fid].kv.state()
    assert again.promised == c.nodes[fid].promised


def test_a_restarted_candidate_never_reuses_a_ballot():
    node = Node(1, [1, 2, 3], CFG, random.Random(0), 0.0)
    node.tick(1.0)
    first = node.ballot
    out = node.ready()
    assert out.persist == [PromiseRecord(first)]
    assert out.send == [] and len(out.send_after_persist) == 3  # Prepare leaves after the record
    again = Node(1, [1, 2, 3], CFG, random.Random(0), 2.0, DurableState.from_records(out.persist))
    again.tick(3.0)
    assert again.ballot > first


def test_core_modules_do_no_io():
    forbidden = {"trio", "socket", "os", "time", "random", "asyncio", "threading", "select"}
    root = Path(__file__).resolve().parent.parent / "daemon"
    for name in ("core/node.py", "core/kv.py", "core/messages.py", "runtime/durability.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not set(mods) & forbidden, f"daemon/{name} imports {mods}"


def test_core_config_rejects_a_heartbeat_slower_than_the_election_timeout():
    with pytest.raises(ValueError, match="heartbeat_interval"):
        CoreConfig(heartbeat_interval=0.5, election_timeout=(0.15, 0.3))


def test_a_new_leader_serves_reads_only_once_every_reproposed_slot_is_chosen():
    # Regression (simulator seed 2066): the read index must cover the whole re-proposed run,
    # or a write the previous leader acknowledged can be missing from a read.
    node = Node(1, [1, 2, 3], CFG, random.Random(0), 0.0)
    node.tick(1.0)
    b = node.ballot
    node.ready()
    old = ballot_pack(0, 2)
    node.receive(Promise(2, b, 0, ((1, old, ()), (2, old, (put(4, 1, b"k", b"acked"),)))), 1.0)
    node.receive(Promise(3, b, 0, ()), 1.0)
    node.read("r", b"k", 1.0)
    node.ready()
    for sender in (1, 2):
        node.receive(Accepted(sender, b, 1, 1, node.read_round), 1.0)
    assert node.commit_index == 1
    assert not node.ready().replies
    for sender in (1, 2):
        node.receive(Accepted(sender, b, 2, 2, node.read_round), 1.0)
    assert [(r.req, r.result) for r in node.ready().replies] == [("r", b"acked")]


def test_a_retry_that_arrives_while_the_command_is_in_flight_gets_the_answer_too():
    c = Cluster()
    c.advance(1.0)
    leader = c.leader()
    leader.submit("first", put(3, 1, b"k", b"v"), c.now)
    leader.submit("retry", put(3, 1, b"k", b"v"), c.now)
    c.pump()
    assert sorted((r.req, r.status) for r in c.replies[leader.id]) == [("first", OK), ("retry", OK)]
    assert leader.kv.applied_commands == 1


def test_a_command_larger_than_a_batch_may_be_is_refused_with_a_reason():
    cfg = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.3), max_batch_bytes=1000)
    c = Cluster(cfg=cfg)
    c.advance(1.0)
    leader = c.leader()
    leader.submit("big", put(3, 1, b"k", b"x" * 2000), c.now)
    c.pump()
    (reply,) = c.replies[leader.id]
    assert reply.status == "error" and "max_batch_bytes" in reply.result


def test_accept_runs_are_cut_to_fit_the_message_limit():
    cfg = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.3), window=16,
                     max_batch_commands=1, max_message_bytes=300)
    c = Cluster(cfg=cfg)
    c.advance(1.0)
    leader = c.leader()
    c.sent.clear()
    for seq in range(1, 9):
        leader.submit(seq, put(seq, 1, b"k", b"v" * 100), c.now)
    c.pump()
    accepts = [m for src, dst, m in c.sent if src == leader.id and dst != leader.id
               and isinstance(m, Accept) and m.batches]
    assert accepts and max(len(m.batches) for m in accepts) < 8
    assert all(sum(len(b[0][4]) + 40 for b in m.batches) <= 300 for m in accepts)
    assert len(c.replies[leader.id]) == 8 and all(r.status == OK for r in c.replies[leader.id])


def test_a_follower_behind_the_oldest_retained_slot_catches_up_by_snapshot_chunks():
    cfg = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.3), window=8,
                     snapshot_every=5, log_retain=0, snapshot_chunk_bytes=64)
    c = Cluster(cfg=cfg)
    c.advance(1.0)
    leader = c.leader()
    lagging = next(i for i in c.ids if i != leader.id)
    c.cut |= {(leader.id, lagging), (lagging, leader.id)}
    others = [i for i in c.ids if i not in (leader.id, lagging)]
    c.cut |= {(o, lagging) for o in others} | {(lagging, o) for o in others}
    for seq in range(1, 31):
        leader.submit(seq, put(100 + seq, 1, b"k%d" % (seq % 4), b"v%d" % seq), c.now)
        c.pump()
    assert leader.snapshot_index >= 25 and leader.log_start > 1
    chunks_before = sum(1 for _, _, m in c.sent if type(m).__name__ == "SnapshotChunk")
    c.cut.clear()
    c.advance(1.0)
    follower = c.nodes[lagging]
    assert sum(1 for _, _, m in c.sent if type(m).__name__ == "SnapshotChunk") - chunks_before > 1
    assert follower.snapshot_index > 0
    assert follower.commit_index == leader.commit_index
    assert follower.kv.state() == leader.kv.state()
    # What it persisted restarts it to the same state.
    snapshot = next(r for r in reversed(c.records[lagging]) if type(r).__name__ == "Snapshot")
    after = c.records[lagging][c.records[lagging].index(snapshot) + 1:]
    again = Node(lagging, c.ids, cfg, random.Random(5), c.now,
                 DurableState.from_records(list(snapshot.checkpoint) + after, snapshot))
    assert again.kv.state() == leader.kv.state()


def test_a_candidate_behind_a_snapshot_is_refused_and_told_how_far_behind_it_is():
    cfg = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.3), snapshot_every=2,
                     log_retain=0)
    node = Node(2, [1, 2, 3], cfg, random.Random(0), 0.0)
    b = ballot_pack(1, 1)
    node.receive(Accept(1, b, 0, 1, tuple((put(1, s, b"k", b"v"),) for s in range(1, 5)), 0), 0.0)
    node.receive(Accept(1, b, 4, 5, (), 0), 0.0)
    node.ready()
    assert node.snapshot_index == 4 and node.log_start == 5
    node.receive(Prepare(3, ballot_pack(2, 3), 3), 0.0)
    out = node.ready()
    assert [m for _, m in out.send] == [Reject(2, ballot_pack(2, 3), b, 4)]


def test_leadership_moves_to_the_named_node_without_waiting_for_a_timeout():
    c = Cluster()
    c.advance(1.0)
    old = c.leader()
    target = next(i for i in c.ids if i != old.id)
    old.submit("w", put(1, 1, b"k", b"v"), c.now)
    old.transfer_leadership("t", target, c.now)
    c.pump()  # no tick: only messages move
    assert c.nodes[target].role == LEADER and old.role == FOLLOWER
    got = {r.req: (r.status, r.leader) for r in c.replies[old.id]}
    assert got["t"] == (OK, target)
    assert got["w"] == (NOT_LEADER, target)  # not yet in a slot: held, then sent on


def test_commands_that_arrive_during_a_hand_over_are_sent_to_the_new_leader():
    c = Cluster()
    c.advance(1.0)
    old = c.leader()
    target = next(i for i in c.ids if i != old.id)
    c.cut |= {(target, old.id)}  # the leader does not hear the target: the hand-over stalls
    c.advance(0.2)
    old.transfer_leadership("t", target, c.now)
    old.submit("w", put(1, 1, b"k", b"v"), c.now)
    c.pump()
    assert not [r for r in c.replies[old.id] if r.req == "w"]  # held, not proposed
    c.advance(1.0)  # the hand-over times out and the leader leads on
    got = {r.req: r for r in c.replies[old.id]}
    assert got["t"].status == "error" and got["w"].status == OK


def test_a_transfer_to_a_stranger_or_by_a_follower_is_refused():
    c = Cluster()
    c.advance(1.0)
    leader = c.leader()
    follower = next(n for n in c.nodes.values() if n.role == FOLLOWER)
    leader.transfer_leadership("x", 99, c.now)
    follower.transfer_leadership("y", leader.id, c.now)
    c.pump()
    assert [(r.status, r.result) for r in c.replies[leader.id]] == [("error", "node 99 is not a voting member")]
    assert [(r.status, r.leader) for r in c.replies[follower.id]] == [(NOT_LEADER, leader.id)]
