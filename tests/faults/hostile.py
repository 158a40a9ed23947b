"""What a node does with bytes from a socket, as one function the fuzzers drive.

``feed_stream(chunks)`` takes what a peer or client connection could deliver, in the pieces it
arrives in, and runs it through everything a node runs it through before the core sees it:
``fastpath.FrameReader`` (the length checked against the limit), then each decoder that may see
the payload: ``wire.check_hello`` (the first frame of a peer connection), the peer decoder of
the transport (``wire.decode_peer_payload``: an Accept straight from its bytes in C, anything
else through ``loads`` and ``wire.decode_peer``) and the client path of the server
(``fastpath.split_requests``, then ``wire.decode_request`` for the rest).

The documented errors are ``fastpath.FrameError`` (FrameTooLarge included) from framing and
CBOR, and ``wire.WireError`` (HelloError and BadRequest included) from validation; anything
else escaping is a bug. Each decoder is tried on its own, so one that raises does not hide
another that would crash. Where a fast path stands beside a general one, they must agree: the
same message or the same kind of error (an AssertionError says where they differ).
"""

from __future__ import annotations

import fastpath
from fastpath import BALLOT_CHOSEN, MAX_ROUND, FrameError, FrameReader, dumps, encode_frame, loads

from daemon.codec import wire
from daemon.core.messages import OP_CAS, OP_DELETE, OP_PUT

__all__ = ["DOCUMENTED", "MEMBERS", "SEEDS", "feed_stream", "seed_frames"]

MEMBERS = frozenset({1, 2, 3})
DOCUMENTED = (FrameError, wire.WireError)
MAX_FRAME = 1 << 16

_B1 = (3 << 16) | 1
_B2 = (4 << 16) | 2
_PUT = [7, 1, 1, b"k", b"v", None]
_CAS = [8, 1, 3, b"k", None, b"w"]
_BATCH = [_PUT, _CAS, [7, 2, 2, b"k", None, None]]

# Valid CBOR values of every kind a socket may carry, written as plain arrays (not through the
# message classes) so they stay valid seeds as the message set grows.
SEEDS = [
    ["paxosd", wire.PROTOCOL_VERSION, "faults", 2],  # a hello
    [1, 1, _B1, 1],  # Prepare
    [2, 2, _B1, 4, [[3, BALLOT_CHOSEN, _BATCH], [6, _B2, [_PUT]]], 0],  # Promise
    [2, 2, _B1, 0, [], (1 << 64) - 1],  # Promise: a new incarnation, nothing accepted
    [3, 3, _B1, _B2, 17],  # Reject
    [4, 1, _B1, 12, 13, [_BATCH, [], [_CAS]], 5],  # Accept
    [4, 1, _B1, 0, 1, [], 0],  # Accept: a heartbeat
    [4, 1, MAX_ROUND << 16 | 1, 1 << 62, 1 << 62, [[[(1 << 64) - 1, 0, 1, b"", b"", None]]],
     (1 << 64) - 1],  # Accept: values at their limits
    [5, 2, _B1, 13, 15, 5, 12, 0],  # Accepted
    [5, 3, _B1, 16, 15, 0, 0, 99],  # Accepted: a learner's heartbeat answer
    [6, 3, 7, 0, 0],  # CatchupRequest
    [7, 1, 5, [_BATCH, []], 9],  # Catchup
    [8, 1, 120, 0, 100, b"\x83" * 100],  # SnapshotChunk
    [10, 2, (1 << 63) - 1],  # Probe
    [11, 3, 12345, False],  # ProbeReply
    [[1, "put", 7, 1, b"k", b"v", None], [2, "get", 0, 0, b"k", None, None],
     [3, "cas", 7, 2, b"k", b"v", b"w"], [4, "status", 0, 0, b"", None, None],
     [5, "member_add", 4, 0, b"127.0.0.1:7104", b"127.0.0.1:7004", None],
     [6, "member_remove", 1, 0, b"", None, None], [7, "transfer", 2, 0, b"", None, None]],
    # the client frame last
]


def seed_frames() -> list[bytes]:
    """Each seed as a complete frame."""
    return [encode_frame(dumps(seed)) for seed in SEEDS]


def decode_all(payload: bytes) -> int:
    """Run one frame payload through every decoder; how many accepted it."""
    accepted = 0
    for decode in (_hello, _peer, _requests):
        try:
            decode(payload)
            accepted += 1
        except DOCUMENTED:
            pass
    return accepted


def feed_stream(chunks, max_frame: int = MAX_FRAME) -> int:
    """Feed ``chunks`` to a FrameReader and decode every payload; the number of payloads.

    Raises only the DOCUMENTED errors (the reader is poisoned after a framing error, as the
    connection would be closed)."""
    reader = FrameReader(max_frame)
    frames = 0
    for chunk in chunks:
        for payload in reader.feed(chunk):
            frames += 1
            try:
                decode_all(payload)
            except FrameError:
                pass  # a bad payload closes the connection; keep going to test the reader
    return frames


def _hello(payload: bytes) -> None:
    wire.check_hello(loads(payload), "faults", MEMBERS, 1)


def _outcome(decode, *args):
    try:
        return "ok", decode(*args)
    except FrameError:
        return "error", FrameError
    except wire.WireError:
        return "error", wire.WireError


def _peer(payload: bytes) -> None:
    general = _outcome(lambda: wire.decode_peer(loads(payload), MEMBERS))
    fast_decoder = getattr(wire, "decode_peer_payload", None)
    if fast_decoder is not None:
        fast = _outcome(fast_decoder, payload, MEMBERS)
        assert fast == general, f"decode_peer_payload {fast} != decode_peer {general}"
    if general[0] == "error":
        raise wire.WireError("refused") if general[1] is wire.WireError else FrameError("bad")
    msg = general[1]
    assert msg.sender in MEMBERS, msg


_OPCODES = {"put": OP_PUT, "delete": OP_DELETE, "cas": OP_CAS}  # as daemon.runtime.clients has them
_CONN = object()


def _requests(payload: bytes) -> None:
    obj = loads(payload)
    if type(obj) is not list:
        raise wire.WireError("client frame: expected an array of requests")
    expected = []  # what the general path makes of the plain requests
    for item in obj:
        try:
            req = wire.decode_request(item)
        except wire.BadRequest as exc:
            assert type(exc.req_id) is int
            continue
        except wire.WireError:
            continue  # the server closes the connection
        assert req.op in wire.CLIENT_OPS, req
        if req.op == "get":
            expected.append((True, (_CONN, req.req_id), req.key))
        elif req.op in _OPCODES:
            expected.append((False, (_CONN, req.req_id), (req.client_id, req.seq,
                                                          _OPCODES[req.op], req.key, req.arg1,
                                                          req.arg2)))
    split = getattr(fastpath, "split_requests", None)
    if split is None:
        return
    work, rest = split(obj, _CONN, _OPCODES)
    for item in rest:  # what the fast pass left goes the general way, as in the server
        try:
            req = wire.decode_request(item)
        except wire.WireError:
            continue
        if req.op == "get":
            work.append((True, (_CONN, req.req_id), req.key))
        elif req.op in _OPCODES:
            work.append((False, (_CONN, req.req_id), (req.client_id, req.seq, _OPCODES[req.op],
                                                      req.key, req.arg1, req.arg2)))
    key = lambda w: repr(w[1][1]) + repr(w)  # noqa: E731 - order within a frame is free
    assert sorted(work, key=key) == sorted(expected, key=key), (work, expected)
