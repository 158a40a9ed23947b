"""Plain-Python twins of the fastpath primitives, written for clarity, not speed.

Each has the name, signature and behaviour (return values, exception types) of its compiled
counterpart in fastpath/_fastpath.pyx; tests/test_fastpath.py drives both with the same
operations and requires the same results. Used only by the tests.
"""

from __future__ import annotations

import operator

BALLOT_NONE = 0
BALLOT_CHOSEN = 2**64 - 1
MAX_ROUND = 2**48 - 2
MAX_NODE = 2**16 - 1
SLOT_LIMIT = 2**62
MAX_DEPTH = 64
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
EVENT_OVERHEAD = 64
MAX_FRAME_LENGTH = 2**32 - 1
U64_MAX = 2**64 - 1
MAX_BALLOT = (MAX_ROUND << 16) | MAX_NODE
OP_READ, OP_PUT, OP_DELETE, OP_CAS = 0, 1, 2, 3

_U64_MAX = U64_MAX
_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1


class FrameError(ValueError):
    """Malformed input."""


class FrameTooLarge(FrameError):
    """A frame header announced more than max_frame bytes."""


def _int(v) -> int:
    return operator.index(v)  # TypeError for non-integers


def _ranged(v, lo: int, hi: int, what: str) -> int:
    x = _int(v)
    if not lo <= x <= hi:
        raise ValueError(f"{what} {v!r} out of range [{lo}, {hi}]")
    return x


def _clamp_i64(v) -> int:
    return min(max(_int(v), _I64_MIN), _I64_MAX)


# --- ballots ---------------------------------------------------------------------------------


def ballot_pack(round, node):  # noqa: A002 - the contract's name
    r = _int(round)
    if not 0 <= r <= MAX_ROUND:
        raise ValueError(f"ballot round {round!r} out of range [0, {MAX_ROUND}]")
    n = _int(node)
    if not 0 <= n <= MAX_NODE:
        raise ValueError(f"ballot node {node!r} out of range [0, {MAX_NODE}]")
    return (r << 16) | n


def _ballot(b) -> int:
    return _ranged(b, 0, _U64_MAX, "ballot")


def ballot_round(b):
    return _ballot(b) >> 16


def ballot_node(b):
    return _ballot(b) & 0xFFFF


def ballot_next(seen, node):
    s = _ballot(seen)
    if s == BALLOT_CHOSEN:
        raise ValueError("ballot_next: BALLOT_CHOSEN cannot be outbid")
    return ballot_pack((s >> 16) + 1, node)


# --- QuorumTracker ---------------------------------------------------------------------------


class QuorumTracker:
    def __init__(self, members, quorum, capacity):
        self.members = _ranged(members, 1, 64, "members")
        self.quorum = _ranged(quorum, 1, self.members, "quorum")
        self.capacity = _ranged(capacity, 1, _I64_MAX, "capacity")
        self.ballot = BALLOT_NONE
        self.commit_index = 0
        self._acks: dict[int, int] = {}  # slot -> mask, only for tracked slots

    def reset(self, ballot, commit_index):
        b = _ballot(ballot)
        ci = _ranged(commit_index, 0, SLOT_LIMIT, "commit_index")
        self._acks = {}
        self.ballot = b
        self.commit_index = ci

    def record(self, member, ballot, first_slot, last_slot):
        m = _ranged(member, 0, self.members - 1, "member")
        b = _int(ballot)
        lo = _clamp_i64(first_slot)
        hi = _clamp_i64(last_slot)
        if b != self.ballot:
            return -1
        lo = max(lo, self.commit_index + 1)
        hi = min(hi, self.commit_index + self.capacity)
        if lo > hi:
            return -1
        for slot in range(lo, hi + 1):
            self._acks[slot] = self._acks.get(slot, 0) | (1 << m)
        start = self.commit_index
        while bin(self._acks.get(self.commit_index + 1, 0)).count("1") >= self.quorum:
            del self._acks[self.commit_index + 1]
            self.commit_index += 1
        return self.commit_index if self.commit_index != start else -1

    def acked(self, slot):
        s = _clamp_i64(slot)
        if not self.commit_index < s <= self.commit_index + self.capacity:
            return 0
        return self._acks.get(s, 0)

    def count(self, slot):
        return bin(self.acked(slot)).count("1")


# --- SlotWindow ------------------------------------------------------------------------------


class SlotWindow:
    def __init__(self, capacity):
        self.capacity = _ranged(capacity, 1, _I64_MAX, "capacity")
        self.first_slot = 1
        self.next_slot = 1
        self._batches: dict[int, object] = {}

    @property
    def in_flight(self):
        return self.next_slot - self.first_slot

    def reset(self, first_slot):
        f = _ranged(first_slot, 1, SLOT_LIMIT, "first_slot")
        self._batches = {}
        self.first_slot = self.next_slot = f

    def has_room(self):
        return self.in_flight < self.capacity

    def open(self, batch):
        if not self.has_room():
            raise OverflowError(f"slot window full: {self.in_flight} slots in flight")
        slot = self.next_slot
        self._batches[slot] = batch
        self.next_slot += 1
        return slot

    def get(self, slot):
        s = _int(slot)
        if not self.first_slot <= s < self.next_slot:
            raise KeyError(f"slot {slot!r} is not open: [{self.first_slot}, {self.next_slot})")
        return self._batches[s]

    def advance(self, commit_index):
        upto = min(_clamp_i64(commit_index), self.next_slot - 1)
        if upto < self.first_slot:
            return []
        out = [self._batches.pop(s) for s in range(self.first_slot, upto + 1)]
        self.first_slot = upto + 1
        return out


# --- CBOR ------------------------------------------------------------------------------------


def _head(major: int, v: int) -> bytes:
    mt = major << 5
    if v < 24:
        return bytes([mt | v])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if v < 1 << (8 * size):
            return bytes([mt | info]) + v.to_bytes(size, "big")
    raise AssertionError("unreachable: v < 2**64")


def _encode(obj, depth: int, out: list) -> None:
    if obj is None:
        out.append(b"\xf6")
    elif obj is True:
        out.append(b"\xf5")
    elif obj is False:
        out.append(b"\xf4")
    elif isinstance(obj, int):
        if 0 <= obj <= _U64_MAX:
            out.append(_head(0, int(obj)))
        elif -(2**64) <= obj < 0:
            out.append(_head(1, -1 - int(obj)))
        else:
            raise ValueError(f"cannot encode int of {obj.bit_length()} bits")
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        out.append(_head(2, len(data)) + data)
    elif isinstance(obj, str):
        data = obj.encode("utf-8")  # UnicodeEncodeError (a ValueError) on lone surrogates
        out.append(_head(3, len(data)) + data)
    elif isinstance(obj, (list, tuple, dict)):
        if depth >= MAX_DEPTH:
            raise ValueError(f"cannot encode: containers nested deeper than {MAX_DEPTH}")
        if isinstance(obj, dict):
            items = list(dict.items(obj))  # insertion order, as cbor2 (even for OrderedDict)
            out.append(_head(5, len(items)))
            for key, value in items:
                _encode(key, depth + 1, out)
                _encode(value, depth + 1, out)
        else:
            out.append(_head(4, len(obj)))
            for item in obj:
                _encode(item, depth + 1, out)
    else:
        raise TypeError(f"cannot encode object of type {type(obj).__name__!r} as CBOR")


def dumps(obj):
    out: list[bytes] = []
    _encode(obj, 0, out)
    return b"".join(out)


class _Decoder:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str, at: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise FrameError(f"truncated input: {what} at offset {at}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def item(self, depth: int):
        start = self.pos
        (ib,) = self.take(1, "expected a data item", start)
        major, info = ib >> 5, ib & 31
        if major == 7:
            simple = {20: False, 21: True, 22: None}
            if info in simple:
                return simple[info]
            raise FrameError(f"unsupported float/simple value 0x{ib:02x} at offset {start}")
        if info < 24:
            v = info
        elif info <= 27:
            v = int.from_bytes(self.take(1 << (info - 24), "head", start), "big")
        else:
            raise FrameError(f"reserved or indefinite-length head 0x{ib:02x} at offset {start}")
        if major == 0:
            return v
        if major == 1:
            return -1 - v
        if major == 6:
            raise FrameError(f"unsupported tag {v} at offset {start}")
        if major == 2:
            return self.take(v, "byte string", start)
        if major == 3:
            try:
                return self.take(v, "text string", start).decode("utf-8")
            except UnicodeDecodeError:
                raise FrameError(f"invalid UTF-8 at offset {start}") from None
        if depth >= MAX_DEPTH:
            raise FrameError(f"containers nested deeper than {MAX_DEPTH} at offset {start}")
        remaining = len(self.data) - self.pos
        if major == 4:
            if v > remaining:
                raise FrameError(f"truncated input: array of {v} items at offset {start}")
            return [self.item(depth + 1) for _ in range(v)]
        if 2 * v > remaining:
            raise FrameError(f"truncated input: map of {v} pairs at offset {start}")
        result = {}
        for _ in range(v):
            kstart = self.pos
            key = self.item(depth + 1)
            if isinstance(key, (list, dict)):
                raise FrameError(f"unhashable map key at offset {kstart}")
            result[key] = self.item(depth + 1)
        return result


def loads(data):
    decoder = _Decoder(bytes(memoryview(data)))
    result = decoder.item(0)
    if decoder.pos != len(decoder.data):
        raise FrameError(f"trailing bytes after offset {decoder.pos}")
    return result


# --- frames ----------------------------------------------------------------------------------


def encode_frame(payload):
    data = bytes(memoryview(payload))
    if len(data) > MAX_FRAME_LENGTH:
        raise ValueError("payload too long for a frame")
    return len(data).to_bytes(4, "big") + data


def encode_frames(objs):
    return b"".join(encode_frame(dumps(obj)) for obj in objs)


class FrameReader:
    def __init__(self, max_frame=DEFAULT_MAX_FRAME):
        self.max_frame = _ranged(max_frame, 0, _U64_MAX, "max_frame")
        self._buf = b""
        self._poisoned = False

    @property
    def buffered(self):
        return len(self._buf)

    def feed(self, data):
        if self._poisoned:
            raise FrameError("frame reader is poisoned by an earlier framing error")
        buf = self._buf + bytes(memoryview(data))
        out = []
        while len(buf) >= 4:
            length = int.from_bytes(buf[:4], "big")
            if length > self.max_frame:
                self._poisoned = True
                self._buf = b""
                raise FrameTooLarge(f"frame announces {length} bytes, limit {self.max_frame}")
            if len(buf) - 4 < length:
                break
            out.append(buf[4 : 4 + length])
            buf = buf[4 + length :]
        self._buf = buf
        return out


# The per-batch helpers of the daemon's hot path. Their twins are the general code they stand in
# for (daemon.codec.wire, daemon.core.kv), one command at a time.


def decode_accept(payload, members):
    from daemon.codec import wire
    from daemon.core.messages import Accept

    try:
        msg = wire.decode_peer(loads(payload), members)
    except (FrameError, ValueError, TypeError):
        return None
    if type(msg) is not Accept:
        return None
    return (msg.sender, msg.ballot, msg.commit_index, msg.first_slot, msg.batches, msg.read_round)


def split_requests(frame, conn, opcodes):
    from daemon.codec import wire

    work, rest = [], []
    for obj in frame:
        try:
            req = wire.decode_request(obj)
        except wire.WireError:
            rest.append(obj)
            continue
        if opcodes.get(req.op) == OP_READ:
            work.append((True, (conn, req.req_id), req.key))
        elif req.op in opcodes:
            work.append((False, (conn, req.req_id), (req.client_id, req.seq, opcodes[req.op],
                                                      req.key, req.arg1, req.arg2)))
        else:
            rest.append(obj)
    return work, rest


def apply_commands(kv, batch, results, op_put, op_delete, op_cas, ok, stale, expired):
    for cmd in batch:
        outcome = type(kv).apply(kv, cmd)
        if results is not None:
            results.append(outcome)


def answer_waiting(batch, outcomes, waiting, replies, reply_type):
    for name, value, kind in (("batch", batch, tuple), ("outcomes", outcomes, list),
                              ("waiting", waiting, dict), ("replies", replies, list),
                              ("reply_type", reply_type, type)):
        if not isinstance(value, kind):
            raise TypeError(f"{name}: expected {kind.__name__}")
    if len(outcomes) != len(batch):
        raise ValueError(f"answer_waiting: {len(outcomes)} outcomes for a batch of {len(batch)} "
                         "commands")
    for cmd, outcome in zip(batch, outcomes):
        if not waiting:
            break
        req = waiting.pop((cmd[0], cmd[1]), None)
        if req is not None:
            replies.append(reply_type(req, outcome[0], outcome[1], None, outcome[2]))



def take_commands(work, start, waiting, pending, max_pending, max_cost, overhead, reserved_key):
    for name, value, kind in (("work", work, list), ("waiting", waiting, dict),
                              ("pending", pending, list), ("reserved_key", reserved_key, bytes)):
        if type(value) is not kind:
            raise TypeError(f"{name}: expected {kind.__name__}")
    if start < 0:
        raise ValueError(f"take_commands: start {start} is negative")
    total = 0
    for i in range(start, len(work)):
        item = work[i]
        if not (type(item) is tuple and len(item) == 3 and item[0] is False):
            return i, total
        cmd = item[2]
        if not (type(cmd) is tuple and len(cmd) == 6):
            return i, total
        client, seq, _op, key, arg1, arg2 = cmd
        if not (type(client) is int and 1 <= client < 2**63 and type(seq) is int
                and type(key) is bytes and key != reserved_key
                and all(a is None or type(a) is bytes for a in (arg1, arg2))):
            return i, total
        cost = len(key) + len(arg1 or b"") + len(arg2 or b"") + overhead
        if cost > max_cost or len(pending) >= max_pending or (client, seq) in waiting:
            return i, total
        waiting[(client, seq)] = item[1]
        pending.append(cmd)
        total += cost
    return len(work), total


def push_replies(replies, start, conn_type, range_type, not_leader, current, applied_revision):
    if type(replies) is not list or type(conn_type) is not type or type(range_type) is not type:
        raise TypeError("replies: expected list; conn_type, range_type: expected type")
    if start < 0:
        raise ValueError(f"push_replies: start {start} is negative")
    for i in range(start, len(replies)):
        reply = replies[i]
        if not (isinstance(reply, tuple) and len(reply) == 5):
            return i
        req = reply[0]
        if not (type(req) is tuple and len(req) == 2 and type(req[0]) is conn_type):
            return i
        conn, req_id = req
        if conn.closed:
            continue
        status, result, _leader, revision = reply[1:]
        if type(result) is range_type or status == not_leader:
            return i
        conn.replies.append([req_id, status, result, current,
                             applied_revision if revision is None else revision])
        conn.has_replies.set()
    return len(replies)

class KeyRecord:
    """One key's value and what the store knows of it; immutable."""

    __slots__ = ("value", "create_revision", "mod_revision", "version", "lease")

    def __init__(self, value, create_revision, mod_revision, version, lease=0):
        if type(value) is not bytes:
            raise TypeError(f"KeyRecord: value must be bytes, got {type(value).__name__}")
        fields = (value, _ranged(create_revision, 0, _I64_MAX, "create_revision"),
                  _ranged(mod_revision, 0, _I64_MAX, "mod_revision"),
                  _ranged(version, 0, _I64_MAX, "version"), _ranged(lease, 0, _I64_MAX, "lease"))
        for name, field in zip(self.__slots__, fields):
            object.__setattr__(self, name, field)

    def __setattr__(self, name, value):
        raise AttributeError(f"KeyRecord is immutable: cannot set {name}")

    def astuple(self):
        return (self.value, self.create_revision, self.mod_revision, self.version, self.lease)

    def __eq__(self, other):
        if type(other) is not KeyRecord:
            return NotImplemented
        return self.astuple() == other.astuple()

    def __hash__(self):
        return hash(self.astuple())

    def __repr__(self):
        return (f"KeyRecord(value={self.value!r}, create_revision={self.create_revision}, "
                f"mod_revision={self.mod_revision}, version={self.version}, lease={self.lease})")
