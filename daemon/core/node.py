"""The Multi-Paxos protocol core: one plain object per node, no I/O, no clock, no randomness.

A driver (the trio server, or the simulator in tests) feeds the node inputs and drains its
outputs:

    node.tick(now)                 time passed (seconds, any monotonic origin)
    node.receive(msg, now)         a validated peer message (daemon.core.messages), also from itself
    node.submit(req, cmd, now)     a client write command (see daemon.core.messages)
    node.read(req, key, now)       a client linearizable read
    ready = node.ready()           drain what to do, in this order:
        1. append ``ready.persist`` to the write-ahead log (an ``IncarnationChosen`` goes to
           the data directory's incarnation file instead, in its place in the order);
        2. send ``ready.send`` at once (nothing in it depends on unsynced records);
        3. send ``ready.send_after_persist`` only once every record handed out so far, in this
           ready and all earlier ones, is durable (a CommitRecord may lag: nothing sent depends
           on it, and a commit index lost in a crash is learned again);
        4. deliver ``ready.replies`` to clients.
    Messages addressed to the node's own id are delivered back to it by the driver, on the same
    terms. The leader is an acceptor too: its own Accepted reaches its quorum tracker only
    through that path, so its vote counts only once its own log write is durable.

Safety rule 1 (nothing sent that depends on state not yet durable) is the driver's half of the
contract above: Promise and Accepted only ever leave through ``send_after_persist``.

The node holds the protocol state and the learner (commit and apply); parts with rules of their
own are objects over that state, each in its module: the acceptor (daemon.core.acceptor), the
leader's Accept pipeline (daemon.core.pipeline), catch-up and snapshot transfer
(daemon.core.catchup), the read index (daemon.core.reads), elections and configuration
boundaries (daemon.core.election), configurations and membership changes (daemon.core.configs)
and leadership transfer (daemon.core.transfer).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from fastpath import (BALLOT_CHOSEN, BALLOT_NONE, QuorumTracker, SlotWindow, answer_waiting,
                      take_commands)

from daemon.core.acceptor import Acceptor
from daemon.core.catchup import CatchupExchange
from daemon.core.configs import Membership
from daemon.core.election import Election
from daemon.core.expiry import LeaseClock
from daemon.core.incarnation import FreshStart, on_probe, on_probe_reply, probe
from daemon.core.kv import KVStore
from daemon.core.membership import (
    CONFIG_CLIENT,
    MEMBERS_KEY,
    Configuration,
    initial_configuration,
)
from daemon.core.messages import (
    BUSY,
    CMD_CLIENT,
    COMMAND_OVERHEAD,
    ERROR,
    NOT_LEADER,
    Accept,
    Accepted,
    AcceptRecord,
    Catchup,
    CatchupRequest,
    ChosenRecord,
    CommitRecord,
    Prepare,
    Probe,
    ProbeReply,
    Promise,
    PromiseRecord,
    Reject,
    Reply,
    Snapshot,
    SnapshotChunk,
    TimeoutNow,
    command_cost,
)
from daemon.core.pipeline import AcceptPipeline
from daemon.core.reads import ReadIndex
from daemon.core.roles import CANDIDATE, FOLLOWER, LEADER, ProtocolError
from daemon.core.transfer import Transfer

__all__ = ["CANDIDATE", "FOLLOWER", "LEADER", "CoreConfig", "DurableState", "Node",
           "ProtocolError", "Ready"]


@dataclass(frozen=True)
class CoreConfig:
    """Protocol settings. Times are in seconds."""

    heartbeat_interval: float = 0.05
    election_timeout: tuple[float, float] = (0.15, 0.30)
    window: int = 64
    max_batch_commands: int = 4096
    max_batch_bytes: int = 1 << 20
    max_pending_commands: int = 100_000
    max_sessions: int = 100_000
    catchup_slots: int = 64  # chosen slots per Catchup message
    behind_limit: int = 64  # a candidate this many chosen slots behind must catch up first
    # Accept and Catchup runs are cut to fit this; a Promise may take twice as much (a frame,
    # when this is half the frame limit) and is refused beyond, so the candidate catches up.
    max_message_bytes: int = 32 << 20
    snapshot_every: int = 0  # applied slots between snapshots; 0: never
    log_retain: int = 256  # chosen slots kept below a snapshot, for followers slightly behind
    snapshot_chunk_bytes: int = 1 << 20  # one SnapshotChunk per catch-up round trip

    def __post_init__(self) -> None:
        lo, hi = self.election_timeout
        if not 0 < self.heartbeat_interval < lo <= hi:
            raise ValueError(
                "need 0 < heartbeat_interval < election_timeout[0] <= election_timeout[1], "
                f"got {self.heartbeat_interval} and {self.election_timeout}"
            )
        if self.snapshot_every < 0 or self.log_retain < 0:
            raise ValueError("snapshot_every and log_retain must be >= 0")
        for name in ("window", "max_batch_commands", "max_batch_bytes", "max_pending_commands",
                     "catchup_slots", "behind_limit", "max_message_bytes", "snapshot_chunk_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class DurableState:
    """What a node finds again after a restart: its promise, its log, its commit index.

    ``log`` maps slot -> (ballot, batch); ballot BALLOT_CHOSEN marks a value learned as chosen.
    """

    promised: int = BALLOT_NONE
    log: dict = field(default_factory=dict)
    commit_index: int = 0
    snapshot: Snapshot | None = None

    @classmethod
    def from_records(cls, records, snapshot: Snapshot | None = None) -> "DurableState":
        """Replay the records written since ``snapshot`` (or since the beginning)."""
        state = cls(snapshot=snapshot)
        if snapshot is not None:
            state.commit_index = snapshot.index
        log = state.log
        for record in records:
            if isinstance(record, AcceptRecord):
                b = record.ballot
                if b > state.promised:
                    state.promised = b
                for i, batch in enumerate(record.batches):
                    slot = record.first_slot + i
                    if slot > state.commit_index:
                        log[slot] = (b, batch)
            elif isinstance(record, ChosenRecord):
                for i, batch in enumerate(record.batches):
                    slot = record.first_slot + i
                    if slot > state.commit_index:
                        log[slot] = (BALLOT_CHOSEN, batch)
            elif isinstance(record, CommitRecord):
                if record.commit_index > state.commit_index:
                    state.commit_index = record.commit_index
            elif isinstance(record, PromiseRecord):
                if record.ballot > state.promised:
                    state.promised = record.ballot
            else:
                raise TypeError(f"not a durable record: {record!r}")
        base = snapshot.index if snapshot is not None else 0
        for slot in range(base + 1, state.commit_index + 1):
            if slot not in log:
                raise ProtocolError(f"log has no value for chosen slot {slot}")
        return state


@dataclass
class Ready:
    """The node's outputs since the last ``ready()``; see the module docstring for the order."""

    # Log records; now and then a Snapshot; once, on a fresh start, an IncarnationChosen.
    persist: list = field(default_factory=list)
    send: list = field(default_factory=list)  # (destination id, message)
    send_after_persist: list = field(default_factory=list)  # (destination id, message)
    replies: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.persist or self.send or self.send_after_persist or self.replies)


class Node:
    """One Multi-Paxos node: acceptor, learner and potential leader.

    ``rng`` is any object with ``uniform(a, b)`` and ``getrandbits(k)`` (a seeded
    ``random.Random`` in the simulator). ``incarnation`` None: an initial member on an empty
    data directory without an incarnation, which decides it first (see daemon.core.incarnation).

    Parts with state and rules of their own, each holding a reference back to the node:
    ``membership`` (daemon.core.configs: the configurations, membership changes, the fence),
    ``election`` (daemon.core.election: Phase 1, for a candidacy and at a boundary) and
    ``handoff`` (daemon.core.transfer: leadership transfer).
    """

    def __init__(self, node_id: int, members, config: CoreConfig, rng, now: float,
                 durable: DurableState | None = None, incarnation: int | None = 0) -> None:
        initial = initial_configuration(members)
        if node_id not in initial.ids and not incarnation:
            raise ValueError(f"node {node_id} is not among the members {initial.ids} "
                             "(a node joining a running cluster needs an incarnation)")
        if not 1 <= len(initial.members) <= 64:
            raise ValueError(f"need 1 to 64 members, got {len(initial.members)}")
        if not 1 <= node_id <= 0xFFFF:
            raise ValueError(f"node id {node_id} is not in 1..65535")
        self.id = node_id
        self.fresh = FreshStart.if_unknown(incarnation, node_id, initial.ids, durable, rng, now)
        self.incarnation = incarnation if self.fresh is None else self.fresh.nonce
        self.config = config
        self.rng = rng
        self.now = now

        durable = durable or DurableState()
        # Acceptor and learner state (what the log holds).
        self.promised = durable.promised
        self.log: dict[int, tuple[int, tuple]] = dict(durable.log)
        self.commit_index = durable.commit_index
        self.max_slot = max(self.log, default=0)
        snapshot = durable.snapshot
        if snapshot is not None:
            self.kv = KVStore.from_image(snapshot.state, config.max_sessions)
            self.snapshot_index = self.applied_index = snapshot.index
            self.snapshot_image = snapshot.state
            self.max_slot = max(self.max_slot, snapshot.index)
        else:
            self.kv = KVStore(config.max_sessions)
            self.snapshot_index = self.applied_index = 0
            self.snapshot_image = None
        self.log_start = self.snapshot_index + 1 if snapshot is not None else 1
        self.max_seen = max([self.promised] + [b for b, _ in self.log.values() if b != BALLOT_CHOSEN])

        # Proposer state.
        self.role = FOLLOWER
        self.ballot = BALLOT_NONE  # the ballot this node leads or stands for
        self.leader_id: int | None = None
        self.election_deadline = 0.0
        self._reset_election_timer()
        self.window = SlotWindow(config.window)
        self.queued_batches: deque = deque()  # re-proposals waiting for room in the window
        self.pending: list = []  # client commands waiting for a batch
        self.pending_bytes = 0
        self.waiting: dict[tuple[int, int], object] = {}  # (client_id, seq) -> req
        self.also_waiting: dict[tuple[int, int], list] = {}  # retries that arrived meanwhile
        self.read_floor = 0
        self.last_progress = now
        self.contact: dict[int, float] = {}
        self.heard: dict[int, float] = {}
        self.voter_commit = 0
        self.peer_read_round: dict[int, int] = {}
        # The parts of the node, each over the state above (see their modules).
        self.reads = ReadIndex(self)
        self.catchup = CatchupExchange(self)
        self.pipeline = AcceptPipeline(self)
        self.acceptor = Acceptor(self)
        self.membership = Membership(self, initial)  # configurations, membership changes
        self.election = self.election_type(self, initial)  # Phase 1: candidacy, boundaries
        self.handoff = Transfer(self)  # leadership transfer
        self.lease_clock = LeaseClock(self)  # when leases expire, at a leader

        self._out = Ready()
        if snapshot is not None:
            self._configs_from_store()
        self._use(self.membership.config_at(self.commit_index + 1))
        self._apply()

    # ------------------------------------------------------------------------------ inputs

    def tick(self, now: float) -> None:
        """Time passed: a node deciding its incarnation probes; a leader steps down without a
        quorum in contact, retransmits, heartbeats and gives up a stale handover; anyone
        else stands once its election timer runs out, if it may."""
        self.now = now
        if self.fresh is not None:
            probe(self)
            return
        cfg = self.config
        if self.role == LEADER:
            if self._lost_quorum_contact():
                self._step_down(None)
                return
            if now - self.last_progress >= 2 * cfg.heartbeat_interval and self.window.in_flight:
                if self.voter_commit > self.commit_index:
                    # A voter knows slots chosen that we re-proposed and it cannot vouch for
                    # (it compacted them): stand down; an election catches the rest up.
                    self._step_down(None)
                    return
                self.pipeline.retransmit()
            if now - self.pipeline.last_broadcast >= cfg.heartbeat_interval:
                if self.election.boundary is not None:
                    self.election.send_boundary_prepare()
                self.pipeline.broadcast_accept(self.window.next_slot, ())
            self.handoff.expire(now)
            self.lease_clock.tick(now)
        elif now >= self.election_deadline:
            if self.election.may_stand():
                self.election.start()
            else:
                self._reset_election_timer()

    def receive(self, msg, now: float) -> None:
        """Handle one validated peer message (one from this node to itself included) by its
        type's handler; a node still deciding its incarnation handles only Probe/ProbeReply."""
        self.now = now
        handler = self._handlers.get(type(msg))
        if handler is None:
            raise TypeError(f"node {self.id}: not a peer message: {msg!r}")
        if self.fresh is not None and type(msg) is not Probe and type(msg) is not ProbeReply:
            return  # no promise, accept or vote before the incarnation is decided
        handler(self, msg)

    def submit(self, req, cmd: tuple, now: float) -> None:
        """A client write. The reply comes once the command is chosen and applied here."""
        self.now = now
        if self.role != LEADER:
            self._out.replies.append(Reply(req, NOT_LEADER, leader=self.leader_id))
            return
        key = (cmd[0], cmd[1])  # (client id, seq); literal positions: this runs per command
        # 0: CONFIG_CLIENT; from 2**63: the leader's expiry commands (LEASE_CLIENTS). Literals:
        # this runs per command.
        if cmd[0] == 0 or cmd[0] >= 0x8000_0000_0000_0000 or cmd[3] == MEMBERS_KEY:
            self._out.replies.append(Reply(req, ERROR, (
                "client id 0, client ids from 2**63 on and the key " + repr(MEMBERS_KEY)
                + " are reserved (membership, lease expiry)")))
            return
        if key in self.waiting:  # a retry of a command already on its way: answer both
            self.also_waiting.setdefault(key, []).append(req)
            return
        if len(self.pending) >= self.config.max_pending_commands:
            self._out.replies.append(Reply(req, BUSY))
            return
        cost = command_cost(cmd)
        if cost > self.config.max_batch_bytes:
            self._out.replies.append(Reply(req, ERROR, (
                f"command of {cost} bytes exceeds max_batch_bytes ({self.config.max_batch_bytes})")))
            return
        self.waiting[key] = req
        self.pending.append(cmd)
        self.pending_bytes += cost

    def submit_work(self, work: list, now: float) -> None:
        """A client connection's work list, ``(is_read, tag, command | key)`` items (see
        daemon.runtime.clients), in order: the same as ``read`` or ``submit`` of each item.
        A leader takes the plain writes in one C loop (fastpath.take_commands, which leaves
        every other case to ``submit``)."""
        self.now = now
        i, n = 0, len(work)
        while i < n:
            if self.role == LEADER:
                cfg = self.config
                i, cost = take_commands(work, i, self.waiting, self.pending,
                                        cfg.max_pending_commands, cfg.max_batch_bytes,
                                        COMMAND_OVERHEAD, MEMBERS_KEY)
                self.pending_bytes += cost
                if i == n:
                    return
            is_read, tag, arg = work[i]
            if is_read:
                self.read(tag, arg, now)
            else:
                self.submit(tag, arg, now)
            i += 1

    def read(self, req, key: bytes, now: float) -> None:
        """A linearizable read: answered once a quorum confirmed this node's ballot after the
        read arrived and the state machine has applied the commit index seen at arrival."""
        self.now = now
        self.reads.read(req, key)

    def transfer_leadership(self, req, target: int, now: float) -> None:
        """Hand leadership to ``target`` (see daemon.core.transfer): answered OK once the
        target is told to stand, ERROR if it cannot be or does not happen in time."""
        self.now = now
        self.handoff.request(req, target)

    def change_members(self, req, change: tuple, now: float) -> None:
        """A membership change, ``("add", id, peer, client)`` or ``("remove", id)`` (see
        daemon.core.configs): answered OK once the configuration command is chosen."""
        self.now = now
        self.membership.change(req, change, now)

    def ready(self) -> Ready:
        """Drain the outputs produced since the last call (batching new proposals first)."""
        if self.role == LEADER:
            if self.handoff.handover is not None:
                self.handoff.hand_over()
            self.pipeline.fill_window()
            if not self.reads.round_sent:
                self.pipeline.broadcast_accept(self.window.next_slot, ())
        out = self._out
        self._out = Ready()
        return out

    # ------------------------------------------------------------------------------ learner

    def _set_commit(self, commit_index: int) -> None:
        """Slots up to ``commit_index`` are chosen: record it and apply them.

        Promises: the commit index never goes back, and never passes what the log holds.
        """
        if commit_index < self.commit_index:
            raise ProtocolError(f"node {self.id}: commit index {self.commit_index} would go "
                                f"back to {commit_index}")
        if commit_index > self.commit_index and commit_index not in self.log:
            raise ProtocolError(f"node {self.id}: commit index {commit_index} passes the log")
        self.commit_index = commit_index
        self._out.persist.append(CommitRecord(commit_index))
        self._apply()

    def _apply(self) -> None:
        """Apply the chosen slots not yet applied, in slot order, answering the clients that
        wait for them; then snapshot if due, and serve the reads that may now be answered.

        Promises: the applied index reaches the commit index, one slot at a time.
        """
        log = self.log
        kv = self.kv
        waiting = self.waiting
        replies = self._out.replies
        while self.applied_index < self.commit_index:
            slot = self.applied_index + 1
            batch = log[slot][1]
            if len(batch) == 1 and batch[0][CMD_CLIENT] == CONFIG_CLIENT:
                self.membership.apply(slot, batch)
            if not waiting:  # nobody here waits for a reply (a follower): one C loop
                kv.apply_batch(batch)
            else:
                outcomes: list = []
                kv.apply_batch(batch, outcomes)
                if self.also_waiting:
                    self._answer_with_retries(batch, outcomes)
                else:  # no retries to answer too: the replies in one C loop
                    answer_waiting(batch, outcomes, waiting, replies, Reply)
            self.applied_index = slot
        every = self.config.snapshot_every
        if every and self.applied_index - self.snapshot_index >= every:
            self.acceptor.take_snapshot()
        reads = self.reads
        if reads.queue:
            reads.serve()

    def _answer_with_retries(self, batch: tuple, outcomes: list) -> None:
        """Reply to every request waiting for a command of ``batch`` (``outcomes``: what each
        command gave), retries of the same session seq (``also_waiting``) included."""
        waiting, also_waiting, replies = self.waiting, self.also_waiting, self._out.replies
        for cmd, (status, result, revision) in zip(batch, outcomes):
            req = waiting.pop((cmd[0], cmd[1]), None)
            if req is not None:
                replies.append(Reply(req, status, result, None, revision))
                for again in also_waiting.pop((cmd[0], cmd[1]), ()):
                    replies.append(Reply(again, status, result, None, revision))

    # ------------------------------------------------------------------------------ membership

    # A subclass may swap in another Election (tests/sim_bugs.py's broken cores).
    election_type = Election

    def _use(self, cfg: Configuration) -> None:
        """Propose in ``cfg`` from now on: its voters make the quorums, all its members hear."""
        self.active = cfg
        voters = cfg.voters
        self.members = cfg.ids
        self.peers = tuple(m for m in cfg.ids if m != self.id)
        self.voters = voters
        self.index = {m: i for i, m in enumerate(voters)}
        self.vote_incarnation = {m.id: m.incarnation for m in cfg.members if m.voter}
        self.quorum = len(voters) // 2 + 1
        self.tracker = QuorumTracker(len(voters), self.quorum, self.config.window)

    def _configs_from_store(self) -> None:
        """After a snapshot: the configurations its state machine knows."""
        self.membership.from_store(self.kv)

    def addresses(self) -> dict:
        """id -> (peer, client) of every member of every configuration this node knows."""
        return self.membership.addresses(self.active)

    @property
    def configuration(self) -> Configuration:
        """The latest configuration this node knows (it may not be in effect yet)."""
        return self.membership.configs[-1]

    # ------------------------------------------------------------------------------ proposer

    def _lost_quorum_contact(self) -> bool:
        limit = self.now - 2 * self.config.election_timeout[1]
        contact = self.contact
        fresh = sum(1 for m in self.voters if m == self.id or contact.get(m, -1e9) >= limit)
        return fresh < self.quorum

    # ------------------------------------------------------------------------------ helpers

    def _observe(self, ballot: int) -> None:
        if ballot > self.max_seen:
            self.max_seen = ballot

    def _step_down(self, leader: int | None) -> None:
        """Stop leading or standing; everything waiting is told to retry at the leader."""
        self.role = FOLLOWER
        self.leader_id = leader
        replies = self._out.replies
        self.handoff.abandon(replies, leader)
        self.membership.abandon(replies, leader)
        self.election.boundary = None
        for req in self.waiting.values():
            replies.append(Reply(req, NOT_LEADER, leader=leader))
        for reqs in self.also_waiting.values():
            for req in reqs:
                replies.append(Reply(req, NOT_LEADER, leader=leader))
        self.also_waiting.clear()
        self.reads.refuse_all(leader)
        self.waiting.clear()
        self.pending.clear()
        self.pending_bytes = 0
        self.queued_batches.clear()
        self.election.promises = {}
        self.window.reset(self.commit_index + 1)
        self._reset_election_timer()

    def _reset_election_timer(self) -> None:
        lo, hi = self.config.election_timeout
        self.election_deadline = self.now + self.rng.uniform(lo, hi)

    _handlers = {
        Prepare: lambda node, msg: node.acceptor.on_prepare(msg),
        Promise: lambda node, msg: node.election.on_promise(msg),
        Reject: lambda node, msg: node.election.on_reject(msg),
        Accept: lambda node, msg: node.acceptor.on_accept(msg),
        Accepted: lambda node, msg: node.pipeline.on_accepted(msg),
        CatchupRequest: lambda node, msg: node.catchup.on_request(msg),
        Catchup: lambda node, msg: node.catchup.on_catchup(msg),
        SnapshotChunk: lambda node, msg: node.catchup.on_snapshot_chunk(msg),
        TimeoutNow: lambda node, msg: node.handoff.on_timeout_now(msg),
        Probe: on_probe,
        ProbeReply: on_probe_reply,
    }

    # ------------------------------------------------------------------------------ status

    def status(self) -> dict:
        """What ``paxosd status`` and the metrics show of this node: plain values only."""
        return {
            "id": self.id,
            "role": self.role,
            "leader": self.leader_id,
            "ballot": self.ballot if self.role != FOLLOWER else self.promised,
            "promised": self.promised,
            "commit_index": self.commit_index,
            "applied_index": self.applied_index,
            "commands_applied": self.kv.applied_commands,
            "revision": self.kv.revision,
            "snapshot_index": self.snapshot_index,
            "log_start": self.log_start,
            "pending": len(self.pending),
            "in_flight": self.window.in_flight if self.role == LEADER else 0,
            "incarnation": self.incarnation,
            "voter": self.membership.configs[-1].votes(self.id, self.incarnation),
            "members": [m.as_list() for m in self.membership.configs[-1].members],
            "members_effective": self.membership.configs[-1].effective,
        }
