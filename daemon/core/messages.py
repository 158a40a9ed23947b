"""The protocol's vocabulary: commands, peer messages, durable records, client replies.

Everything here is a small frozen value. The protocol core consumes and produces these; the
wire codec (daemon.codec.wire) turns peer messages into CBOR tuples and back; the storage layer
(daemon.runtime.storage) turns records into WAL entries and back.

Representation choices made for the hot path:

- A *command* is a plain tuple ``(client_id, seq, op, key, arg1, arg2)`` (see ``OP_*``), not a
  class: batches hold thousands of them and they cross the wire unchanged.
- A *batch* is a tuple of commands. One slot holds one batch. The empty batch is the no-op that
  fills holes.
- Ballots are the unsigned 64-bit integers of ``fastpath`` (round << 16 | node).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from fastpath import OP_CAS, OP_DELETE, OP_PUT

# Every message, record and reply below is a small frozen value (slots: many are made per batch).
_value = dataclass(frozen=True, slots=True)

# Command operations, declared once in fastpath (its per-batch loops test them). Reads do not go
# through the log (see Node.read): they use the read index.
#   (client_id, seq, OP_PUT, key, value, None)       -> None
#   (client_id, seq, OP_DELETE, key, None, None)     -> bool existed
#   (client_id, seq, OP_CAS, key, expected, new)     -> bool swapped
#   (client_id, seq, OP_TXN, b"", <CBOR of the txn>, None) -> [succeeded, results]
# OP_TXN is no fastpath code: its per-batch loop hands any other op to KVStore.apply_other,
# so plain commands pay nothing for it (daemon.core.txn).
OP_TXN = 4
#   (client_id, seq, OP_LEASE, b"", <CBOR of the lease op>, None) -> see daemon.core.leases
OP_LEASE = 5
OPS = (OP_PUT, OP_DELETE, OP_CAS, OP_TXN, OP_LEASE)
# Ops whose argument is CBOR the store checks where it applies it (the codecs take bytes).
BLOB_OPS = (OP_TXN, OP_LEASE)

# A command's positions (it stays a plain tuple: fastpath takes only exact tuples). Per-command
# loops on the hot path keep literal indexes or unpack, which costs less than these lookups.
CMD_CLIENT, CMD_SEQ, CMD_OP, CMD_KEY, CMD_ARG1, CMD_ARG2 = range(6)

# Bytes a command costs on the wire beyond its key and values (the CBOR array, ids, op): an
# upper bound, so that runs cut by cost always fit the frame limit.
COMMAND_OVERHEAD = 32


def command_cost(cmd: tuple) -> int:
    """An upper bound on the bytes ``cmd`` takes in an Accept."""
    # Key, arg1, arg2 (literal positions: this runs once per command submitted).
    return len(cmd[3]) + len(cmd[4] or b"") + len(cmd[5] or b"") + COMMAND_OVERHEAD


def batch_cost(batch: tuple) -> int:
    """An upper bound on the bytes ``batch`` takes in an Accept."""
    return sum(map(command_cost, batch)) + 8

NOOP: tuple = ()  # the empty batch

# Client reply statuses.
OK = "ok"
NOT_LEADER = "not_leader"  # retry elsewhere; ``leader`` names the leader when known
STALE = "stale"  # the command's seq is older than the session's last applied one
BUSY = "busy"  # the leader's queue is full; retry later
ERROR = "error"  # the command cannot be carried out as given; ``result`` says why
# The command's session was evicted (or the seq is from before the last eviction): it was not
# applied; ``result`` is the eviction horizon, above which a session may start again.
SESSION_EXPIRED = "session_expired"
# A watch's stream (daemon.runtime.watches): a watch's changes of one or more whole revisions;
# the changes asked for are no longer all held (``result``: the revision it is compacted at);
# the watch ended (``result``: why).
EVENTS = "events"
COMPACTED = "compacted"
CANCELLED = "cancelled"
REPLY_STATUSES = (OK, NOT_LEADER, STALE, SESSION_EXPIRED, BUSY, ERROR, EVENTS, COMPACTED,
                  CANCELLED)


# ---------------------------------------------------------------------------------------------
# Peer messages. ``sender`` is the node id of the sender. Entries are tuples for compactness.


@_value
class Prepare:
    """Phase 1a: ``sender`` asks for promises for ``ballot`` on slots >= ``from_slot``."""

    sender: int
    ballot: int
    from_slot: int


@_value
class Promise:
    """Phase 1b, sent only after the promise is durable.

    ``entries`` are ``(slot, ballot, batch)`` for every slot >= the Prepare's from_slot that the
    acceptor holds; slots it knows chosen carry ``BALLOT_CHOSEN`` so they win every comparison.
    """

    sender: int
    ballot: int
    commit_index: int
    entries: tuple
    incarnation: int = 0  # of the acceptor's data directory (see daemon.core.membership)


@_value
class Reject:
    """An acceptor refuses a Prepare or an Accept for ``ballot`` because it promised ``promised``.

    ``commit_index`` tells a candidate how far behind it is.
    """

    sender: int
    ballot: int
    promised: int
    commit_index: int


@_value
class Accept:
    """Phase 2a and heartbeat: ``batches[i]`` is proposed for slot ``first_slot + i``.

    ``commit_index`` is the leader's contiguous chosen prefix, valid for ``ballot``.
    ``read_round`` numbers the leader's quorum confirmations for reads (0 = none asked).
    An Accept with no batches is a heartbeat.
    """

    sender: int
    ballot: int
    commit_index: int
    first_slot: int
    batches: tuple
    read_round: int


@_value
class Accepted:
    """Phase 2b, sent only after the accepted entries are durable.

    The acceptor holds slots ``first_slot..last_slot`` (empty when first > last) at ``ballot``
    and confirms ``ballot`` for ``read_round``. ``commit_index`` is the acceptor's (the leader
    sees from it how far a learner has caught up); ``incarnation`` is its data directory's.
    """

    sender: int
    ballot: int
    first_slot: int
    last_slot: int
    read_round: int
    commit_index: int = 0
    incarnation: int = 0


@_value
class CatchupRequest:
    """A learner asks for the chosen values of slots >= ``from_slot``.

    When the answer is a snapshot, ``snapshot_offset`` says how many of its bytes the learner
    already holds (of the snapshot at ``snapshot_index``; 0 for none).
    """

    sender: int
    from_slot: int
    snapshot_index: int = 0
    snapshot_offset: int = 0


@_value
class Catchup:
    """Chosen values: ``batches[i]`` was chosen for slot ``first_slot + i``."""

    sender: int
    first_slot: int
    batches: tuple
    commit_index: int


@_value
class SnapshotChunk:
    """Bytes ``offset..offset+len(data)`` of the state machine snapshot taken at slot ``index``
    (``total`` bytes in all), for a learner that is behind the sender's oldest retained slot."""

    sender: int
    index: int
    offset: int
    total: int
    data: bytes


@_value
class TimeoutNow:
    """The leader of ``ballot`` hands over: the receiver stands for election at once."""

    sender: int
    ballot: int


@_value
class Probe:
    """A node on an empty data directory asks: have you ever promised anything, and is the
    cluster still new? ``nonce`` is fresh per start, so only answers to this start count
    (see daemon.core.incarnation)."""

    sender: int
    nonce: int


@_value
class ProbeReply:
    """The answer to a Probe: ``used`` unless the sender runs incarnation 0 and has never
    promised or accepted anything, learned no chosen slot and holds no snapshot (a node still
    deciding its own incarnation holds nothing and says so)."""

    sender: int
    nonce: int
    used: bool


PEER_MESSAGES = (Prepare, Promise, Reject, Accept, Accepted, CatchupRequest, Catchup, SnapshotChunk,
                 TimeoutNow, Probe, ProbeReply)


# ---------------------------------------------------------------------------------------------
# Durable records: what an acceptor and learner must find again after a crash.


@_value
class PromiseRecord:
    """The acceptor promised ``ballot``: it accepts nothing lower."""

    ballot: int


@_value
class AcceptRecord:
    """The acceptor accepted ``batches[i]`` for slot ``first_slot + i`` at ``ballot``.

    Accepting under a ballot also raises the promise to it.
    """

    ballot: int
    first_slot: int
    batches: tuple


@_value
class ChosenRecord:
    """The learner was told ``batches[i]`` is chosen for slot ``first_slot + i``."""

    first_slot: int
    batches: tuple


@_value
class CommitRecord:
    """Every slot <= ``commit_index`` is chosen, with the value this node's log holds for it."""

    commit_index: int


RECORDS = (PromiseRecord, AcceptRecord, ChosenRecord, CommitRecord)


@_value
class IncarnationChosen:
    """A node that started on an empty data directory has decided its incarnation (0: an
    initial member of a new cluster; else a new one, to rejoin as a learner); ``why`` says
    on what evidence, for the log. Handed out in ``Ready.persist`` but not a WAL record: the
    driver writes it to the data directory's incarnation file, durably, before anything
    handed out after it is sent (see daemon.core.incarnation)."""

    incarnation: int
    why: str = ""


@_value
class Snapshot:
    """The state machine as of slot ``index``: ``state`` is its image (see KVStore.image).

    Handed to the driver in ``Ready.persist`` with ``checkpoint``: the records that carry the
    acceptor state past ``index`` (the promise, accepted entries above it, the commit index).
    Once the snapshot and the checkpoint are durable, every older record may be dropped.
    """

    index: int
    state: object
    checkpoint: tuple = ()


# ---------------------------------------------------------------------------------------------
# Client replies.


class Reply(NamedTuple):
    """The answer to the request the driver tagged ``req``.

    ``status`` is one of REPLY_STATUSES; ``result`` is the operation's output when OK;
    ``leader`` is the id of the node believed to lead (or None) when NOT_LEADER;
    ``revision`` the store revision the answer reflects (a write: the one it was applied at,
    or remembered from; a read: the state it was read from), or None when it reflects no
    state (the driver then says the node's current revision).

    A NamedTuple, not a frozen dataclass like the messages: a leader makes one per command,
    and a NamedTuple is made in well under half the time.
    """

    req: object
    status: str
    result: object = None
    leader: int | None = None
    revision: int | None = None
