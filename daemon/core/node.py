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
(daemon.core.catchup) and the read index (daemon.core.reads).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from fastpath import BALLOT_CHOSEN, BALLOT_NONE, QuorumTracker, SlotWindow, ballot_next, ballot_node

from daemon.core.acceptor import Acceptor
from daemon.core.catchup import CatchupExchange
from daemon.core.incarnation import NEW, FreshStart
from daemon.core.kv import KVStore
from daemon.core.membership import (
    CONFIG_CLIENT,
    MEMBERS_KEY,
    Configuration,
    Member,
    config_of_batch,
    decode_configuration,
    initial_configuration,
)
from daemon.core.messages import (
    BUSY,
    CMD_CLIENT,
    ERROR,
    NOOP,
    NOT_LEADER,
    OK,
    Accept,
    Accepted,
    AcceptRecord,
    Catchup,
    CatchupRequest,
    ChosenRecord,
    CommitRecord,
    IncarnationChosen,
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

    persist: list = field(default_factory=list)  # records, and now and then a Snapshot
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
        self.initial = initial
        self.configs: list[Configuration] = [initial]  # by effective slot; see _config_at
        self.config_version = 0
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
        self.promises: dict[int, Promise] = {}
        self.from_slot = 0
        self.window = SlotWindow(config.window)
        self.prep_config: Configuration = initial  # the configuration a Phase 1 runs in
        self.boundary: dict | None = None  # promises for the next configuration (leader)
        self.boundary_slot = 0
        self.fence = 1 << 62  # no slot from here on until the configuration command is chosen
        self.fence_slot = 0
        self.pending_change: tuple | None = None  # (req or None, members) to propose
        self.change_waiting: dict[int, object] = {}  # slot -> req of a configuration command
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
        self.transfer: list | None = None  # [target, req or None when answered, deadline]
        # The parts of the node, each over the state above (see their modules).
        self.reads = ReadIndex(self)
        self.catchup = CatchupExchange(self)
        self.pipeline = AcceptPipeline(self)
        self.acceptor = Acceptor(self)

        self._out = Ready()
        if snapshot is not None:
            self._configs_from_store()
        self._use(self._config_at(self.commit_index + 1))
        self._apply()

    # ------------------------------------------------------------------------------ inputs

    def tick(self, now: float) -> None:
        self.now = now
        if self.fresh is not None:
            self._probe()
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
                if self.boundary is not None:
                    self._send_boundary_prepare()
                self.pipeline.broadcast_accept(self.window.next_slot, ())
            if self.transfer is not None and self.transfer[1] is None and now > self.transfer[2]:
                self.transfer = None  # the target never stood: lead on
        elif now >= self.election_deadline:
            if self._may_stand():
                self._start_election()
            else:
                self._reset_election_timer()

    def receive(self, msg, now: float) -> None:
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
        if cmd[0] == 0 or cmd[3] == MEMBERS_KEY:  # 0: CONFIG_CLIENT
            self._out.replies.append(Reply(req, ERROR, (
                "client id 0 and the key " + repr(MEMBERS_KEY) + " are reserved for membership")))
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

    def read(self, req, key: bytes, now: float) -> None:
        """A linearizable read: answered once a quorum confirmed this node's ballot after the
        read arrived and the state machine has applied the commit index seen at arrival."""
        self.now = now
        self.reads.read(req, key)

    def transfer_leadership(self, req, target: int, now: float) -> None:
        """Hand leadership to ``target``: stop taking new commands into slots, let what is in
        flight be chosen, then tell the target to stand at once. Answered OK when the target is
        told (``leader`` names it), ERROR if it cannot be or does not happen in time."""
        self.now = now
        if self.role != LEADER:
            self._out.replies.append(Reply(req, NOT_LEADER, leader=self.leader_id))
        elif target == self.id:
            self._out.replies.append(Reply(req, OK, leader=self.id))
        elif target not in self.index:
            self._out.replies.append(Reply(req, ERROR, f"node {target} is not a voting member"))
        elif self.transfer is not None:
            self._out.replies.append(Reply(req, ERROR, f"already handing over to node {self.transfer[0]}"))
        else:
            self.transfer = [target, req, now + 2 * self.config.election_timeout[1], OK]

    def change_members(self, req, change: tuple, now: float) -> None:
        """A membership change: ``("add", id, peer, client)`` adds a learner (the leader makes
        it a voter once it has caught up); ``("remove", id)`` removes a member. Answered OK once
        the configuration command is chosen; the leader asked to remove itself hands leadership
        over first and answers NOT_LEADER naming the node to ask again."""
        self.now = now
        out = self._out.replies
        if self.role != LEADER:
            out.append(Reply(req, NOT_LEADER, leader=self.leader_id))
            return
        busy = self._change_in_progress()
        if busy:
            out.append(Reply(req, ERROR, busy))
            return
        latest = self.configs[-1]
        kind, member_id = change[0], change[1]
        if type(member_id) is not int or not 1 <= member_id <= 0xFFFF:
            out.append(Reply(req, ERROR, f"member id {member_id!r} is not in 1..65535"))
        elif kind == "add":
            if latest.get(member_id) is not None:
                out.append(Reply(req, ERROR, f"node {member_id} is already a member"))
            elif len(latest.members) >= 64:
                out.append(Reply(req, ERROR, "a cluster has at most 64 members"))
            else:
                member = Member(member_id, change[2], change[3], False, 0)
                self.pending_change = (req, latest.with_member(member))
        elif kind == "remove":
            member = latest.get(member_id)
            if member is None:
                out.append(Reply(req, ERROR, f"node {member_id} is not a member"))
            elif member.voter and latest.voters == (member_id,):
                out.append(Reply(req, ERROR, f"node {member_id} is the last voting member"))
            elif member.voter and not self._quorum_left_without(member_id):
                out.append(Reply(req, ERROR, (
                    f"removing node {member_id} would leave fewer voters in contact than a "
                    "quorum of the rest; bring the others back first")))
            elif member_id == self.id:
                target = self._successor(exclude=self.id)
                if target is None:
                    out.append(Reply(req, ERROR, "no other voting member is in contact to take over"))
                elif self.transfer is not None:
                    out.append(Reply(req, ERROR, f"already handing over to node {self.transfer[0]}"))
                else:
                    self.transfer = [target, req, now + 2 * self.config.election_timeout[1],
                                     NOT_LEADER]
            else:
                self.pending_change = (req, latest.without(member_id))
        else:
            out.append(Reply(req, ERROR, f"unknown membership change {kind!r}"))

    def _quorum_left_without(self, member_id: int) -> bool:
        """Whether the voters other than ``member_id`` that this leader hears from lately, under
        the incarnation the configuration names, make a quorum of those voters."""
        rest = [m for m in self.configs[-1].voters if m != member_id]
        since = self.now - 2 * self.config.election_timeout[1]
        alive = sum(1 for m in rest if m == self.id or self.heard.get(m, -1e9) >= since)
        return alive >= len(rest) // 2 + 1

    def _change_in_progress(self) -> str:
        if self.pending_change is not None or self.fence_slot or self.change_waiting:
            return "a membership change is in progress; try again once it is chosen"
        if self.configs[-1].effective > self.commit_index + 1 or self.boundary is not None:
            return "the last membership change has not taken effect yet; try again shortly"
        return ""

    def _successor(self, exclude: int) -> int | None:
        """The voter (other than ``exclude``) heard from most recently, if lately."""
        since = self.now - 2 * self.config.heartbeat_interval
        heard = [(self.contact.get(m, -1e9), m) for m in self.configs[-1].voters
                 if m != exclude and m in self.index]
        heard = [h for h in heard if h[0] >= since]
        return max(heard)[1] if heard else None

    def _hand_over(self) -> None:
        target, req, deadline, status = self.transfer
        if req is None:
            return  # told already; waiting to see the target's higher ballot
        if self.now > deadline:
            self.transfer = None
            self._out.replies.append(Reply(req, ERROR, f"node {target} did not catch up in time"))
            return
        if self.window.in_flight or self.queued_batches:
            return
        if self.now - self.contact.get(target, -1e9) > 2 * self.config.heartbeat_interval:
            return  # not hearing from it lately: it could not win now
        self._out.send.append((target, TimeoutNow(self.id, self.ballot)))
        self._out.replies.append(Reply(req, status, leader=target))
        self.transfer[1] = None

    def _on_timeout_now(self, msg: TimeoutNow) -> None:
        if (self.role == FOLLOWER and msg.ballot == self.promised and msg.sender == self.leader_id
                and self._may_stand()):
            self._start_election()

    def ready(self) -> Ready:
        """Drain the outputs produced since the last call (batching new proposals first)."""
        if self.role == LEADER:
            if self.transfer is not None:
                self._hand_over()
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

    def _ask_catchup(self, source: int) -> None:
        """Ask ``source`` for the chosen slots this node misses (see CatchupExchange.ask)."""
        self.catchup.ask(source)

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
                self._apply_configuration(slot, batch)
            if not waiting:  # nobody here waits for a reply (a follower): one C loop
                kv.apply_batch(batch)
                self.applied_index = slot
                continue
            outcomes: list = []
            kv.apply_batch(batch, outcomes)
            for cmd, (status, result) in zip(batch, outcomes):
                if waiting:
                    req = waiting.pop((cmd[0], cmd[1]), None)
                    if req is not None:
                        replies.append(Reply(req, status, result))
                        if self.also_waiting:
                            for again in self.also_waiting.pop((cmd[0], cmd[1]), ()):
                                replies.append(Reply(again, status, result))
            self.applied_index = slot
        every = self.config.snapshot_every
        if every and self.applied_index - self.snapshot_index >= every:
            self.acceptor.take_snapshot()
        reads = self.reads
        if reads.queue:
            reads.serve()

    # ------------------------------------------------------------------------------ membership

    def _config_at(self, slot: int) -> Configuration:
        """The configuration slot ``slot`` is proposed in (known for every slot up to
        commit_index + W; beyond, only as far as chosen configuration commands go)."""
        configs = self.configs
        cfg = configs[0]
        for c in configs:
            if c.effective > slot:
                break
            cfg = c
        return cfg

    def _may_stand(self) -> bool:
        """A node stands for election only as a voter, under its own incarnation, both now and
        in the latest configuration it knows (a member being removed does not stand)."""
        if self.fresh is not None:
            return False
        inc = self.incarnation
        return (self._config_at(self.commit_index + 1).votes(self.id, inc)
                and self.configs[-1].votes(self.id, inc))

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

    def _apply_configuration(self, slot: int, batch: tuple) -> None:
        value = config_of_batch(batch)
        if value is None:
            return
        try:
            new, old = decode_configuration(value)
        except ValueError as exc:
            raise ProtocolError(f"slot {slot} holds a broken configuration command: {exc}") from None
        if new.slot != slot:
            raise ProtocolError(f"slot {slot} holds the configuration command of slot {new.slot}")
        configs = self.configs
        if not any(c.slot == slot and c.effective == new.effective for c in configs):
            configs.append(new)
            configs.sort(key=lambda c: c.effective)
            # Forget configurations no slot from here on can be proposed in.
            keep = self._config_at(slot + 1)
            del configs[:configs.index(keep)]
            self.config_version += 1
        if slot == self.fence_slot:
            self.fence, self.fence_slot = 1 << 62, 0
        req = self.change_waiting.pop(slot, None)
        if req is not None:
            self._out.replies.append(Reply(req, OK, (
                f"members from slot {new.effective}: {new.describe()}")))

    def _configs_from_store(self) -> None:
        """After a snapshot: the configurations it knows (the latest and the one before)."""
        value = self.kv.data.get(MEMBERS_KEY)
        if value is None:
            self.configs = [self.initial]
        else:
            new, old = decode_configuration(value)
            self.configs = [old, new] if old.effective < new.effective else [new]
        self.config_version += 1

    def addresses(self) -> dict:
        """id -> (peer, client) of every member of every configuration this node knows."""
        out = {}
        for cfg in [self.initial] + self.configs + [self.active]:
            for m in cfg.members:
                if m.peer is not None or m.id not in out:
                    out[m.id] = (m.peer, m.client)
        return out

    @property
    def configuration(self) -> Configuration:
        """The latest configuration this node knows (it may not be in effect yet)."""
        return self.configs[-1]

    def _start_boundary(self, cfg: Configuration, slot: int) -> None:
        """Slots from ``slot`` on are proposed in ``cfg``: Phase 1 with a quorum of it first."""
        if not cfg.votes(self.id, self.incarnation) and self.active.votes(self.id, self.incarnation):
            # Leaving: hand over to a voter of the new configuration and step down.
            target = None
            heard = sorted(((self.contact.get(m, -1e9), m) for m in cfg.voters), reverse=True)
            if heard:
                target = heard[0][1]
                self._out.send.append((target, TimeoutNow(self.id, self.ballot)))
            self._step_down(target)
            return
        self.boundary = {}
        self.boundary_slot = slot
        self._send_boundary_prepare()

    def _send_boundary_prepare(self) -> None:
        """(Again, to those that have not answered: a Prepare may be lost like any message.)"""
        prepare = Prepare(self.id, self.ballot, self.boundary_slot)
        for m in self._config_at(self.boundary_slot).voters:
            if m not in self.boundary:
                self._out.send.append((m, prepare))

    def _finish_boundary(self, cfg: Configuration) -> None:
        """A quorum of ``cfg`` promised this leader's ballot from the boundary slot: re-propose
        what they report there (the highest ballot per slot, chosen values first) and no-ops
        in the holes, then lead in ``cfg``.

        Promises: no slot that a promise's commit index says is chosen is no-op-filled; if the
        promises do not report every such slot, this node steps down and catches up instead.
        """
        slot = self.boundary_slot
        best = self._best_reported(self.boundary.values(), slot)
        if self._chosen_unreported(self.boundary.values(), best, slot):
            return
        self.boundary = None
        self.queued_batches.clear()
        self.fence, self.fence_slot = 1 << 62, 0
        for s in range(slot, max(best, default=slot - 1) + 1):
            entry = best.get(s)
            self.queued_batches.append(entry[1] if entry is not None else NOOP)
        if not self.queued_batches:
            self.queued_batches.append(NOOP)  # a slot chosen in this configuration, for reads
        self.read_floor = max(self.read_floor, slot - 1 + len(self.queued_batches))
        contact = self.contact
        self._use(cfg)
        self.tracker.reset(self.ballot, self.commit_index)
        self.contact = {m: contact.get(m, self.now) for m in cfg.ids}
        self.peer_read_round = {m: self.peer_read_round.get(m, 0) for m in cfg.voters}

    # ------------------------------------------------------------------------------ proposer

    def _start_election(self) -> None:
        self.role = CANDIDATE
        self.leader_id = None
        ballot = ballot_next(max(self.max_seen, self.promised), self.id)
        self.ballot = ballot
        self.max_seen = ballot
        self.promises = {}
        self.from_slot = self.commit_index + 1
        self.prep_config = self._config_at(self.from_slot)
        # Our own promise is durable before anyone hears of the ballot, so a restart can never
        # pick the same ballot again.
        self.promised = ballot
        self._out.persist.append(PromiseRecord(ballot))
        prepare = Prepare(self.id, ballot, self.from_slot)
        for m in self.prep_config.voters:
            self._out.send_after_persist.append((m, prepare))
        self._reset_election_timer()

    def _on_promise(self, msg: Promise) -> None:
        if msg.ballot != self.ballot:
            return
        if self.role == CANDIDATE:
            cfg = self.prep_config
            if cfg.votes(msg.sender, msg.incarnation):
                self.promises[msg.sender] = msg
                if len(self.promises) >= len(cfg.voters) // 2 + 1:
                    self._become_leader()
        elif self.role == LEADER and self.boundary is not None:
            cfg = self._config_at(self.boundary_slot)
            if cfg.votes(msg.sender, msg.incarnation):
                self.boundary[msg.sender] = msg
                if len(self.boundary) >= len(cfg.voters) // 2 + 1:
                    self._finish_boundary(cfg)

    def _become_leader(self) -> None:
        """A quorum promised ``self.ballot``: learn what the promises report chosen, re-propose
        the highest-ballot value of every other reported slot and no-ops in the holes, then
        lead.

        Promises: every slot up to the highest commit index among the promises is learned as
        chosen (never no-op-filled); if the promises do not report one of them, this node
        does not lead but steps down and catches up. Commit never passes what is chosen.
        """
        ballot = self.ballot
        best = self._best_reported(self.promises.values(), self.commit_index + 1)
        if self._chosen_unreported(self.promises.values(), best, self.commit_index + 1):
            return
        # Values the promises report chosen are learned at once, as a contiguous run.
        chosen = []
        slot = self.commit_index + 1
        while slot in best and best[slot][0] == BALLOT_CHOSEN:
            chosen.append(best.pop(slot)[1])
            slot += 1
        if chosen:
            start = self.commit_index + 1
            for i, batch in enumerate(chosen):
                self.log[start + i] = (BALLOT_CHOSEN, batch)
            self.max_slot = max(self.max_slot, start + len(chosen) - 1)
            self._out.persist.append(ChosenRecord(start, tuple(chosen)))
            self._set_commit(start + len(chosen) - 1)
        top = max(best, default=self.commit_index)
        for s in range(self.commit_index + 1, top + 1):
            entry = best.get(s)
            if entry is not None and entry[0] == BALLOT_CHOSEN:
                raise ProtocolError(f"slot {s} reported chosen beyond a hole in the chosen prefix")
            self.queued_batches.append(entry[1] if entry is not None else NOOP)
        if not self.queued_batches:
            self.queued_batches.append(NOOP)
        # Reads wait until every re-proposed slot is chosen: only then does the commit index
        # cover everything a previous leader may have acknowledged.
        self.read_floor = self.commit_index + len(self.queued_batches)
        self.role = LEADER
        self.leader_id = self.id
        self.promises = {}
        self._use(self.prep_config)
        self.tracker.reset(ballot, self.commit_index)
        self.window.reset(self.commit_index + 1)
        self.contact = {m: self.now for m in self.members}
        self.heard: dict[int, float] = {}  # voter -> last Accepted under its incarnation
        self.voter_commit = 0  # the highest commit index a voter reported under this ballot
        self.peer_read_round = {m: 0 for m in self.voters}
        self.last_progress = self.now
        self._fill_window()

    @staticmethod
    def _best_reported(promises, first: int) -> dict[int, tuple[int, tuple]]:
        """slot -> (ballot, batch) of the highest ballot any promise reports, from ``first``."""
        best: dict[int, tuple[int, tuple]] = {}
        for promise in promises:
            for slot, b, batch in promise.entries:
                if slot >= first and (slot not in best or b > best[slot][0]):
                    best[slot] = (b, batch)
        return best

    def _chosen_unreported(self, promises, best: dict, first: int) -> bool:
        """Whether a promise's commit index says a slot from ``first`` on is chosen that no
        promise reports chosen. Then this node must not fill it: it steps down and asks the
        member that knows for the chosen slots (it stands again once caught up)."""
        source = max(promises, key=lambda p: p.commit_index)
        for slot in range(first, source.commit_index + 1):
            entry = best.get(slot)
            if entry is None or entry[0] != BALLOT_CHOSEN:
                self._step_down(None)
                self._ask_catchup(source.sender)
                return True
        return False

    def _fill_window(self) -> None:
        """Open what the window has room for and send it (see AcceptPipeline.fill_window)."""
        self.pipeline.fill_window()

    def _on_reject(self, msg: Reject) -> None:
        """A higher promise makes a leader or candidate step down. A refusal at its own ballot
        from a member that knows more chosen slots (it compacted past our Prepare, or we are
        too far behind) sends a candidate, and a leader stuck at a configuration boundary, to
        catch up from it instead of asking again and again."""
        self._observe(msg.promised)
        if self.role != FOLLOWER and msg.promised > self.ballot:
            self._step_down(None)
        elif (self.role == LEADER and self.boundary is not None and msg.ballot == self.ballot
              and msg.commit_index > self.commit_index):
            self._step_down(None)
        if self.role != LEADER and msg.commit_index > self.commit_index:
            self._ask_catchup(msg.sender)

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
        if self.transfer is not None:
            if self.transfer[1] is not None:
                replies.append(Reply(self.transfer[1], NOT_LEADER, leader=leader))
            self.transfer = None
        if self.pending_change is not None and self.pending_change[0] is not None:
            replies.append(Reply(self.pending_change[0], NOT_LEADER, leader=leader))
        for req in self.change_waiting.values():
            replies.append(Reply(req, NOT_LEADER, leader=leader))
        self.pending_change = None
        self.change_waiting.clear()
        self.boundary = None
        self.fence, self.fence_slot = 1 << 62, 0
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
        self.promises = {}
        self.window.reset(self.commit_index + 1)
        self._reset_election_timer()

    def _reset_election_timer(self) -> None:
        lo, hi = self.config.election_timeout
        self.election_deadline = self.now + self.rng.uniform(lo, hi)

    # ------------------------------------------------------------------------------ fresh start

    def _probe(self) -> None:
        """Deciding the incarnation: ask the initial members not yet heard from, now and then
        (a single initial member has no one to ask: it is decided at the first tick)."""
        fresh = self.fresh
        if fresh.decision is not None:
            self._settle_incarnation()
            return
        for m in fresh.due(self.now):
            self._out.send.append((m, Probe(self.id, fresh.nonce)))

    def _on_probe(self, msg: Probe) -> None:
        used = self.fresh is None and bool(
            self.incarnation or self.promised != BALLOT_NONE or self.max_slot
            or self.commit_index or self.snapshot_index)
        self._out.send.append((msg.sender, ProbeReply(self.id, msg.nonce, used)))

    def _on_probe_reply(self, msg: ProbeReply) -> None:
        fresh = self.fresh
        if fresh is None:
            return
        fresh.report(msg.sender, msg.nonce, msg.used)
        if fresh.decision is not None:
            self._settle_incarnation()

    def _settle_incarnation(self) -> None:
        """The incarnation is decided: hand it to the driver to persist. Everything that
        depends on it (a Promise, an Accepted) leaves through send_after_persist, so only
        once it is durable."""
        fresh, self.fresh = self.fresh, None
        if fresh.decision == NEW:
            self.incarnation = 0
        self._out.persist.append(IncarnationChosen(self.incarnation, fresh.why))
        self._reset_election_timer()

    _handlers = {
        Prepare: lambda node, msg: node.acceptor.on_prepare(msg),
        Promise: _on_promise,
        Reject: _on_reject,
        Accept: lambda node, msg: node.acceptor.on_accept(msg),
        Accepted: lambda node, msg: node.pipeline.on_accepted(msg),
        CatchupRequest: lambda node, msg: node.catchup.on_request(msg),
        Catchup: lambda node, msg: node.catchup.on_catchup(msg),
        SnapshotChunk: lambda node, msg: node.catchup.on_snapshot_chunk(msg),
        TimeoutNow: _on_timeout_now,
        Probe: _on_probe,
        ProbeReply: _on_probe_reply,
    }

    # ------------------------------------------------------------------------------ status

    def status(self) -> dict:
        return {
            "id": self.id,
            "role": self.role,
            "leader": self.leader_id,
            "ballot": self.ballot if self.role != FOLLOWER else self.promised,
            "promised": self.promised,
            "commit_index": self.commit_index,
            "applied_index": self.applied_index,
            "commands_applied": self.kv.applied_commands,
            "snapshot_index": self.snapshot_index,
            "log_start": self.log_start,
            "pending": len(self.pending),
            "in_flight": self.window.in_flight if self.role == LEADER else 0,
            "incarnation": self.incarnation,
            "voter": self.configs[-1].votes(self.id, self.incarnation),
            "members": [m.as_list() for m in self.configs[-1].members],
            "members_effective": self.configs[-1].effective,
        }
