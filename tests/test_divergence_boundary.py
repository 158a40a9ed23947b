"""A configuration boundary must not no-op-fill slots another leader chose: a scenario script.

Five members (1-4 from the start, 5 added as a learner and promoted to voter). A leader that
reaches a configuration boundary runs Phase 1 again, with the new configuration's voters, at
the ballot it was elected with. A voter that promised that ballot in the election and has since
installed a catch-up snapshot must not answer that Prepare as if it still held the slots the
snapshot covers: its Promise would leave chosen slots out, and the leader would fill them with
no-ops. The script below drives real ``daemon.core.node.Node`` objects by hand, one message at a
time, so that exactly this happens (window W = 4: the new configuration takes effect at slot
e = 11):

  * 2 leads (ballot b'); the Accept of slots 8..10 is lost to 3; then a partition {1,4} | {2,5}
    with 3 reaching both sides. 2 takes the new configuration (1-5 voters) into effect at
    slot 11 with {2,3,5} and has client writes chosen at 12..15, acknowledged.
  * 3 asks 2 for the slots it missed; the request is slow, and by the time it arrives 2 has
    compacted, so it answers with its snapshot at 14, which is slow too.
  * 1 stands (ballot b > b') from slot 8, still in the old configuration, and wins with
    {1,3,4}; it re-proposes 8..10 and reaches the boundary at 11: Prepare(b, 11).
  * The snapshot reaches 3 first (3 has now compacted up to 14), then the Prepare(b, 11).

On the core this pins, 3 answers with a Promise (b is what it promised) that reports slot 15
only; 1 fills 11..14 with no-ops and has them chosen with {1,3,4} (3 acknowledges slots its
commit index covers without comparing values): 1 and 4 learn no-ops at 12..14 where 2 and 5
learned acknowledged writes.
Against that, the final checks are the safety property itself (no two nodes learn different
values for a slot; every acknowledged write is in the state of every node that applied past
its slot) and then liveness once everything is healed.
"""

import random

from daemon.core.node import LEADER, CoreConfig
from daemon.core.messages import NOOP, OK, Accept, CatchupRequest, Prepare, SnapshotChunk
from tests.scripted import RecordingNode
from tests.test_core import put

W = 4
CFG = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.30), window=W,
                 snapshot_every=4, log_retain=0)
INITIAL = [1, 2, 3, 4]
FIVE_INCARNATION = 55
TICK = 0.01


class Network:
    """Hand-driven nodes and the messages in flight between them, as (src, dst, msg).

    Disks are instant: ``send`` and ``send_after_persist`` both go in flight as soon as a node
    hands them out. The script decides what is delivered (in sending order), held back, lost,
    and when time passes. A message on a ``cut`` link is lost when its turn comes.
    """

    def __init__(self):
        self.now = 1.0
        self.nodes: dict[int, RecordingNode] = {}
        self.learned: dict[int, dict] = {}  # node id -> slot -> batch it learned chosen
        self.acked: dict = {}  # req -> the node that answered OK
        self.flight: list = []
        self.cut: set = set()
        for i in INITIAL:
            self.start(i, 0)

    def start(self, node_id: int, incarnation: int) -> RecordingNode:
        node = RecordingNode(node_id, INITIAL, CFG, random.Random(node_id), self.now, None,
                             incarnation)
        node.learned = self.learned[node_id] = {}
        self.nodes[node_id] = node
        return node

    def collect(self) -> None:
        for i, node in self.nodes.items():
            out = node.ready()
            self.acked.update((r.req, i) for r in out.replies if r.status == OK)
            self.flight += [(i, dst, msg) for dst, msg in out.send + out.send_after_persist]

    def run(self, hold=lambda src, dst, msg: False, until=lambda: False, limit=5000) -> None:
        """Deliver everything in flight (and what that causes) except what ``hold`` keeps back,
        until nothing is left to deliver or ``until()`` holds."""
        for _ in range(limit):
            self.collect()
            if until():
                return
            for k, (src, dst, msg) in enumerate(self.flight):
                if not hold(src, dst, msg):
                    del self.flight[k]
                    if (src, dst) not in self.cut:
                        self.nodes[dst].receive(msg, self.now)
                    break
            else:
                return
        raise AssertionError("messages kept flowing")

    def lose(self, pred) -> list:
        """Lose the in-flight messages ``pred`` selects; returns them."""
        self.collect()
        lost = [f for f in self.flight if pred(*f)]
        self.flight = [f for f in self.flight if not pred(*f)]
        return lost

    def in_flight(self, pred) -> list:
        self.collect()
        return [f for f in self.flight if pred(*f)]

    def tick(self, ids, seconds: float) -> None:
        """Let ``seconds`` pass; only nodes ``ids`` notice (their timers fire)."""
        self.now += seconds
        for i in ids:
            self.nodes[i].tick(self.now)
        self.collect()

    def advance(self, seconds: float, ids=None, hold=lambda src, dst, msg: False) -> None:
        """Time passes in steps of TICK for nodes ``ids`` (all by default); everything not held
        is delivered after each step."""
        for _ in range(round(seconds / TICK)):
            self.tick(self.nodes if ids is None else ids, TICK)
            self.run(hold)


def partition(side_a, side_b) -> set:
    return {(a, b) for a in side_a for b in side_b} | {(b, a) for a in side_a for b in side_b}


def write(i: int) -> tuple:
    """Client 100+i's first command: put k<i> = v<i>."""
    return put(100 + i, 1, b"k%d" % i, b"v%d" % i)


def describe(batch: tuple) -> str:
    if batch == NOOP:
        return "a no-op"
    return " + ".join(f"put {cmd[3]!r}={cmd[4]!r} (client {cmd[0]})" for cmd in batch)


def is_msg(kind, src=None, dst=None, **fields):
    """A predicate on (src, dst, msg): a ``kind`` message on that link with those fields."""
    def pred(s, d, msg):
        return (isinstance(msg, kind) and src in (None, s) and dst in (None, d)
                and all(getattr(msg, k) == v for k, v in fields.items()))
    return pred


def either(*preds):
    return lambda s, d, m: any(p(s, d, m) for p in preds)


# ---------------------------------------------------------------------------------- the story


def grow_to_five(net: Network) -> int:
    """2 leads; 5 joins as a learner and is promoted. Stops as soon as 2 has chosen the
    promotion (in slot s2, effective s2 + W) and handed out the Accept of the no-ops that
    bring it into effect. Returns the effective slot."""
    net.tick([2], 0.5)  # 2's election timer fires first
    net.run()
    two = net.nodes[2]
    assert two.role == LEADER and all(n.promised == two.ballot for n in net.nodes.values())
    net.start(5, FIVE_INCARNATION)
    two.change_members("add 5", ("add", 5, "h5:peer", "h5:client"), net.now)
    net.run(until=lambda: (two.configuration.votes(5, FIVE_INCARNATION)
                           and two.commit_index >= two.configuration.slot))
    assert net.acked["add 5"] == 2
    five_voter = two.configuration
    assert five_voter.voters == (1, 2, 3, 4, 5) and five_voter.effective == five_voter.slot + W
    # The old configuration (5 a learner) runs to slot effective - 1.
    assert two.membership.config_at(five_voter.effective - 1).voters == (1, 2, 3, 4)
    return five_voter.effective


def two_leads_the_new_configuration_with_three_and_five(net: Network, e: int) -> None:
    """The Accept of e-3..e-1 is lost to 3; 1, 2, 4 choose them. Then the partition; 2's
    boundary Phase 1 at e succeeds with {2,3,5}; 3 learns the commit index, misses e-3 and
    asks 2 to catch up; that request is slow. Four client writes are chosen at e+1..e+4."""
    two, three = net.nodes[2], net.nodes[3]
    assert len(net.lose(is_msg(Accept, 2, 3, first_slot=e - 3))) == 1
    net.run(until=lambda: two.election.boundary is not None)
    assert two.commit_index == e - 1 and two.election.boundary_slot == e
    assert [net.nodes[i].commit_index for i in (1, 3, 4)] == [e - 4, e - 5, e - 4]
    net.cut = partition((1, 4), (2, 5))
    slow_ask = is_msg(CatchupRequest, 3, 2)
    net.run(hold=slow_ask)
    assert two.role == LEADER and two.active.voters == (1, 2, 3, 4, 5)
    assert three.commit_index == e - 4 and (e - 3) not in three.log  # the lost Accept
    assert net.in_flight(slow_ask)  # 3 asked for e-3 on
    for i in range(1, 5):
        two.submit(("write", i), write(i), net.now)
        net.run(hold=slow_ask)
        assert net.acked[("write", i)] == 2
    assert two.learned[e] == NOOP and [two.learned[e + i] for i in range(1, 5)] == [
        (write(i),) for i in range(1, 5)]
    assert net.nodes[5].commit_index == e + 3 and net.nodes[5].learned[e + 1] == (write(1),)
    assert two.snapshot_index == e + 3 and two.log_start == e + 4  # compacted: log_retain 0
    assert {s: b for s, (b, _) in three.log.items() if s >= e} == {
        s: two.ballot for s in range(e, e + 5)}


def slow_snapshot_for_three(net: Network, e: int) -> None:
    """3's catch-up request reaches 2 at last: 2 has compacted past e-3, so it answers with its
    snapshot at e+3, and that answer is slow too."""
    net.run(hold=is_msg(SnapshotChunk, 2, 3))
    chunks = net.in_flight(is_msg(SnapshotChunk, 2, 3))
    assert chunks and all(msg.index == e + 3 for _, _, msg in chunks)
    assert net.nodes[3].snapshot_index < e - 4 and net.nodes[3].log_start <= e - 3


def one_is_elected_in_the_old_configuration(net: Network, e: int) -> int:
    """1's timer fires: it stands from slot e-3 (in the old configuration, voters 1-4) with a
    ballot b above 2's and wins with {1,3,4}. 3 can promise: it has not compacted past e-3.
    Returns b."""
    two = net.nodes[2]
    snapshot_on_its_way = is_msg(SnapshotChunk, 2, 3)
    boundary_prepare = is_msg(Prepare, 1, from_slot=e)
    net.tick([1], 0.5)
    one = net.nodes[1]
    b = one.ballot
    assert one.role != LEADER and b > two.ballot
    net.run(hold=either(snapshot_on_its_way, boundary_prepare),
            until=lambda: one.role == LEADER)
    assert one.role == LEADER and one.active.voters == (1, 2, 3, 4)
    assert [net.nodes[i].promised for i in (1, 3, 4)] == [b] * 3
    # It re-proposes e-3..e-1 (1 and 4 reported them), they are chosen with {1,3,4}, and 1
    # reaches the boundary: Phase 1 with the new configuration's voters. (The core this pins
    # reuses b, the ballot 3 promised; a fix may take a higher one, hence >=.)
    net.run(hold=either(snapshot_on_its_way, boundary_prepare))
    assert one.commit_index == e - 1 and one.election.boundary_slot == e
    assert {dst for _, dst, msg in net.in_flight(boundary_prepare)} == {1, 2, 3, 4, 5}
    assert all(msg.ballot >= b for _, _, msg in net.in_flight(boundary_prepare))
    return b


def three_installs_the_snapshot_before_the_prepare(net: Network, e: int, b: int) -> None:
    """The snapshot that was on its way reaches 3 before 1's boundary Prepare does."""
    three = net.nodes[3]
    net.run(hold=is_msg(Prepare, 1, 3, from_slot=e), until=lambda: three.snapshot_index > e)
    assert three.snapshot_index == three.commit_index == e + 3 and three.log_start == e + 4
    assert three.promised == b  # what it promised in 1's election
    assert net.in_flight(is_msg(Prepare, 1, 3, from_slot=e))


# ---------------------------------------------------------------------------------- the checks


def check_safety(net: Network) -> None:
    """No two nodes learned different values for one slot; every acknowledged write is in the
    state of every node that applied past the slot it was chosen in."""
    problems = []
    by_slot: dict[int, dict[tuple, list]] = {}  # slot -> value -> the nodes that learned it
    for node_id, learned in sorted(net.learned.items()):
        for slot, batch in learned.items():
            by_slot.setdefault(slot, {}).setdefault(batch, []).append(node_id)
    for slot, values in sorted(by_slot.items()):
        if len(values) > 1:
            problems.append(f"slot {slot}: " + ", but ".join(
                f"nodes {ids} learned {describe(batch)}" for batch, ids in values.items()))
    for req, node_id in net.acked.items():
        if req[0] != "write":
            continue
        cmd = write(req[1])
        slot = next(s for s, b in net.learned[node_id].items() if cmd in b)
        missing = [n.id for n in net.nodes.values()
                   if n.applied_index >= slot and n.kv.get(cmd[3]) != cmd[4]]
        if missing:
            problems.append(f"write {cmd[3]!r}={cmd[4]!r}, acknowledged by node {node_id} and "
                            f"chosen in slot {slot}, is missing at nodes {missing}")
    assert not problems, "safety violated:\n" + "\n".join(problems)


def check_liveness(net: Network) -> None:
    """Healed, the cluster agrees on one state holding every acknowledged write, and takes a
    new write."""
    net.cut = set()
    net.advance(3.0)
    leaders = [n for n in net.nodes.values() if n.role == LEADER]
    assert len(leaders) == 1, [n.status() for n in net.nodes.values()]
    leaders[0].submit(("write", 9), write(9), net.now)
    net.advance(1.0)
    assert ("write", 9) in net.acked
    commits = {n.id: n.commit_index for n in net.nodes.values()}
    assert len(set(commits.values())) == 1, commits
    assert len({n.kv.state() for n in net.nodes.values()}) == 1
    for req in net.acked:
        if req[0] == "write":
            assert all(n.kv.get(write(req[1])[3]) == write(req[1])[4] for n in net.nodes.values())
    check_safety(net)


def test_an_equal_ballot_boundary_prepare_to_a_compacted_voter_cannot_lose_chosen_writes():
    net = Network()
    e = grow_to_five(net)
    two_leads_the_new_configuration_with_three_and_five(net, e)
    slow_snapshot_for_three(net, e)
    b = one_is_elected_in_the_old_configuration(net, e)
    three_installs_the_snapshot_before_the_prepare(net, e, b)
    # Now the boundary Prepare(b, e) reaches 3, which promised b and has compacted up to e+3.
    # Whatever 3 answers, 1 must not end up with values other than those 2 chose at e..e+4.
    # The partition stays; 1 and 2 keep time (heartbeats carry their commit indexes).
    net.advance(0.1, ids=(1, 2))
    check_safety(net)
    check_liveness(net)
