"""Nodes driven message by message: a test script decides what is delivered, dropped, held
back or duplicated, and when each node's clock fires. Disks are instant (everything persisted
is durable at once), so what a script shows is the protocol's doing, not the driver's.

Every value a node learns is recorded as it learns it (before any compaction can drop it), so
``divergence()`` can say which slot two nodes learned differently.
"""

from __future__ import annotations

import random

from daemon.core.node import LEADER, CoreConfig, Node
from daemon.core.messages import OK, OP_PUT, Reply


class RecordingNode(Node):
    """A core that writes down the value of every slot it learns, as it learns it."""

    def __init__(self, *args, **kwargs) -> None:
        self.learned: dict[int, tuple] = {}
        super().__init__(*args, **kwargs)

    def _set_commit(self, commit_index: int) -> None:
        for slot in range(self.commit_index + 1, commit_index + 1):
            batch = self.log[slot][1]
            assert self.learned.setdefault(slot, batch) == batch, (
                f"node {self.id} learned slot {slot} twice, differently")
        super()._set_commit(commit_index)


class ScriptedCluster:
    """The nodes, the messages in flight, and the replies clients got."""

    def __init__(self, ids, config: CoreConfig) -> None:
        self.now = 0.0
        self.ids = list(ids)
        self.nodes = {i: RecordingNode(i, self.ids, config, random.Random(i), 0.0) for i in self.ids}
        self.flight: list[tuple[int, int, object]] = []  # (source, destination, message)
        self.replies: list[tuple[int, Reply]] = []
        self.cut: set[tuple[int, int]] = set()  # links that lose what is sent on them
        self.lose = lambda src, dst, msg: False  # and any other message the script drops

    # -- the network ---------------------------------------------------------------------------

    def collect(self) -> None:
        """Move every node's outputs into flight (and its replies to ``replies``)."""
        for i, node in self.nodes.items():
            out = node.ready()
            for dst, msg in out.send + out.send_after_persist:
                if (i, dst) not in self.cut and not self.lose(i, dst, msg):
                    self.flight.append((i, dst, msg))
            self.replies.extend((i, r) for r in out.replies)

    def take(self, src=None, dst=None, kind=None) -> list:
        """Remove from flight, and return, the messages that match (None matches anything)."""
        self.collect()
        taken = [f for f in self.flight if (src is None or f[0] == src) and
                 (dst is None or f[1] == dst) and (kind is None or type(f[2]) is kind)]
        self.flight = [f for f in self.flight if f not in taken]
        return taken

    def deliver(self, messages) -> None:
        for _src, dst, msg in messages:
            self.nodes[dst].receive(msg, self.now)
        self.collect()

    def settle(self, limit: int = 100_000) -> None:
        """Deliver everything in flight (and what that causes) until the network is quiet."""
        self.collect()
        for _ in range(limit):
            if not self.flight:
                return
            src, dst, msg = self.flight.pop(0)
            if (src, dst) not in self.cut:
                self.nodes[dst].receive(msg, self.now)
            self.collect()
        raise AssertionError("messages kept flowing")

    # -- time ------------------------------------------------------------------------------------

    def fire(self, node_id: int) -> None:
        """Run ``node_id``'s clock to its election deadline (the others do not tick)."""
        node = self.nodes[node_id]
        self.now = max(self.now, node.election_deadline) + 1e-6
        node.tick(self.now)
        self.collect()

    def advance(self, seconds: float, step: float = 0.01, only=None) -> None:
        """Every node's clock runs (or only those of the ids in ``only``); everything sent is
        delivered (but for cut links)."""
        end = self.now + seconds
        ticking = [n for i, n in self.nodes.items() if only is None or i in only]
        while self.now < end:
            self.now += step
            for node in ticking:
                node.tick(self.now)
            self.settle()

    def heal(self) -> None:
        self.cut.clear()
        self.lose = lambda src, dst, msg: False

    # -- clients and checks ----------------------------------------------------------------------

    def leader(self):
        leaders = [n for n in self.nodes.values() if n.role == LEADER]
        assert len(leaders) == 1, {i: n.status()["role"] for i, n in self.nodes.items()}
        return leaders[0]

    def put(self, node_id: int, n: int) -> None:
        """Client 7's write number ``n``: key k<n> := v<n>, sent to ``node_id``."""
        cmd = (7, n, OP_PUT, b"k%d" % n, b"v%d" % n, None)
        self.nodes[node_id].submit(("put", n), cmd, self.now)
        self.collect()

    def acknowledged(self) -> list[int]:
        return sorted(r.req[1] for _i, r in self.replies if r.req[0] == "put" and r.status == OK)

    def divergence(self) -> str:
        """'' if no two nodes learned different values for one slot; else which and how."""
        for slot in sorted({s for n in self.nodes.values() for s in n.learned}):
            seen = {i: n.learned[slot] for i, n in self.nodes.items() if slot in n.learned}
            if len(set(seen.values())) > 1:
                return f"slot {slot} learned differently: {seen}"
        return ""

    def lost_writes(self) -> dict[int, list[int]]:
        """node -> acknowledged writes its state machine does not hold."""
        lost = {}
        for i, node in self.nodes.items():
            missing = [n for n in self.acknowledged() if node.kv.get(b"k%d" % n) != b"v%d" % n]
            if missing:
                lost[i] = missing
        return lost


def led_by_1(config: CoreConfig, ids=(1, 2, 3)) -> ScriptedCluster:
    """A cluster of ``ids`` that node 1 leads (it stood first, every message delivered)."""
    c = ScriptedCluster(list(ids), config)
    c.fire(1)
    c.settle()
    assert c.leader().id == 1
    return c
