# cython: language_level=3
"""C-level declarations of the fastpath primitives (see _fastpath.pyx for the contracts).

Other Cython modules may ``cimport`` these classes and call their ``c_*`` methods directly,
skipping argument conversion; the Python-visible methods are thin wrappers around them.
"""

from libc.stdint cimport int64_t, uint64_t


# The operation codes of a command (client_id, seq, op, key, arg1, arg2), declared here once:
# fastpath exports them as OP_*, and daemon.core.messages takes them from there.
cdef enum:
    C_OP_READ = 0     # not a command: a read's entry in the client op table (split_requests)
    C_OP_PUT = 1      # arg1: the value (bytes), arg2: null
    C_OP_DELETE = 2   # arg1, arg2: null
    C_OP_CAS = 3      # arg1: the expected value (bytes, or null for "absent"), arg2: the new one


cdef class KeyRecord:
    """One key's value and what the store knows of it; immutable (a write makes a new one)."""

    cdef readonly object value            # bytes
    cdef readonly int64_t create_revision # the revision that created the key (since its delete)
    cdef readonly int64_t mod_revision    # the revision of its latest write
    cdef readonly int64_t version         # writes since it was created: 1 after the create
    cdef readonly int64_t lease           # the lease it is attached to; 0: none


cdef class QuorumTracker:
    """Per in-flight slot, the bit mask of members that accepted it at the current ballot."""

    cdef uint64_t *_ring        # calloc'd, capacity cells; slot s lives at s % capacity
    cdef readonly Py_ssize_t capacity   # slots tracked beyond commit_index
    cdef readonly int members           # acceptors, 1..64
    cdef readonly int quorum            # acks a slot needs to count as chosen, 1..members
    cdef readonly uint64_t ballot       # the ballot whose acks are counted
    cdef readonly int64_t commit_index  # every slot <= it reached a quorum (or preceded reset)

    cdef int64_t c_record(self, int member, uint64_t ballot, int64_t first_slot,
                          int64_t last_slot) noexcept
    cdef uint64_t c_acked(self, int64_t slot) noexcept


cdef class SlotWindow:
    """The ring of in-flight slots [first_slot, next_slot) and their batches."""

    cdef list _ring             # capacity object references; slot s lives at s % capacity
    cdef readonly Py_ssize_t capacity   # the most slots in flight at once
    cdef readonly int64_t first_slot    # the first unchosen slot
    cdef readonly int64_t next_slot     # the slot the next open uses

    cdef int64_t c_open(self, object batch) except -1
    cdef list c_advance(self, int64_t commit_index)


cdef class FrameReader:
    """Incremental splitter of a byte stream into length-prefixed frame payloads."""

    cdef unsigned char *_buf    # the partial frame received so far (header included)
    cdef Py_ssize_t _len        # bytes held in _buf
    cdef Py_ssize_t _cap        # bytes allocated for _buf
    cdef uint64_t _max_frame    # largest accepted payload length
    cdef Py_ssize_t _want       # 4 + payload length of the partial frame once its header is in
    cdef bint _poisoned         # set by a framing error: every later feed fails

    cdef int _hold(self, const unsigned char *data, Py_ssize_t n) except -1
    cdef int _check(self, uint64_t length) except -1
