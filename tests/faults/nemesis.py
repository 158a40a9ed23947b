"""The nemesis: fault kinds, and a seeded schedule that combines them.

A schedule is a list of rounds drawn from ``random.Random(seed)`` before anything runs: each
round applies one fault (sometimes two at once), holds them for a while, heals everything and
leaves a gap for the cluster to recover. Every random choice is drawn up front and the same
number of draws is made whatever the kind, so a seed always gives the same schedule. What a
round does at run time can still depend on the run: "the leader" is whichever node leads when
the fault starts (the drawn node stands in when no leader answers), and the processes and
sockets are real, so a seed replays the schedule, not the interleaving.

Kinds (``KINDS``; ``PROCESS_KINDS`` touch processes, the rest the proxy):

    kill               kill -9 a node; restart it from its data directory at the heal
    kill-leader        the same, to the leader
    power-cut          kill -9 a node and drop what its WAL holds beyond the last fsync
                       (sometimes leaving a torn part of the unsynced tail); restart at the heal
    power-cut-all      the same to every node at once (then restart them all)
    pause              SIGSTOP a node; SIGCONT at the heal
    pause-leader       the same, to the leader (a paused leader must not serve stale reads
                       once it wakes up: the workload reads all along)
    partition          cut one link, both directions
    one-way            cut one direction of one link
    isolate-leader     cut every link of the leader, both directions
    leader-one-way     cut every link of the leader in one direction (in or out)
    majority-minority  split the nodes into a majority and a minority, both directions
    bridge             two halves that only one node (the bridge) connects (5 nodes or more)
    reset              close every connection of one link (the dialer reconnects)
    slow               delay every chunk on one node's links by 10-80 ms, both ways
    transfer-leader    ask the leader to hand leadership to another node (an instant fault:
                       the handover runs under whatever else the round does)
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

import trio

from tests.faults.cluster import ProcessCluster, raw_call

__all__ = ["KINDS", "Fault", "Nemesis", "Round", "schedule"]

KINDS = ("kill", "kill-leader", "power-cut", "power-cut-all", "pause", "pause-leader",
         "partition", "one-way", "isolate-leader", "leader-one-way", "majority-minority",
         "bridge", "reset", "slow", "transfer-leader")
PROCESS_KINDS = frozenset({"kill", "kill-leader", "power-cut", "power-cut-all", "pause",
                           "pause-leader"})
# How often each kind is drawn, relative to the others.
WEIGHTS = {"kill": 3, "kill-leader": 3, "power-cut": 4, "power-cut-all": 1, "pause": 2,
           "pause-leader": 3, "partition": 2, "one-way": 2, "isolate-leader": 3,
           "leader-one-way": 2, "majority-minority": 3, "bridge": 2, "reset": 1, "slow": 1,
           "transfer-leader": 2}


@dataclass(frozen=True)
class Fault:
    kind: str
    node: int  # the node it hits (or stands in for the leader)
    other: int  # a second node (the far end of a link)
    order: tuple[int, ...]  # the nodes in a random order (to split them into groups)
    flag: bool  # one-way: which direction; power-cut: leave a torn tail
    amount: float  # slow: the delay


@dataclass(frozen=True)
class Round:
    faults: tuple[Fault, ...]
    hold: float  # seconds the faults last
    gap: float  # seconds of calm after the heal

    def __str__(self) -> str:
        return (" + ".join(f.kind for f in self.faults)
                + f" for {self.hold:.1f} s, then {self.gap:.1f} s healed")


def schedule(seed: int, ids: tuple[int, ...], seconds: float,
             kinds: tuple[str, ...] = KINDS) -> list[Round]:
    """The rounds that fill ``seconds`` for nodes ``ids``, drawn from ``seed``."""
    rng = random.Random(seed)
    kinds = tuple(k for k in kinds if k != "bridge" or len(ids) >= 5)
    if not kinds:
        raise ValueError("no fault kinds to draw from")
    weights = [WEIGHTS[k] for k in kinds]
    rounds = []
    total = 0.0
    while total < seconds:
        count = 2 if rng.random() < 0.3 else 1
        faults = []
        for _ in range(count):
            kind = rng.choices(kinds, weights)[0]
            node = rng.choice(ids)
            other = rng.choice([i for i in ids if i != node])
            order = tuple(rng.sample(ids, len(ids)))
            faults.append(Fault(kind, node, other, order, rng.random() < 0.5,
                                rng.uniform(0.01, 0.08)))
        hold = rng.uniform(0.3, 3.0)
        gap = rng.uniform(0.5, 2.0)
        rounds.append(Round(tuple(faults), hold, gap))
        total += hold + gap
    return rounds


@dataclass
class Nemesis:
    """Applies a schedule's rounds to a ProcessCluster (whose proxy must be running)."""

    cluster: ProcessCluster
    seed: int = 0
    verbose: bool = False
    counts: Counter = field(default_factory=Counter)
    events: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    bytes_cut: int = 0
    cuts: int = 0  # power cuts that dropped unsynced bytes
    _down: set = field(default_factory=set)  # killed, restart at the heal
    _rng: random.Random = field(default_factory=random.Random)
    _t0: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"nemesis/{self.seed}")

    def note(self, text: str) -> None:
        line = f"{time.monotonic() - self._t0:8.3f} {text}"
        self.events.append(line)
        if self.verbose:
            print(line, flush=True)

    async def run(self, rounds: list[Round], deadline: float) -> None:
        """Play ``rounds`` until they end or trio's clock passes ``deadline``; heal at the end."""
        try:
            for rnd in rounds:
                if trio.current_time() >= deadline:
                    break
                await self.apply(rnd)
                await trio.sleep(min(rnd.hold, max(0.0, deadline - trio.current_time())))
                await self.heal()
                self.check_processes()
                await trio.sleep(min(rnd.gap, max(0.0, deadline - trio.current_time())))
        finally:
            with trio.CancelScope(shield=True):
                await self.heal()

    async def apply(self, rnd: Round) -> None:
        cluster = self.cluster
        blocked: set[tuple[int, int]] = set()
        leader = None
        if any("leader" in f.kind for f in rnd.faults):
            leader = await cluster.leader()
        for f in rnd.faults:
            self.counts[f.kind] += 1
            target = f.node
            if "leader" in f.kind and leader is not None:
                target = leader
            ids = cluster.ids
            if f.kind in ("kill", "kill-leader", "power-cut"):
                if target in self._down:
                    continue
                cut = 0
                if f.kind == "power-cut":
                    await cluster.kill_unsynced(target)
                    cut = cluster.power_cut(target, self._rng, torn=f.flag)
                    self.bytes_cut += cut
                    self.cuts += cut > 0
                else:
                    cluster.kill(target)
                self._down.add(target)
                self.note(f"{f.kind}: node {target}" + (f", {cut} unsynced bytes lost"
                                                        if f.kind == "power-cut" else ""))
            elif f.kind == "power-cut-all":
                cuts = {}
                for i in ids:
                    await cluster.kill_unsynced(i)
                    self._down.add(i)
                for i in ids:
                    cuts[i] = cluster.power_cut(i, self._rng, torn=f.flag)
                    self.bytes_cut += cuts[i]
                    self.cuts += cuts[i] > 0
                self.note(f"power-cut-all: unsynced bytes lost {cuts}")
            elif f.kind in ("pause", "pause-leader"):
                if target in self._down:
                    continue
                cluster.pause(target)
                self.note(f"{f.kind}: node {target}")
            elif f.kind == "partition":
                blocked |= {(target, f.other), (f.other, target)}
                self.note(f"partition: link {target}-{f.other}")
            elif f.kind == "one-way":
                src, dst = (target, f.other) if f.flag else (f.other, target)
                blocked.add((src, dst))
                self.note(f"one-way: {src}->{dst} cut")
            elif f.kind == "isolate-leader":
                blocked |= _split({target}, set(ids) - {target}, both=True)
                self.note(f"isolate-leader: node {target}")
            elif f.kind == "leader-one-way":
                rest = set(ids) - {target}
                if f.flag:
                    blocked |= _split({target}, rest, both=False)
                    self.note(f"leader-one-way: node {target} cannot send")
                else:
                    blocked |= _split(rest, {target}, both=False)
                    self.note(f"leader-one-way: node {target} cannot receive")
            elif f.kind == "majority-minority":
                minority = set(f.order[:(len(ids) - 1) // 2])
                blocked |= _split(minority, set(ids) - minority, both=True)
                self.note(f"majority-minority: {sorted(minority)} | "
                          f"{sorted(set(ids) - minority)}")
            elif f.kind == "bridge":
                bridge = f.order[0]
                half = (len(ids) - 1) // 2
                left, right = set(f.order[1:1 + half]), set(f.order[1 + half:])
                blocked |= _split(left, right, both=True)
                self.note(f"bridge: {sorted(left)} | {sorted(right)}, bridged by {bridge}")
            elif f.kind == "reset":
                n = cluster.proxy.reset(target, f.other)
                self.note(f"reset: link {target}-{f.other}, {n} connections closed")
            elif f.kind == "slow":
                for other in ids:
                    if other != target:
                        cluster.proxy.set_delay((target, other), f.amount)
                        cluster.proxy.set_delay((other, target), f.amount)
                self.note(f"slow: node {target}'s links, {f.amount * 1000:.0f} ms per chunk")
            elif f.kind == "transfer-leader":
                to = f.other if f.other != target else f.node
                reply = await raw_call(cluster.client_port[target],
                                       ["transfer", to, 0, b"", None, None], timeout=1.0)
                answer = "no answer" if reply is None else f"{reply.status} {reply.result or ''}"
                self.note(f"transfer-leader: node {target} to node {to}: {answer}")
            else:
                raise ValueError(f"unknown fault kind {f.kind!r}")
        if blocked:
            cluster.proxy.set_blocked(blocked)

    async def heal(self) -> None:
        """Heal every fault: the proxy passes everything, paused nodes go on, killed ones
        restart."""
        cluster = self.cluster
        if cluster.proxy is not None:
            cluster.proxy.heal()
        for i in sorted(cluster.paused):
            cluster.resume(i)
        for i in sorted(self._down):
            if not cluster.running(i):
                cluster.start(i)
        self._down.clear()

    def check_processes(self) -> None:
        """A node that exited by itself is a problem: note it (with its log's tail), restart it."""
        for i, code in self.cluster.unexpected_exits().items():
            tail = "\n".join(self.cluster.log_text(i).splitlines()[-15:])
            self.problems.append(f"node {i} exited by itself with code {code}; its log ends:\n"
                                 f"{tail}")
            self.note(f"node {i} exited by itself (code {code}); restarting it")
            self.cluster.start(i)


def _split(left: set, right: set, *, both: bool) -> set[tuple[int, int]]:
    out = {(a, b) for a in left for b in right}
    if both:
        out |= {(b, a) for a in left for b in right}
    return out
