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
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from operator import attrgetter

from fastpath import BALLOT_CHOSEN, BALLOT_NONE, QuorumTracker, SlotWindow, ballot_node

from daemon.core.configs import Membership
from daemon.core.election import Election
from daemon.core.incarnation import FreshStart, on_probe, on_probe_reply, probe
from daemon.core.kv import KVStore, decode_image, encode_image
from daemon.core.membership import (
    MEMBERS_KEY,
    Configuration,
    Member,
    config_batch,
    config_of_batch,
    decode_configuration,
    initial_configuration,
)
from daemon.core.messages import (
    BUSY,
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
)
from daemon.core.roles import CANDIDATE, FOLLOWER, LEADER, ProtocolError
from daemon.core.transfer import Transfer

# Bytes a command costs on the wire beyond its key and values (the CBOR array, ids, op): an
# upper bound, so that runs cut by cost always fit the frame limit.
COMMAND_OVERHEAD = 32


def command_cost(cmd: tuple) -> int:
    return len(cmd[3]) + len(cmd[4] or b"") + len(cmd[5] or b"") + COMMAND_OVERHEAD


def batch_cost(batch: tuple) -> int:
    return sum(map(command_cost, batch)) + 8


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


def _forward(part: str, name: str) -> property:
    """A Node attribute that reads and writes ``name`` of the node's part ``part`` (its
    Membership, Election or Transfer). Reading costs one C-level call (the proposer reads
    some of these once per slot it fills)."""
    def set_(node, value) -> None:
        setattr(getattr(node, part), name, value)
    return property(attrgetter(f"{part}.{name}"), set_, doc=f"``{part}.{name}``")


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
        self.snapshot_blob: bytes | None = None  # encoded lazily, for catch-up
        self.log_start = self.snapshot_index + 1 if snapshot is not None else 1
        # A snapshot arriving: [index, total, bytearray, sender, time of the last chunk].
        self.incoming: list | None = None
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
        self.last_broadcast = now
        self.last_progress = now
        self.contact: dict[int, float] = {}
        self.heard: dict[int, float] = {}
        self.voter_commit = 0
        self.read_round = 0
        self.read_round_sent = True
        self.peer_read_round: dict[int, int] = {}
        self.reads: deque = deque()  # (req, key, read_index, round)
        self.catchup_asked_at = -1.0
        self.membership = Membership(self, initial)  # configurations, membership changes
        self.election = self.election_type(self, initial)  # Phase 1: candidacy, boundaries
        self.handoff = Transfer(self)  # leadership transfer

        self._out = Ready()
        if snapshot is not None:
            self._configs_from_store()
        self._use(self._config_at(self.commit_index + 1))
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
                self._retransmit()
            if now - self.last_broadcast >= cfg.heartbeat_interval:
                if self.election.boundary is not None:
                    self.election.send_boundary_prepare()
                self._broadcast_accept(self.window.next_slot, ())
            self.handoff.expire(now)
        elif now >= self.election_deadline:
            if self.election.may_stand():
                self.election.start()
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
        key = (cmd[0], cmd[1])
        if cmd[0] == 0 or cmd[3] == MEMBERS_KEY:
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
        if self.role != LEADER:
            self._out.replies.append(Reply(req, NOT_LEADER, leader=self.leader_id))
            return
        if self.read_round_sent:
            self.read_round += 1
            self.read_round_sent = False
        read_index = max(self.commit_index, self.read_floor)
        self.reads.append((req, key, read_index, self.read_round))

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
            self._fill_window()
            if not self.read_round_sent:
                self._broadcast_accept(self.window.next_slot, ())
        out = self._out
        self._out = Ready()
        return out

    # ------------------------------------------------------------------------------ acceptor

    def _on_prepare(self, msg: Prepare) -> None:
        """Promise ``msg.ballot`` and report every slot from ``msg.from_slot`` up: chosen ones
        (up to the commit index at least) as BALLOT_CHOSEN, the rest at the ballot held.

        Promises: a Promise covers ``[from_slot, commit_index]`` in full, or none is sent; an
        acceptor that compacted past ``from_slot``, or is too far ahead to report it all,
        refuses with a Reject carrying its commit index, whatever the ballot (an equal one
        too: a duplicated Prepare, a boundary Prepare under the election's ballot), so the
        candidate catches up instead of taking a gap for a hole. The promise never goes down.
        """
        b = msg.ballot
        self._observe(b)
        behind = (self.commit_index - msg.from_slot + 1 > self.config.behind_limit
                  or msg.from_slot < self.log_start)
        if b < self.promised or behind:
            self._out.send.append((msg.sender, Reject(self.id, b, self.promised, self.commit_index)))
            return
        if b > self.promised:
            self.promised = b
            self._out.persist.append(PromiseRecord(b))
            if self.role != FOLLOWER and b > self.ballot:
                # Clients are sent to the node we handed over to, if this is it standing.
                handed = self.transfer is not None and self.transfer[0] == msg.sender
                self._step_down(msg.sender if handed else None)
        log = self.log
        commit = self.commit_index
        entries = []
        size = 0
        for slot in range(msg.from_slot, self.max_slot + 1):
            entry = log.get(slot)
            if entry is not None:
                entries.append((slot, BALLOT_CHOSEN if slot <= commit else entry[0], entry[1]))
                size += batch_cost(entry[1])
        if size > 2 * self.config.max_message_bytes:
            # Too much to report in one message: the candidate must catch up first. The
            # promise itself stands (it is already in the log), which is always safe.
            self._out.send.append((msg.sender, Reject(self.id, b, self.promised, self.commit_index)))
            return
        covered = sum(1 for e in entries if e[0] <= commit)
        if covered != max(0, commit - msg.from_slot + 1):
            raise ProtocolError(f"node {self.id}: a Promise from slot {msg.from_slot} would report "
                                f"{covered} of the chosen slots up to {commit}")
        self._out.send_after_persist.append(
            (msg.sender, Promise(self.id, b, commit, tuple(entries), self.incarnation)))

    def _on_accept(self, msg: Accept) -> None:
        """Accept the run if ``msg.ballot`` is at least the promise, raising the promise to it;
        learn the commit index that came with it.

        Promises: an Accepted goes out only after what it acknowledges is persisted, and it
        acknowledges only slots this node holds at that ballot. A slot already known chosen is
        kept (never rewritten) and acknowledged only if the Accept carries the very value it
        holds chosen: an acceptor never lends its vote to a value it knows was not chosen.
        """
        b = msg.ballot
        self._observe(b)
        if b < self.promised:
            self._out.send.append((msg.sender, Reject(self.id, b, self.promised, self.commit_index)))
            return
        if msg.sender != self.id:
            if self.role != FOLLOWER:
                self._step_down(msg.sender)  # a leader with a ballot >= ours is live
            self.leader_id = msg.sender
            self._reset_election_timer()
        raised = b > self.promised
        if raised:
            self.promised = b
        batches = msg.batches
        first = msg.first_slot
        last = first + len(batches) - 1
        acked = first
        if batches:
            # Slots already known chosen keep their value; accept the rest of the run.
            skip = max(0, self.commit_index + 1 - first)
            if skip and not self._holds_chosen(first, batches[:skip]):
                acked = min(first + skip, last + 1)
            if skip < len(batches):
                log = self.log
                start = first + skip
                if raised or any(log.get(s, (BALLOT_NONE,))[0] != b for s in range(start, last + 1)):
                    run = batches[skip:] if skip else batches
                    for i, batch in enumerate(run):
                        log[start + i] = (b, batch)
                    if last > self.max_slot:
                        self.max_slot = last
                    self._out.persist.append(AcceptRecord(b, start, run))
                    raised = False
        if raised:
            self._out.persist.append(PromiseRecord(b))
        self._out.send_after_persist.append(
            (msg.sender, Accepted(self.id, b, acked, last, msg.read_round, self.commit_index,
                                  self.incarnation)))
        if msg.commit_index > self.commit_index:
            self._learn_commit(msg.commit_index, b, msg.sender)

    def _holds_chosen(self, first: int, batches: tuple) -> bool:
        """Whether this node holds ``batches`` as the chosen values of slots from ``first``
        (a retransmit or a re-proposal of what it already learned; compacted slots cannot be
        compared, so they are not acknowledged)."""
        log = self.log
        for i, batch in enumerate(batches):
            entry = log.get(first + i)
            if entry is None or entry[1] != batch:
                return False
        return True

    # ------------------------------------------------------------------------------ learner

    def _learn_commit(self, commit_index: int, ballot: int, source: int) -> None:
        """Take slots up to ``commit_index`` as chosen where this node holds them at ``ballot``
        (the ballot the commit index came with); ask ``source`` for the rest."""
        log = self.log
        slot = self.commit_index
        while slot < commit_index:
            entry = log.get(slot + 1)
            if entry is None or (entry[0] != ballot and entry[0] != BALLOT_CHOSEN):
                break
            slot += 1
        if slot > self.commit_index:
            self._set_commit(slot)
        if commit_index > self.commit_index:
            self._ask_catchup(source)

    def _set_commit(self, commit_index: int) -> None:
        if commit_index < self.commit_index:
            raise ProtocolError(f"node {self.id}: commit index {self.commit_index} would go "
                                f"back to {commit_index}")
        self.commit_index = commit_index
        self._out.persist.append(CommitRecord(commit_index))
        self._apply()

    def _ask_catchup(self, source: int) -> None:
        incoming = self.incoming
        if incoming is not None and self.now - incoming[4] < 2 * self.config.election_timeout[1]:
            source = incoming[3]  # one snapshot, from one member, at a time
        if source == self.id:
            return
        if self.now - self.catchup_asked_at < self.config.heartbeat_interval:
            return
        self.catchup_asked_at = self.now
        self._out.send.append((source, self._catchup_request()))

    def _catchup_request(self) -> CatchupRequest:
        incoming = self.incoming
        if incoming is not None:
            return CatchupRequest(self.id, self.commit_index + 1, incoming[0], len(incoming[2]))
        return CatchupRequest(self.id, self.commit_index + 1)

    def _on_catchup_request(self, msg: CatchupRequest) -> None:
        first = msg.from_slot
        if first > self.commit_index or first < 1:
            return
        if first < self.log_start:
            self._send_snapshot_chunk(msg)
            return
        last = min(self.commit_index, first + self.config.catchup_slots - 1)
        log = self.log
        start, batches = next(self._runs(first, last, lambda s: log[s][1]))
        self._out.send.append((msg.sender, Catchup(self.id, start, batches, self.commit_index)))

    def _on_catchup(self, msg: Catchup) -> None:
        self.catchup_asked_at = -1.0
        if self.role == LEADER:
            return  # a leader's commit index moves only with its quorum tracker
        first = msg.first_slot
        skip = self.commit_index + 1 - first
        if skip < 0 or skip >= len(msg.batches):
            return  # not contiguous with what we know, or nothing new
        run = msg.batches[skip:]
        start = first + skip
        log = self.log
        for i, batch in enumerate(run):
            log[start + i] = (BALLOT_CHOSEN, batch)
        last = start + len(run) - 1
        if last > self.max_slot:
            self.max_slot = last
        self._out.persist.append(ChosenRecord(start, run))
        self._set_commit(last)
        if msg.commit_index > self.commit_index:
            self._ask_catchup(msg.sender)

    def _send_snapshot_chunk(self, msg: CatchupRequest) -> None:
        """The learner is behind our oldest retained slot: send it the snapshot, one chunk per
        request, so catch-up takes one chunk per round trip and never floods the link."""
        if self.snapshot_blob is None:
            self.snapshot_blob = encode_image(self.snapshot_image)
        blob = self.snapshot_blob
        offset = msg.snapshot_offset if msg.snapshot_index == self.snapshot_index else 0
        if offset > len(blob):
            offset = 0
        data = blob[offset:offset + self.config.snapshot_chunk_bytes]
        self._out.send.append(
            (msg.sender, SnapshotChunk(self.id, self.snapshot_index, offset, len(blob), data)))

    def _on_snapshot_chunk(self, msg: SnapshotChunk) -> None:
        if self.role == LEADER or msg.index <= self.commit_index:
            return
        incoming = self.incoming
        if incoming is None or incoming[0] != msg.index or incoming[1] != msg.total:
            # Only the start of a snapshot begins one, and only from the member we are fetching
            # from (it took a newer one) unless that member has gone quiet.
            if msg.offset != 0 or (
                    incoming is not None and msg.sender != incoming[3]
                    and self.now - incoming[4] < 2 * self.config.election_timeout[1]):
                return  # the next (rate-limited) ask mends it
            incoming = self.incoming = [msg.index, msg.total, bytearray(), msg.sender, self.now]
        buf = incoming[2]
        if msg.offset != len(buf):
            # A duplicate, or one that overtook another. Asking again here would start a
            # second stream of chunks; the next rate-limited ask mends it instead.
            return
        self.catchup_asked_at = -1.0  # the answer to our last ask: ask for the next one now
        incoming[4] = self.now
        buf += msg.data
        if len(buf) < msg.total:
            self._ask_catchup(msg.sender)
            return
        self.incoming = None
        try:
            image = decode_image(bytes(buf))
        except ValueError:
            return  # the sender is not one of ours or is broken; validated input never lands here
        self._install_snapshot(msg.index, image, bytes(buf))
        self._ask_catchup(msg.sender)

    def _install_snapshot(self, index: int, image, blob: bytes) -> None:
        """Slots up to ``index`` are chosen and their effect is ``image``: take it as ours."""
        self.kv = KVStore.from_image(image, self.config.max_sessions)
        self.applied_index = self.commit_index = self.snapshot_index = index
        self.snapshot_image, self.snapshot_blob = image, blob
        self._configs_from_store()
        log = self.log
        for slot in [s for s in log if s <= index]:
            del log[slot]
        self.log_start = index + 1
        if index > self.max_slot:
            self.max_slot = index
        self._out.persist.append(Snapshot(index, image, self._checkpoint(index)))

    def _take_snapshot(self) -> None:
        index = self.applied_index
        image = self.kv.image()
        self.snapshot_index, self.snapshot_image, self.snapshot_blob = index, image, None
        self._out.persist.append(Snapshot(index, image, self._checkpoint(index)))
        log = self.log
        start = max(self.log_start, index - self.config.log_retain + 1)
        for slot in range(self.log_start, start):
            log.pop(slot, None)
        self.log_start = start

    def _checkpoint(self, index: int) -> tuple:
        """Records that rebuild the acceptor state above ``index`` on top of a snapshot there."""
        records = [PromiseRecord(self.promised)]
        run_ballot, run_first, run = None, 0, []
        for slot in range(index + 1, self.max_slot + 1):
            entry = self.log.get(slot)
            if run and (entry is None or entry[0] != run_ballot or slot != run_first + len(run)):
                records.append(ChosenRecord(run_first, tuple(run)) if run_ballot == BALLOT_CHOSEN
                               else AcceptRecord(run_ballot, run_first, tuple(run)))
                run = []
            if entry is not None:
                if not run:
                    run_ballot, run_first = entry[0], slot
                run.append(entry[1])
        if run:
            records.append(ChosenRecord(run_first, tuple(run)) if run_ballot == BALLOT_CHOSEN
                           else AcceptRecord(run_ballot, run_first, tuple(run)))
        records.append(CommitRecord(self.commit_index))
        return tuple(records)

    def _apply(self) -> None:
        log = self.log
        kv = self.kv
        waiting = self.waiting
        replies = self._out.replies
        while self.applied_index < self.commit_index:
            slot = self.applied_index + 1
            batch = log[slot][1]
            if len(batch) == 1 and batch[0][0] == 0:
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
            self._take_snapshot()
        if self.reads:
            self._serve_reads()

    # ------------------------------------------------------------------------------ membership

    # The parts of the node with state of their own (daemon.core.configs, .election and
    # .transfer) own what follows; these names read (and set) it there, for the proposer and
    # the driver. A subclass may swap in another Election (tests/sim_bugs.py's broken cores).
    election_type = Election
    configs = _forward("membership", "configs")
    config_version = _forward("membership", "version")
    fence = _forward("membership", "fence")
    fence_slot = _forward("membership", "fence_slot")
    pending_change = _forward("membership", "pending_change")
    change_waiting = _forward("membership", "change_waiting")
    boundary = _forward("election", "boundary")
    transfer = _forward("handoff", "handover")
    _config_at = _forward("membership", "config_at")
    _apply_configuration = _forward("membership", "apply")
    _change_in_progress = _forward("membership", "in_progress")
    _start_boundary = _forward("election", "start_boundary")

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

    def _fill_window(self) -> None:
        window = self.window
        queued = self.queued_batches
        limit = self.config.max_message_bytes
        first = window.next_slot
        batches = []
        run_bytes = 0
        while window.has_room():
            slot = window.next_slot
            if slot >= self.fence or self.boundary is not None:
                break  # wait for the configuration command to be chosen / for promises
            if self.active is not self.configs[-1] and self._config_at(slot) != self.active:
                if not window.in_flight:
                    if batches:
                        self._broadcast_accept(first, tuple(batches))
                        batches = []
                    self._start_boundary(self._config_at(slot), slot)
                break
            if queued:
                batch = queued.popleft()
                cost = batch_cost(batch)
                if len(batch) == 1 and batch[0][0] == 0:
                    self._fence_for(slot, batch)
            elif self.pending_change is not None and self.transfer is None and not self.fence_slot:
                # (Not while another configuration command is in flight: one re-proposed from
                # the promises may be, though none was when the change was asked for.)
                req, members = self.pending_change
                self.pending_change = None
                # Configurations take effect in the order they are chosen, whatever window the
                # leader that proposed the one before had.
                effective = max(slot + self.config.window, self.configs[-1].effective + 1)
                batch = config_batch(slot, effective, members, self.configs[-1])
                cost = batch_cost(batch)
                self.fence, self.fence_slot = effective, slot
                if req is not None:
                    self.change_waiting[slot] = req
            elif self.pending and self.transfer is None:
                before = self.pending_bytes
                batch = self._take_batch()
                cost = before - self.pending_bytes
            elif slot < self.configs[-1].effective and self.active is not self.configs[-1]:
                batch = NOOP  # idle: no-ops bring the next configuration into effect
                cost = batch_cost(batch)
            else:
                break
            if batches and run_bytes + cost > limit:
                self._broadcast_accept(first, tuple(batches))
                first, batches, run_bytes = window.next_slot, [], 0
            window.open(batch)
            batches.append(batch)
            run_bytes += cost
        if batches:
            self._broadcast_accept(first, tuple(batches))

    def _fence_for(self, slot: int, batch: tuple) -> None:
        value = config_of_batch(batch)
        if value is not None:
            effective = decode_configuration(value)[0].effective
            if effective < self.fence:
                self.fence, self.fence_slot = effective, slot

    def _take_batch(self) -> tuple:
        pending = self.pending
        cfg = self.config
        if len(pending) <= cfg.max_batch_commands and self.pending_bytes <= cfg.max_batch_bytes:
            batch = tuple(pending)
            pending.clear()
            self.pending_bytes = 0
            return batch
        size = 0
        n = 0
        limit = min(len(pending), cfg.max_batch_commands)
        while n < limit:
            cmd = pending[n]
            cost = command_cost(cmd)
            if n and size + cost > cfg.max_batch_bytes:
                break
            size += cost
            n += 1
        batch = tuple(pending[:n])
        del pending[:n]
        self.pending_bytes -= size
        return batch

    def _broadcast_accept(self, first_slot: int, batches: tuple) -> None:
        msg = Accept(self.id, self.ballot, self.commit_index, first_slot, batches, self.read_round)
        self.read_round_sent = True
        send = self._out.send
        for m in (self.members if batches else self.peers):
            send.append((m, msg))
        self.last_broadcast = self.now

    def _retransmit(self) -> None:
        """Resend in-flight slots to each peer that has not acknowledged them."""
        window = self.window
        tracker = self.tracker
        for m in self.voters:
            if m == self.id:
                continue
            bit = 1 << self.index[m]
            first = None
            for slot in range(window.first_slot, window.next_slot):
                if not tracker.acked(slot) & bit:
                    first = slot
                    break
            if first is None:
                continue
            for start, batches in self._runs(first, window.next_slot - 1, window.get):
                self._out.send.append(
                    (m, Accept(self.id, self.ballot, self.commit_index, start, batches, self.read_round)))
        self.read_round_sent = True
        self.last_progress = self.now

    def _runs(self, first: int, last: int, batch_of):
        """Slots first..last as (start, batches) runs that each fit max_message_bytes."""
        limit = self.config.max_message_bytes
        start, batches, size = first, [], 0
        for slot in range(first, last + 1):
            batch = batch_of(slot)
            cost = batch_cost(batch)
            if batches and size + cost > limit:
                yield start, tuple(batches)
                start, batches, size = slot, [], 0
            batches.append(batch)
            size += cost
        if batches:
            yield start, tuple(batches)

    def _on_accepted(self, msg: Accepted) -> None:
        if self.role != LEADER or msg.ballot != self.ballot:
            return
        sender = msg.sender
        if self.vote_incarnation.get(sender, -1) != msg.incarnation:
            self._learner_progress(msg)  # a learner, or a member back under a new incarnation
            return
        self.contact[sender] = self.heard[sender] = self.now
        if msg.commit_index > self.voter_commit:
            self.voter_commit = msg.commit_index
        if msg.read_round > self.peer_read_round[sender]:
            self.peer_read_round[sender] = msg.read_round
        if msg.first_slot <= msg.last_slot:
            new = self.tracker.record(self.index[sender], msg.ballot, msg.first_slot, msg.last_slot)
            if new != -1:
                self._on_chosen(new)
        if self.reads:
            self._serve_reads()

    def _learner_progress(self, msg: Accepted) -> None:
        """Make a learner a voter once it has caught up (under the incarnation it runs)."""
        sender = msg.sender
        member = self.configs[-1].get(sender)
        if (member is None or (member.voter and member.incarnation == msg.incarnation)
                or msg.commit_index + self.config.catchup_slots < self.commit_index
                or self.transfer is not None or self._change_in_progress()):
            return
        promoted = Member(sender, member.peer, member.client, True, msg.incarnation)
        self.pending_change = (None, self.configs[-1].with_member(promoted))

    def _on_chosen(self, commit_index: int) -> None:
        start = self.commit_index + 1
        batches = self.window.advance(commit_index)
        if len(batches) != commit_index - start + 1:
            raise ProtocolError(f"window released {len(batches)} batches for slots {start}..{commit_index}")
        log = self.log
        ballot = self.ballot
        missing = False
        for i, batch in enumerate(batches):
            slot = start + i
            entry = log.get(slot)
            if entry is None or entry[0] != ballot:
                missing = True
                log[slot] = (BALLOT_CHOSEN, batch)
        if commit_index > self.max_slot:
            self.max_slot = commit_index
        if missing:
            self._out.persist.append(ChosenRecord(start, tuple(batches)))
        self.last_progress = self.now
        self._set_commit(commit_index)

    def _serve_reads(self) -> None:
        if self.role != LEADER:
            return
        rounds = sorted((self.read_round if m == self.id else r)
                        for m, r in self.peer_read_round.items())
        if len(rounds) < self.quorum:
            return
        confirmed = rounds[-self.quorum]
        reads = self.reads
        replies = self._out.replies
        kv = self.kv
        while reads:
            req, key, read_index, round_ = reads[0]
            if round_ > confirmed or read_index > self.applied_index:
                break
            reads.popleft()
            replies.append(Reply(req, OK, kv.get(key)))

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
        for req, _key, _index, _round in self.reads:
            replies.append(Reply(req, NOT_LEADER, leader=leader))
        self.waiting.clear()
        self.reads.clear()
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
        Prepare: _on_prepare,
        Promise: lambda node, msg: node.election.on_promise(msg),
        Reject: lambda node, msg: node.election.on_reject(msg),
        Accept: _on_accept,
        Accepted: _on_accepted,
        CatchupRequest: _on_catchup_request,
        Catchup: _on_catchup,
        SnapshotChunk: _on_snapshot_chunk,
        TimeoutNow: lambda node, msg: node.handoff.on_timeout_now(msg),
        Probe: on_probe,
        ProbeReply: on_probe_reply,
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
