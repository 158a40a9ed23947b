"""The per-batch helpers of the hot path (fastpath.decode_accept, split_requests,
apply_commands) against the general code they stand in for: the same results on valid input,
and nothing taken that the general code would refuse (which then names the fault, as before)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastpath
from fastpath import ballot_pack, dumps, loads

from daemon.codec import wire
from daemon.core.kv import KVStore
from daemon.core.messages import OK, OP_CAS, OP_DELETE, OP_PUT, SESSION_EXPIRED, STALE, Accept
from daemon.codec.wire import CLIENT_OPCODES as _OPCODES
from tests import twins

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MEMBERS = frozenset({1, 2, 3})
U64 = 2**64 - 1

ints = st.one_of(st.integers(0, 40), st.sampled_from([0, 1, 2, 3, 4, U64, U64 - 1, -1, 2**62,
                                                      2**62 + 1, 2**63, ballot_pack(3, 1),
                                                      ballot_pack(2**48 - 2, 1)]),
                 st.integers(-(2**64), 2**64 - 1))
scalars = st.one_of(ints, st.binary(max_size=6), st.sampled_from(["put", "get", "x"]),
                    st.none(), st.booleans())
commands = st.one_of(
    st.tuples(st.integers(0, U64), st.integers(0, U64), st.just(OP_PUT), st.binary(max_size=8),
              st.binary(max_size=8), st.none()),
    st.tuples(st.integers(0, U64), st.integers(0, U64), st.just(OP_DELETE),
              st.binary(max_size=8), st.none(), st.none()),
    st.tuples(st.integers(0, U64), st.integers(0, U64), st.just(OP_CAS), st.binary(max_size=8),
              st.one_of(st.none(), st.binary(max_size=8)), st.binary(max_size=8)),
    st.lists(scalars, max_size=7).map(tuple),
)
batches = st.lists(st.lists(commands, max_size=4).map(tuple), max_size=4).map(tuple)


def accept_obj(draw):
    return [4, draw(st.one_of(st.sampled_from([1, 2, 3]), scalars)),
            draw(st.one_of(st.sampled_from([ballot_pack(3, 1), ballot_pack(3, 2)]), scalars)),
            draw(st.one_of(st.integers(0, 50), scalars)), draw(st.one_of(st.integers(1, 50), scalars)),
            draw(st.one_of(batches, scalars)), draw(st.one_of(st.integers(0, 9), scalars))]


@st.composite
def accept_payloads(draw):
    obj = accept_obj(draw)
    if draw(st.booleans()):  # a well-formed Accept more often than not
        obj = [4, 1, ballot_pack(3, 1), draw(st.integers(0, 50)), draw(st.integers(1, 50)),
               draw(batches), draw(st.integers(0, U64))]
    cut = draw(st.integers(0, 8))
    if cut == 1:
        obj = obj[:draw(st.integers(0, 6))]
    elif cut == 2:
        obj = obj + [0]
    payload = dumps(obj)
    if cut == 3 and payload:  # damage one byte, or cut the end, or add to it
        i = draw(st.integers(0, len(payload) - 1))
        payload = payload[:i] + bytes([draw(st.integers(0, 255))]) + payload[i + 1:]
    elif cut == 4:
        payload = payload[:draw(st.integers(0, len(payload)))]
    elif cut == 5:
        payload = payload + b"\x00"
    return payload


@SETTINGS
@given(accept_payloads())
def test_decode_accept_takes_exactly_the_accepts_decode_peer_takes(payload):
    fast = fastpath.decode_accept(payload, MEMBERS)
    assert fast == twins.decode_accept(payload, MEMBERS)
    # And the decoder the transport uses gives the same message, or fails the same way.
    try:
        expected = ("ok", wire.decode_peer(loads(payload), MEMBERS))
    except (fastpath.FrameError, wire.WireError) as exc:
        expected = ("raise", type(exc), str(exc))
    try:
        got = ("ok", wire.decode_peer_payload(payload, MEMBERS))
    except (fastpath.FrameError, wire.WireError) as exc:
        got = ("raise", type(exc), str(exc))
    assert got == expected


def test_decode_accept_examples():
    batch = ((7, 1, OP_PUT, b"k", b"v", None), (7, 2, OP_DELETE, b"k", None, None),
             (8, 1, OP_CAS, b"k", None, b"w"))
    for msg in (Accept(1, ballot_pack(3, 1), 0, 1, (), 0),
                Accept(2, ballot_pack(2**48 - 2, 2), 2**62, 2**62 - 1, (batch, ()), U64)):
        payload = dumps(wire.encode_peer(msg))
        assert wire.decode_peer_payload(payload, MEMBERS) == msg
        assert fastpath.decode_accept(payload, MEMBERS) is not None
    # Past the last slot, from a stranger, a ballot of another node: the general path says why.
    for obj, words in (([4, 1, ballot_pack(3, 1), 0, 2**62, [[], []], 0], "run past"),
                       ([4, 9, ballot_pack(3, 9), 0, 1, [], 0], "Accept.sender"),
                       ([4, 1, ballot_pack(3, 2), 0, 1, [], 0], "Accept.ballot"),
                       ([4, 1, ballot_pack(3, 1), 0, 1, [[[1, 1, 1, b"k", None, None]]], 0],
                        "arg1")):
        assert fastpath.decode_accept(dumps(obj), MEMBERS) is None
        with pytest.raises(wire.WireError, match=words):
            wire.decode_peer_payload(dumps(obj), MEMBERS)
    # Not an Accept at all: decoded the general way.
    accepted = dumps([5, 2, ballot_pack(3, 1), 1, 1, 0, 0, 0])
    assert fastpath.decode_accept(accepted, MEMBERS) is None
    assert wire.decode_peer_payload(accepted, MEMBERS) == wire.decode_peer(loads(accepted), MEMBERS)


requests = st.lists(st.one_of(
    st.tuples(ints, st.sampled_from(["put", "get", "delete", "cas", "status", "transfer", "x"]),
              ints, ints, st.one_of(st.binary(max_size=4), scalars),
              st.one_of(st.none(), st.binary(max_size=4), scalars),
              st.one_of(st.none(), st.binary(max_size=4), scalars)).map(list),
    st.lists(scalars, max_size=8),
    scalars,
), max_size=12)


@SETTINGS
@given(requests)
def test_split_requests_matches_decode_request(frame):
    frame = loads(dumps(frame))  # as the server gets it
    conn = object()
    assert fastpath.split_requests(frame, conn, _OPCODES) == twins.split_requests(frame, conn, _OPCODES)


def test_split_requests_takes_op_names_and_codes_only_from_its_table():
    put = [7, "put", 1, 1, b"k", b"v", None]
    get = [8, "get", 0, 0, b"k", None, None]
    conn = object()
    # A name the table lacks, or maps to no op code, goes to the general path.
    assert fastpath.split_requests([put, get], conn, {"put": fastpath.OP_PUT}) == (
        [(False, (conn, 7), (1, 1, fastpath.OP_PUT, b"k", b"v", None))], [get])
    assert fastpath.split_requests([put], conn, {"put": "1"}) == ([], [put])
    assert fastpath.split_requests([put], conn, {"put": 4}) == ([], [put])
    # Arguments are checked by the code the name maps to.
    assert fastpath.split_requests([put], conn, {"put": fastpath.OP_DELETE}) == ([], [put])
    assert fastpath.split_requests([get], conn, {"get": fastpath.OP_READ}) == (
        [(True, (conn, 8), b"k")], [])
    with pytest.raises(ValueError, match="op names"):
        fastpath.split_requests([], conn, {f"op{i}": fastpath.OP_PUT for i in range(17)})
    with pytest.raises(TypeError):
        fastpath.split_requests([], conn, None)


def kv_state(kv):
    return (dict(kv.data), list(kv.sessions.items()), kv.applied_commands, kv.evicted_at)


@SETTINGS
@given(st.data())
def test_apply_commands_matches_kv_apply(data):
    max_sessions = data.draw(st.integers(1, 4))
    clients = st.integers(1, 6)
    cmd = st.one_of(
        st.tuples(clients, st.integers(0, 5), st.just(OP_PUT), st.sampled_from([b"a", b"b"]),
                  st.binary(max_size=2), st.none()),
        st.tuples(clients, st.integers(0, 5), st.just(OP_DELETE), st.sampled_from([b"a", b"b"]),
                  st.none(), st.none()),
        st.tuples(clients, st.integers(0, 5), st.just(OP_CAS), st.sampled_from([b"a", b"b"]),
                  st.one_of(st.none(), st.binary(max_size=2)), st.binary(max_size=2)),
    )
    fast, slow = KVStore(max_sessions), KVStore(max_sessions)
    if data.draw(st.booleans()):  # a node serving watches: every change recorded
        fast.events, slow.events = [], []
    for batch in data.draw(st.lists(st.lists(cmd, max_size=8).map(tuple), max_size=6)):
        want = data.draw(st.booleans())
        a, b = ([], []) if want else (None, None)
        fastpath.apply_commands(fast, batch, a, OP_PUT, OP_DELETE, OP_CAS, OK, STALE, SESSION_EXPIRED)
        twins.apply_commands(slow, batch, b, OP_PUT, OP_DELETE, OP_CAS, OK, STALE, SESSION_EXPIRED)
        assert a == b
        assert kv_state(fast) == kv_state(slow)
        assert fast.events == slow.events
        assert fast.event_bytes == slow.event_bytes


def test_apply_commands_unknown_op_fails_as_kv_apply_does():
    fast, slow = KVStore(), KVStore()
    batch = ((1, 1, OP_PUT, b"k", b"v", None), (1, 2, 9, b"k", None, None))
    errors = []
    for kv, fn in ((fast, fastpath.apply_commands), (slow, twins.apply_commands)):
        with pytest.raises(ValueError) as info:
            fn(kv, batch, None, OP_PUT, OP_DELETE, OP_CAS, OK, STALE, SESSION_EXPIRED)
        errors.append(str(info.value))
    assert errors[0] == errors[1] and "unknown op 9" in errors[0]
    assert kv_state(fast) == kv_state(slow)


def test_apply_batch_of_a_large_random_log_matches_apply():
    rng = random.Random(7)
    fast, slow = KVStore(50), KVStore(50)
    seqs = {}
    for _ in range(200):
        batch = []
        for _ in range(rng.randrange(0, 50)):
            client = rng.randrange(80)
            seqs[client] = seqs.get(client, 0) + rng.choice([1, 1, 1, 0, -1])
            op = rng.choice([OP_PUT, OP_PUT, OP_DELETE, OP_CAS])
            key = b"k%d" % rng.randrange(20)
            if op == OP_PUT:
                batch.append((client, seqs[client], op, key, b"v%d" % rng.randrange(5), None))
            elif op == OP_DELETE:
                batch.append((client, seqs[client], op, key, None, None))
            else:
                batch.append((client, seqs[client], op, key,
                              rng.choice([None, b"v1", b"v2"]), b"v%d" % rng.randrange(5)))
        a, b = [], []
        fast.apply_batch(tuple(batch), a)
        for cmd in batch:
            b.append(slow.apply(cmd))
        assert a == b
    assert kv_state(fast) == kv_state(slow)


def _answer(fn, batch, outcomes, waiting, reply_type):
    """What ``fn`` (answer_waiting or its twin) does: its outcome, the replies, what waits on."""
    replies = []
    try:
        fn(batch, outcomes, waiting, replies, reply_type)
        result = "ok"
    except (TypeError, ValueError) as exc:
        result = type(exc).__name__
    return result, [(type(r), tuple(r)) for r in replies], waiting


@SETTINGS
@given(st.data())
def test_answer_waiting_matches_its_twin(data):
    from daemon.core.messages import Reply

    keys = st.tuples(st.integers(0, 3), st.integers(0, 3))
    batch = tuple((c, s, OP_PUT, b"k", b"v", None) for c, s in data.draw(st.lists(keys, max_size=12)))
    outcomes = [data.draw(st.tuples(st.sampled_from([OK, STALE, SESSION_EXPIRED]),
                                    st.one_of(st.none(), st.booleans(), st.integers(0, 9)),
                                    st.integers(0, 2**63)))
                for _ in batch]
    if data.draw(st.booleans()) and outcomes:  # a length mismatch: refused, nothing popped
        outcomes = outcomes[:-1] if data.draw(st.booleans()) else outcomes + outcomes[:1]
    waiting = {k: ("conn", i) for i, k in enumerate(data.draw(st.lists(keys, max_size=12)))}
    fast = _answer(fastpath.answer_waiting, batch, outcomes, dict(waiting), Reply)
    slow = _answer(twins.answer_waiting, batch, outcomes, dict(waiting), Reply)
    assert fast == slow
    if fast[0] == "ok":  # and what the leader's Python loop (daemon.core.node) answered
        expected, left = [], dict(waiting)
        for cmd, (status, result, revision) in zip(batch, outcomes):
            req = left.pop((cmd[0], cmd[1]), None)
            if req is not None:
                expected.append((Reply, (req, status, result, None, revision)))
        assert fast[1:] == (expected, left)


def test_answer_waiting_refuses_wrong_types():
    from daemon.core.messages import Reply

    for args in ([(1, 1, OP_PUT, b"k", b"v", None)], [(OK, None, 1)], {}, [], Reply), \
                ((), (), {}, [], Reply), ((), [], [], [], Reply), ((), [], {}, None, Reply), \
                ((), [], {}, [], None):
        for fn in (fastpath.answer_waiting, twins.answer_waiting):
            with pytest.raises(TypeError):
                fn(*args)


def test_decoded_commands_are_not_tracked_by_the_collector():
    """Command and batch tuples hold only ints, bytes and None: the decoders hand them out
    untracked (as the collector would leave them after its first pass), so the log of a loaded
    node does not make every young-generation collection walk its commands."""
    import gc

    batch = ((1, 1, OP_PUT, b"k", b"v", None), (2, 5, OP_CAS, b"k", None, b"w"),
             (3, 9, OP_DELETE, b"k", None, None))
    payload = dumps(wire.encode_peer(Accept(1, ballot_pack(2, 1), 0, 7, (batch, ()), 0)))
    fields = fastpath.decode_accept(payload, MEMBERS)
    assert fields[4] == (batch, ())
    assert not gc.is_tracked(fields[4]) and not gc.is_tracked(fields[4][0])
    assert not any(gc.is_tracked(cmd) for cmd in fields[4][0])
    frame = [[5, "put", 1, 2, b"k", b"v", None], [6, "delete", 1, 3, b"k", None, None]]
    work, rest = fastpath.split_requests(frame, "conn", _OPCODES)
    assert rest == [] and [w[2][:2] for w in work] == [(1, 2), (1, 3)]
    assert not any(gc.is_tracked(w[2]) for w in work)
    assert all(gc.is_tracked(w[1]) for w in work)  # (connection, request id): a connection
    assert gc.is_tracked(loads(dumps([1, [2]])))  # loads' lists stay as they were
