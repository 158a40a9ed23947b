# cython: language_level=3
"""The hot, IO-free primitives of paxosd: ballots, quorum tracking, the slot window, framing and
a CBOR codec for the protocol's value subset.

Contracts in brief (each function and class says exactly what it promises):

- A *ballot* is ``(round << 16) | node`` in an unsigned 64-bit integer. Ballots compare as plain
  integers, i.e. by (round, node). ``BALLOT_NONE`` (0) is below every real ballot and
  ``BALLOT_CHOSEN`` (2**64 - 1) above every real ballot; it means "known chosen". Real rounds are
  ``0..MAX_ROUND`` (= 2**48 - 2, so no real ballot equals ``BALLOT_CHOSEN``), nodes ``0..MAX_NODE``.
- Slot numbers and commit indices handed to ``reset`` lie in ``[0, SLOT_LIMIT]`` (2**62): far
  beyond any real log, and small enough that window arithmetic never overflows 64 bits.
- Values out of their documented range raise ``ValueError``; values that are not integers where
  integers are expected raise ``TypeError`` (anything with ``__index__`` counts as an integer).
- A *frame* is a 4-byte big-endian unsigned payload length followed by the payload.
- ``dumps``/``loads`` speak canonical CBOR (RFC 8949, shortest-form heads, definite lengths) for
  the subset None, bool, int in [-2**64, 2**64 - 1], byte strings, text strings, arrays and maps,
  nested at most ``MAX_DEPTH`` (64) containers deep.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_Check, PyByteArray_GET_SIZE
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_Check, PyBytes_CheckExact,
                            PyBytes_FromStringAndSize, PyBytes_GET_SIZE)
from cpython.dict cimport (PyDict_Check, PyDict_DelItem, PyDict_GetItem, PyDict_Next,
                           PyDict_SetItem, PyDict_Size)
from cpython.list cimport (PyList_Check, PyList_CheckExact, PyList_GET_ITEM, PyList_GET_SIZE,
                           PyList_New, PyList_SET_ITEM)
from cpython.long cimport (PyLong_AsLongLongAndOverflow, PyLong_Check, PyLong_CheckExact,
                           PyLong_FromUnsignedLongLong)
from cpython.memoryview cimport PyMemoryView_Check
from cpython.number cimport PyNumber_Index
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport (PyTuple_Check, PyTuple_CheckExact, PyTuple_GET_ITEM, PyTuple_GET_SIZE,
                            PyTuple_New, PyTuple_SET_ITEM)
from cpython.unicode cimport (PyUnicode_AsUTF8AndSize, PyUnicode_Check, PyUnicode_CheckExact,
                              PyUnicode_DecodeUTF8)
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcmp, memcpy, memset

cdef extern from "Python.h":
    int PyObject_GC_IsTracked(object op)
    void PyObject_GC_UnTrack(object op)
    PyObject *PyDict_SetDefault(object mp, object key, object default_value) except NULL


cdef extern from *:
    """
    /* Population count of a 64-bit mask: the compiler builtin where there is one, else SWAR. */
    #if defined(__GNUC__) || defined(__clang__)
    #define fp_popcount64(x) ((int)__builtin_popcountll((unsigned long long)(x)))
    #else
    static inline int fp_popcount64(unsigned long long x) {
        x = x - ((x >> 1) & 0x5555555555555555ULL);
        x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
        x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
        return (int)((x * 0x0101010101010101ULL) >> 56);
    }
    #endif
    """
    int fp_popcount64(uint64_t x) noexcept nogil


# ---------------------------------------------------------------------------------------------
# Constants

# Each limit is defined once, as a C value; the Python name is that value. daemon.codec.wire and
# daemon.core.messages import the Python names, so the wire's ranges are these.

cdef uint64_t C_U64_MAX = 0xFFFFFFFFFFFFFFFFULL
cdef uint64_t C_BALLOT_CHOSEN = C_U64_MAX
cdef uint64_t C_MAX_ROUND = (1ULL << 48) - 2
cdef uint64_t C_MAX_NODE = 0xFFFF
# The highest ballot a proposer can hold: round MAX_ROUND of node MAX_NODE. BALLOT_CHOSEN, above
# it, appears only as the ballot of a Promise entry ("known chosen").
cdef uint64_t C_MAX_BALLOT = (C_MAX_ROUND << 16) | C_MAX_NODE
cdef int64_t C_SLOT_LIMIT = 1LL << 62
cdef int C_MAX_DEPTH = 64
cdef uint64_t C_MAX_FRAME_LENGTH = 0xFFFFFFFFULL  # the largest length a 4-byte header can announce
cdef Py_ssize_t C_BUFFER_KEEP = 1 << 20  # FrameReader keeps an idle buffer up to this size

U64_MAX = C_U64_MAX
BALLOT_NONE = 0
BALLOT_CHOSEN = C_BALLOT_CHOSEN
MAX_ROUND = C_MAX_ROUND
MAX_NODE = C_MAX_NODE
MAX_BALLOT = C_MAX_BALLOT
SLOT_LIMIT = C_SLOT_LIMIT
MAX_DEPTH = C_MAX_DEPTH
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
# The bytes a recorded change of a key counts for in a watch history besides its key and value
# (the tuple, the record and its integers): the apply loop sums the sizes as it records.
cdef Py_ssize_t C_EVENT_OVERHEAD = 64
EVENT_OVERHEAD = C_EVENT_OVERHEAD
MAX_FRAME_LENGTH = C_MAX_FRAME_LENGTH
# The command operations (declared in _fastpath.pxd; daemon.core.messages names them for the
# protocol). OP_READ is no command: it stands for a read in the client op table split_requests
# is given, and never appears in a batch.
OP_READ = C_OP_READ
OP_PUT = C_OP_PUT
OP_DELETE = C_OP_DELETE
OP_CAS = C_OP_CAS


class FrameError(ValueError):
    """Malformed input: a bad frame header or bytes that are not CBOR of the supported subset."""


class FrameTooLarge(FrameError):
    """A frame header announced a payload longer than the reader's ``max_frame``."""


# ---------------------------------------------------------------------------------------------
# Integer argument conversion (one place for the TypeError/ValueError rules)

cdef inline int _to_u64(object v, uint64_t *out) except -1:
    """Store ``v`` in ``*out`` and return 1 if it is an integer in [0, 2**64 - 1]; return 0 if it
    is an integer outside that range; raise TypeError if it is not an integer."""
    if not PyLong_Check(v):
        v = PyNumber_Index(v)
    try:
        out[0] = v
    except OverflowError:
        return 0
    return 1


cdef inline int _to_i64(object v, int64_t *out) except -2:
    """Store ``v`` in ``*out`` and return 0 if it is an integer in the int64 range; return -1 if
    it is an integer below that range, +1 if above; raise TypeError if it is not an integer."""
    if not PyLong_Check(v):
        v = PyNumber_Index(v)
    try:
        out[0] = v
    except OverflowError:
        return -1 if v < 0 else 1
    return 0


cdef inline int64_t _clamped_i64(object v) except? -1:
    """``v`` as an int64, saturated at the int64 bounds (TypeError if not an integer)."""
    cdef int64_t x = 0
    cdef int rc = _to_i64(v, &x)
    if rc < 0:
        return INT64_MIN
    if rc > 0:
        return INT64_MAX
    return x


cdef inline int64_t _ranged(object v, int64_t lo, int64_t hi, str what) except? -1:
    """``v`` as an int64 if it is an integer in [lo, hi]; ValueError naming ``what`` otherwise."""
    cdef int64_t x = 0
    if _to_i64(v, &x) != 0 or x < lo or x > hi:
        raise ValueError(f"{what} {v!r} out of range [{lo}, {hi}]")
    return x


# ---------------------------------------------------------------------------------------------
# Ballots

cdef inline uint64_t _ballot_arg(object b) except? 0:
    """``b`` as a uint64 ballot; ValueError if it is an integer outside [0, 2**64 - 1]."""
    cdef uint64_t x = 0
    if not _to_u64(b, &x):
        raise ValueError(f"ballot {b!r} out of range [0, {BALLOT_CHOSEN}]")
    return x


cdef inline uint64_t _pack(object round, object node) except? 0:
    cdef uint64_t r = 0, n = 0
    if not _to_u64(round, &r) or r > C_MAX_ROUND:
        raise ValueError(f"ballot round {round!r} out of range [0, {MAX_ROUND}]")
    if not _to_u64(node, &n) or n > C_MAX_NODE:
        raise ValueError(f"ballot node {node!r} out of range [0, {MAX_NODE}]")
    return (r << 16) | n


def ballot_pack(round, node):
    """Return the ballot ``(round << 16) | node``.

    ValueError (naming the value and the allowed range) unless 0 <= round <= MAX_ROUND and
    0 <= node <= MAX_NODE.
    """
    return _pack(round, node)


def ballot_round(b):
    """Return the round of ballot ``b`` (``b >> 16``); ValueError unless 0 <= b <= 2**64 - 1."""
    return _ballot_arg(b) >> 16


def ballot_node(b):
    """Return the node of ballot ``b`` (``b & 0xFFFF``); ValueError unless 0 <= b <= 2**64 - 1."""
    return _ballot_arg(b) & 0xFFFF


def ballot_next(seen, node):
    """Return ``ballot_pack(ballot_round(seen) + 1, node)``: the lowest ballot of ``node`` in a
    round above ``seen``'s, hence greater than ``seen``.

    ValueError if ``seen`` is not a ballot, is ``BALLOT_CHOSEN`` (nothing outbids it), or its
    round is already the last one, or ``node`` is out of range.
    """
    cdef uint64_t s = _ballot_arg(seen)
    if s == C_BALLOT_CHOSEN:
        raise ValueError("ballot_next: BALLOT_CHOSEN cannot be outbid")
    return _pack((s >> 16) + 1, node)


# ---------------------------------------------------------------------------------------------
# QuorumTracker

cdef class QuorumTracker:
    """For each slot in ``[commit_index + 1, commit_index + capacity]``, the set (a uint64 mask,
    bit i = member index i) of members that accepted it at the current ``ballot``.

    ``commit_index`` is the end of the contiguous prefix of slots that reached ``quorum`` acks:
    it moves forward in ``record`` as soon as slot ``commit_index + 1`` has a quorum. Acks for
    slots outside the tracked range, or at another ballot, are dropped. The masks live in a C
    ring buffer indexed by ``slot % capacity``.

    ``QuorumTracker(members, quorum, capacity)``: 1 <= members <= 64, 1 <= quorum <= members,
    capacity >= 1 (ValueError otherwise). Starts at ballot BALLOT_NONE, commit_index 0.
    ``members``, ``quorum``, ``capacity``, ``ballot`` and ``commit_index`` are read-only
    attributes.
    """

    def __cinit__(self, members, quorum, capacity):
        cdef int64_t m = _ranged(members, 1, 64, "members")
        cdef int64_t q = _ranged(quorum, 1, m, "quorum")
        cdef int64_t c = _ranged(capacity, 1, INT64_MAX, "capacity")
        if <uint64_t>c > <uint64_t>(<size_t>-1) // sizeof(uint64_t):
            raise MemoryError(f"QuorumTracker capacity {c} is too large")
        self._ring = <uint64_t *>calloc(<size_t>c, sizeof(uint64_t))
        if self._ring == NULL:
            raise MemoryError(f"QuorumTracker: cannot allocate {c} slots")
        self.members = <int>m
        self.quorum = <int>q
        self.capacity = <Py_ssize_t>c
        self.ballot = 0
        self.commit_index = 0

    def __dealloc__(self):
        free(self._ring)
        self._ring = NULL

    def reset(self, ballot, commit_index):
        """Forget every ack; count acks at ``ballot`` for slots from ``commit_index + 1`` on.

        ValueError unless 0 <= ballot <= 2**64 - 1 and 0 <= commit_index <= SLOT_LIMIT.
        """
        cdef uint64_t b = _ballot_arg(ballot)
        cdef int64_t ci = _ranged(commit_index, 0, C_SLOT_LIMIT, "commit_index")
        memset(self._ring, 0, <size_t>self.capacity * sizeof(uint64_t))
        self.ballot = b
        self.commit_index = ci

    def record(self, member, ballot, first_slot, last_slot):
        """Member index ``member`` accepted slots ``first_slot..last_slot`` at ``ballot``.

        ValueError unless 0 <= member < members. If ``ballot`` is not the current ballot the
        call is ignored. Otherwise the member's bit is set for every slot of the range that is
        tracked, then commit_index advances over every leading slot with >= quorum acks.
        Returns the new commit_index if it moved, else -1.
        """
        cdef int64_t m = _ranged(member, 0, self.members - 1, "member")
        cdef uint64_t b = 0
        cdef int ok = _to_u64(ballot, &b)
        cdef int64_t lo = _clamped_i64(first_slot)
        cdef int64_t hi = _clamped_i64(last_slot)
        if not ok:
            return -1
        return self.c_record(<int>m, b, lo, hi)

    cdef int64_t c_record(self, int member, uint64_t ballot, int64_t first_slot,
                          int64_t last_slot) noexcept:
        """``record`` on C values; requires 0 <= member < members."""
        cdef uint64_t *ring = self._ring
        cdef Py_ssize_t cap = self.capacity
        cdef int64_t start = self.commit_index
        cdef int64_t lo, hi, n
        cdef Py_ssize_t idx
        cdef uint64_t bit
        if ballot != self.ballot:
            return -1
        lo = first_slot if first_slot > start + 1 else start + 1
        hi = last_slot if last_slot < start + cap else start + cap
        if lo > hi:
            return -1
        bit = (<uint64_t>1) << member
        idx = <Py_ssize_t>(lo % cap)
        n = hi - lo + 1
        while n > 0:
            ring[idx] |= bit
            idx += 1
            if idx == cap:
                idx = 0
            n -= 1
        # Slide over the leading slots that now have a quorum; each freed cell becomes the
        # (empty) cell of the slot entering the window at its end.
        idx = <Py_ssize_t>((start + 1) % cap)
        while fp_popcount64(ring[idx]) >= self.quorum:
            ring[idx] = 0
            self.commit_index += 1
            idx += 1
            if idx == cap:
                idx = 0
        return self.commit_index if self.commit_index != start else -1

    cdef uint64_t c_acked(self, int64_t slot) noexcept:
        """``acked`` on a C slot number."""
        if slot <= self.commit_index or slot > self.commit_index + self.capacity:
            return 0
        return self._ring[slot % self.capacity]

    def acked(self, slot):
        """The ack mask of ``slot`` if it is tracked (commit_index < slot <= commit_index +
        capacity), else 0."""
        return self.c_acked(_clamped_i64(slot))

    def count(self, slot):
        """The number of members in ``acked(slot)``."""
        return fp_popcount64(self.c_acked(_clamped_i64(slot)))

    def __repr__(self):
        return (f"QuorumTracker(members={self.members}, quorum={self.quorum}, "
                f"capacity={self.capacity}, ballot={self.ballot}, "
                f"commit_index={self.commit_index})")


# ---------------------------------------------------------------------------------------------
# SlotWindow

cdef class SlotWindow:
    """The in-flight slots ``[first_slot, next_slot)`` and the batch proposed for each.

    ``first_slot`` is the first unchosen slot, ``next_slot`` the next one to open; at most
    ``capacity`` slots are open at once. Batches (any objects) are held in a ring (a list of
    ``capacity`` references indexed by ``slot % capacity``) until ``advance`` releases them.

    ``SlotWindow(capacity)``: capacity >= 1 (ValueError otherwise). Starts empty at slot 1.
    ``capacity``, ``first_slot`` and ``next_slot`` are read-only attributes.
    """

    def __cinit__(self, capacity):
        cdef int64_t c = _ranged(capacity, 1, INT64_MAX, "capacity")
        self._ring = [None] * c
        self.capacity = <Py_ssize_t>c
        self.first_slot = 1
        self.next_slot = 1

    @property
    def in_flight(self):
        """``next_slot - first_slot``: the number of open slots."""
        return self.next_slot - self.first_slot

    def reset(self, first_slot):
        """Drop every open slot and batch; both first_slot and next_slot become ``first_slot``.

        ValueError unless 1 <= first_slot <= SLOT_LIMIT.
        """
        cdef int64_t f = _ranged(first_slot, 1, C_SLOT_LIMIT, "first_slot")
        cdef int64_t s
        for s in range(self.first_slot, self.next_slot):
            self._ring[<Py_ssize_t>(s % self.capacity)] = None
        self.first_slot = f
        self.next_slot = f

    def has_room(self):
        """True if another slot may be opened (in_flight < capacity)."""
        return self.next_slot - self.first_slot < self.capacity

    def open(self, batch):
        """Store ``batch`` in slot next_slot, return that slot and move next_slot on by one.

        OverflowError("slot window full: ...") if in_flight == capacity.
        """
        return self.c_open(batch)

    cdef int64_t c_open(self, object batch) except -1:
        """``open``; returns the slot (>= 1)."""
        cdef int64_t slot = self.next_slot
        if slot - self.first_slot >= self.capacity:
            raise OverflowError(
                f"slot window full: {slot - self.first_slot} slots in flight "
                f"[{self.first_slot}, {slot}), capacity {self.capacity}")
        self._ring[<Py_ssize_t>(slot % self.capacity)] = batch
        self.next_slot = slot + 1
        return slot

    def get(self, slot):
        """The batch of open slot ``slot`` (first_slot <= slot < next_slot); KeyError naming the
        slot and the open range otherwise."""
        cdef int64_t s = 0
        if _to_i64(slot, &s) != 0 or s < self.first_slot or s >= self.next_slot:
            raise KeyError(f"slot {slot!r} is not open: open slots are "
                           f"[{self.first_slot}, {self.next_slot})")
        return self._ring[<Py_ssize_t>(s % self.capacity)]

    def advance(self, commit_index):
        """Release the slots ``first_slot..min(commit_index, next_slot - 1)``: return their
        batches in slot order and move first_slot just past them. Returns [] if there are none
        (commit_index < first_slot or nothing open). next_slot never moves."""
        return self.c_advance(_clamped_i64(commit_index))

    cdef list c_advance(self, int64_t commit_index):
        """``advance`` on a C commit index."""
        cdef int64_t upto = commit_index if commit_index < self.next_slot - 1 else self.next_slot - 1
        cdef Py_ssize_t n, i, idx
        cdef list ring = self._ring
        cdef list out
        cdef object item
        if upto < self.first_slot:
            return []
        n = <Py_ssize_t>(upto - self.first_slot + 1)
        out = PyList_New(n)
        idx = <Py_ssize_t>(self.first_slot % self.capacity)
        for i in range(n):
            item = <object>PyList_GET_ITEM(ring, idx)
            Py_INCREF(item)
            PyList_SET_ITEM(out, i, item)
            ring[idx] = None
            idx += 1
            if idx == self.capacity:
                idx = 0
        self.first_slot = upto + 1
        return out

    def __repr__(self):
        return (f"SlotWindow(capacity={self.capacity}, first_slot={self.first_slot}, "
                f"next_slot={self.next_slot})")


# ---------------------------------------------------------------------------------------------
# Growing output buffer

cdef struct _Out:
    unsigned char *data
    Py_ssize_t len
    Py_ssize_t cap


cdef int _resize(unsigned char **buf, Py_ssize_t *size, Py_ssize_t cap, str failure) except -1:
    """Reallocate ``*buf`` to ``cap`` bytes and store ``cap`` in ``*size``; MemoryError saying
    ``failure`` and the size if there is no memory (``*buf`` is then unchanged)."""
    cdef unsigned char *p = <unsigned char *>realloc(buf[0], <size_t>cap)
    if p == NULL:
        raise MemoryError(f"{failure} {cap} bytes")
    buf[0] = p
    size[0] = cap
    return 0


cdef int _out_grow(_Out *o, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need, cap
    if extra > <Py_ssize_t>(<size_t>-1 >> 1) - o.len:
        raise MemoryError("output too large")
    need = o.len + extra
    cap = o.cap * 2 if o.cap < (<Py_ssize_t>(<size_t>-1 >> 2)) else need
    if cap < need:
        cap = need
    if cap < 256:
        cap = 256
    return _resize(&o.data, &o.cap, cap, "cannot grow the output buffer to")


cdef inline int _out_reserve(_Out *o, Py_ssize_t extra) except -1:
    if o.cap - o.len < extra:
        return _out_grow(o, extra)
    return 0


cdef inline int _out_write(_Out *o, const void *src, Py_ssize_t n) except -1:
    _out_reserve(o, n)
    if n > 0:
        memcpy(o.data + o.len, src, <size_t>n)
        o.len += n
    return 0


cdef inline void _be32(unsigned char *p, uint64_t v) noexcept:
    p[0] = <unsigned char>(v >> 24)
    p[1] = <unsigned char>(v >> 16)
    p[2] = <unsigned char>(v >> 8)
    p[3] = <unsigned char>v


cdef inline uint64_t _read_be(const unsigned char *p, int nbytes) noexcept:
    cdef uint64_t v = 0
    cdef int i
    for i in range(nbytes):
        v = (v << 8) | p[i]
    return v


# ---------------------------------------------------------------------------------------------
# CBOR encoding

cdef inline int _put_head(_Out *o, unsigned char major, uint64_t v) except -1:
    """Append the shortest head of major type ``major`` (0..7) with argument ``v``."""
    cdef unsigned char *p
    cdef unsigned char mt = major << 5
    _out_reserve(o, 9)
    p = o.data + o.len
    if v < 24:
        p[0] = mt | <unsigned char>v
        o.len += 1
    elif v <= 0xFF:
        p[0] = mt | 24
        p[1] = <unsigned char>v
        o.len += 2
    elif v <= 0xFFFF:
        p[0] = mt | 25
        p[1] = <unsigned char>(v >> 8)
        p[2] = <unsigned char>v
        o.len += 3
    elif v <= 0xFFFFFFFFULL:
        p[0] = mt | 26
        _be32(p + 1, v)
        o.len += 5
    else:
        p[0] = mt | 27
        _be32(p + 1, v >> 32)
        _be32(p + 5, v & 0xFFFFFFFFULL)
        o.len += 9
    return 0


cdef inline int _put_string(_Out *o, unsigned char major, const void *s, Py_ssize_t n) except -1:
    _put_head(o, major, <uint64_t>n)
    return _out_write(o, s, n)


cdef int _encode_int(_Out *o, object obj) except -1:
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(obj, &overflow)
    cdef uint64_t u = 0
    if overflow == 0:
        if v >= 0:
            return _put_head(o, 0, <uint64_t>v)
        return _put_head(o, 1, <uint64_t>(-1 - v))
    if overflow > 0:
        if _to_u64(obj, &u):
            return _put_head(o, 0, u)
    elif _to_u64(-1 - obj, &u):
        return _put_head(o, 1, u)
    raise ValueError(f"cannot encode int of {obj.bit_length()} bits: "
                     f"outside the CBOR integer range [-2**64, 2**64 - 1]")


cdef int _encode_buffer(_Out *o, object obj) except -1:
    """A byte string holding the bytes of buffer ``obj`` (as ``bytes(obj)`` would)."""
    cdef Py_buffer view
    try:
        PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE)
    except BufferError:  # a non-contiguous view
        obj = obj.tobytes()
        return _put_string(o, 2, PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj))
    try:
        _put_string(o, 2, view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return 0


cdef int _encode_items(_Out *o, object seq, int depth) except -1:
    """An array of the items of list or tuple ``seq``."""
    cdef Py_ssize_t i, n
    cdef object item
    if PyList_Check(seq):
        n = PyList_GET_SIZE(seq)
        _put_head(o, 4, <uint64_t>n)
        for i in range(n):
            if PyList_GET_SIZE(seq) != n:
                raise RuntimeError("list changed size during encoding")
            item = <object>PyList_GET_ITEM(seq, i)
            _encode(o, item, depth)
    else:
        n = PyTuple_GET_SIZE(seq)
        _put_head(o, 4, <uint64_t>n)
        for i in range(n):
            _encode(o, <object>PyTuple_GET_ITEM(seq, i), depth)
    return 0


cdef int _encode(_Out *o, object obj, int depth) except -1:
    """Append the CBOR encoding of ``obj``; ``depth`` = number of enclosing containers."""
    cdef const char *s
    cdef Py_ssize_t n
    cdef type t = type(obj)
    # Exact types first, most frequent first.
    if t is int:
        return _encode_int(o, obj)
    if t is bytes:
        return _put_string(o, 2, PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj))
    if t is str:
        s = PyUnicode_AsUTF8AndSize(obj, &n)
        return _put_string(o, 3, s, n)
    if obj is None:
        return _out_write(o, b"\xf6", 1)
    if obj is True:
        return _out_write(o, b"\xf5", 1)
    if obj is False:
        return _out_write(o, b"\xf4", 1)
    if t is list or t is tuple or t is dict:
        if depth >= C_MAX_DEPTH:
            raise ValueError(f"cannot encode: containers nested deeper than {MAX_DEPTH}")
        if t is dict:
            _put_head(o, 5, <uint64_t>len(<dict>obj))
            for key, value in (<dict>obj).items():
                _encode(o, key, depth + 1)
                _encode(o, value, depth + 1)
            return 0
        return _encode_items(o, obj, depth + 1)
    if t is bytearray:
        return _put_string(o, 2, PyByteArray_AS_STRING(obj), PyByteArray_GET_SIZE(obj))
    if PyMemoryView_Check(obj):
        return _encode_buffer(o, obj)
    # Subclasses of the supported types (IntEnum, StrEnum, namedtuple, OrderedDict, ...).
    if PyLong_Check(obj):
        return _encode_int(o, obj)
    if PyUnicode_Check(obj):
        s = PyUnicode_AsUTF8AndSize(obj, &n)
        return _put_string(o, 3, s, n)
    if PyBytes_Check(obj):
        return _put_string(o, 2, PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj))
    if PyByteArray_Check(obj):
        return _put_string(o, 2, PyByteArray_AS_STRING(obj), PyByteArray_GET_SIZE(obj))
    if PyList_Check(obj) or PyTuple_Check(obj) or PyDict_Check(obj):
        if depth >= C_MAX_DEPTH:
            raise ValueError(f"cannot encode: containers nested deeper than {MAX_DEPTH}")
        if PyDict_Check(obj):
            items = list(dict.items(obj))  # insertion order, as cbor2 (even for OrderedDict)
            _put_head(o, 5, <uint64_t>len(items))
            for key, value in items:
                _encode(o, key, depth + 1)
                _encode(o, value, depth + 1)
            return 0
        return _encode_items(o, tuple(obj), depth + 1)
    raise TypeError(f"cannot encode object of type {t.__name__!r} as CBOR (supported: None, "
                    f"bool, int, bytes, bytearray, memoryview, str, list, tuple, dict)")


def dumps(obj):
    """Return the canonical CBOR encoding of ``obj`` (byte-identical to ``cbor2.dumps``).

    Supported: None, bool, int in [-2**64, 2**64 - 1], bytes/bytearray/memoryview (byte string),
    str (UTF-8 text string), list/tuple (array), dict (map, keys in insertion order), nested at
    most 64 containers deep. TypeError naming the type for anything else; ValueError for an int
    out of range, excessive nesting, or a str that is not encodable as UTF-8 (lone surrogates).
    """
    cdef _Out o
    o.data = NULL
    o.len = 0
    o.cap = 0
    try:
        _encode(&o, obj, 0)
        return PyBytes_FromStringAndSize(<char *>o.data, o.len)
    finally:
        free(o.data)


# ---------------------------------------------------------------------------------------------
# CBOR decoding

cdef struct _In:
    const unsigned char *p
    Py_ssize_t n
    Py_ssize_t pos


cdef object _decode(_In *d, int depth, bint tuples):
    """Decode the item at ``d.pos`` and move past it; ``depth`` = enclosing containers.

    ``tuples``: arrays become tuples and maps are refused (FrameError), as the hot-path
    decoders below want them; else arrays become lists and maps dicts (``loads``).
    """
    cdef Py_ssize_t start = d.pos
    cdef Py_ssize_t rem, i
    cdef unsigned char ib, major, info
    cdef int nb
    cdef uint64_t v
    if start >= d.n:
        raise FrameError(f"truncated input: expected a data item at offset {start}")
    ib = d.p[start]
    major = ib >> 5
    info = ib & 31
    d.pos = start + 1
    if major == 7:
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if 25 <= info <= 27:
            raise FrameError(f"unsupported float (initial byte 0x{ib:02x}) at offset {start}")
        raise FrameError(f"unsupported simple value or break (initial byte 0x{ib:02x}) "
                         f"at offset {start}")
    if info < 24:
        v = info
    elif info <= 27:
        nb = 1 << (info - 24)
        if d.n - d.pos < nb:
            raise FrameError(f"truncated input: head at offset {start} needs {nb} more bytes, "
                             f"{d.n - d.pos} remain")
        v = _read_be(d.p + d.pos, nb)
        d.pos += nb
    else:
        raise FrameError(f"reserved or indefinite-length head (initial byte 0x{ib:02x}) "
                         f"at offset {start}")
    if major == 0:
        return PyLong_FromUnsignedLongLong(v)
    if major == 1:
        if v <= <uint64_t>INT64_MAX:
            return -1 - <int64_t>v
        return -1 - PyLong_FromUnsignedLongLong(v)
    if major == 6:
        raise FrameError(f"unsupported tag {v} at offset {start}")
    rem = d.n - d.pos
    if major == 2 or major == 3:
        if v > <uint64_t>rem:
            raise FrameError(f"truncated input: string of {v} bytes at offset {start}, "
                             f"{rem} bytes remain")
        i = d.pos
        d.pos += <Py_ssize_t>v
        if major == 2:
            return PyBytes_FromStringAndSize(<const char *>(d.p + i), <Py_ssize_t>v)
        try:
            return PyUnicode_DecodeUTF8(<const char *>(d.p + i), <Py_ssize_t>v, "strict")
        except UnicodeDecodeError:
            raise FrameError(f"invalid UTF-8 in the text string at offset {start}") from None
    # Arrays (4) and maps (5).
    if depth >= C_MAX_DEPTH:
        raise FrameError(f"containers nested deeper than {MAX_DEPTH} at offset {start}")
    if major == 4:
        if v > <uint64_t>rem:  # every item takes at least one byte
            raise FrameError(f"truncated input: array of {v} items at offset {start}, "
                             f"{rem} bytes remain")
        return _decode_items(d, <Py_ssize_t>v, depth + 1, tuples)
    if tuples:
        raise FrameError(f"a map at offset {start}, where the hot-path decoders take none")
    if v > <uint64_t>(rem // 2):  # every pair takes at least two bytes
        raise FrameError(f"truncated input: map of {v} pairs at offset {start}, "
                         f"{rem} bytes remain")
    return _decode_pairs(d, <Py_ssize_t>v, depth + 1)


cdef object _decode_items(_In *d, Py_ssize_t n, int depth, bint tuples):
    """The ``n`` items of an array, at ``depth``: a tuple if ``tuples``, else a list."""
    cdef Py_ssize_t i
    cdef object item
    cdef object result = PyTuple_New(n) if tuples else PyList_New(n)
    cdef bint untrack = tuples  # a tuple of nothing the collector tracks: it need not track it
    for i in range(n):
        item = _decode(d, depth, tuples)
        if untrack and PyObject_GC_IsTracked(item):
            untrack = False
        Py_INCREF(item)  # the SET_ITEM macros steal a reference
        if tuples:
            PyTuple_SET_ITEM(result, i, item)
        else:
            PyList_SET_ITEM(result, i, item)
    if untrack:
        # What the collector does to such a tuple at its first pass (it can be in no reference
        # cycle: it is immutable and holds no container), done at once: the commands of a
        # batch, kept in the log, no longer make each young-generation collection walk them.
        PyObject_GC_UnTrack(result)
    return result


cdef dict _decode_pairs(_In *d, Py_ssize_t n, int depth):
    """The ``n`` key/value pairs of a map, at ``depth``, as a dict."""
    cdef Py_ssize_t i, kstart
    cdef object key, item
    cdef dict result = {}
    for i in range(n):
        kstart = d.pos
        key = _decode(d, depth, False)
        if type(key) is list or type(key) is dict:
            raise FrameError(f"unhashable map key ({type(key).__name__}) at offset {kstart}")
        item = _decode(d, depth, False)
        PyDict_SetItem(result, key, item)
    return result


def loads(data):
    """Decode the one CBOR item that is the whole of bytes-like ``data``.

    Arrays decode to lists, maps to dicts, byte strings to bytes, text strings to str.
    FrameError (saying what and at which byte offset) for: truncated input, trailing bytes,
    reserved or indefinite-length heads, tags, floats, simple values other than false/true/null,
    invalid UTF-8, containers nested deeper than 64, lengths or counts larger than the bytes
    that remain (checked before anything is allocated) and array or map keys. Runs in time
    linear in len(data); never raises anything but FrameError for bytes input.
    """
    cdef Py_buffer view
    cdef _In d
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        d.p = <const unsigned char *>view.buf
        d.n = view.len
        d.pos = 0
        result = _decode(&d, 0, False)
        if d.pos != d.n:
            raise FrameError(f"trailing bytes: {d.n - d.pos} bytes after the item "
                             f"at offset {d.pos}")
        return result
    finally:
        PyBuffer_Release(&view)


# ---------------------------------------------------------------------------------------------
# Frames

def encode_frame(payload):
    """Return the 4-byte big-endian length of bytes-like ``payload`` followed by it.

    ValueError if the payload is longer than 2**32 - 1 bytes.
    """
    cdef Py_buffer view
    cdef bytes out
    cdef unsigned char *p
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        if <uint64_t>view.len > C_MAX_FRAME_LENGTH:
            raise ValueError(f"payload of {view.len} bytes is longer than a frame can announce "
                             f"({MAX_FRAME_LENGTH})")
        out = PyBytes_FromStringAndSize(NULL, view.len + 4)
        p = <unsigned char *>PyBytes_AS_STRING(out)
        _be32(p, <uint64_t>view.len)
        if view.len:
            memcpy(p + 4, view.buf, <size_t>view.len)
        return out
    finally:
        PyBuffer_Release(&view)


def encode_frames(objs):
    """Return ``b"".join(encode_frame(dumps(obj)) for obj in objs)``, built in one buffer.

    Raises what ``dumps`` raises, and ValueError for a payload longer than 2**32 - 1 bytes.
    """
    cdef _Out o
    cdef Py_ssize_t at
    cdef uint64_t plen
    o.data = NULL
    o.len = 0
    o.cap = 0
    try:
        for obj in objs:
            _out_reserve(&o, 4)
            at = o.len
            o.len += 4
            _encode(&o, obj, 0)
            plen = <uint64_t>(o.len - at - 4)
            if plen > C_MAX_FRAME_LENGTH:
                raise ValueError(f"payload of {plen} bytes is longer than a frame can announce "
                                 f"({MAX_FRAME_LENGTH})")
            _be32(o.data + at, plen)
        return PyBytes_FromStringAndSize(<char *>o.data, o.len)
    finally:
        free(o.data)


cdef class FrameReader:
    """Splits a byte stream into frame payloads.

    ``feed(data)`` returns the payloads of every frame completed by ``data``, in order, and
    keeps the incomplete tail (``buffered`` bytes). Complete frames are sliced straight out of
    ``data``; only the tail is copied into the internal buffer, which never holds more than one
    partial frame and grows with the bytes actually received, never ahead to an announced length.

    A header announcing more than ``max_frame`` bytes raises FrameTooLarge as soon as the header
    is complete, before any of that body is kept; the payloads completed earlier in the same
    ``feed`` are discarded with it. From then on the reader is poisoned: it holds nothing and
    every ``feed`` raises FrameError.

    ``FrameReader(max_frame=DEFAULT_MAX_FRAME)``: max_frame >= 0 (ValueError otherwise).
    """

    def __cinit__(self, max_frame=DEFAULT_MAX_FRAME):
        cdef uint64_t m = 0
        if not _to_u64(max_frame, &m):
            raise ValueError(f"max_frame {max_frame!r} out of range [0, {BALLOT_CHOSEN}]")
        self._max_frame = m
        self._buf = NULL
        self._len = 0
        self._cap = 0
        self._want = 0
        self._poisoned = False

    def __dealloc__(self):
        free(self._buf)
        self._buf = NULL

    @property
    def buffered(self):
        """Bytes held: the received part of the incomplete frame, header included."""
        return self._len

    @property
    def max_frame(self):
        """The largest payload length accepted."""
        return self._max_frame

    cdef int _hold(self, const unsigned char *data, Py_ssize_t n) except -1:
        """Append ``n`` bytes to the partial frame buffer."""
        cdef Py_ssize_t need = self._len + n
        cdef Py_ssize_t cap
        if n <= 0:
            return 0
        if need > self._cap:
            cap = self._cap * 2
            if cap < need:
                cap = need
            if self._want and need <= self._want < cap:
                cap = self._want
            if cap < 64:
                cap = 64
            _resize(&self._buf, &self._cap, cap, "FrameReader: cannot buffer")
        memcpy(self._buf + self._len, data, <size_t>n)
        self._len = need
        return 0

    cdef int _check(self, uint64_t length) except -1:
        if length > self._max_frame:
            self._poisoned = True
            free(self._buf)
            self._buf = NULL
            self._len = 0
            self._cap = 0
            self._want = 0
            raise FrameTooLarge(f"frame announces {length} bytes, more than the limit of "
                                f"{self._max_frame} bytes")
        return 0

    def feed(self, data):
        """Take bytes-like ``data``; return the list of payloads (bytes) it completes."""
        cdef Py_buffer view
        cdef const unsigned char *p
        cdef Py_ssize_t n, pos = 0, take
        cdef uint64_t length
        cdef list out = []
        if self._poisoned:
            raise FrameError("frame reader is poisoned by an earlier framing error")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            p = <const unsigned char *>view.buf
            n = view.len
            # 1. Complete the partial frame held from earlier feeds.
            if self._len > 0:
                if self._len < 4:
                    take = 4 - self._len
                    if take > n:
                        take = n
                    self._hold(p, take)
                    pos = take
                    if self._len < 4:
                        return out
                    length = _read_be(self._buf, 4)
                    self._check(length)
                    self._want = <Py_ssize_t>(4 + length)
                take = self._want - self._len
                if take > n - pos:
                    take = n - pos
                self._hold(p + pos, take)
                pos += take
                if self._len < self._want:
                    return out
                out.append(PyBytes_FromStringAndSize(<const char *>(self._buf + 4),
                                                     self._want - 4))
                self._len = 0
                self._want = 0
                if self._cap > C_BUFFER_KEEP:
                    free(self._buf)
                    self._buf = NULL
                    self._cap = 0
            # 2. Slice every complete frame straight out of data.
            while n - pos >= 4:
                length = _read_be(p + pos, 4)
                self._check(length)
                if <uint64_t>(n - pos - 4) < length:
                    break
                out.append(PyBytes_FromStringAndSize(<const char *>(p + pos + 4),
                                                     <Py_ssize_t>length))
                pos += 4 + <Py_ssize_t>length
            # 3. Keep the tail (its header, when complete, was checked above).
            if pos < n:
                if n - pos >= 4:
                    self._want = <Py_ssize_t>(4 + _read_be(p + pos, 4))
                self._hold(p + pos, n - pos)
            return out
        finally:
            PyBuffer_Release(&view)

    def __repr__(self):
        return f"FrameReader(max_frame={self._max_frame}, buffered={self._len})"


# ---------------------------------------------------------------------------------------------
# Hot-path helpers: what the daemon does per command, done per batch
#
# Each one takes the common, valid case in C and leaves everything else to the caller's general
# Python code (returning None or the items it did not take), so what is accepted, what is
# refused and every error message stay those of that code (daemon.codec.wire, daemon.core.kv).

cdef inline int _u64_in(object v, uint64_t lo, uint64_t hi, uint64_t *out) except -1:
    """1 if ``v`` is an int (exactly: not a bool) in [lo, hi], storing it in ``*out``; else 0."""
    cdef int overflow = 0
    cdef long long x
    cdef uint64_t u = 0
    if not PyLong_CheckExact(v):
        return 0
    x = PyLong_AsLongLongAndOverflow(v, &overflow)
    if overflow == 0:
        if x < 0:
            return 0
        u = <uint64_t>x
    elif overflow > 0:
        if not _to_u64(v, &u):
            return 0
    else:
        return 0
    if u < lo or u > hi:
        return 0
    out[0] = u
    return 1


cdef inline bint _args_ok(uint64_t op, object arg1, object arg2) noexcept:
    """The arguments operation ``op`` (one of C_OP_*) takes, as _fastpath.pxd declares them."""
    if op == C_OP_PUT:
        return PyBytes_CheckExact(arg1) and arg2 is None
    if op == C_OP_CAS:
        return (arg1 is None or PyBytes_CheckExact(arg1)) and PyBytes_CheckExact(arg2)
    return arg1 is None and arg2 is None  # C_OP_DELETE, C_OP_READ


cdef inline bint _command_ok(object cmd) except -1:
    """``cmd`` is a valid command tuple (daemon.codec.wire._batch's test)."""
    cdef uint64_t u = 0
    if not PyTuple_CheckExact(cmd) or PyTuple_GET_SIZE(cmd) != 6:
        return False
    return (_u64_in(<object>PyTuple_GET_ITEM(cmd, 0), 0, C_U64_MAX, &u)
            and _u64_in(<object>PyTuple_GET_ITEM(cmd, 1), 0, C_U64_MAX, &u)
            and PyBytes_CheckExact(<object>PyTuple_GET_ITEM(cmd, 3))
            and _u64_in(<object>PyTuple_GET_ITEM(cmd, 2), C_OP_PUT, C_OP_CAS, &u)
            and _args_ok(u, <object>PyTuple_GET_ITEM(cmd, 4), <object>PyTuple_GET_ITEM(cmd, 5)))


def decode_accept(payload, members):
    """The fields ``(sender, ballot, commit_index, first_slot, batches, read_round)`` of the
    Accept that the CBOR ``payload`` encodes, when it is one that ``daemon.codec.wire.decode_peer``
    accepts from a sender in ``members``; None for anything else (another message, or any
    fault: the caller then decodes it the general way, which names the fault).

    Batches and commands come as tuples, equal to what ``decode_peer`` returns, built straight
    from the bytes with one C pass over them.
    """
    cdef Py_buffer view
    cdef _In d
    cdef object obj, batches, batch
    cdef uint64_t sender = 0, ballot = 0, first = 0, u = 0
    cdef Py_ssize_t i, j, n
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        d.p = <const unsigned char *>view.buf
        d.n = view.len
        d.pos = 0
        if d.n < 2 or d.p[0] != 0x87 or d.p[1] != 0x04:  # [4, ... 6 more]
            return None
        try:
            obj = _decode(&d, 0, True)
        except FrameError:
            return None
        if d.pos != d.n:
            return None
    finally:
        PyBuffer_Release(&view)
    if not (_u64_in(obj[1], 0, C_U64_MAX, &sender) and obj[1] in members
            and _u64_in(obj[2], 1, C_MAX_BALLOT, &ballot) and (ballot & C_MAX_NODE) == sender
            and _u64_in(obj[3], 0, <uint64_t>C_SLOT_LIMIT, &u)
            and _u64_in(obj[4], 1, <uint64_t>C_SLOT_LIMIT, &first)
            and _u64_in(obj[6], 0, C_U64_MAX, &u)):
        return None
    batches = obj[5]
    if not PyTuple_CheckExact(batches):
        return None
    n = PyTuple_GET_SIZE(batches)
    if first + <uint64_t>n - 1 > <uint64_t>C_SLOT_LIMIT:
        return None
    for i in range(n):
        batch = <object>PyTuple_GET_ITEM(batches, i)
        if not PyTuple_CheckExact(batch):
            return None
        for j in range(PyTuple_GET_SIZE(batch)):
            if not _command_ok(<object>PyTuple_GET_ITEM(batch, j)):
                return None
    return (obj[1], obj[2], obj[3], obj[4], batches, obj[6])


cdef enum:
    _MAX_OP_NAMES = 16  # split_requests' op table


def split_requests(frame, conn, opcodes):
    """Sort a client frame (a list, as ``loads`` returns it) into the requests the server
    takes without further checks and the rest.

    ``opcodes`` (a dict of at most 16 str names, compared in its order) maps each client op
    name taken here to its OP_* code: OP_READ for a read, the command's op for a write
    (daemon.codec.wire.CLIENT_OPCODES); a name mapped to anything else is not taken. ValueError
    for more names, TypeError for None. Returns ``(work,
    rest)``: ``work`` holds, in frame order, ``(True, (conn, req_id), key)`` for each valid read
    and ``(False, (conn, req_id), (client_id, seq, opcodes[op], key, arg1, arg2))`` for each
    valid write (valid as ``daemon.codec.wire.decode_request`` takes them without its slow path);
    ``rest`` holds every other item, for the general code.
    """
    cdef dict table = opcodes
    cdef list work = []
    cdef list rest = []
    cdef list req, names = [], codes = []
    cdef object obj, op, key, name, code, cmd
    cdef uint64_t u = 0
    cdef uint64_t ops[_MAX_OP_NAMES]
    cdef Py_ssize_t k, n = 0
    if table is None:
        raise TypeError("split_requests: opcodes must be a dict, not None")
    # A handful of names, checked once per frame: comparing strings costs less than hashing
    # each request's op, and each code is a C value by then.
    for name, code in table.items():
        if PyUnicode_CheckExact(name) and _u64_in(code, C_OP_READ, C_OP_CAS, &u):
            if n == _MAX_OP_NAMES:
                raise ValueError(f"split_requests: more than {_MAX_OP_NAMES} op names")
            names.append(name)
            codes.append(code)
            ops[n] = u
            n += 1
    for obj in frame:
        if PyList_CheckExact(obj) and PyList_GET_SIZE(obj) == 7:
            req = <list>obj
            op = req[1]
            key = req[4]
            if (_u64_in(req[0], 0, C_U64_MAX, &u) and _u64_in(req[2], 0, C_U64_MAX, &u)
                    and _u64_in(req[3], 0, C_U64_MAX, &u) and PyBytes_CheckExact(key)
                    and PyUnicode_CheckExact(op)):
                for k in range(n):
                    if <unicode>PyList_GET_ITEM(names, k) == <unicode>op:
                        break
                else:
                    k = -1
                if k >= 0 and _args_ok(ops[k], req[5], req[6]):
                    if ops[k] == C_OP_READ:
                        work.append((True, (conn, req[0]), key))
                    else:
                        cmd = (req[2], req[3], <object>PyList_GET_ITEM(codes, k), key, req[5],
                               req[6])
                        if not (PyObject_GC_IsTracked(req[5]) or PyObject_GC_IsTracked(req[6])):
                            PyObject_GC_UnTrack(cmd)  # as in _decode_items: kept in the log
                        work.append((False, (conn, req[0]), cmd))
                    continue
        rest.append(obj)
    return work, rest


# ---------------------------------------------------------------------------------------------
# The key-value store's records and its per-batch apply loop


# Not tracked by the garbage collector: a record holds only bytes and integers, so it can be in
# no reference cycle, and a store of a million records would otherwise make every full
# collection walk them all. A freelist: every overwrite frees one record and makes another.
@cython.no_gc
@cython.freelist(4096)
cdef class KeyRecord:
    """One key's value and what the store knows of it (see daemon.core.kv): ``value`` (bytes),
    ``create_revision``, ``mod_revision``, ``version`` and ``lease`` (0: none), all integers in
    ``[0, 2**63)``. Immutable: a write replaces the record. Records compare equal when every
    field does; ``astuple()`` gives the fields in that order.
    """

    def __init__(self, value, create_revision, mod_revision, version, lease=0):
        if not PyBytes_CheckExact(value):
            raise TypeError(f"KeyRecord: value must be bytes, got {type(value).__name__}")
        self.value = value
        self.create_revision = _ranged(create_revision, 0, INT64_MAX, "create_revision")
        self.mod_revision = _ranged(mod_revision, 0, INT64_MAX, "mod_revision")
        self.version = _ranged(version, 0, INT64_MAX, "version")
        self.lease = _ranged(lease, 0, INT64_MAX, "lease")

    def astuple(self):
        """``(value, create_revision, mod_revision, version, lease)``."""
        return (self.value, self.create_revision, self.mod_revision, self.version, self.lease)

    def __eq__(self, other):
        if type(other) is not KeyRecord:
            return NotImplemented
        return self.astuple() == (<KeyRecord>other).astuple()

    def __hash__(self):
        return hash(self.astuple())

    def __repr__(self):
        return (f"KeyRecord(value={self.value!r}, create_revision={self.create_revision}, "
                f"mod_revision={self.mod_revision}, version={self.version}, lease={self.lease})")


cdef inline KeyRecord _new_record(object value, int64_t create_revision, int64_t mod_revision,
                                  int64_t version, int64_t lease):
    cdef KeyRecord r = KeyRecord.__new__(KeyRecord)
    r.value = value
    r.create_revision = create_revision
    r.mod_revision = mod_revision
    r.version = version
    r.lease = lease
    return r


cdef inline KeyRecord _write(dict data, list touched, object key, object value, PyObject *found,
                             int64_t revision):
    """Put ``value`` at ``key`` as of ``revision`` (``found``: its record, or NULL, and not
    attached to a lease); a created key is appended to ``touched``. Returns the new record."""
    cdef KeyRecord old, record
    if found != NULL:
        old = <KeyRecord>found
        record = _new_record(value, old.create_revision, revision, old.version + 1, 0)
    else:
        record = _new_record(value, revision, revision, 1, 0)
        touched.append(key)
    data[key] = record
    return record


def apply_commands(kv, batch, results, op_put, op_delete, op_cas, ok, stale, expired):
    """``kv.apply(cmd)`` for every command of ``batch``, in order, as one C loop over the
    store's state (the dicts ``kv.data`` (key -> KeyRecord) and ``kv.sessions``, the list
    ``kv.touched``, and ``kv.max_sessions``, ``kv.touched_slack``, ``kv.applied_commands``,
    ``kv.evicted_at``: see daemon.core.kv.KVStore, whose ``apply`` this follows step for step).
    If ``results`` is a list, each command's ``(status, result, revision)`` is appended to it;
    if ``kv.events`` is a list, each change of a key ``(revision, key, record or None (deleted),
    previous record or None)``, adding its size (key, value, EVENT_OVERHEAD) to
    ``kv.event_bytes``. A command on a key attached to a lease, and any op but put,
    delete and cas, goes to ``kv.apply_other`` (the store's Python path, which keeps the leases).
    ``op_put``, ``op_delete`` and ``op_cas`` are the OP_* codes; ``ok``, ``stale`` and
    ``expired`` the reply statuses to record (daemon.core.messages).
    """
    cdef dict data = kv.data
    cdef dict sessions = kv.sessions
    cdef list touched = kv.touched
    cdef Py_ssize_t max_sessions = kv.max_sessions
    cdef Py_ssize_t touched_limit = PyDict_Size(data) + <Py_ssize_t>kv.touched_slack
    cdef Py_ssize_t applied = 0, pos
    cdef object evicted_at = kv.evicted_at
    cdef int64_t base = kv.applied_commands
    cdef bint want = results is not None
    cdef bint drop_index = False
    cdef list out = results if want else None
    cdef object events = kv.events
    cdef bint record_events = events is not None
    cdef KeyRecord record
    cdef object prev
    cdef Py_ssize_t event_bytes = 0
    cdef PyObject *found
    cdef PyObject *first_key
    cdef PyObject *first_value
    cdef object cmd, client_id, seq, op, key, arg1, arg2, session, last_seq, result, current
    cdef object revision
    try:
        for cmd in batch:
            client_id, seq, op, key, arg1, arg2 = cmd
            found = PyDict_GetItem(sessions, client_id)
            if found != NULL:
                session = <object>found
                last_seq = session[0]
                if seq == last_seq:
                    if want:
                        out.append((session[1], session[2], session[3]))
                    continue
                if seq < last_seq:
                    if want:
                        out.append((stale, None, base + applied))
                    continue
                PyDict_DelItem(sessions, client_id)  # re-inserted below, at the most recent end
            elif seq <= evicted_at:
                if want:
                    out.append((expired, evicted_at, base + applied))
                continue
            revision = base + applied + 1  # this command's (one int object for all its uses)
            found = PyDict_GetItem(data, key)
            if found != NULL and (<KeyRecord>found).lease != 0:
                op = None  # a leased key: the Python path below detaches it from its lease
            if op == op_put:
                # The previous record, held before the write drops the store's reference.
                prev = (<object>found if found != NULL else None) if record_events else None
                record = _write(data, touched, key, arg1, found, base + applied + 1)
                if record_events:
                    events.append((revision, key, record, prev))
                    event_bytes += PyBytes_GET_SIZE(key) + PyBytes_GET_SIZE(arg1) + C_EVENT_OVERHEAD
                result = None
            elif op == op_cas:
                current = (<KeyRecord>found).value if found != NULL else None
                result = current == arg1
                if result:
                    prev = (<object>found if found != NULL else None) if record_events else None
                    record = _write(data, touched, key, arg2, found, base + applied + 1)
                    if record_events:
                        events.append((revision, key, record, prev))
                        event_bytes += (PyBytes_GET_SIZE(key) + PyBytes_GET_SIZE(arg2)
                                        + C_EVENT_OVERHEAD)
            elif op == op_delete:
                result = found != NULL
                if result:
                    if record_events:
                        events.append((revision, key, None, <object>found))
                        event_bytes += PyBytes_GET_SIZE(key) + C_EVENT_OVERHEAD
                    PyDict_DelItem(data, key)
                    touched.append(key)
            else:  # a transaction, a leased key (or an unknown op): the store's Python path
                if drop_index:  # its ranges must not use an index the loop gave up
                    kv.index = None
                    drop_index = False
                kv.applied_commands = base + applied
                result = kv.apply_other(cmd, revision)
            applied += 1
            sessions[client_id] = (seq, ok, result, revision)
            if PyDict_Size(sessions) > max_sessions:
                pos = 0
                PyDict_Next(sessions, &pos, &first_key, &first_value)
                PyDict_DelItem(sessions, <object>first_key)
                evicted_at = revision
            if PyList_GET_SIZE(touched) > touched_limit:
                del touched[:]  # cheaper to sort the keys again than to replay this many
                drop_index = True
            if want:
                out.append((ok, result, revision))
    finally:
        kv.applied_commands = base + applied
        kv.evicted_at = evicted_at
        if event_bytes:
            kv.event_bytes += event_bytes
        if drop_index:
            kv.index = None


def answer_waiting(tuple batch not None, list outcomes not None, dict waiting not None,
                   list replies not None, type reply_type not None):
    """The leader's replies to one applied batch, as one C loop: for each command of ``batch``
    (``outcomes[i]``: the ``(status, result, revision)`` apply_commands gave command ``i``) whose
    ``(client id, seq)`` is a key of ``waiting``, pop its request and append
    ``reply_type(req, status, result, None, revision)`` to ``replies``. Stops looking once
    ``waiting`` is empty. ``reply_type``: a tuple subclass of those five fields whose
    constructor only packs them (daemon.core.messages.Reply, a NamedTuple); it is built as
    ``tuple.__new__`` would, without the Python-level ``__new__``. ValueError if ``outcomes``
    and ``batch`` differ in length (nothing is popped then).
    """
    cdef Py_ssize_t i, n = PyTuple_GET_SIZE(batch)
    cdef object cmd, req, outcome
    if PyList_GET_SIZE(outcomes) != n:
        raise ValueError(f"answer_waiting: {PyList_GET_SIZE(outcomes)} outcomes for a batch "
                         f"of {n} commands")
    new = tuple.__new__
    for i in range(n):
        if not waiting:
            break
        cmd = <object>PyTuple_GET_ITEM(batch, i)
        req = waiting.pop((cmd[0], cmd[1]), None)
        if req is not None:
            outcome = <object>PyList_GET_ITEM(outcomes, i)
            replies.append(new(reply_type, (req, outcome[0], outcome[1], None, outcome[2])))


cdef inline bint _bytes_or_none(object v) noexcept:
    return v is None or PyBytes_CheckExact(v)


def take_commands(list work not None, Py_ssize_t start, dict waiting not None,
                  list pending not None, Py_ssize_t max_pending, Py_ssize_t max_cost,
                  Py_ssize_t overhead, bytes reserved_key not None):
    """Take the plain writes of a client work list (``ClientPort``'s ``(is_read, tag, cmd)``
    items) from index ``start`` on into the leader's queue, as one C loop, and stop at the
    first item it leaves to ``Node.submit`` / ``Node.read``.

    An item is taken when it is a write (``is_read`` is False) whose ``cmd`` is a tuple of 6
    with a client id in [1, 2**63 - 1], an int seq, a bytes key other than ``reserved_key``,
    arguments bytes or None, a cost (``len(key) + len(arg1 or b"") + len(arg2 or b"") +
    overhead``, daemon.core.messages.command_cost) of at most ``max_cost``, while ``pending``
    holds fewer than ``max_pending`` commands and ``(client id, seq)`` is not a key of
    ``waiting``: then ``waiting[(client id, seq)] = tag`` and ``cmd`` is appended to
    ``pending``, exactly what ``Node.submit`` does for it. Anything else (a read, a retry, a
    reserved id or key, a full queue, an oversized or odd command) stops the loop untouched.

    Returns ``(index, cost)``: the index of the item it stopped at (``len(work)`` when it took
    them all) and the summed cost of what it took (the caller adds it to ``pending_bytes``).
    """
    cdef Py_ssize_t i, n = PyList_GET_SIZE(work), size
    cdef Py_ssize_t cost, total = 0
    cdef Py_ssize_t reserved_len = PyBytes_GET_SIZE(reserved_key)
    cdef object item, cmd, key, arg1, arg2, ident
    cdef uint64_t u = 0
    if start < 0:
        raise ValueError(f"take_commands: start {start} is negative")
    for i in range(start, n):
        item = <object>PyList_GET_ITEM(work, i)
        if not (PyTuple_CheckExact(item) and PyTuple_GET_SIZE(item) == 3
                and <object>PyTuple_GET_ITEM(item, 0) is False):
            return i, total
        cmd = <object>PyTuple_GET_ITEM(item, 2)
        if not (PyTuple_CheckExact(cmd) and PyTuple_GET_SIZE(cmd) == 6):
            return i, total
        key = <object>PyTuple_GET_ITEM(cmd, 3)
        arg1 = <object>PyTuple_GET_ITEM(cmd, 4)
        arg2 = <object>PyTuple_GET_ITEM(cmd, 5)
        if not (_u64_in(<object>PyTuple_GET_ITEM(cmd, 0), 1, 0x7FFFFFFFFFFFFFFFULL, &u)
                and PyLong_CheckExact(<object>PyTuple_GET_ITEM(cmd, 1))
                and PyBytes_CheckExact(key) and _bytes_or_none(arg1) and _bytes_or_none(arg2)):
            return i, total
        if (PyBytes_GET_SIZE(key) == reserved_len
                and memcmp(PyBytes_AS_STRING(key), PyBytes_AS_STRING(reserved_key),
                           reserved_len) == 0):
            return i, total
        cost = PyBytes_GET_SIZE(key) + overhead
        if arg1 is not None:
            cost += PyBytes_GET_SIZE(arg1)
        if arg2 is not None:
            cost += PyBytes_GET_SIZE(arg2)
        if cost > max_cost or PyList_GET_SIZE(pending) >= max_pending:
            return i, total
        ident = (<object>PyTuple_GET_ITEM(cmd, 0), <object>PyTuple_GET_ITEM(cmd, 1))
        PyObject_GC_UnTrack(ident)  # two ints: in no cycle, and kept until the reply
        size = PyDict_Size(waiting)
        PyDict_SetDefault(waiting, ident, <object>PyTuple_GET_ITEM(item, 1))
        if PyDict_Size(waiting) == size:  # already waiting: a retry, Node.submit's case
            return i, total
        pending.append(cmd)
        total += cost
    return n, total


def push_replies(list replies not None, Py_ssize_t start, type conn_type not None,
                 type range_type not None, not_leader, current, applied_revision):
    """Queue the leader's replies (``Reply`` tuples) from index ``start`` on, as one C loop, as
    daemon.runtime.clients.queue_replies does one by one, and stop at the first it leaves
    to that code.

    A reply ``(req, status, result, leader, revision)`` whose ``req`` is ``(conn, req_id)``
    with ``conn`` exactly a ``conn_type`` (ClientConnection) is dropped when ``conn.closed``;
    else, unless ``status`` equals ``not_leader`` or ``result`` is a ``range_type``, the list
    ``[req_id, status, result, current, revision]`` (``applied_revision`` for a None
    revision) is appended to ``conn.replies``; ``conn.has_replies.set()`` is called once per
    run of replies appended to one connection, after them. Returns the index it stopped
    at (``len(replies)`` when it queued them all).
    """
    cdef Py_ssize_t i, n = PyList_GET_SIZE(replies), stop = PyList_GET_SIZE(replies)
    cdef object reply, req, conn, status, result, revision, last = None, queue = None
    cdef bint closed = False, queued = False
    if start < 0:
        raise ValueError(f"push_replies: start {start} is negative")
    try:
        for i in range(start, n):
            reply = <object>PyList_GET_ITEM(replies, i)
            if not (PyTuple_Check(reply) and PyTuple_GET_SIZE(reply) == 5):
                stop = i
                break
            req = <object>PyTuple_GET_ITEM(reply, 0)
            if not (PyTuple_CheckExact(req) and PyTuple_GET_SIZE(req) == 2):
                stop = i
                break
            conn = <object>PyTuple_GET_ITEM(req, 0)
            if type(conn) is not conn_type:
                stop = i
                break
            if conn is not last:
                if queued:
                    last.has_replies.set()
                    queued = False
                last = conn
                closed = conn.closed
                queue = None if closed else conn.replies
            if closed:
                continue
            status = <object>PyTuple_GET_ITEM(reply, 1)
            result = <object>PyTuple_GET_ITEM(reply, 2)
            if type(result) is range_type or status == not_leader:
                stop = i
                break
            revision = <object>PyTuple_GET_ITEM(reply, 4)
            queue.append([<object>PyTuple_GET_ITEM(req, 1), status, result, current,
                          applied_revision if revision is None else revision])
            queued = True
    finally:
        if queued:
            last.has_replies.set()
    return stop
