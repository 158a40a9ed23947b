"""Hostile input: fuzzed frames through the decoders, garbage and floods against a running node.

The decoder tests are hypothesis properties over tests.faults.hostile.feed_stream (the long
run is tests/faults/fuzz_long.py). The node tests start a real 3-node cluster and, against one
node, send garbage to the peer and client ports and open 1,000 connections that each announce
a 2 GiB frame; the node must stay small (VmRSS from /proc) and keep serving.
"""

from __future__ import annotations

import random
from collections import Counter

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpath import dumps, encode_frame

from daemon.codec import wire
from daemon.client.client import Client
from tests.faults.cluster import ProcessCluster
from tests.faults.hostile import DOCUMENTED, SEEDS, feed_stream, seed_frames

FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

cbor_leaves = (st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1)
               | st.binary(max_size=16) | st.text(max_size=8))
cbor_values = st.recursive(
    cbor_leaves,
    lambda children: st.lists(children, max_size=8)
    | st.dictionaries(st.integers(0, 9) | st.text(max_size=3), children, max_size=4),
    max_leaves=30)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return out


def only_documented_errors(chunks) -> None:
    try:
        feed_stream(chunks)
    except DOCUMENTED:
        pass


@FUZZ
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=8))
def test_random_bytes_in_any_pieces_raise_only_documented_errors(data, cuts):
    only_documented_errors(chunked(data, cuts))


@FUZZ
@given(st.lists(st.binary(max_size=80), max_size=6), st.lists(st.integers(0, 600), max_size=8))
def test_well_framed_random_payloads_raise_only_documented_errors(payloads, cuts):
    only_documented_errors(chunked(b"".join(encode_frame(p) for p in payloads), cuts))


@FUZZ
@given(st.lists(cbor_values, min_size=1, max_size=4), st.lists(st.integers(0, 600), max_size=4))
def test_random_cbor_values_raise_only_documented_errors(values, cuts):
    only_documented_errors(chunked(b"".join(encode_frame(dumps(v)) for v in values), cuts))


@FUZZ
@given(st.sampled_from(range(len(SEEDS))), st.data())
def test_mutated_valid_frames_raise_only_documented_errors(index, data):
    """Flip, insert, delete or overwrite bytes of a valid frame (its length prefix included)."""
    frame = bytearray(seed_frames()[index])
    for _ in range(data.draw(st.integers(1, 4))):
        how = data.draw(st.sampled_from(["flip", "insert", "delete", "set"]))
        at = data.draw(st.integers(0, max(0, len(frame) - 1)))
        if how == "flip" and frame:
            frame[at] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "insert":
            frame[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif how == "delete" and frame:
            del frame[at]
        elif frame:
            frame[at] = data.draw(st.integers(0, 255))
    cuts = data.draw(st.lists(st.integers(0, len(frame)), max_size=4))
    only_documented_errors(chunked(bytes(frame), cuts))


edge_ints = st.sampled_from([0, 1, 2, 3, 4, 9, 0xFFFF, 0x10000, (3 << 16) | 1, (3 << 16) | 2,
                             (1 << 48) - 1, 1 << 62, (1 << 62) + 1, 1 << 63, (1 << 64) - 1,
                             -1, -(1 << 64)]) | st.integers(0, 1 << 20)
odd_values = st.booleans() | st.none() | st.binary(max_size=3) | st.text(max_size=2) | st.just([])
near = edge_ints | odd_values
near_bytes = st.binary(max_size=4) | near
command = st.one_of(
    st.tuples(edge_ints, edge_ints, st.sampled_from([1, 2, 3]) | near, near_bytes,
              st.none() | near_bytes, st.none() | near_bytes).map(list),
    st.lists(near, max_size=8))
accept_like = st.tuples(
    st.just(4) | near, st.sampled_from([1, 2, 3]) | near, edge_ints | near, edge_ints,
    edge_ints, st.lists(st.lists(command, max_size=3) | near, max_size=3), edge_ints | near,
).map(list) | st.lists(near, max_size=9).map(lambda xs: [4, *xs])


@FUZZ
@given(accept_like)
def test_near_valid_accepts_decode_the_same_on_the_fast_and_the_general_path(obj):
    """The transport decodes Accepts from their bytes in C (when fastpath has that); on every
    near-valid Accept it must give what the general decoder gives, message or error."""
    from tests.faults.hostile import _peer

    try:
        _peer(dumps(obj))
    except DOCUMENTED:
        pass


requests_like = st.lists(st.one_of(
    st.tuples(edge_ints | near, st.sampled_from(["put", "get", "delete", "cas", "status",
                                                  "transfer", "nope"]) | near,
              edge_ints | near, edge_ints | near, near_bytes, st.none() | near_bytes,
              st.none() | near_bytes).map(list),
    st.lists(near, max_size=8)), max_size=6)


@FUZZ
@given(requests_like)
def test_near_valid_client_frames_split_the_same_as_the_general_path(frame):
    from tests.faults.hostile import _requests

    try:
        _requests(dumps(frame))
    except DOCUMENTED:
        pass


def test_the_seeds_are_accepted_by_the_decoder_they_are_for():
    from tests.faults.hostile import _hello, _peer, _requests

    hello, *peer, client = [frame[4:] for frame in seed_frames()]
    _hello(hello)
    for payload in peer:
        _peer(payload)
    _requests(client)
    assert all(feed_stream([frame]) == 1 for frame in seed_frames())


# ------------------------------------------------------------------------------ a running node

RSS_LIMIT_KB = 200 * 1024
FLOOD = 1000
FLOOD_WAVE = 250  # connections open at once (the test's and the node's descriptors are bounded)
TEST_TIMEOUT = 120


def vm_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


async def _probe(port: int, data: bytes, hold: trio.Event | None = None,
                 seconds: float = 30.0, stop_on_answer: bool = False,
                 until_closed: bool = False) -> str:
    """Connect, send ``data`` and watch until the node closes, ``hold`` is set, ``seconds``
    pass or (``stop_on_answer``) bytes come back. "refused", "reset", "closed", "answered"
    (bytes came back), "answered+closed" or "open"."""
    outcome = "open"
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return "refused"
    try:
        await stream.send_all(data)
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                async def read() -> None:
                    nonlocal outcome
                    while True:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            outcome = "closed" if outcome == "open" else "answered+closed"
                            break
                        outcome = "answered"
                        if stop_on_answer:
                            break
                    nursery.cancel_scope.cancel()

                nursery.start_soon(read)
                if hold is not None:
                    await hold.wait()
                    if not until_closed:  # else: wait on for the close, up to ``seconds``
                        nursery.cancel_scope.cancel()
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        outcome = "reset"
    finally:
        await trio.aclose_forcefully(stream)
    return outcome


async def _flood(port: int, data: bytes, pid: int, samples: list,
                 until_closed: bool = False) -> list:
    """FLOOD connections that each send ``data``, FLOOD_WAVE at a time; the node's RSS is
    sampled while they are open. What became of each connection. With ``until_closed`` each
    connection waits (bounded) for the node to hang up, however loaded the machine is."""
    outcomes: list = []

    async def one(hold: trio.Event) -> None:
        outcomes.append(await _probe(port, data, hold, seconds=20.0, until_closed=until_closed))

    for start in range(0, FLOOD, FLOOD_WAVE):
        hold = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(min(FLOOD_WAVE, FLOOD - start)):
                nursery.start_soon(one, hold)
            for _ in range(6):
                await trio.sleep(0.05)
                samples.append(vm_rss_kb(pid))
            hold.set()
    return outcomes


async def _write_succeeds(cluster: ProcessCluster, key: bytes) -> bool:
    async with Client(cluster.endpoints, timeout=10.0) as client:
        await client.put(key, b"after")
        return await client.get(key) == b"after"


def _garbage(rng: random.Random) -> list[bytes]:
    """Kinds of nonsense a port scanner, a confused client or an attacker might send."""
    return [
        rng.randbytes(4096),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00\x00\x00\x05\xff\xff\xff\xff\xff",  # a frame whose payload is not CBOR
        encode_frame(dumps({"not": "an array"})),
        encode_frame(dumps(["paxosd", 99, "faults", 2])),  # another protocol version
        encode_frame(dumps(["paxosd", wire.PROTOCOL_VERSION, "faults", 2])) + rng.randbytes(512),  # hello + junk
        encode_frame(dumps([[1, "put", -1, 1, b"k", b"v", None]])),
        encode_frame(dumps([4, 2, 1, 0, 1, [[[1, 1, 1, b"k", 5, None]]], 0])),
        encode_frame(b"\x9f" * 100),  # indefinite-length arrays, nested
        encode_frame(b"\x81" * 5000),  # nesting beyond the limit
    ]


def test_a_node_survives_garbage_and_a_flood_of_2_gib_frame_claims(tmp_path):
    cluster = ProcessCluster(tmp_path, 3, proxy=False)
    rng = random.Random(5)
    results: dict = {}

    async def scenario():
        with trio.fail_after(TEST_TIMEOUT):
            cluster.start_all()
            leader = await cluster.wait_for_leader()
            assert leader is not None
            pid = cluster.pid(leader)
            results["rss_start_kb"] = vm_rss_kb(pid)
            peer, client = cluster.peer_port[leader], cluster.client_port[leader]
            # The peer port hangs up on all of it (a bad hello is answered first, so that the
            # other side can log why); the client port hangs up or answers "error".
            for port, allowed in ((peer, {"closed", "reset", "answered+closed"}),
                                  (client, {"closed", "reset", "answered", "answered+closed"})):
                for data in _garbage(rng):
                    outcome = await _probe(port, data, seconds=5.0, stop_on_answer=port == client)
                    assert outcome in allowed, (port == peer, data[:40], outcome)
            assert await _write_succeeds(cluster, b"after-garbage")
            samples: list = []
            claim = b"\x80\x00\x00\x00"  # a frame of 2 GiB
            for port in (client, peer):
                outcomes = await _flood(port, claim + rng.randbytes(1024), pid, samples,
                                        until_closed=True)
                assert len(outcomes) == FLOOD
                assert set(outcomes) <= {"closed", "reset"}, Counter(outcomes)
            results["rss_max_kb"] = max(samples)
            # Just under the limit: the node buffers only what arrives, not what is announced.
            near = cluster.max_frame_bytes.to_bytes(4, "big")
            samples = []
            await _flood(client, near + rng.randbytes(16 * 1024), pid, samples)
            results["rss_max_near_limit_kb"] = max(samples)
            assert await _write_succeeds(cluster, b"after-flood")
            results["rss_end_kb"] = vm_rss_kb(pid)
            # The flooded node still answers, and the cluster has a leader it agrees on (which
            # node leads may have changed under the load: that is allowed).
            assert await cluster.status(leader) is not None
            assert await cluster.wait_for_leader() is not None

    try:
        trio.run(scenario)
    finally:
        cluster.close()
    print(f"node RSS: {results}")
    assert results["rss_max_kb"] < RSS_LIMIT_KB, results
    assert results["rss_max_near_limit_kb"] < RSS_LIMIT_KB, results
    for i in cluster.ids:
        assert "Traceback" not in cluster.log_text(i), cluster.log_text(i)[-3000:]
    assert not cluster.unexpected_exits()
