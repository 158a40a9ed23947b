"""The wire format: peer messages, the peer hello and the client protocol as CBOR values.

Everything that arrives from a socket passes through here before anything else sees it. Decoding
VALIDATES: types (ints where ints, bytes where bytes, None only where allowed; a CBOR ``true`` is
not the integer 1), ranges, member ids, operations and array lengths. A value that fails raises
``WireError`` naming the message type, the field and the bad value; nothing else escapes for any
input ``fastpath.loads`` can produce (the tests drive random garbage through it).

Peer messages are CBOR arrays ``[tag, fields...]``, fields in the order of the dataclasses in
``daemon.core.messages``; the tag is the 1-based position of the class in ``PEER_MESSAGES``::

    1 Prepare         [1, sender, ballot, from_slot]
    2 Promise         [2, sender, ballot, commit_index, entries, incarnation]
                      entry: [slot, ballot, batch]
    3 Reject          [3, sender, ballot, promised, commit_index]
    4 Accept          [4, sender, ballot, commit_index, first_slot, batches, read_round]
    5 Accepted        [5, sender, ballot, first_slot, last_slot, read_round, commit_index,
                       incarnation]
    6 CatchupRequest  [6, sender, from_slot, snapshot_index, snapshot_offset]
    7 Catchup         [7, sender, first_slot, batches, commit_index]
    8 SnapshotChunk   [8, sender, index, offset, total, data]
    9 TimeoutNow      [9, sender, ballot]
   10 Probe           [10, sender, nonce]
   11 ProbeReply      [11, sender, nonce, used]       used: a CBOR boolean

A batch is an array of commands; a command is ``[client_id, seq, op, key, arg1, arg2]`` (see
``daemon.core.messages``). Decoding returns batches, commands and Promise entries as TUPLES: the core
and the simulator compare them as tuples.

``incarnation`` is the sender's data directory's (``daemon.core.membership``).

The hello opens every peer connection, in both directions: ``["paxosd", 3, cluster, node_id]``,
with a fifth item, a random 32-byte nonce, from a node that has the cluster secret. Then, with
the secret, each side proves it (``daemon.runtime.security``) with ``["proof", hmac]``, the acceptor
first; the acceptor closes the handshake with ``["welcome"]``, and either side may instead say
``["refused", why]`` before it closes the connection.

The client protocol: a client frame is an array of requests
``[req_id, op, client_id, seq, key, arg1, arg2]`` with op one of "put", "get", "delete", "cas",
"range", "status", "transfer" (client_id: the node to hand leadership to), "member_add"
(client_id: the new member's id, key: its peer address, arg1: its client address, both
"host:port" as UTF-8) and "member_remove" (client_id: the member's id). A "range" request (a
linearizable read, like "get") is ``[req_id, "range", limit, flags, key, range_end, null]``:
the keys in ``[key, range_end)`` (range_end b"": every key from ``key`` on; null: ``key``
alone), at most ``limit`` (0: no limit); flags RANGE_KEYS_ONLY (1: no values) and
RANGE_COUNT_ONLY (2: only the count). Its result is ``[kvs, count, more]``: kvs in key order,
each ``[key, value, create_revision, mod_revision, version, lease]`` (value null with
keys_only), count the keys in the range whatever the limit, more whether keys of the range
follow the last one given (cut by the limit or by the server's message limit: continue from
the last key + b"\\x00").

A server frame is an array of replies ``[req_id, status, result, leader, revision]`` with
status one of ``REPLY_STATUSES`` ("ok", "not_leader", "stale", "session_expired", "busy",
"error"; see daemon.core.messages), leader the leader's client address "host:port" (or null
when unknown) and revision the store revision the answer reflects (a write: the revision it
was applied at; a read: the one it was read at; otherwise the node's applied revision when it
answered; see daemon.core.kv). A server before revisions sent 4 items: ``decode_reply`` takes
both (revision None), and such a server refuses "range" as an unknown op.

Watches (daemon.runtime.watches): ``[req_id, "watch", flags, start_revision, key, range_end,
null]`` follows the keys a range of ``key`` and ``range_end`` names (flags WATCH_PREV_KV (1):
each change carries the key's previous record; start_revision 0: from the next revision). Its
replies, all under its req_id: "ok" (result: the revision it starts after), then "events"
(result: the changes of one or more whole revisions, in revision order, each
``[revision, key, record or null (deleted), previous record or null]``, a record
``[value, create_revision, mod_revision, version, lease]``; the reply's revision: the one up to
which the watch has seen every change), until "compacted" (result: the revision the history is
compacted at) or "cancelled" (result: why; the reply's revision: the last one the watch saw).
``[req_id, "unwatch", watch_req_id, 0, b"", null, null]`` ends the watch ``watch_req_id`` of the
same connection ("ok"; the watch itself ends with "cancelled").

Snapshots (``paxosd snapshot save``; daemon.runtime.backup): ``[req_id, "snapshot", 0, offset,
b"", snapshot_id or null, null]``, one request per chunk, each answered by one reply whose
result is ``[snapshot_id, total, offset, data]`` (the reply's revision: the snapshot's). The
first (offset 0, snapshot_id null) goes to the leader: it takes the state machine at a
linearizable point (after a read-index round, as a "get"; a follower answers "not_leader"),
encodes it once (daemon.codec.backup's payload: state, revisions, leases, membership) and
keeps it for a while under a new ``snapshot_id`` (16 bytes). The next requests name that id
and the offset to go on from, on the same node: ``data`` is at most a chunk (well under the
frame limit), and ``offset + len(data) == total`` ends it. An id the node no longer keeps
(it restarted, or the snapshot aged out) is answered "error", naming it: start again. Nothing
in this changes what peers exchange.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from fastpath import (
    BALLOT_CHOSEN,
    MAX_BALLOT,
    MAX_NODE,
    OP_READ,
    SLOT_LIMIT,
    U64_MAX,
    decode_accept,
    loads,
)

from daemon.core.leases import MAX_TTL, MIN_TTL
from daemon.core.messages import (
    BLOB_OPS,
    ERROR,
    OP_CAS,
    OP_DELETE,
    OP_LEASE,
    OP_PUT,
    OP_TXN,
    OPS,
    REPLY_STATUSES,
    Accept,
    Accepted,
    Catchup,
    CatchupRequest,
    SnapshotChunk,
    TimeoutNow,
    Prepare,
    Probe,
    ProbeReply,
    Promise,
    Reject,
)
from daemon.core.kv import RangeQuery
# RANGE_KEYS_ONLY, RANGE_COUNT_ONLY: a "range" request's flags (its seq position).
from daemon.core.txn import (
    RANGE_COUNT_ONLY,
    RANGE_KEYS_ONLY,
    TxnError,
    check_txn,
    encode_range,
    encode_txn,
)

__all__ = [
    "CLIENT_OPCODES",
    "CLIENT_OPS",
    "ERROR",  # re-exported from daemon.core.messages, as REPLY_STATUSES: the reply's words
    "HELLO_MAGIC",
    "MAX_ADDRESS_BYTES",
    "MAX_PORT",
    "MAX_REFUSAL_CHARS",
    "MAX_SNAPSHOT_BYTES",
    "NONCE_BYTES",
    "PROOF_BYTES",
    "PROTOCOL_VERSION",
    "RANGE_COUNT_ONLY",
    "RANGE_KEYS_ONLY",
    "REPLY_STATUSES",
    "AuthError",
    "BadRequest",
    "ClientReply",
    "HelloError",
    "Request",
    "WireError",
    "check_hello",
    "decode_auth_step",
    "decode_peer",
    "decode_peer_payload",
    "decode_range_result",
    "decode_txn_result",
    "decode_reply",
    "decode_request",
    "decode_snapshot_chunk",
    "encode_hello",
    "encode_peer",
    "encode_proof",
    "encode_range_result",
    "range_query",
    "encode_refusal",
    "encode_welcome",
    "encode_reply",
    "encode_request",
    "format_ballot",
]

# 2: Promise and Accepted carry incarnations; 3: Probe, ProbeReply; 4: snapshot images carry
# key records and the revision (image format 2), Accept batches may hold transactions (op 4);
# 5: lease ops in the log (op 5), leases in snapshot images (image format 3).
PROTOCOL_VERSION = 5
HELLO_MAGIC = "paxosd"

# The ranges checked here are fastpath's (its Accept decoder checks the same ones): slots and
# commit indices stay within SLOT_LIMIT, so window arithmetic never overflows; a proposer's
# ballot is at most MAX_BALLOT, and BALLOT_CHOSEN, above it, appears only as the ballot of a
# Promise entry ("known chosen"); ids, seqs and nonces are unsigned 64-bit (U64_MAX).

CLIENT_OPS = ("put", "get", "delete", "cas", "range", "status", "transfer", "member_add",
              "member_remove", "txn", "lease_grant", "lease_revoke", "lease_keepalive",
              "lease_ttl", "snapshot")
SNAPSHOT_ID_BYTES = 16  # a "snapshot" request's id of the snapshot a leader keeps
# Lease requests ``[req_id, op, client_id, seq, b"", ttl or lease id, null]``: grant and revoke
# are writes (a session: client_id, seq), keepalive and ttl reads of the leader's clock (0, 0).
LEASE_WRITES = ("lease_grant", "lease_revoke")
LEASE_READS = ("lease_keepalive", "lease_ttl")
# The client ops that carry a key: their fastpath op code (OP_READ: a linearizable read). The
# server's fast pass (fastpath.split_requests) takes exactly these, comparing names in this
# order: the most frequent first.
CLIENT_OPCODES = {"put": OP_PUT, "get": OP_READ, "delete": OP_DELETE, "cas": OP_CAS}
MAX_RANGE_LIMIT = 2**63 - 1
MAX_ADDRESS_BYTES = 300  # a member address in a member_add request
MAX_PORT = 65535  # the port of a "host:port" address is 1..MAX_PORT


class WireError(ValueError):
    """Bytes from a socket that do not form a valid message; the text names type, field, value."""


class HelloError(WireError):
    """A peer hello that refuses the connection (wrong cluster, version or node id)."""


class AuthError(HelloError):
    """A peer that did not prove the cluster secret, or that refused our proof."""


class BadRequest(WireError):
    """A client request that gets an "error" reply: ``req_id`` is known, a field is wrong."""

    def __init__(self, req_id: int, message: str):
        super().__init__(message)
        self.req_id = req_id


# ---------------------------------------------------------------------------------------------
# Field checks. Each raises WireError("<where>: expected <what>, got <value>").


def _show(value) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _fail(where: str, expected: str, value) -> WireError:
    return WireError(f"{where}: expected {expected}, got {_show(value)}")


def _is_array(value) -> bool:
    t = type(value)
    return t is list or t is tuple


def _uint(value, low: int, high: int, where: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _fail(where, f"an integer in [{low}, {high}]", value)
    return value


MAX_SNAPSHOT_BYTES = 1 << 40  # a snapshot's size, as a sanity bound on offsets


def _slot(value, where: str, low: int = 1) -> int:
    return _uint(value, low, SLOT_LIMIT, where)


def _ballot(value, where: str, *, low: int = 1, owner: int | None = None) -> int:
    if type(value) is not int or not low <= value <= MAX_BALLOT:
        raise _fail(where, f"a ballot in [{low}, {MAX_BALLOT}]", value)
    if owner is not None and value & MAX_NODE != owner:
        raise WireError(f"{where}: expected a ballot of node {owner} (the sender), got "
                        f"{format_ballot(value)}")
    return value


def _sender(value, members, mtype: str) -> int:
    if type(value) is not int or value not in members:
        raise _fail(f"{mtype}.sender", f"a member id ({', '.join(map(str, sorted(members)))})",
                    value)
    return value


def _arity(obj: list, n: int, mtype: str, shape: str) -> None:
    if len(obj) != n:
        raise WireError(f"{mtype}: expected {n} items {shape}, got {len(obj)}: {_show(obj)}")


# The (arg1, arg2) each operation allows: "b" bytes, "n" None, "bn" either.
_ARGS = {OP_PUT: ("b", "n"), OP_DELETE: ("n", "n"), OP_CAS: ("bn", "b"), OP_READ: ("n", "n"),
         OP_TXN: ("b", "n"), OP_LEASE: ("b", "n")}
_ARG_WORDS = {"b": "bytes", "n": "null", "bn": "bytes or null"}


def _arg_ok(value, allowed: str) -> bool:
    if value is None:
        return "n" in allowed
    return type(value) is bytes and "b" in allowed


def _command_error(cmd, where: str) -> WireError:
    """The precise complaint about command ``cmd``, known to be invalid."""
    if not _is_array(cmd) or len(cmd) != 6:
        return _fail(where, "a command [client_id, seq, op, key, arg1, arg2]", cmd)
    client_id, seq, op, key, arg1, arg2 = cmd
    _uint(client_id, 0, U64_MAX, f"{where}.client_id")
    _uint(seq, 0, U64_MAX, f"{where}.seq")
    if type(op) is not int or op not in OPS:
        return _fail(f"{where}.op", f"one of {', '.join(map(str, OPS))}", op)
    if type(key) is not bytes:
        return _fail(f"{where}.key", "bytes", key)
    a1, a2 = _ARGS[op]
    if not _arg_ok(arg1, a1):
        return _fail(f"{where}.arg1", f"{_ARG_WORDS[a1]} for op {op}", arg1)
    return _fail(f"{where}.arg2", f"{_ARG_WORDS[a2]} for op {op}", arg2)


def _batch(value, where: str) -> tuple:
    """A batch as a tuple of command tuples. The common case costs one test per field."""
    if not _is_array(value):
        raise _fail(where, "a batch (an array of commands)", value)
    out = []
    append = out.append
    for i, cmd in enumerate(value):
        if _is_array(cmd) and len(cmd) == 6:
            client_id, seq, op, key, arg1, arg2 = cmd
            if (type(client_id) is int and 0 <= client_id <= U64_MAX
                    and type(seq) is int and 0 <= seq <= U64_MAX
                    and type(key) is bytes and type(op) is int):
                if op == OP_PUT:
                    ok = type(arg1) is bytes and arg2 is None
                elif op == OP_CAS:
                    ok = (arg1 is None or type(arg1) is bytes) and type(arg2) is bytes
                elif op == OP_DELETE:
                    ok = arg1 is None and arg2 is None
                else:  # a transaction or a lease op: its CBOR is checked where it is applied
                    ok = op in BLOB_OPS and type(arg1) is bytes and arg2 is None
                if ok:
                    append((client_id, seq, op, key, arg1, arg2))
                    continue
        raise _command_error(cmd, f"{where}[{i}]")
    return tuple(out)


def _batches(value, where: str, first_slot: int) -> tuple:
    if not _is_array(value):
        raise _fail(where, "an array of batches", value)
    if first_slot + len(value) - 1 > SLOT_LIMIT:
        raise WireError(f"{where}: {len(value)} batches from slot {first_slot} run past slot "
                        f"{SLOT_LIMIT}")
    return tuple([_batch(b, f"{where}[{i}]") for i, b in enumerate(value)])


def _entries(value, where: str) -> tuple:
    """Promise entries: slots increasing; the ones reported chosen are consecutive and first
    (an acceptor's chosen slots are a prefix of what it reports; the core asserts this)."""
    if not _is_array(value):
        raise _fail(where, "an array of entries [slot, ballot, batch]", value)
    out = []
    prev = 0
    chosen_open = True
    for i, entry in enumerate(value):
        at = f"{where}[{i}]"
        if not _is_array(entry) or len(entry) != 3:
            raise _fail(at, "an entry [slot, ballot, batch]", entry)
        slot = _slot(entry[0], f"{at}.slot")
        if slot <= prev:
            raise WireError(f"{at}.slot: expected slots in increasing order, got {slot} after "
                            f"{prev}")
        ballot = entry[1]
        if ballot == BALLOT_CHOSEN and type(ballot) is int:
            if not chosen_open or (i and slot != prev + 1):
                raise WireError(f"{at}.ballot: slot {slot} reported chosen after a slot that is "
                                f"not (chosen entries must be consecutive and come first)")
        else:
            _ballot(ballot, f"{at}.ballot")
            chosen_open = False
        out.append((slot, ballot, _batch(entry[2], f"{at}.batch")))
        prev = slot
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Peer messages.


def encode_peer(msg) -> list:
    """The CBOR-ready array of peer message ``msg`` (tuples inside encode as CBOR arrays)."""
    t = type(msg)
    if t is Accept:
        return [4, msg.sender, msg.ballot, msg.commit_index, msg.first_slot, msg.batches,
                msg.read_round]
    if t is Accepted:
        return [5, msg.sender, msg.ballot, msg.first_slot, msg.last_slot, msg.read_round,
                msg.commit_index, msg.incarnation]
    if t is Prepare:
        return [1, msg.sender, msg.ballot, msg.from_slot]
    if t is Promise:
        return [2, msg.sender, msg.ballot, msg.commit_index, msg.entries, msg.incarnation]
    if t is Reject:
        return [3, msg.sender, msg.ballot, msg.promised, msg.commit_index]
    if t is CatchupRequest:
        return [6, msg.sender, msg.from_slot, msg.snapshot_index, msg.snapshot_offset]
    if t is SnapshotChunk:
        return [8, msg.sender, msg.index, msg.offset, msg.total, msg.data]
    if t is TimeoutNow:
        return [9, msg.sender, msg.ballot]
    if t is Catchup:
        return [7, msg.sender, msg.first_slot, msg.batches, msg.commit_index]
    if t is Probe:
        return [10, msg.sender, msg.nonce]
    if t is ProbeReply:
        return [11, msg.sender, msg.nonce, msg.used]
    raise TypeError(f"not a peer message: {msg!r:.100}")


def _decode_prepare(obj, members):
    _arity(obj, 4, "Prepare", "[1, sender, ballot, from_slot]")
    sender = _sender(obj[1], members, "Prepare")
    return Prepare(sender, _ballot(obj[2], "Prepare.ballot", owner=sender),
                   _slot(obj[3], "Prepare.from_slot"))


def _decode_promise(obj, members):
    _arity(obj, 6, "Promise", "[2, sender, ballot, commit_index, entries, incarnation]")
    return Promise(_sender(obj[1], members, "Promise"), _ballot(obj[2], "Promise.ballot"),
                   _slot(obj[3], "Promise.commit_index", 0), _entries(obj[4], "Promise.entries"),
                   _uint(obj[5], 0, U64_MAX, "Promise.incarnation"))


def _decode_reject(obj, members):
    _arity(obj, 5, "Reject", "[3, sender, ballot, promised, commit_index]")
    return Reject(_sender(obj[1], members, "Reject"), _ballot(obj[2], "Reject.ballot"),
                  _ballot(obj[3], "Reject.promised", low=0),
                  _slot(obj[4], "Reject.commit_index", 0))


def _decode_accept(obj, members):
    _arity(obj, 7, "Accept", "[4, sender, ballot, commit_index, first_slot, batches, read_round]")
    sender = _sender(obj[1], members, "Accept")
    ballot = _ballot(obj[2], "Accept.ballot", owner=sender)
    commit_index = _slot(obj[3], "Accept.commit_index", 0)
    first_slot = _slot(obj[4], "Accept.first_slot")
    batches = _batches(obj[5], "Accept.batches", first_slot)
    return Accept(sender, ballot, commit_index, first_slot, batches,
                  _uint(obj[6], 0, U64_MAX, "Accept.read_round"))


def _decode_accepted(obj, members):
    _arity(obj, 8, "Accepted", "[5, sender, ballot, first_slot, last_slot, read_round, "
           "commit_index, incarnation]")
    sender = _sender(obj[1], members, "Accepted")
    ballot = _ballot(obj[2], "Accepted.ballot")
    first_slot = _slot(obj[3], "Accepted.first_slot")
    last_slot = _slot(obj[4], "Accepted.last_slot", first_slot - 1)
    return Accepted(sender, ballot, first_slot, last_slot,
                    _uint(obj[5], 0, U64_MAX, "Accepted.read_round"),
                    _slot(obj[6], "Accepted.commit_index", 0),
                    _uint(obj[7], 0, U64_MAX, "Accepted.incarnation"))


def _decode_catchup_request(obj, members):
    _arity(obj, 5, "CatchupRequest", "[6, sender, from_slot, snapshot_index, snapshot_offset]")
    return CatchupRequest(_sender(obj[1], members, "CatchupRequest"),
                          _slot(obj[2], "CatchupRequest.from_slot"),
                          _slot(obj[3], "CatchupRequest.snapshot_index", 0),
                          _uint(obj[4], 0, MAX_SNAPSHOT_BYTES, "CatchupRequest.snapshot_offset"))


def _decode_snapshot_chunk(obj, members):
    _arity(obj, 6, "SnapshotChunk", "[8, sender, index, offset, total, data]")
    sender = _sender(obj[1], members, "SnapshotChunk")
    index = _slot(obj[2], "SnapshotChunk.index")
    offset = _uint(obj[3], 0, MAX_SNAPSHOT_BYTES, "SnapshotChunk.offset")
    total = _uint(obj[4], 1, MAX_SNAPSHOT_BYTES, "SnapshotChunk.total")
    data = obj[5]
    if type(data) is not bytes:
        raise _fail("SnapshotChunk.data", "a byte string", data)
    if offset + len(data) > total or not data:
        raise _fail("SnapshotChunk.data", f"1 to {total - offset} bytes (total {total}, offset "
                    f"{offset})", f"{len(data)} bytes")
    return SnapshotChunk(sender, index, offset, total, data)


def _decode_catchup(obj, members):
    _arity(obj, 5, "Catchup", "[7, sender, first_slot, batches, commit_index]")
    sender = _sender(obj[1], members, "Catchup")
    first_slot = _slot(obj[2], "Catchup.first_slot")
    batches = _batches(obj[3], "Catchup.batches", first_slot)
    commit_index = _slot(obj[4], "Catchup.commit_index", 0)
    last = first_slot + len(batches) - 1
    if last > commit_index:
        raise WireError(f"Catchup.commit_index: expected at least the last slot sent ({last}), "
                        f"got {commit_index}")
    return Catchup(sender, first_slot, batches, commit_index)


def _decode_timeout_now(obj, members):
    _arity(obj, 3, "TimeoutNow", "[9, sender, ballot]")
    return TimeoutNow(_sender(obj[1], members, "TimeoutNow"), _ballot(obj[2], "TimeoutNow.ballot"))


def _decode_probe(obj, members):
    _arity(obj, 3, "Probe", "[10, sender, nonce]")
    return Probe(_sender(obj[1], members, "Probe"), _uint(obj[2], 0, U64_MAX, "Probe.nonce"))


def _decode_probe_reply(obj, members):
    _arity(obj, 4, "ProbeReply", "[11, sender, nonce, used]")
    used = obj[3]
    if type(used) is not bool:
        raise _fail("ProbeReply.used", "a boolean", used)
    return ProbeReply(_sender(obj[1], members, "ProbeReply"),
                      _uint(obj[2], 0, U64_MAX, "ProbeReply.nonce"), used)


_DECODERS = (None, _decode_prepare, _decode_promise, _decode_reject, _decode_accept,
             _decode_accepted, _decode_catchup_request, _decode_catchup, _decode_snapshot_chunk,
             _decode_timeout_now, _decode_probe, _decode_probe_reply)


def decode_peer(obj, members):
    """The peer message that CBOR value ``obj`` encodes; WireError if it is not a valid one.

    ``members`` is the set of node ids a sender may have.
    """
    if not _is_array(obj) or not obj:
        raise _fail("peer message", "an array [tag, fields...]", obj)
    tag = obj[0]
    if type(tag) is not int or not 1 <= tag < len(_DECODERS):
        raise _fail("peer message tag", f"an integer in [1, {len(_DECODERS) - 1}]", tag)
    return _DECODERS[tag](obj, members)


def decode_peer_payload(payload, members):
    """``decode_peer(loads(payload), members)``: the same message or the same error, with the
    hot one (Accept) decoded and validated in one C pass over the bytes (fastpath)."""
    fields = decode_accept(payload, members)
    if fields is not None:
        return Accept(*fields)
    return decode_peer(loads(payload), members)


def format_ballot(ballot: int) -> str:
    """A ballot as operators read it in logs: ``round.node`` (``chosen`` for BALLOT_CHOSEN)."""
    if ballot == BALLOT_CHOSEN:
        return "chosen"
    return f"{ballot >> 16}.{ballot & MAX_NODE}"


# ---------------------------------------------------------------------------------------------
# The hello.


NONCE_BYTES = 32
PROOF_BYTES = 32  # HMAC-SHA256
MAX_REFUSAL_CHARS = 200


def encode_hello(cluster: str, node_id: int, nonce: bytes | None = None) -> list:
    """The hello; ``nonce`` (NONCE_BYTES random bytes) when this node has the cluster secret."""
    hello = [HELLO_MAGIC, PROTOCOL_VERSION, cluster, node_id]
    if nonce is not None:
        hello.append(nonce)
    return hello


def check_hello(obj, cluster: str, members, own_id: int, *, secret: bool = False) -> int:
    """The node id a peer's hello announces; HelloError saying what is wrong if it may not
    join this connection (not a hello, another version, another cluster, an unknown or own id,
    a nonce where this node has no secret (``secret``) or none where it has one). The nonce,
    when there is one, is ``obj[4]``.
    """
    if not _is_array(obj) or len(obj) not in (4, 5) or obj[0] != HELLO_MAGIC:
        raise HelloError(f"not a paxosd hello: expected [{HELLO_MAGIC!r}, version, cluster, "
                         f"node_id], got {_show(obj)}")
    version, their_cluster, node_id = obj[1], obj[2], obj[3]
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise HelloError(f"protocol version {version!r}, this node speaks version "
                         f"{PROTOCOL_VERSION}")
    if their_cluster != cluster or type(their_cluster) is not str:
        raise HelloError(f"cluster {their_cluster!r}, this node belongs to cluster {cluster!r}")
    if type(node_id) is not int or node_id not in members:
        raise HelloError(f"node id {node_id!r} is not a member of cluster {cluster!r} "
                         f"(members: {', '.join(map(str, sorted(members)))})")
    if node_id == own_id:
        raise HelloError(f"node id {node_id} is this node's own id (two nodes configured "
                         f"with the same --node-id?)")
    if len(obj) == 5:
        if not secret:
            raise HelloError(f"node {node_id} authenticates peers with the cluster secret, and "
                             f"this node has none (auth.secret_file)")
        if type(obj[4]) is not bytes or len(obj[4]) != NONCE_BYTES:
            raise HelloError(f"hello nonce: expected {NONCE_BYTES} bytes, got {_show(obj[4])}")
    elif secret:
        raise AuthError(f"node {node_id} sent no authentication challenge: this node requires "
                        f"the cluster secret (auth.secret_file), and the peer has none")
    return node_id


def encode_proof(proof: bytes) -> list:
    return ["proof", proof]


def encode_welcome() -> list:
    return ["welcome"]


def encode_refusal(why: str) -> list:
    return ["refused", why[:MAX_REFUSAL_CHARS]]


def decode_auth_step(obj) -> tuple[str, bytes | str | None]:
    """One step of the authentication after the hello: ("proof", hmac), ("welcome", None) or
    ("refused", why). HelloError for anything else."""
    if _is_array(obj) and obj:
        kind = obj[0]
        if kind == "proof" and len(obj) == 2 and type(obj[1]) is bytes \
                and len(obj[1]) == PROOF_BYTES:
            return "proof", obj[1]
        if kind == "welcome" and len(obj) == 1:
            return "welcome", None
        if kind == "refused" and len(obj) == 2 and type(obj[1]) is str:
            return "refused", obj[1][:MAX_REFUSAL_CHARS]
    raise HelloError(f"authentication: expected ['proof', {PROOF_BYTES} bytes], ['welcome'] or "
                     f"['refused', why], got {_show(obj)}")


# ---------------------------------------------------------------------------------------------
# The client protocol.


class Request(NamedTuple):
    """A validated client request. For "get" and "status" client_id and seq are not used."""

    req_id: int
    op: str
    client_id: int
    seq: int
    key: bytes
    arg1: bytes | None
    arg2: bytes | None


def encode_request(req_id: int, op: str, client_id: int, seq: int, key: bytes,
                   arg1: bytes | None = None, arg2: bytes | None = None) -> list:
    return [req_id, op, client_id, seq, key, arg1, arg2]


def decode_request(obj) -> Request:
    """The request CBOR value ``obj`` encodes.

    WireError if it is unanswerable (not an array, no integer req_id): the connection is
    broken. BadRequest (carrying ``req_id``) if a field is wrong: the client gets an "error"
    reply naming the field.
    """
    if type(obj) is list and len(obj) == 7:  # the common case: one test per field
        req_id, op, client_id, seq, key, arg1, arg2 = obj
        if (type(req_id) is int and 0 <= req_id <= U64_MAX
                and type(client_id) is int and 0 <= client_id <= U64_MAX
                and type(seq) is int and 0 <= seq <= U64_MAX
                and type(key) is bytes and type(op) is str):
            if op == "put":
                ok = type(arg1) is bytes and arg2 is None
            elif op == "get" or op == "delete":
                ok = arg1 is None and arg2 is None
            elif op == "cas":
                ok = (arg1 is None or type(arg1) is bytes) and type(arg2) is bytes
            else:
                ok = False
            if ok:
                return Request(req_id, op, client_id, seq, key, arg1, arg2)
    return _decode_request_slowly(obj)


def _decode_request_slowly(obj) -> Request:
    if not _is_array(obj) or not obj:
        raise _fail("request", "an array [req_id, op, client_id, seq, key, arg1, arg2]", obj)
    req_id = obj[0]
    if type(req_id) is not int or not 0 <= req_id <= U64_MAX:
        raise _fail("request.req_id", f"an integer in [0, {U64_MAX}]", req_id)
    try:
        if len(obj) != 7:
            raise WireError(f"request: expected 7 items [req_id, op, client_id, seq, key, arg1, "
                            f"arg2], got {len(obj)}")
        _, op, client_id, seq, key, arg1, arg2 = obj
        if op not in CLIENT_OPS or type(op) is not str:
            raise _fail("request.op", f"one of {', '.join(map(repr, CLIENT_OPS))}", op)
        if op == "status":
            return Request(req_id, op, 0, 0, b"", None, None)
        if op == "transfer":  # client_id names the node to hand leadership to
            _uint(client_id, 1, MAX_NODE, "request.client_id (the node to hand leadership to)")
            return Request(req_id, op, client_id, 0, b"", None, None)
        if op == "member_remove":
            _uint(client_id, 1, MAX_NODE, "request.client_id (the member to remove)")
            return Request(req_id, op, client_id, 0, b"", None, None)
        if op == "range":
            return _decode_range_request(req_id, client_id, seq, key, arg1, arg2)
        if op == "txn":
            return _decode_txn_request(req_id, client_id, seq, key, arg1, arg2)
        if op in LEASE_WRITES or op in LEASE_READS:
            return _decode_lease_request(req_id, op, client_id, seq, key, arg1, arg2)
        if op in WATCH_OPS:
            return _decode_watch_request(req_id, op, client_id, seq, key, arg1, arg2)
        if op == "snapshot":
            return _decode_snapshot_request(req_id, client_id, seq, key, arg1, arg2)
        if op == "member_add":
            _uint(client_id, 1, MAX_NODE, "request.client_id (the new member's id)")
            _address_bytes(key, "request.key (the new member's peer address)")
            _address_bytes(arg1, "request.arg1 (the new member's client address)")
            return Request(req_id, op, client_id, 0, key, arg1, None)
        _uint(client_id, 0, U64_MAX, "request.client_id")
        _uint(seq, 0, U64_MAX, "request.seq")
        if type(key) is not bytes:
            raise _fail("request.key", "bytes", key)
        a1, a2 = _ARGS[CLIENT_OPCODES[op]]
        if not _arg_ok(arg1, a1):
            raise _fail("request.arg1", f"{_ARG_WORDS[a1]} for {op}", arg1)
        if not _arg_ok(arg2, a2):
            raise _fail("request.arg2", f"{_ARG_WORDS[a2]} for {op}", arg2)
    except WireError as exc:
        raise BadRequest(req_id, str(exc)) from None
    return Request(req_id, op, client_id, seq, key, arg1, arg2)


def _decode_range_request(req_id, limit, flags, key, end, arg2) -> Request:
    _uint(limit, 0, MAX_RANGE_LIMIT, "request.client_id (a range's limit, 0: none)")
    _uint(flags, 0, RANGE_KEYS_ONLY | RANGE_COUNT_ONLY,
          "request.seq (a range's flags: 1 keys only, 2 count only)")
    if type(key) is not bytes:
        raise _fail("request.key (the range's first key)", "bytes", key)
    if end is not None and type(end) is not bytes:
        raise _fail("request.arg1 (the range's end)", "bytes or null", end)
    if arg2 is not None:
        raise _fail("request.arg2", "null for range", arg2)
    return Request(req_id, "range", limit, flags, key, end, None)


def _decode_snapshot_request(req_id, zero, offset, key, snapshot_id, arg2) -> Request:
    """A "snapshot" request (see the module docstring): Request.seq is the offset, arg1 the
    snapshot id (None: take a new snapshot, at offset 0)."""
    _uint(zero, 0, 0, "request.client_id (0 for snapshot)")
    _uint(offset, 0, MAX_SNAPSHOT_BYTES, "request.seq (the snapshot offset)")
    if key != b"" or arg2 is not None:
        raise _fail("request", "key b'' and arg2 null for snapshot", [key, arg2])
    if snapshot_id is None:
        if offset:
            raise _fail("request.seq", "offset 0 for a new snapshot (no snapshot id)", offset)
    elif type(snapshot_id) is not bytes or len(snapshot_id) != SNAPSHOT_ID_BYTES:
        raise _fail("request.arg1 (the snapshot id)", f"{SNAPSHOT_ID_BYTES} bytes or null",
                    snapshot_id)
    return Request(req_id, "snapshot", 0, offset, b"", snapshot_id, None)


def decode_snapshot_chunk(obj, offset: int) -> tuple[bytes, int, bytes]:
    """A "snapshot" reply's result, checked against the ``offset`` asked for: ``(snapshot_id,
    total, data)``, data non-empty and within total."""
    if not _is_array(obj) or len(obj) != 4:
        raise _fail("snapshot result", "an array [snapshot_id, total, offset, data]", obj)
    snapshot_id, total, at, data = obj
    if type(snapshot_id) is not bytes or len(snapshot_id) != SNAPSHOT_ID_BYTES:
        raise _fail("snapshot result.snapshot_id", f"{SNAPSHOT_ID_BYTES} bytes", snapshot_id)
    _uint(total, 1, MAX_SNAPSHOT_BYTES, "snapshot result.total")
    if at != offset or type(at) is not int:
        raise _fail("snapshot result.offset", f"{offset}, the offset asked for", at)
    if type(data) is not bytes or not data or offset + len(data) > total:
        raise _fail("snapshot result.data", f"1 to {total - offset} bytes", data)
    return snapshot_id, total, data


def _decode_txn_request(req_id, client_id, seq, key, compares, branches) -> Request:
    """A "txn" request: ``[req_id, "txn", client_id, seq, b"", compares, [success, failure]]``
    (daemon.core.txn gives the shapes); its Request carries the command's CBOR in arg1."""
    _uint(client_id, 0, U64_MAX, "request.client_id")
    _uint(seq, 0, U64_MAX, "request.seq")
    if key != b"":
        raise _fail("request.key", "b'' for txn", key)
    if not _is_array(branches) or len(branches) != 2:
        raise _fail("request.arg2", "[success ops, failure ops] for txn", branches)
    try:
        txn = check_txn(compares, *branches)
    except TxnError as exc:
        raise WireError(f"request txn: {exc}") from None
    return Request(req_id, "txn", client_id, seq, b"", encode_txn(*txn), None)


def _decode_lease_request(req_id, op, client_id, seq, key, arg1, arg2) -> Request:
    """A lease request (see LEASE_WRITES); its Request carries the TTL or lease id in arg1."""
    _uint(client_id, 0, U64_MAX, "request.client_id")
    _uint(seq, 0, U64_MAX, "request.seq")
    if key != b"":
        raise _fail("request.key", f"b'' for {op}", key)
    if op == "lease_grant":
        _uint(arg1, MIN_TTL, MAX_TTL, "request.arg1 (the lease's TTL in seconds)")
    else:
        _uint(arg1, 1, U64_MAX, "request.arg1 (the lease id)")
    if arg2 is not None:
        raise _fail("request.arg2", f"null for {op}", arg2)
    return Request(req_id, op, client_id, seq, b"", arg1, None)


def decode_lease_result(op: str, obj):
    """A lease reply's result, checked: grant ``(id, ttl)``, revoke a boolean, keepalive the
    TTL or None (the lease is gone), ttl ``(ttl, seconds left, keys)`` or None."""
    if op == "lease_grant":
        if not _is_array(obj) or len(obj) != 2:
            raise _fail("lease grant result", "an array [id, ttl]", obj)
        return _uint(obj[0], 1, U64_MAX, "lease grant result.id"), _uint(
            obj[1], MIN_TTL, MAX_TTL, "lease grant result.ttl")
    if op == "lease_revoke":
        if type(obj) is not bool:
            raise _fail("lease revoke result", "a boolean", obj)
        return obj
    if obj is None:
        return None
    if op == "lease_keepalive":
        return _uint(obj, MIN_TTL, MAX_TTL, "lease keepalive result")
    if not _is_array(obj) or len(obj) != 3 or not _is_array(obj[2]):
        raise _fail("lease ttl result", "an array [ttl, seconds left, keys]", obj)
    if any(type(k) is not bytes for k in obj[2]):
        raise _fail("lease ttl result.keys", "an array of bytes", obj[2])
    return (_uint(obj[0], MIN_TTL, MAX_TTL, "lease ttl result.ttl"),
            _uint(obj[1], 0, MAX_TTL, "lease ttl result.left"), list(obj[2]))


def range_query(req: Request) -> RangeQuery:
    """The read a decoded "range" request asks for."""
    return RangeQuery(req.key, req.arg1, req.client_id, bool(req.seq & RANGE_KEYS_ONLY),
                      bool(req.seq & RANGE_COUNT_ONLY))


# A range read's result as the reply carries it: ``[kvs, count, more]`` (the transaction's
# range ops carry the same shape).
encode_range_result = encode_range


def decode_range_result(obj) -> tuple[list, int, bool]:
    """A "range" reply's result, checked: ``(kvs, count, more)``, each entry of kvs a tuple
    ``(key, value or None, create_revision, mod_revision, version, lease)``."""
    if not _is_array(obj) or len(obj) != 3:
        raise _fail("range result", "an array [kvs, count, more]", obj)
    kvs, count, more = obj
    if not _is_array(kvs):
        raise _fail("range result.kvs", "an array", kvs)
    _uint(count, 0, U64_MAX, "range result.count")
    if type(more) is not bool:
        raise _fail("range result.more", "a boolean", more)
    entries = []
    for i, entry in enumerate(kvs):
        where = f"range result.kvs[{i}]"
        if not _is_array(entry) or len(entry) != 6:
            raise _fail(where, "[key, value, create_revision, mod_revision, version, lease]",
                        entry)
        key, value = entry[0], entry[1]
        if type(key) is not bytes or (value is not None and type(value) is not bytes):
            raise _fail(where, "a bytes key and a bytes (or null) value", entry)
        for name, n in zip(("create_revision", "mod_revision", "version", "lease"), entry[2:]):
            _uint(n, 0, U64_MAX, f"{where}.{name}")
        entries.append(tuple(entry))
    return entries, count, more


def decode_txn_result(obj, ops) -> tuple[bool, list]:
    """A "txn" reply's result, checked: ``(succeeded, results)``, given ``ops`` (the branch
    that ran, as sent): per op, put None, delete the count deleted, range as
    ``decode_range_result`` gives it."""
    if not _is_array(obj) or len(obj) != 2 or type(obj[0]) is not bool:
        raise _fail("txn result", "an array [succeeded, results]", obj)
    succeeded, results = obj
    if not _is_array(results) or len(results) != len(ops):
        raise _fail("txn result.results", f"an array of {len(ops)} results", results)
    out = []
    for i, (op, result) in enumerate(zip(ops, results)):
        where = f"txn result.results[{i}]"
        if op[0] == "put":
            if result is not None:
                raise _fail(where, "null for put", result)
        elif op[0] == "delete":
            _uint(result, 0, U64_MAX, where)
        else:
            result = decode_range_result(result)
        out.append(result)
    return succeeded, out


def _address_bytes(value, where: str) -> None:
    """A "host:port" address as UTF-8 bytes (checked for shape; the leader checks it fully)."""
    if type(value) is not bytes or not 3 <= len(value) <= MAX_ADDRESS_BYTES:
        raise _fail(where, f"a host:port address as 3 to {MAX_ADDRESS_BYTES} UTF-8 bytes", value)
    try:
        text = value.decode()
    except UnicodeDecodeError:
        raise _fail(where, "UTF-8 host:port", value) from None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= MAX_PORT:
        raise _fail(where, f"host:port with a port from 1 to {MAX_PORT}", value)


@dataclass(frozen=True, slots=True)
class ClientReply:
    req_id: int
    status: str
    result: object
    leader: str | None
    revision: int | None = None  # None: a server from before revisions


def encode_reply(req_id: int, status: str, result, leader: str | None,
                 revision: int | None = None) -> list:
    return [req_id, status, result, leader, revision]


def decode_reply(obj) -> ClientReply:
    """A server reply, checked for shape (for clients and tests); a 4-item reply (a server
    from before revisions) has revision None."""
    if not _is_array(obj) or len(obj) not in (4, 5):
        raise _fail("reply", "an array [req_id, status, result, leader, revision]", obj)
    req_id, status, result, leader = obj[:4]
    revision = obj[4] if len(obj) == 5 else None
    _uint(req_id, 0, U64_MAX, "reply.req_id")
    if revision is not None:
        _uint(revision, 0, U64_MAX, "reply.revision")
    if status not in REPLY_STATUSES or type(status) is not str:
        raise _fail("reply.status", f"one of {', '.join(map(repr, REPLY_STATUSES))}", status)
    if leader is not None and type(leader) is not str:
        raise _fail("reply.leader", "a client address or null", leader)
    return ClientReply(req_id, status, result, leader, revision)


# ---------------------------------------------------------------------------------------------
# Watches (see the module docstring).

# Imported here, not at the top, so that this section stands alone.
from fastpath import dumps  # noqa: E402
from daemon.core.messages import EVENTS  # noqa: E402

WATCH_OPS = ("watch", "unwatch")
WATCH_PREV_KV = 1  # a "watch" request's flags: each change carries the previous record
# The watch ops are client ops too.
CLIENT_OPS = CLIENT_OPS + WATCH_OPS
__all__ += ["WATCH_OPS", "WATCH_PREV_KV", "decode_events", "encode_events",
            "encode_unwatch_request", "encode_watch_request", "events_frame",
            "events_reply_tail"]


def encode_watch_request(req_id: int, start_revision: int, key: bytes, range_end: bytes | None,
                         prev_kv: bool) -> list:
    """A "watch" request: the keys of ``key`` and ``range_end`` (as a range's) from revision
    ``start_revision`` on (0: from the next one)."""
    return [req_id, "watch", WATCH_PREV_KV if prev_kv else 0, start_revision, key, range_end,
            None]


def encode_unwatch_request(req_id: int, watch_req_id: int) -> list:
    return [req_id, "unwatch", watch_req_id, 0, b"", None, None]


def _decode_watch_request(req_id, op, arg, start, key, end, arg2) -> Request:
    if op == "unwatch":
        _uint(arg, 0, U64_MAX, "request.client_id (the req_id of the watch to end)")
        if start != 0 or key != b"" or end is not None or arg2 is not None:
            raise _fail("request", "[req_id, 'unwatch', watch_req_id, 0, b'', null, null]",
                        [start, key, end, arg2])
        return Request(req_id, op, arg, 0, b"", None, None)
    _uint(arg, 0, WATCH_PREV_KV, "request.client_id (a watch's flags: 1 previous records)")
    _uint(start, 0, U64_MAX, "request.seq (the revision a watch starts at, 0: the next one)")
    if type(key) is not bytes:
        raise _fail("request.key (the watch's first key)", "bytes", key)
    if end is not None and type(end) is not bytes:
        raise _fail("request.arg1 (the watch's range end)", "bytes or null", end)
    if arg2 is not None:
        raise _fail("request.arg2", "null for watch", arg2)
    return Request(req_id, op, arg, start, key, end, None)


def encode_events(groups, prev_kv: bool) -> list:
    """The "events" result of ``groups`` (daemon.core.watch.Group, in revision order)."""
    out = []
    for group in groups:
        for revision, key, record, prev in group.events:
            out.append([revision, key, None if record is None else record.astuple(),
                        prev.astuple() if prev_kv and prev is not None else None])
    return out


def _record_fields(value, where: str) -> tuple | None:
    if value is None:
        return None
    if not _is_array(value) or len(value) != 5 or type(value[0]) is not bytes:
        raise _fail(where, "null or [value, create_revision, mod_revision, version, lease]",
                    value)
    for name, n in zip(("create_revision", "mod_revision", "version", "lease"), value[1:]):
        _uint(n, 0, U64_MAX, f"{where}.{name}")
    return tuple(value)


def decode_events(obj) -> list[tuple]:
    """An "events" reply's result, checked: a list of ``(revision, key, record or None,
    previous record or None)``, records as 5-tuples, revisions not decreasing."""
    if not _is_array(obj):
        raise _fail("events", "an array of [revision, key, record, prev]", obj)
    out = []
    last = 0
    for i, event in enumerate(obj):
        where = f"events[{i}]"
        if not _is_array(event) or len(event) != 4:
            raise _fail(where, "[revision, key, record or null, prev or null]", event)
        revision = _uint(event[0], 1, U64_MAX, f"{where}.revision")
        if revision < last:
            raise WireError(f"{where}.revision: {revision} after {last} (out of order)")
        if type(event[1]) is not bytes:
            raise _fail(f"{where}.key", "bytes", event[1])
        out.append((revision, event[1], _record_fields(event[2], f"{where}.record"),
                    _record_fields(event[3], f"{where}.prev")))
        last = revision
    return out


def events_reply_tail(events: list, leader: str | None, revision: int) -> bytes:
    """The CBOR of the reply ``[req_id, "events", events, leader, revision]`` after its
    req_id: encoded once, however many watches it goes to (``events_frame`` completes it)."""
    return dumps([EVENTS, events, leader, revision])[1:]  # [1:]: not the 4-item array head


def events_frame(req_id: int, tail: bytes) -> bytes:
    """The whole frame (length and payload) of a server frame holding one reply: the
    "events" reply of ``tail`` (``events_reply_tail``) under ``req_id``."""
    payload = b"\x81\x85" + _cbor_uint(req_id) + tail  # an array of 1 reply of 5 items
    return len(payload).to_bytes(4, "big") + payload


def _cbor_uint(n: int) -> bytes:
    """An unsigned integer (at most U64_MAX) as CBOR encodes it, in the shortest form."""
    if n < 24:
        return bytes((n,))
    for head, width in ((0x18, 1), (0x19, 2), (0x1A, 4), (0x1B, 8)):
        if n < 1 << (8 * width):
            return bytes((head,)) + n.to_bytes(width, "big")
    raise ValueError(f"{n} is above U64_MAX")
