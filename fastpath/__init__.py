"""fastpath: the hot, IO-free primitives of paxosd, compiled with Cython.

Public surface (see fastpath/_fastpath.pyx for the contracts):

- ballots: ``ballot_pack``, ``ballot_round``, ``ballot_node``, ``ballot_next``,
  ``BALLOT_NONE``, ``BALLOT_CHOSEN``, ``MAX_ROUND``, ``MAX_NODE``, ``MAX_BALLOT``
- limits, defined here once and used by the wire codec: ``U64_MAX``, ``SLOT_LIMIT``,
  ``MAX_DEPTH``, ``MAX_FRAME_LENGTH``, ``DEFAULT_MAX_FRAME``
- command operation codes: ``OP_PUT``, ``OP_DELETE``, ``OP_CAS`` (and ``OP_READ``, a read's
  entry in a client op table; never in a batch)
- ``QuorumTracker``: per in-flight slot, the acceptors that accepted at the current ballot
- ``SlotWindow``: the ring of in-flight slots and their batches
- frame codec: ``encode_frame``, ``encode_frames``, ``FrameReader``, ``dumps``, ``loads``,
  ``FrameError``, ``FrameTooLarge``
- per-batch loops for the daemon's hot path: ``decode_accept`` (an Accept's fields straight
  from its bytes), ``split_requests`` (a client frame's plain requests), ``apply_commands`` (a
  batch applied to the key-value store), ``answer_waiting`` (the leader's replies to
  an applied batch), ``take_commands`` (a client work list's writes into the leader's queue),
  ``push_replies`` (the leader's replies onto their connections), and ``KeyRecord``, the store's record of one key

There is no pure-Python fallback: a missing extension is a build error, said loudly.
"""

try:
    from fastpath._fastpath import (
        BALLOT_CHOSEN,
        BALLOT_NONE,
        DEFAULT_MAX_FRAME,
        EVENT_OVERHEAD,
        MAX_BALLOT,
        MAX_DEPTH,
        MAX_FRAME_LENGTH,
        MAX_NODE,
        MAX_ROUND,
        OP_CAS,
        OP_DELETE,
        OP_PUT,
        OP_READ,
        SLOT_LIMIT,
        U64_MAX,
        FrameError,
        FrameReader,
        FrameTooLarge,
        KeyRecord,
        QuorumTracker,
        SlotWindow,
        answer_waiting,
        apply_commands,
        ballot_next,
        ballot_node,
        ballot_pack,
        ballot_round,
        decode_accept,
        dumps,
        encode_frame,
        encode_frames,
        loads,
        push_replies,
        split_requests,
        take_commands,
    )
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "fastpath: the compiled extension fastpath._fastpath is missing or broken "
        f"({exc}). Build it with `pip install .` (or `pip install -e .` for development) "
        "from the paxosd source tree; there is no pure-Python fallback."
    ) from exc

__all__ = [
    "BALLOT_CHOSEN",
    "BALLOT_NONE",
    "DEFAULT_MAX_FRAME",
    "EVENT_OVERHEAD",
    "MAX_BALLOT",
    "MAX_DEPTH",
    "MAX_FRAME_LENGTH",
    "MAX_NODE",
    "MAX_ROUND",
    "OP_CAS",
    "OP_DELETE",
    "OP_PUT",
    "OP_READ",
    "SLOT_LIMIT",
    "U64_MAX",
    "FrameError",
    "FrameReader",
    "FrameTooLarge",
    "KeyRecord",
    "QuorumTracker",
    "SlotWindow",
    "answer_waiting",
    "apply_commands",
    "ballot_next",
    "ballot_node",
    "ballot_pack",
    "ballot_round",
    "decode_accept",
    "dumps",
    "encode_frame",
    "encode_frames",
    "loads",
    "push_replies",
    "split_requests",
    "take_commands",
]
