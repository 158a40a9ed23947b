"""A node on an empty data directory decides its incarnation before it votes (daemon.core.incarnation),
driven by hand on the protocol core."""

import random

import pytest

from daemon.core.node import FOLLOWER, LEADER, CoreConfig, DurableState, Node
from daemon.core.incarnation import NEW, REJOIN, FreshStart
from daemon.core.messages import (
    OK,
    Accept,
    Accepted,
    IncarnationChosen,
    Prepare,
    Probe,
    ProbeReply,
    Promise,
    PromiseRecord,
)
from tests.test_core import Cluster, put

W = 8
CFG = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.30), window=W)


def fresh_node(c: Cluster, node_id: int, seed: int = 0) -> Node:
    """Start ``node_id`` on an empty data directory, as systemd does after a loss: no flag."""
    node = Node(node_id, c.ids, CFG, random.Random(1000 * node_id + seed), c.now, None, None)
    c.nodes[node_id] = node
    c.records[node_id] = []
    c.replies[node_id] = []
    return node


def chosen_incarnations(c: Cluster, node_id: int) -> list:
    return [r.incarnation for r in c.records[node_id] if type(r) is IncarnationChosen]


def durable(c: Cluster, node_id: int) -> DurableState:
    """What node ``node_id`` would find on restart (its incarnation lives in its own file)."""
    return DurableState.from_records(
        [r for r in c.records[node_id] if type(r) is not IncarnationChosen])


def writes(c: Cluster, first: int, n: int) -> None:
    for i in range(first, first + n):
        c.leader().submit(("w", i), put(1000 + i, 1, b"k%d" % i, b"v%d" % i), c.now)
        c.pump()


# ------------------------------------------------------------------------------ the decision


def test_every_other_initial_member_must_vouch_for_a_new_cluster():
    five = FreshStart(1, [1, 2, 3, 4, 5], nonce=77, now=0.0, interval=0.05)
    assert five.due(0.0) == (2, 3, 4, 5) and five.due(0.01) == ()
    for sender in (2, 3, 4):  # a quorum of the others is not enough (see the module docstring)
        five.report(sender, 77, used=False)
    assert five.decision is None and five.waiting_for == (5,)
    assert five.due(0.05) == (5,)  # only the silent one is asked again
    five.report(5, 77, used=False)
    assert five.decision == NEW and "nodes 2, 3, 4, 5" in five.why


def test_one_used_answer_means_rejoin_and_answers_to_another_start_do_not_count():
    start = FreshStart(2, [1, 2, 3], nonce=5, now=0.0, interval=0.05)
    start.report(1, 4, used=True)  # an answer to the previous start's Probe
    start.report(2, 5, used=False)  # itself
    start.report(9, 5, used=False)  # not an initial member: cannot vouch
    assert start.decision is None and start.waiting_for == (1, 3)
    start.report(3, 5, used=False)
    start.report(1, 5, used=True)
    assert start.decision == REJOIN and "node 1 reports" in start.why
    start.report(1, 5, used=False)  # decided once and for all
    assert start.decision == REJOIN


def test_a_single_member_cluster_decides_at_once():
    node = Node(1, [1], CFG, random.Random(1), 0.0, None, None)
    node.tick(0.01)
    assert node.fresh is None and node.incarnation == 0
    [record] = node.ready().persist
    assert record.incarnation == 0 and "only initial member" in record.why


def test_an_unknown_incarnation_with_state_in_the_directory_is_refused():
    state = DurableState(promised=(1 << 16) | 2)
    with pytest.raises(ValueError, match="holds state"):
        Node(1, [1, 2, 3], CFG, random.Random(1), 0.0, state, None)
    with pytest.raises(ValueError, match="not among the members"):
        Node(4, [1, 2, 3], CFG, random.Random(1), 0.0, None, None)


# ------------------------------------------------------------------------------ a new cluster


def test_a_brand_new_cluster_started_all_at_once_decides_in_one_round_trip_and_elects():
    c = Cluster(3, CFG)
    for i in c.ids:
        fresh_node(c, i)
    c.advance(0.02)
    for i in c.ids:
        assert c.nodes[i].fresh is None and c.nodes[i].incarnation == 0
        # The decision goes to the disk before any promise does.
        kinds = [type(r) for r in c.records[i]]
        assert kinds[0] is IncarnationChosen and chosen_incarnations(c, i) == [0]
    c.advance(1.0)
    writes(c, 0, 3)
    assert c.leader().commit_index >= 3


def test_two_fresh_members_wait_for_the_third_and_neither_votes_nor_stands_meanwhile():
    c = Cluster(3, CFG)
    del c.nodes[3]  # never started yet
    for i in (1, 2):
        fresh_node(c, i)
    c.advance(2.0)
    for i in (1, 2):
        node = c.nodes[i]
        assert node.fresh is not None and node.fresh.waiting_for == (3,)
        assert node.role == FOLLOWER and c.records[i] == []
        assert not node.status()["voter"]
    # Only probes went out, again and again, to the missing member too.
    assert {type(m) for _, _, m in c.sent} == {Probe, ProbeReply}
    assert sum(1 for s, d, m in c.sent if d == 3) > 10
    fresh_node(c, 3)
    c.advance(1.0)
    assert [chosen_incarnations(c, i) for i in c.ids] == [[0], [0], [0]]
    assert c.leader().role == LEADER


def test_a_member_deciding_neither_promises_nor_accepts():
    c = Cluster(3, CFG)
    del c.nodes[3]
    node = fresh_node(c, 1)
    b = (5 << 16) | 2
    node.receive(Prepare(2, b, 1), 0.0)
    node.receive(Accept(2, b, 0, 1, ((put(1, 1, b"k", b"v"),),), 0), 0.0)
    out = node.ready()
    assert out.persist == [] and out.send_after_persist == [] and out.send == []
    assert node.promised == 0 and node.log == {}


# ------------------------------------------------------------------------------ a lost disk


def test_a_wiped_follower_restarted_without_a_flag_rejoins_and_is_a_voter_only_once_readded():
    c = Cluster(3, CFG)
    c.advance(1.0)
    writes(c, 0, 5)
    leader = c.leader()
    victim = next(i for i in c.ids if i != leader.id)
    before = len(c.sent)
    node = fresh_node(c, victim)  # wiped: no state, no incarnation file, no --join
    for step in range(200):
        c.advance(0.01)
        if step % 10 == 0:
            writes(c, 100 + step, 1)
        # The leader never counts it under the incarnation its configuration names for it
        # (0, whose promises it forgot): it votes under its new one, and only once re-added.
        assert c.leader().vote_incarnation.get(victim) in (0, node.incarnation)
        assert node.fresh is not None or node.incarnation != 0
    assert chosen_incarnations(c, victim) == [node.incarnation] and node.incarnation != 0
    votes = [m for s, _, m in c.sent[before:] if s == victim and type(m) in (Promise, Accepted)]
    assert votes and all(m.incarnation == node.incarnation for m in votes)
    leader = c.leader()
    member = leader.configuration.get(victim)
    assert member.voter and member.incarnation == node.incarnation
    assert leader.vote_incarnation[victim] == node.incarnation
    assert node.status()["voter"] and node.commit_index == leader.commit_index
    assert node.kv.get(b"k2") == b"v2" and node.kv.get(b"k290") == b"v290"


def _lost_write_scenario(restart) -> bytes | None:
    """1 and 2 choose a write while 3 is cut off; 2 loses its disk and is restarted by
    ``restart(c)``; 1 is gone for good. 3 stands: the slot's value at 3 if it wins, else None."""
    c = Cluster(3, CFG)
    c.advance(1.0)
    if c.leader().id != 1:
        c.leader().transfer_leadership("t", 1, c.now)
        c.advance(1.0)
    c.cut = {(1, 3), (3, 1), (2, 3), (3, 2)}
    c.nodes[1].submit("w", put(9, 1, b"k", b"chosen"), c.now)
    c.pump()
    assert [r.status for r in c.replies[1] if r.req == "w"] == [OK]
    slot = c.nodes[1].commit_index
    del c.nodes[1]
    restart(c)
    c.cut = set()
    c.advance(3.0)
    three = c.nodes[3]
    return three.log.get(slot, (None, None))[1] if three.role == LEADER else None


def test_a_wiped_member_restarted_with_the_old_default_loses_a_chosen_write_and_now_cannot():
    # The old default: an initial member on an empty directory took incarnation 0 and voted.
    def old_default(c):
        c.nodes[2] = Node(2, c.ids, CFG, random.Random(2), c.now, None, 0)
        c.records[2] = []

    assert _lost_write_scenario(old_default) == ()  # 3 won with 2's empty promise: a no-op
    # Now: 2 asks, 3 answers that the cluster has run, 2 rejoins and its votes do not count.
    assert _lost_write_scenario(lambda c: fresh_node(c, 2)) is None


def test_an_initial_member_that_never_started_joins_the_running_cluster_as_a_learner():
    c = Cluster(3, CFG)
    del c.nodes[3]
    c.advance(1.0)
    writes(c, 0, 4)
    node = fresh_node(c, 3)
    c.advance(2.0)
    assert node.incarnation != 0 and chosen_incarnations(c, 3) == [node.incarnation]
    member = c.leader().configuration.get(3)
    assert member.voter and member.incarnation == node.incarnation
    assert node.kv.get(b"k3") == b"v3"


def test_a_probe_is_answered_used_by_a_member_that_has_run():
    c = Cluster(3, CFG)
    node = c.nodes[1]
    node.receive(Probe(2, 42), 0.0)
    assert node.ready().send == [(2, ProbeReply(1, 42, False))]  # incarnation 0, nothing yet
    node.receive(Prepare(3, (1 << 16) | 3, 1), 0.0)
    node.ready()
    node.receive(Probe(2, 43), 0.0)
    assert node.ready().send == [(2, ProbeReply(1, 43, True))]
    joined = Node(1, c.ids, CFG, random.Random(1), 0.0, None, 99)
    joined.receive(Probe(2, 44), 0.0)
    assert joined.ready().send == [(2, ProbeReply(1, 44, True))]  # another incarnation


def test_the_rejoin_incarnation_is_new_for_every_start():
    c = Cluster(3, CFG)
    seen = {fresh_node(c, 2, seed).fresh.nonce for seed in range(20)}
    assert len(seen) == 20 and 0 not in seen


def test_accepted_from_the_deciding_node_never_exists():
    # Until decided, the node answers nothing a leader could count.
    c = Cluster(3, CFG)
    c.advance(1.0)
    leader = c.leader()
    victim = next(i for i in c.ids if i != leader.id)
    fresh_node(c, victim)
    before = len(c.sent)
    c.cut = {(i, victim) for i in c.ids}  # it hears no answers: it stays undecided
    c.advance(0.5)
    from_victim = [m for s, _, m in c.sent[before:] if s == victim]
    assert from_victim and all(type(m) is Probe for m in from_victim)
    assert not any(type(m) in (Promise, Accepted) for m in from_victim)
    assert not any(type(r) is PromiseRecord for r in c.records[victim])


# ------------------------------------------------------------------------------ the daemon


async def test_two_fresh_daemons_wait_for_the_third_say_so_and_decide_when_it_comes(
        tmp_path, caplog):
    import logging

    import trio

    from daemon.runtime.server import serve, status_line
    from tests.test_server import TEST_TIMEOUT, Cluster as Daemons, write_config

    caplog.set_level(logging.INFO, "paxosd")
    daemons = Daemons(write_config(tmp_path))
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for i in (1, 2):
                daemons.servers[i] = await nursery.start(serve, daemons.configs[i])
            c = await daemons.client(1)
            with trio.fail_after(10):
                while "waiting for node(s) 3" not in caplog.text:
                    await trio.sleep(0.05)
            status = (await c.call("status")).result
            assert status["incarnation"] is None and status["waiting_for"] == [3]
            assert status["role"] == "follower" and status["leader"] is None
            assert not status["voter"]
            assert "deciding its incarnation" in status_line(daemons.servers[1].node)
            for i in (1, 2):
                assert not (daemons.configs[i].node_dir(i) / "incarnation").exists()
                assert daemons.servers[i].node.promised == 0 and not daemons.servers[i]._gate.handed
            daemons.servers[3] = await nursery.start(serve, daemons.configs[3])
            leader = await daemons.wait_for_leader()
            for i in (1, 2, 3):
                assert (daemons.configs[i].node_dir(i) / "incarnation").read_text() == "0\n"
            await c.aclose()
            c = await daemons.client(leader)
            assert (await c.call("put", 1, 1, b"k", b"v")).status == OK
            await c.aclose()
            nursery.cancel_scope.cancel()
    assert "every other initial member (nodes 2, 3) reports" in caplog.text


def test_new_cluster_is_for_initial_members_only(tmp_path):
    from daemon.runtime.config import ConfigError, load_config
    from daemon.runtime.server import Server, main
    from tests.test_server import write_config

    path = write_config(tmp_path)
    with pytest.raises(ConfigError, match="--new-cluster is for an initial member"):
        Server(load_config(path, node_id=1), join=True, new_cluster=True)
    with pytest.raises(SystemExit):
        main(["--config", str(path), "--node-id", "1", "--join", "--new-cluster"])


# ------------------------------------------------------------------------------ why every other


class _QuorumOfOthers(FreshStart):
    """The weaker rule: decide "new" once more than n - quorum other members answered "never
    promised" (enough to meet every quorum), without waiting for the rest."""

    def report(self, sender, nonce, used):
        super().report(sender, nonce, used)
        n = len(self.others) + 1
        if self.decision is None and len(self.empty) > n - (n // 2 + 1):
            self._decide(NEW, "a quorum's worth of others never promised")


def _forgotten_promise_scenario(rule) -> tuple:
    """Five members. Candidate 5 has node 1's promise for ballot b when 1 loses its disk; 1 is
    restarted empty and decides by ``rule`` while it cannot hear 5. A delayed Prepare(b) then
    wins 5 a third promise (from 2), and 3 stands with b' < b. What each of 5 and 3 holds
    chosen in slot 2, and whether 1 decided."""
    c = Cluster(5, CFG)
    y, x, z, u, v = 5, 1, 2, 3, 4
    others = {(a, b) for a in c.ids for b in c.ids if a != b}
    c.cut = others - {(y, x), (x, y)}  # 5 reaches only 1
    c.nodes[y].election.start()
    c.pump()
    b = c.nodes[y].ballot
    assert c.nodes[x].promised == b and c.nodes[y].role != LEADER
    # Node 1 loses its disk and is restarted without a flag; it cannot hear 5.
    node = fresh_node(c, x)
    if rule is not FreshStart:
        old = node.fresh
        node.fresh = rule(x, c.ids, old.nonce, c.now, old.interval)
    c.cut = {(x, y), (y, x)}
    node.tick(c.now)
    c.pump()
    decided = node.fresh is None
    # The Prepare(b) that 5 sent 2 arrives late: 5 leads b on {5, 1-before-the-wipe, 2}.
    c.cut = others - {(y, z), (z, y)}
    c.nodes[z].receive(Prepare(y, b, 1), c.now)
    c.pump()
    assert c.nodes[y].role == LEADER
    c.cut = others  # 5's Accepts wait
    c.nodes[y].submit("a", put(50, 1, b"k", b"from 5"), c.now)
    c.pump()
    held = [(d, m) for s, d, m in c.sent if s == y and d in (x, z) and type(m) is Accept]
    # 3 stands with a lower ballot of the same round; it hears 1 and 4 (not 2, which would
    # refuse: it promised b).
    c.cut = others - {(u, x), (x, u), (u, v), (v, u)}
    c.nodes[u].election.start()
    c.pump()
    assert c.nodes[u].ballot < b
    if c.nodes[u].role == LEADER:
        c.nodes[u].submit("b", put(30, 1, b"k", b"from 3"), c.now)
        c.pump()
    # 5's Accepts arrive at last.
    c.cut = others - {(x, y), (z, y)}
    for dst, msg in held:
        c.nodes[dst].receive(msg, c.now)
    c.pump()

    def slot2(n):
        return n.log[2][1] if n.commit_index >= 2 else None

    return slot2(c.nodes[y]), slot2(c.nodes[u]), decided


def test_a_quorum_of_never_promised_answers_is_not_enough_every_other_member_must_answer():
    # With the weaker rule, 1 takes incarnation 0 while its promise to 5 still counts for 5:
    # slot 2 is chosen twice, with different values.
    at5, at3, decided = _forgotten_promise_scenario(_QuorumOfOthers)
    assert decided and at5 is not None and at3 is not None and at5 != at3
    # With every other member required, 1 waits for 5 and votes for no one meanwhile: 3 cannot
    # win, and 5 cannot have slot 2 chosen on 1's acceptance either.
    at5, at3, decided = _forgotten_promise_scenario(FreshStart)
    assert not decided and at3 is None and at5 is None
