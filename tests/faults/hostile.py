"""What a node does with bytes from a socket, as one function the fuzzers drive.

``feed_stream(chunks)`` takes what a peer or client connection could deliver, in the pieces it
arrives in, and runs it through everything a node runs it through before the core sees it:
``fastpath.FrameReader`` (the length checked against the limit), ``fastpath.loads``, then each
decoder that may see the payload: ``wire.check_hello`` (the first frame of a peer connection),
``wire.decode_peer`` (the others) and ``wire.decode_request`` (each request of a client frame).

The documented errors are ``fastpath.FrameError`` (FrameTooLarge included) from framing and
CBOR, and ``wire.WireError`` (HelloError and BadRequest included) from validation; anything
else escaping is a bug. Each decoder is tried on its own, so one that raises does not hide
another that would crash.
"""

from __future__ import annotations

from fastpath import BALLOT_CHOSEN, FrameError, FrameReader, dumps, encode_frame, loads

from daemon import wire

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
    ["paxosd", 1, "faults", 2],  # a hello
    [1, 1, _B1, 1],  # Prepare
    [2, 2, _B1, 4, [[3, BALLOT_CHOSEN, _BATCH], [6, _B2, [_PUT]]]],  # Promise
    [3, 3, _B1, _B2, 17],  # Reject
    [4, 1, _B1, 12, 13, [_BATCH, [], [_CAS]], 5],  # Accept
    [5, 2, _B1, 13, 15, 5],  # Accepted
    [6, 3, 7, 0, 0],  # CatchupRequest
    [7, 1, 5, [_BATCH, []], 9],  # Catchup
    [8, 1, 120, 0, 100, b"\x83" * 100],  # SnapshotChunk
    [[1, "put", 7, 1, b"k", b"v", None], [2, "get", 0, 0, b"k", None, None],
     [3, "cas", 7, 2, b"k", b"v", b"w"], [4, "status", 0, 0, b"", None, None]],  # client frame
]


def seed_frames() -> list[bytes]:
    """Each seed as a complete frame."""
    return [encode_frame(dumps(seed)) for seed in SEEDS]


def decode_all(payload: bytes) -> int:
    """Run one frame payload through loads and every decoder; how many accepted it."""
    obj = loads(payload)  # FrameError is documented
    accepted = 0
    for decode in (_hello, _peer, _requests):
        try:
            decode(obj)
            accepted += 1
        except wire.WireError:
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


def _hello(obj) -> None:
    wire.check_hello(obj, "faults", MEMBERS, 1)


def _peer(obj) -> None:
    msg = wire.decode_peer(obj, MEMBERS)
    assert msg.sender in MEMBERS, msg


def _requests(obj) -> None:
    if type(obj) is not list:
        raise wire.WireError("client frame: expected an array of requests")
    for item in obj:
        try:
            req = wire.decode_request(item)
        except wire.BadRequest as exc:
            assert type(exc.req_id) is int
            continue
        assert req.op in wire.CLIENT_OPS, req
