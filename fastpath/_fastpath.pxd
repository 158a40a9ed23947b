# cython: language_level=3
"""C-level declarations of the fastpath primitives (see _fastpath.pyx for the contracts).

Other Cython modules may ``cimport`` these classes and call their ``c_*`` methods directly,
skipping argument conversion; the Python-visible methods are thin wrappers around them.
"""

from libc.stdint cimport int64_t, uint64_t


cdef class QuorumTracker:
    """Per in-flight slot, the bit mask of members that accepted it at the current ballot."""

    cdef uint64_t *_ring        # calloc'd, _capacity cells; slot s lives at s % _capacity
    cdef Py_ssize_t _capacity
    cdef int _members           # 1..64
    cdef int _quorum            # 1.._members
    cdef uint64_t _ballot       # the ballot whose acks are counted
    cdef int64_t _commit        # highest slot known to have a quorum (contiguously)

    cdef int64_t c_record(self, int member, uint64_t ballot, int64_t first_slot,
                          int64_t last_slot) noexcept
    cdef uint64_t c_acked(self, int64_t slot) noexcept


cdef class SlotWindow:
    """The ring of in-flight slots [first_slot, next_slot) and their batches."""

    cdef list _ring             # _capacity object references; slot s lives at s % _capacity
    cdef Py_ssize_t _capacity
    cdef int64_t _first         # first unchosen slot
    cdef int64_t _next          # next slot to open

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
