"""A seeded, deterministic simulator that runs the real protocol core under faults.

    python -m tests.simulator --seeds 300             # seeds 0..299, 3 and 5 nodes alternating
    python -m tests.simulator --seed 1234 --nodes 5   # replay one seed exactly
    python -m tests.simulator --seeds 100000 --jobs 2 # the long run (about half an hour)
    python -m tests.simulator --seeds 2000 --skip-check promise-covers   # look past one check

Each seed draws its own fault mix: message drop (up to 30%), duplication (up to 50%), delay and
reordering, symmetric/asymmetric/single-node partitions, crashes, failing fsyncs, restarts,
pauses, leadership transfers, membership changes and wiped disks. Clients issue random
put/get/delete/cas on a few keys, retrying through timeouts and redirects under one session
(when sessions may be evicted, a write is not retried: its outcome is recorded as unknown).

Each seed draws its settings too (``draw_configs``): the daemon's defaults (window 64,
log_retain 256, catch-up 64) with a snapshot every few slots, or settings that differ from node
to node (window, log_retain, snapshot_every, catchup_slots), and now and then few client
sessions kept, so that they are evicted.

After every step, the checks of tests.sim_invariants: no two nodes learn different values for a
slot; a node's chosen log and applied history never change; a Promise covers every chosen slot
from the Prepare's from_slot to the acceptor's commit index; an Accepted covers only slots held
at its ballot; a promise never goes down (across restarts too) and no Promise or Accepted leaves
before its promise is on disk. At the end: faults are healed and every pending command must
complete within a bounded number of election timeouts, all replicas must agree, every
acknowledged write must be in the chosen log, and the client history must be linearizable.
The clients' workload includes range reads, transactions and leases; reads, keepalives and the
revisions and results of acknowledged writes are checked against the chosen log replayed to
each revision (tests.sim_reads), and every lease expiry that took effect against the keepalives
acknowledged for it (tests.sim_leases).
The same seed on the same code gives the same trace hash; a failure prints the command that
replays it.

The driver keeps the core's durability contract through the daemon's own gate
(daemon.runtime.durability), over a disk modelled on the daemon's WAL writer (tests.sim_disk: records in
the real WAL encoding, unsynced tails lost, cut or kept in a crash, snapshot and log rotation as
separate steps, failing fsyncs that stop the node). Peer messages cross the network as the real
wire bytes (``wire.encode_peer``, then ``wire.decode_peer_payload`` with its fastpath Accept
decoder, as daemon.runtime.transport does); a node's messages to itself stay objects, as in the server.

``--bug`` swaps in a deliberately broken core to show the checks catch it; register one with the
``@bug("name")`` decorator on a Node subclass in this module.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import random
import re
import sys
import time
from dataclasses import dataclass, field

from fastpath import dumps

from daemon.codec import wire
from daemon.core.expiry import LeaseQuery
from daemon.core.kv import RangeQuery, prefix_end
from daemon.core.node import CoreConfig, Node
from daemon.core.reads import RANGE_REPLY_MARGIN
from daemon.core.membership import config_of_batch, decode_configuration
from daemon.core.messages import NOT_LEADER, OK, OP_CAS, OP_DELETE, OP_PUT, SESSION_EXPIRED, Reply
from daemon.core.txn import OP_TXN, TARGETS, encode_txn
from tests.linearizability import Operation, check
from tests.sim_bugs import BUGS
from tests.sim_disk import DiskFailure, NodeStorage
from tests.sim_faults import FaultInjection
from tests.sim_leases import LeaseLoad, LeaseWatch
from tests.sim_reads import ReadCheck, ReadSeen
from tests.sim_watch import WatchCheck
from tests.sim_invariants import OPTIONAL_CHECKS, Checker, Violation

ELECTION = (0.150, 0.300)
# The client workload: operations and their weights. Without range reads (--no-ranges) a seed
# draws exactly as it did before ranges existed, so the seeds pinned in tests/test_simulator.py
# replay the interleavings they were pinned for.
OPS = (["put", "get", "delete", "cas"], [4, 4, 1, 2])
OPS_WITH_RANGES = (OPS[0] + ["range"], OPS[1] + [2])
# With ranges on, transactions too (but with --no-txns, which draws as before they existed):
# on keys of their own (TXN_KEYS, which single-key operations never touch: the
# linearizability checker knows single keys only), checked by tests/sim_reads.py against the
# chosen log.
OPS_WITH_TXNS = (OPS_WITH_RANGES[0] + ["txn"], OPS_WITH_RANGES[1] + [1])
TXN_KEYS = [b"t0", b"t1", b"t2", b"t3"]
# With transactions on, leases too (but with --no-leases, which draws as before they existed):
# grants, keepalives, revokes and puts attached to a lease (tests.sim_leases).
OPS_WITH_LEASES = (OPS_WITH_TXNS[0] + ["lease"], OPS_WITH_TXNS[1] + [2])
HEARTBEAT = 0.050
TICK = 0.010
QUIET_AFTER_HEAL = 1.0  # seconds of healed running before a run may end early, settled


@dataclass
class FaultMix:
    drop: float
    duplicate: float
    delay_max: float  # seconds; most messages take far less
    long_delay: float  # probability that a message is held back long enough to be reordered
    partition_every: float  # mean seconds between partition changes (0 = never)
    crash_every: float  # mean seconds between crashes (0 = never)
    pause_every: float  # mean seconds between pauses (0 = never)
    transfer_every: float  # mean seconds between leadership transfers (0 = never)
    member_every: float  # mean seconds between membership changes and disk wipes (0 = never)
    fsync: tuple[float, float]  # fsync latency range, seconds
    fsync_fail: float  # probability that a sync, snapshot write or log rotation fails

    @classmethod
    def draw(cls, rng: random.Random) -> "FaultMix":
        def maybe(p, lo, hi):
            return rng.uniform(lo, hi) if rng.random() < p else 0.0

        return cls(
            drop=maybe(0.7, 0.0, 0.30),
            duplicate=maybe(0.5, 0.0, 0.50),
            delay_max=rng.choice([0.001, 0.005, 0.02, 0.08]),
            long_delay=maybe(0.5, 0.0, 0.1),
            partition_every=maybe(0.7, 0.2, 2.0),
            crash_every=maybe(0.8, 0.1, 2.0),
            pause_every=maybe(0.3, 0.5, 3.0),
            transfer_every=maybe(0.4, 0.2, 2.0),
            member_every=maybe(0.5, 0.3, 2.0),
            fsync=(0.0002, rng.choice([0.0005, 0.002, 0.01, 0.05])),
            fsync_fail=maybe(0.2, 0.0, 0.01),
        )

    def describe(self) -> str:
        return (f"drop={self.drop:.2f} dup={self.duplicate:.2f} delay<={self.delay_max * 1000:.0f}ms "
                f"reorder={self.long_delay:.2f} partition/{self.partition_every:.1f}s "
                f"crash/{self.crash_every:.1f}s pause/{self.pause_every:.1f}s "
                f"transfer/{self.transfer_every:.1f}s member/{self.member_every:.1f}s "
                f"fsync<={self.fsync[1] * 1000:.1f}ms fsync-fail={self.fsync_fail:.3f}")


SETTINGS = ("defaults", "same", "per-node")


def draw_configs(rng: random.Random, ids, mixed_sessions: bool = False,
                 settings: str | None = None) -> tuple[str, dict]:
    """Per node settings, with a line describing them: "defaults" (the daemon's, compacting
    every few slots), "same" (drawn once for all nodes) or "per-node" (drawn for each), as
    ``settings`` says or else at random. Few sessions kept, now and then."""
    timing = dict(heartbeat_interval=HEARTBEAT, election_timeout=ELECTION)
    sessions = rng.choice([2, 3, 100_000])
    if (rng.random() < 0.4) if settings is None else settings == "defaults":
        every = rng.choice([8, 16, 32])
        cfg = CoreConfig(**timing, snapshot_every=every, max_sessions=sessions)
        return f"defaults snapshot_every={every} max_sessions={sessions}", {i: cfg for i in ids}
    shared = dict(timing, max_batch_commands=rng.choice([1, 3, 64]),
                  max_message_bytes=rng.choice([4096, 32 << 20]),
                  snapshot_chunk_bytes=rng.choice([64, 4096, 1 << 20]),
                  behind_limit=rng.choice([4, 64]))

    def one():
        return dict(window=rng.choice([1, 4, 16, 64]), catchup_slots=rng.choice([4, 16, 64]),
                    snapshot_every=rng.choice([0, 5, 16, 40]),
                    log_retain=rng.choice([0, 3, 64, 256]),
                    max_sessions=rng.choice([2, 3, 100_000]) if mixed_sessions else sessions)

    if (rng.random() < 0.4) if settings is None else settings == "same":
        cfg = CoreConfig(**shared, **one())
        return f"same {_settings(cfg)}", {i: cfg for i in ids}
    configs = {i: CoreConfig(**shared, **one()) for i in ids}
    return "per-node " + "; ".join(f"{i}: {_settings(c)}" for i, c in configs.items()), configs


def _settings(cfg: CoreConfig) -> str:
    return (f"window={cfg.window} retain={cfg.log_retain} every={cfg.snapshot_every} "
            f"catchup={cfg.catchup_slots} sessions={cfg.max_sessions}")


# ------------------------------------------------------------------------------------ nodes

@dataclass
class SimNode:
    id: int
    node: Node | None = None
    up: bool = True
    incarnation: int = 0  # boots so far (for events addressed to one boot)
    member_incarnation: int = 0  # the node's data directory's (non-zero once wiped or joining)
    started: bool = False
    paused_until: float = 0.0
    storage: NodeStorage = field(default_factory=NodeStorage)
    checked_commit: int = 0
    promised: int = 0  # the node's promise after its last step (it never goes down)


@dataclass
class ClientOp:
    op: str
    key: bytes
    value: bytes | None
    expected: bytes | None
    seq: int
    call: float
    attempt: int = 0
    deadline: float = 0.0
    answered: bool = False  # the last attempt got an answer (a redirect, busy, ...)
    seq_attempt: int = 1  # the attempt that first sent ``seq`` (a session starts again anew)
    query: RangeQuery | tuple | None = None  # what a "range" reads; a "txn"'s parts


class ClientLoad(LeaseLoad):
    """The simulated clients of a Simulation: one operation at a time each, retried through
    timeouts and redirects, recorded for the linearizability check."""

    txns = True  # transactions in the workload (with ranges): Options.txns
    leases = True  # leases in the workload (with transactions): Options.leases
    txn_values: tuple = ()  # recent values transactions wrote, for their compares
    txn_revision = 0  # the highest revision a reply named, for their compares

    def _wake(self, cid: int, delay: float) -> None:
        """One pending wake-up per client: a newer one replaces the older."""
        client = self.clients[cid]
        client["wake"] = client.get("wake", 0) + 1
        self._schedule(delay, "client", (cid, client["wake"]))

    def _client_step(self, cid: int) -> None:
        client = self.clients[cid]
        op = client["op"]
        if op is None:
            if self.healed and self.now > self.heal_time + 0.5:
                return  # the load stops once the healed cluster had time to settle
            op = self._new_op(cid)
            client["op"] = op
        elif self.now < op.deadline:
            self._wake(cid, op.deadline - self.now)
            return
        else:
            if not op.answered:
                client["target"] = self.rng.choice(self.all_ids)  # timed out: try elsewhere
        self._send_request(cid, op)

    def _new_op(self, cid: int) -> ClientOp:
        client = self.clients[cid]
        rng = self.rng
        key = rng.choice(self.keys)
        kind = rng.choices(*(OPS if not self.ranges else OPS_WITH_RANGES if not self.txns
                             else OPS_WITH_LEASES if self.leases else OPS_WITH_TXNS))[0]
        client["n"] += 1
        value = expected = None
        if kind == "lease" or client.get("keeper"):
            action = self._draw_lease(client, cid, b"%d-%d" % (cid % 1000, client["n"]))
            if action[0] == "keepalive":  # a read of the leader's clock: no seq
                return ClientOp("keepalive", b"", None, None, 0, self.now, query=action)
            client["seq"] += 1
            return ClientOp("lease", b"", None, None, client["seq"], self.now, query=action)
        if kind == "range":
            return ClientOp(kind, key, None, None, 0, self.now, query=self._draw_range(key))
        if kind == "txn":
            client["seq"] += 1
            return ClientOp(kind, b"", None, None, client["seq"], self.now,
                            query=self._draw_txn(b"%d-%d" % (cid % 1000, client["n"])))
        if kind == "put":
            value = b"%d-%d" % (cid % 1000, client["n"])
        elif kind == "cas":
            expected = rng.choice([None, *self._recent_values(key)])
            value = b"%d-%d" % (cid % 1000, client["n"])
        seq = 0
        if kind != "get":
            client["seq"] += 1
            seq = client["seq"]
        return ClientOp(kind, key, value, expected, seq, self.now)

    def _draw_range(self, key: bytes) -> RangeQuery:
        """A key alone, [key, another), from key on, or the keys' common prefix; now and then
        limited, keys only or count only."""
        rng = self.rng
        shape = rng.randrange(4)
        if shape == 0:
            start, end = key, None
        elif shape == 1:
            start, end = key, rng.choice(self.keys)
        elif shape == 2:
            start, end = key, b""
        else:
            start, end = b"k", prefix_end(b"k")
        return RangeQuery(start, end, rng.choice([0, 0, 1, 2]), rng.random() < 0.2,
                          rng.random() < 0.1)

    def _draw_txn(self, value: bytes) -> tuple:
        """A transaction on TXN_KEYS: up to two compares of any target and operator, and one
        to three ops per branch (puts of ``value``, deletes of a key or a range, ranges)."""
        rng = self.rng
        compares = []
        for _ in range(rng.randrange(3)):
            target = rng.choice(TARGETS)
            operand = (rng.choice([None, value, *self.txn_values]) if target == "value"
                       else rng.randrange(4) if target in ("version", "lease")
                       else rng.randrange(self.txn_revision + 2))
            compares.append([rng.choice(TXN_KEYS), target, rng.choice(["=", "!=", "<", ">"]),
                             operand])
        branches = []
        for _ in range(2):
            ops = []
            for _ in range(rng.randint(1, 3)):
                kind = rng.choice(["put", "put", "delete", "range"])
                key = rng.choice(TXN_KEYS)
                end = rng.choice([None, b"t2", b"u", b""])
                if kind == "put":
                    ops.append(["put", key, value])
                elif kind == "delete":
                    ops.append(["delete", key, end if end in (None, b"") or end > key else None])
                else:
                    ops.append(["range", key, end, rng.choice([0, 0, 2]), rng.randrange(4)])
            branches.append(ops)
        self.txn_values = (value, *self.txn_values[:2])
        return compares, branches[0], branches[1]

    def _recent_values(self, key: bytes) -> list:
        vals = [o.value for o in self.history[-20:] if o.key == key and o.value is not None]
        return vals[-3:]

    def _send_request(self, cid: int, op: ClientOp) -> None:
        client = self.clients[cid]
        op.attempt += 1
        op.answered = False
        op.deadline = self.now + 0.2
        target = client["target"]
        self._wake(cid, 0.2 + 1e-6)
        if self.rng.random() < self.mix.drop:
            return
        self._schedule(self.rng.uniform(0.0001, self.mix.delay_max), "request",
                       (target, cid, op.seq, op.attempt))

    def _request(self, target: int, cid: int, seq: int, attempt: int) -> None:
        sim = self.nodes[target]
        op = self.clients[cid]["op"]
        if op is None or op.seq != seq or op.attempt != attempt:
            return
        node = sim.node
        req = (cid, seq, attempt, op.call)
        if op.op == "get":
            node.read(req, op.key, self.now)
        elif op.op == "range":
            node.read(req, op.query, self.now)
        elif op.op in ("lease", "keepalive"):
            self._lease_request(node, req, op)
        else:
            self.read_check.write_sent(cid, seq, op.call)
            if op.op == "put":
                cmd = (cid, seq, OP_PUT, op.key, op.value, None)
            elif op.op == "delete":
                cmd = (cid, seq, OP_DELETE, op.key, None, None)
            elif op.op == "txn":
                cmd = (cid, seq, OP_TXN, b"", encode_txn(*op.query), None)
            else:
                cmd = (cid, seq, OP_CAS, op.key, op.expected, op.value)
            # The daemon's entry for client work (its C loop, fastpath.take_commands).
            node.submit_work([(False, req, cmd)], self.now)
        self._drain(sim)

    def _reply(self, node_id: int, reply: Reply) -> None:
        if self.rng.random() < self.mix.drop:
            return
        self._schedule(self.rng.uniform(0.0001, self.mix.delay_max), "reply", (node_id, reply))

    def _on_reply(self, node_id: int, reply: Reply) -> None:
        if reply.req in (("transfer",), ("member",)):
            return
        cid, seq, attempt, call = reply.req
        client = self.clients[cid]
        op = client["op"]
        if op is None or op.call != call:
            return  # an answer to an operation already finished
        if reply.status == OK:
            result = reply.result
            if op.op in ("get", "range", "keepalive"):
                cfg = self.configs[node_id]
                query = (op.key if op.op == "get" else op.query if op.op == "range"
                         else LeaseQuery("keepalive", op.query[1]))
                self.read_check.read_answered(ReadSeen(
                    query, result, reply.revision, op.call, self.now, cfg.max_sessions,
                    cfg.max_message_bytes - RANGE_REPLY_MARGIN, node_id))
            else:
                self.read_check.write_acked(cid, op.seq, reply.revision, self.now,
                                            self.configs[node_id].max_sessions, result)
                if reply.revision is not None:
                    self.txn_revision = max(self.txn_revision, reply.revision)
            if op.op in ("lease", "keepalive"):
                self._lease_answered(cid, op, result)
            elif op.op not in ("range", "txn"):  # the checker knows single keys only
                self.history.append(Operation(cid, op.op, op.key, op.value, op.expected,
                                              op.call, self.now, result))
            if op.op not in ("get", "range", "keepalive"):
                if (cid, op.seq) not in self.checker.chosen_commands:
                    raise Violation(f"node {node_id} acknowledged write (client {cid}, seq {op.seq}) "
                                    "that no node has learned as chosen")
                self.acked_writes.append((cid, op.seq))
            client["op"] = None
            client["target"] = node_id
            self._wake(cid, self._pause_after(client))
        elif reply.status == NOT_LEADER and attempt == op.attempt:
            if reply.leader is not None:
                client["target"] = reply.leader
            else:
                client["target"] = self.rng.choice(self.all_ids)
            op.deadline = self.now + 0.02  # retry soon, not at once: an election may be on
            op.answered = True
            self._wake(cid, 0.02)
        elif reply.status == SESSION_EXPIRED and attempt == op.attempt:
            self._session_expired(cid, op, reply.result)
        elif attempt == op.attempt:
            op.deadline = self.now + 0.02
            op.answered = True
            self._wake(cid, 0.02)

    def _check_client_history(self) -> None:
        """The single-key history is linearizable (tests.linearizability); reads and write
        revisions agree with the chosen log and real time (tests.sim_reads)."""
        result = check(list(self.history))
        if result.ok is False:
            raise Violation(f"history is not linearizable: {result.info}")
        self.read_check.check(self.checker.chosen)
        self.watch_check.check(self.checker.chosen)

    def _session_expired(self, cid: int, op: ClientOp, horizon: int) -> None:
        """The write's session was evicted, and the write refused: as the client library does,
        start the session again above the horizon if no earlier copy of the write was sent;
        otherwise an earlier copy may have been applied, so the outcome is unknown."""
        client = self.clients[cid]
        if op.attempt == op.seq_attempt:
            op.seq = client["seq"] = horizon + 1
            op.seq_attempt = op.attempt + 1
            op.deadline = self.now
            op.answered = True
            self._wake(cid, 0.0)
            return
        if op.op not in ("txn", "lease"):  # the linearizability checker knows single keys only
            self.history.append(Operation(cid, op.op, op.key, op.value, op.expected, op.call,
                                          None))
        client["seq"] = max(client["seq"], horizon)
        client["op"] = None
        self._wake(cid, self.rng.uniform(0, 0.01))


class Simulation(ClientLoad, FaultInjection):
    def __init__(self, seed: int, nodes: int = 3, steps: int = 4000, clients: int | None = None,
                 keys: int = 3, bug: str | None = None, verbose: bool = False,
                 mixed_sessions: bool = False, skip_checks=(), settings: str | None = None,
                 ranges: bool = True) -> None:
        self.seed = seed
        self.ranges = ranges
        self.n = nodes
        self.steps = steps
        self.rng = random.Random(seed)
        self.mix = FaultMix.draw(self.rng)
        self.ids = list(range(1, nodes + 1))  # the initial members
        self.all_ids = list(range(1, nodes + 3))  # and two spare machines to add
        self.members = frozenset(self.all_ids)  # the ids a peer message may come from
        drawn, self.configs = draw_configs(self.rng, self.all_ids, mixed_sessions, settings)
        if clients is None:
            clients = self.rng.choice([3, 3, 5])
        self.mix_text = f"{self.mix.describe()} clients={clients} {drawn}"
        self.checker = Checker(skip_checks)
        self.read_check = ReadCheck()
        self.lease_watch = LeaseWatch()
        self.watch_check = WatchCheck()
        self.node_class = self.checker.node_class(BUGS[bug] if bug else Node)
        self.verbose = verbose
        self.now = 0.0
        self.queue: list = []
        self.counter = 0
        self.trace = hashlib.sha256()
        self.events = 0
        self.blocked: set[tuple[int, int]] = set()
        self.nodes = {i: SimNode(i, up=False) for i in self.all_ids}
        self.wipes = 0
        self.changes = 0
        self.history: list[Operation] = []
        self.acked_writes: list[tuple[int, int]] = []
        self.keys = [b"k%d" % i for i in range(keys)]
        self.clients = {}
        self.healed = False
        self.waiting_at_bound: list | None = None
        for i in self.ids:
            self._boot(self.nodes[i])
        for c in range(clients):
            cid = self.rng.getrandbits(40) + 1
            self.clients[cid] = {"seq": 0, "op": None, "target": self.rng.choice(self.ids), "n": 0}
            self._wake(cid, self.rng.uniform(0, 0.05))
        for kind, every in (("partition", self.mix.partition_every),
                            ("crash", self.mix.crash_every), ("pause", self.mix.pause_every),
                            ("transfer", self.mix.transfer_every),
                            ("member", self.mix.member_every)):
            if every:
                self._schedule(self.rng.expovariate(1 / every), kind, None)
        self._amnesia(first=True)

    # -------------------------------------------------------------------------- scheduling

    def _schedule(self, delay: float, kind: str, data) -> None:
        self.counter += 1
        heapq.heappush(self.queue, (self.now + delay, self.counter, kind, data))

    def _boot(self, sim: SimNode) -> None:
        sim.incarnation += 1
        sim.up = sim.started = True
        sim.storage.reset()
        durable = sim.storage.disk.recover()
        rng = random.Random(self.rng.getrandbits(64))
        sim.node = self.node_class(sim.id, self.ids, self.configs[sim.id], rng, self.now, durable,
                                   sim.member_incarnation)
        sim.checked_commit = min(sim.checked_commit, sim.node.commit_index)
        self.checker.booted(sim)
        self.watch_check.booted(sim, self.configs[sim.id].max_sessions)
        # What recovery found is durable, if a crash happened to keep more than was synced.
        sim.storage.durable_promise = max(sim.storage.durable_promise, durable.promised)
        self._schedule(TICK * self.rng.random(), "tick", (sim.id, sim.incarnation))
        self._drain(sim)

    # -------------------------------------------------------------------------- network

    def _transmit(self, src: int, dst: int, msg) -> None:
        """Send ``msg`` as the daemon does: to itself as the object, to a peer as the frame's
        payload bytes (decoded again on delivery)."""
        if dst == src:
            self._schedule(0.0, "deliver", (dst, src, msg))
            return
        if (src, dst) in self.blocked:
            return
        rng = self.rng
        if rng.random() < self.mix.drop:
            return
        payload = dumps(wire.encode_peer(msg))
        copies = 2 if rng.random() < self.mix.duplicate else 1
        for _ in range(copies):
            delay = rng.uniform(0.0001, self.mix.delay_max)
            if rng.random() < self.mix.long_delay:
                delay += rng.uniform(0, 10 * self.mix.delay_max + 0.05)
            self._schedule(delay, "deliver", (dst, src, payload))

    def _decode(self, src: int, data):
        """The message a delivery carries, through the transport's decoder and sender check."""
        if type(data) is not bytes:
            return data  # a node's message to itself
        msg = wire.decode_peer_payload(data, self.members)
        if msg.sender != src:
            raise Violation(f"{type(msg).__name__} from node {src} names sender {msg.sender}")
        return msg

    # -------------------------------------------------------------------------- driver

    def _drain(self, sim: SimNode, cause=None) -> None:
        """Carry out a node's outputs through its durability gate; check what it answered
        ``cause`` (the message it just received) with."""
        node = sim.node
        ready = node.ready()
        self.lease_watch.observe(sim.id, node)
        if ready:
            if cause is not None:
                self.checker.answers(node, cause, ready)
            storage = sim.storage
            handoff = storage.hand_off(ready)
            self.checker.sent(sim, handoff.send)
            for dst, msg in handoff.send:
                self._transmit(sim.id, dst, msg)
            if storage.pending and not storage.writing:
                self._start_write(sim)
            for reply in handoff.replies:
                self._reply(sim.id, reply)
        self.watch_check.drain(sim)
        if node.commit_index != sim.checked_commit or node.promised != sim.promised:
            self.checker.node_state(sim)

    def _start_write(self, sim: SimNode) -> None:
        released = sim.storage.start_group()
        if released is None:
            self._schedule(self.rng.uniform(*self.mix.fsync), "disk", (sim.id, sim.incarnation))
        else:
            self._released(sim, released)

    def _disk_step(self, sim: SimNode) -> None:
        storage = sim.storage
        try:
            released = storage.do_step(self.rng.random() < self.mix.fsync_fail)
        except DiskFailure:
            # After a failed fsync what is on disk is unknown: the node stops, and stays down
            # until it is restarted (it never retries the write).
            self._crash(sim)
            self._schedule(self.rng.uniform(0.01, 0.5), "restart", sim.id)
            return
        for index, blob in storage.snapshots:
            self.checker.snapshot_written(sim.id, index, blob)
        storage.snapshots.clear()
        if storage.disk.incarnation is not None:  # the node decided it (daemon.core.incarnation)
            sim.member_incarnation = storage.disk.incarnation
        if released is None:
            self._schedule(self.rng.uniform(*self.mix.fsync), "disk", (sim.id, sim.incarnation))
        else:
            self._released(sim, released)

    def _released(self, sim: SimNode, released: list) -> None:
        """A write group is durable: send what waited for it, then write what came since."""
        self.checker.sent(sim, released)
        for dst, msg in released:
            self._transmit(sim.id, dst, msg)
        if sim.storage.pending:
            self._start_write(sim)

    # -------------------------------------------------------------------------- faults

    def _crash(self, sim: SimNode) -> None:
        sim.up = False
        sim.node = None
        sim.storage.crash(self.rng)
        sim.paused_until = 0.0

    def _heal(self) -> None:
        self.healed = True
        self.heal_time = self.now
        self.blocked = set()
        self.mix.drop = self.mix.duplicate = self.mix.long_delay = self.mix.fsync_fail = 0.0
        for sim in self.nodes.values():
            sim.paused_until = 0.0
            if not sim.up and sim.started:
                self._boot(sim)

    # -------------------------------------------------------------------------- checks

    def _final_checks(self) -> None:
        final = self._latest_configuration()
        live = [self.nodes[i].node for i in final.ids]
        if None in live:
            raise Violation(f"members {final.ids} are not all running after healing")
        for m in final.members:
            if m.voter and m.incarnation != self.nodes[m.id].member_incarnation:
                raise Violation(f"member {m.id} is still not a voter under its incarnation "
                                f"{self.nodes[m.id].member_incarnation} after healing")
        commits = {n.id: n.commit_index for n in live}
        if len(set(commits.values())) != 1:
            raise Violation(f"after healing, commit indexes differ: {commits}")
        states = {n.kv.state() for n in live}
        if len(states) != 1:
            raise Violation("after healing, replicas' key-value states differ")
        for n in live:
            for slot in range(n.log_start, n.commit_index + 1):
                if n.log[slot][1] != self.checker.chosen[slot]:
                    raise Violation(f"node {n.id} slot {slot} differs from the chosen value")
        for w in self.acked_writes:
            if w not in self.checker.chosen_commands:
                raise Violation(f"acknowledged write (client {w[0]}, seq {w[1]}) is not in the chosen log")
        pending = self.waiting_at_bound
        if pending is None:
            pending = [cid for cid, c in self.clients.items() if c["op"] is not None]
        if pending:
            raise Violation(f"clients {pending} still waiting {self.now - self.heal_time:.2f}s after healing")
        self._check_client_history()
        self.lease_watch.check(self.checker.chosen, self.configs[self.ids[0]].max_sessions)

    # -------------------------------------------------------------------------- main loop

    def run(self) -> str:
        settle = 20 * ELECTION[1]  # bound on completing everything after healing
        heal_at = None
        catch_up = 0.0
        next_look = 0.0
        while self.queue:
            t, _, kind, data = heapq.heappop(self.queue)
            self.now = t
            self.events += 1
            if heal_at is None and self.events >= self.steps:
                self._heal()
                heal_at = t
                next_look = t + QUIET_AFTER_HEAL
            if heal_at is not None and t >= next_look:
                # Done early once every client is answered and the replicas agree (the
                # checks below hold then; waiting longer would only tick).
                next_look = t + 0.25
                if self._settled():
                    break
            if heal_at is not None and t > heal_at + settle + self._fill_time():
                if self.waiting_at_bound is None:
                    # Whatever is still open now failed the bound. A node that is behind
                    # (a new member fetching everything) gets the time catch-up needs at one
                    # Catchup of catchup_slots per round trip before replicas are compared.
                    self.waiting_at_bound = [c for c, v in self.clients.items() if v["op"] is not None]
                    commits = [self.nodes[i].node.commit_index
                               for i in self._latest_configuration().ids if self.nodes[i].up]
                    lag = max(commits) - min(commits) if commits else 0
                    round_trip = 2 * self.mix.delay_max + HEARTBEAT
                    slots = min(c.catchup_slots for c in self.configs.values())
                    catch_up = 2 * ELECTION[1] + lag / slots * round_trip
                if t > heal_at + settle + catch_up:
                    break
            self._dispatch(kind, data)
        else:
            raise Violation("the event queue ran dry")
        if heal_at is None:
            raise Violation("run ended before healing")
        # Unknown outcomes for operations still open (there should be none: checked below).
        self._final_checks()
        return self.trace.hexdigest()

    def _fill_time(self) -> float:
        """Time the leader needs after healing to bring the latest configuration into effect:
        the slots up to its effective slot, one window of the slowest node per round trip
        (a message each way and an fsync). A window-64 leader may set a configuration 64 slots
        ahead that a window-1 leader then fills one slot at a time."""
        if not hasattr(self, "_fill"):
            up = [s.node for s in self.nodes.values() if s.up]
            commits = [n.commit_index for n in up]
            # The configuration commands not yet chosen count too: one a leader proposed
            # before healing sets its effective slot a whole window ahead of its slot.
            effective = [self._latest_configuration().effective]
            for n in up:
                for slot, (_, batch) in n.log.items():
                    value = config_of_batch(batch) if slot > n.commit_index else None
                    if value is not None:
                        effective.append(decode_configuration(value)[0].effective)
            ahead = max(effective) - max(commits, default=0)
            window = min(c.window for c in self.configs.values())
            round_trip = 2 * self.mix.delay_max + self.mix.fsync[1]
            self._fill = max(0, ahead) / window * round_trip
        return self._fill

    def _settled(self) -> bool:
        """Every client answered; every member of the latest configuration running as the
        voter it should be, with all it knows chosen applied and every write done; one commit
        index among them."""
        if any(c["op"] is not None for c in self.clients.values()):
            return False
        final = self._latest_configuration()
        commits = set()
        for m in final.members:
            sim = self.nodes[m.id]
            node = sim.node
            if (node is None or node.applied_index != node.commit_index or sim.storage.writing
                    or sim.storage.pending
                    or (m.voter and m.incarnation != sim.member_incarnation)):
                return False
            commits.add(node.commit_index)
        return len(commits) == 1

    def _dispatch(self, kind: str, data) -> None:
        trace = self.trace
        if kind == "deliver":
            dst, src, payload = data
            sim = self.nodes[dst]
            if not sim.up:
                return
            if sim.paused_until > self.now:
                self._schedule(sim.paused_until - self.now, kind, data)
                return
            msg = self._decode(src, payload)
            trace.update(b"d%d%s%d%.6f" % (dst, type(msg).__name__.encode(), getattr(msg, "ballot", 0), self.now))
            sim.node.receive(msg, self.now)
            self._drain(sim, msg)
        elif kind == "tick":
            node_id, inc = data
            sim = self.nodes[node_id]
            if not sim.up or sim.incarnation != inc:
                return
            self._schedule(TICK, "tick", data)
            if sim.paused_until > self.now:
                return
            sim.node.tick(self.now)
            self._drain(sim)
        elif kind == "disk":
            node_id, inc = data
            sim = self.nodes[node_id]
            if not sim.up or sim.incarnation != inc:
                return
            trace.update(b"f%d%.6f" % (node_id, self.now))
            self._disk_step(sim)
        elif kind == "client":
            cid, wake = data
            if self.clients[cid]["wake"] == wake:
                self._client_step(cid)
        elif kind == "request":
            target = data[0]
            sim = self.nodes[target]
            if not sim.up:
                return
            if sim.paused_until > self.now:
                self._schedule(sim.paused_until - self.now, kind, data)
                return
            trace.update(b"r%d%d%.6f" % (target, data[1], self.now))
            self._request(*data)
        elif kind == "reply":
            trace.update(b"p%d%s%.6f" % (data[0], data[1].status.encode(), self.now))
            self._on_reply(*data)
        elif kind in ("partition", "crash", "pause", "transfer", "member"):
            trace.update(kind.encode())
            self._fault(kind)
        elif kind == "amnesia":
            self._amnesia()
        elif kind == "restart":
            sim = self.nodes[data]
            if not sim.up:
                trace.update(b"b%d" % data)
                self._boot(sim)
        else:  # pragma: no cover
            raise AssertionError(kind)


@dataclass(frozen=True)
class Options:
    """What a run may change besides the seed (each has its command-line flag)."""

    mixed_sessions: bool = False  # --mixed-sessions
    skip_checks: tuple = ()  # --skip-check NAME ...
    settings: str | None = None  # --settings defaults|same|per-node
    ranges: bool = True  # --no-ranges: the workload without range reads (nor transactions)
    txns: bool = True  # --no-txns: the workload without transactions (nor leases)
    leases: bool = True  # --no-leases: the workload without leases

    def flags(self) -> str:
        return ((" --mixed-sessions" if self.mixed_sessions else "")
                + "".join(f" --skip-check {c}" for c in self.skip_checks)
                + (f" --settings {self.settings}" if self.settings else "")
                + ("" if self.ranges else " --no-ranges")
                + ("" if self.txns else " --no-txns")
                + ("" if self.leases else " --no-leases"))


def replay_command(seed: int, nodes: int, steps: int, bug: str | None,
                   options: Options = Options()) -> str:
    cmd = f"python -m tests.simulator --seed {seed} --nodes {nodes} --steps {steps}"
    return cmd + (f" --bug {bug}" if bug else "") + options.flags()


def run_seed(seed: int, nodes: int, steps: int, bug: str | None = None,
             options: Options = Options()) -> tuple[bool, str, str]:
    """Run one seed; returns (ok, trace hash or failure text, fault mix and settings)."""
    sim = None
    try:
        sim = Simulation(seed, nodes=nodes, steps=steps, bug=bug,
                         mixed_sessions=options.mixed_sessions, skip_checks=options.skip_checks,
                         settings=options.settings, ranges=options.ranges)
        sim.txns = options.txns
        sim.leases = options.leases
        if options.leases and options.txns and options.ranges:
            sim.add_keepers(sim.rng.choice([1, 2]))
        digest = sim.run()
        return True, digest, sim.mix_text
    except Exception as exc:  # any failure of the core (or of a codec) fails the seed
        mix = sim.mix_text if sim else "?"
        replay = replay_command(seed, nodes, steps, bug, options)
        return False, f"{type(exc).__name__}: {exc}\n  replay: {replay}", mix


def _run_many(args_tuple):
    """(seeds, nodes or None, steps, bug, stop_on_first[, Options]) -> [(seed, text, mix)]."""
    seeds, nodes_choice, steps, bug, stop_on_first, *rest = args_tuple
    options = rest[0] if rest else Options()
    failures = []
    for seed in seeds:
        nodes = nodes_choice or (3 if seed % 2 == 0 else 5)
        ok, text, mix = run_seed(seed, nodes, steps, bug, options)
        if not ok:
            failures.append((seed, text, mix))
            if stop_on_first:
                break
    return failures


def summary(failures) -> list[str]:
    """One line per kind of failure (numbers blanked out) with the seeds that showed it."""
    kinds: dict[str, list[int]] = {}
    for seed, text, _ in failures:
        kind = re.sub(r"0x[0-9a-f]+|\d+", "N", text.split("\n")[0])[:160]
        kinds.setdefault(kind, []).append(seed)
    return [f"{len(seeds)} x {kind}\n    seeds: {' '.join(map(str, seeds))}"
            for kind, seeds in sorted(kinds.items(), key=lambda kv: -len(kv[1]))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100, help="run seeds 0..N-1 (default 100)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, help="replay this one seed and print its trace hash")
    parser.add_argument("--steps", type=int, default=4000, help="events before healing (default 4000)")
    parser.add_argument("--nodes", type=int, choices=[3, 5], help="cluster size (default: 3 for even seeds, 5 for odd)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--bug", choices=sorted(BUGS), help="run a deliberately broken core")
    parser.add_argument("--stop-on-first", action="store_true", help="stop at the first failing seed")
    parser.add_argument("--mixed-sessions", action="store_true",
                        help="let max_sessions differ per node too (the daemon does not allow it)")
    parser.add_argument("--skip-check", action="append", default=[], choices=OPTIONAL_CHECKS,
                        help="switch a check off, to see what a defect leads to past it")
    parser.add_argument("--settings", choices=SETTINGS,
                        help="draw only this kind of node settings (default: any)")
    parser.add_argument("--no-ranges", action="store_true",
                        help="no range reads in the workload (draws as before they existed)")
    parser.add_argument("--no-txns", action="store_true",
                        help="no transactions in the workload (draws as before they existed)")
    parser.add_argument("--no-leases", action="store_true",
                        help="no leases in the workload (draws as before they existed)")
    args = parser.parse_args(argv)
    options = Options(args.mixed_sessions, tuple(args.skip_check), args.settings,
                      not args.no_ranges, not args.no_txns, not args.no_leases)

    started = time.monotonic()
    if args.seed is not None:
        nodes = args.nodes or (3 if args.seed % 2 == 0 else 5)
        ok, text, mix = run_seed(args.seed, nodes, args.steps, args.bug, options)
        print(f"seed {args.seed} nodes {nodes}: {mix}")
        print(("trace " + text) if ok else text)
        return 0 if ok else 1

    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    if args.jobs > 1:
        import multiprocessing

        # Small chunks handed out as workers free up: seeds differ a lot in cost.
        chunks = [seeds[i:i + 20] for i in range(0, len(seeds), 20)]
        with multiprocessing.Pool(args.jobs) as pool:
            parts = pool.imap_unordered(_run_many, [(c, args.nodes, args.steps, args.bug,
                                                     args.stop_on_first, options) for c in chunks])
            failures = sorted(f for part in parts for f in part)
    else:
        failures = _run_many((seeds, args.nodes, args.steps, args.bug, args.stop_on_first,
                              options))
    elapsed = time.monotonic() - started
    for seed, text, mix in failures[:20]:
        print(f"FAIL seed {seed} ({mix})\n  {text}")
    if failures:
        print("failures by kind:")
        print("\n".join(summary(failures)))
    print(f"{len(seeds)} seeds, {len(failures)} failed, {elapsed:.1f}s, "
          f"{len(seeds) / elapsed:.1f} seeds/s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
