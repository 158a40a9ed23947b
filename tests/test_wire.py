"""The wire codec: every peer message survives CBOR, and nothing invalid reaches the core."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastpath
from fastpath import BALLOT_CHOSEN, ballot_pack

from daemon.codec import wire
from daemon.core.messages import (
    OP_CAS,
    OP_DELETE,
    OP_PUT,
    OP_TXN,
    PEER_MESSAGES,
    Accept,
    Accepted,
    Catchup,
    CatchupRequest,
    Prepare,
    Probe,
    ProbeReply,
    Promise,
    Reject,
    SnapshotChunk,
    TimeoutNow,
)
from daemon.codec.wire import WireError, decode_peer, decode_request, encode_peer

MEMBERS = {1, 2, 3}
B1 = ballot_pack(3, 1)  # round 3 of node 1
B2 = ballot_pack(4, 2)

PUT = (7, 1, OP_PUT, b"k", b"v", None)
DELETE = (7, 2, OP_DELETE, b"k", None, None)
CAS = (8, 1, OP_CAS, b"k", b"v", b"w")
CAS_ABSENT = (9, 1, OP_CAS, b"x", None, b"y")
BATCH = (PUT, DELETE, CAS, CAS_ABSENT)

EXAMPLES = [
    Prepare(1, B1, 1),
    Promise(2, B1, 4, ()),
    Promise(2, B1, 4, (), 77),
    Promise(2, B1, 4, ((3, BALLOT_CHOSEN, BATCH), (4, BALLOT_CHOSEN, ()), (6, B2, (PUT,)))),
    Reject(3, B1, B2, 17),
    Reject(3, B1, 0, 0),
    Accept(1, B1, 0, 1, (), 0),
    Accept(1, B1, 12, 13, (BATCH, (), (CAS,)), 5),
    Accepted(2, B1, 13, 15, 5),
    Accepted(2, B1, 13, 15, 5, 12, 0x1234_5678_9ABC),
    Accepted(2, B1, 16, 15, 0),  # a heartbeat's empty run
    CatchupRequest(3, 1),
    CatchupRequest(3, 7, 120, 4096),
    Catchup(1, 5, (BATCH, ()), 9),
    SnapshotChunk(1, 120, 4096, 10000, b"\x83" * 100),
    TimeoutNow(1, B1),
    Probe(2, 0x7FFF_FFFF_FFFF_FFFF),
    ProbeReply(3, 12345, True),
    ProbeReply(3, 0, False),
]


def wire_roundtrip(msg):
    return decode_peer(fastpath.loads(fastpath.dumps(encode_peer(msg))), MEMBERS)


def assert_tuples(value):
    """Batches, commands and entries come back as tuples, never lists."""
    assert not isinstance(value, list), value
    if isinstance(value, tuple):
        for item in value:
            assert_tuples(item)


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_cbor(msg):
    back = wire_roundtrip(msg)
    assert back == msg
    assert type(back) is type(msg)
    for value in vars(back).values() if hasattr(back, "__dict__") else [
            getattr(back, f) for f in back.__slots__]:
        assert_tuples(value)


def test_tags_follow_the_order_of_peer_messages():
    seen = {type(m): encode_peer(m)[0] for m in EXAMPLES}
    assert seen == {cls: i + 1 for i, cls in enumerate(PEER_MESSAGES)}


def test_encoding_is_plain_cbor_that_cbor2_reads():
    import cbor2

    msg = EXAMPLES[6]
    data = fastpath.dumps(encode_peer(msg))
    assert cbor2.dumps(encode_peer(msg)) == data
    assert decode_peer(cbor2.loads(data), MEMBERS) == msg


def test_encode_peer_refuses_what_is_not_a_peer_message():
    with pytest.raises(TypeError):
        encode_peer(("not", "a", "message"))


def test_commands_with_extreme_but_valid_integers_round_trip():
    cmd = (2**64 - 1, 2**64 - 1, OP_PUT, b"", b"", None)
    msg = Accept(1, B1, 2**62 - 1, 2**62, ((cmd,),), 2**64 - 1)
    assert wire_roundtrip(msg) == msg


# ------------------------------------------------------------------------------ validation

def bad(obj, *words):
    """decode_peer(obj) raises WireError whose message contains every word."""
    with pytest.raises(WireError) as info:
        decode_peer(obj, MEMBERS)
    text = str(info.value)
    for word in words:
        assert word in text, (word, text)
    return text


def test_not_an_array_or_an_unknown_tag():
    bad({"a": 1}, "peer message", "dict")
    bad([], "peer message")
    bad([0, 1, B1, 1], "tag", "0")
    bad([12, 1, B1, 1], "tag", "12")
    bad(["1", 1, B1, 1], "tag")
    bad([True, 1, B1, 1], "tag", "bool")


@pytest.mark.parametrize("obj,words", [
    ([1, 1, B1], ["Prepare", "4 items", "got 3"]),
    ([1, 1, B1, 1, 1], ["Prepare", "4 items", "got 5"]),
    ([2, 2, B1, 0], ["Promise", "6 items"]),
    ([3, 3, B1, B2], ["Reject", "5 items"]),
    ([4, 1, B1, 0, 1, []], ["Accept", "7 items"]),
    ([5, 2, B1, 1, 1], ["Accepted", "8 items"]),
    ([6, 3], ["CatchupRequest", "5 items"]),
    ([7, 1, 1, []], ["Catchup", "5 items"]),
    ([10, 1], ["Probe", "3 items"]),
    ([11, 1, 5, True, 0], ["ProbeReply", "4 items"]),
])
def test_short_or_long_arrays_are_refused(obj, words):
    bad(obj, *words)


def test_sender_must_be_a_member():
    bad([1, 9, ballot_pack(1, 9), 1], "Prepare.sender", "9")
    bad([6, 0, 1, 0, 0], "CatchupRequest.sender", "0")
    bad([6, "1", 1, 0, 0], "CatchupRequest.sender", "'1'")
    bad([6, True, 1, 0, 0], "CatchupRequest.sender", "bool")


def test_ballots_are_checked():
    bad([1, 1, -1, 1], "Prepare.ballot", "-1")
    bad([1, 1, 0, 1], "Prepare.ballot")
    bad([1, 1, b"\x01", 1], "Prepare.ballot", "bytes")
    bad([1, 1, BALLOT_CHOSEN, 1], "Prepare.ballot")  # not a ballot a proposer can hold
    bad([1, 1, 2**64, 1], "Prepare.ballot")
    bad([1, 1, ballot_pack(3, 2), 1], "Prepare.ballot", "node 1", "3.2")  # not the sender's
    bad([4, 2, B1, 0, 1, [], 0], "Accept.ballot", "node 2")
    bad([5, 2, None, 1, 0, 0, 0, 0], "Accepted.ballot", "None")
    bad([3, 3, B1, -5, 0], "Reject.promised", "-5")
    bad([2, 2, "x", 0, [], 0], "Promise.ballot", "'x'")


def test_slots_are_checked():
    bad([1, 1, B1, 0], "Prepare.from_slot", "0")
    bad([1, 1, B1, 2**62 + 1], "Prepare.from_slot")
    bad([6, 3, -1, 0, 0], "CatchupRequest.from_slot", "-1")
    bad([4, 1, B1, -1, 1, [], 0], "Accept.commit_index", "-1")
    bad([4, 1, B1, 0, 0, [], 0], "Accept.first_slot", "0")
    bad([4, 1, B1, 0, 2**62, [(), ()], 0], "Accept.batches", "run past")
    bad([4, 1, B1, 0, 1, [], -1], "Accept.read_round", "-1")
    bad([5, 2, B1, 0, 0, 0, 0, 0], "Accepted.first_slot", "0")
    bad([5, 2, B1, 5, 3, 0, 0, 0], "Accepted.last_slot", "3")  # only first - 1 may mark an empty run
    bad([7, 1, 0, [], 0], "Catchup.first_slot", "0")
    bad([7, 1, 5, [[], []], 5], "Catchup.commit_index", "6")


def test_commands_are_checked():
    def accept(*cmds):
        return [4, 1, B1, 0, 1, [list(cmds)], 0]

    bad([4, 1, B1, 0, 1, "batches", 0], "Accept.batches", "str")
    bad([4, 1, B1, 0, 1, [None], 0], "Accept.batches[0]", "None")
    bad(accept([7, 1, OP_PUT, b"k", b"v"]), "Accept.batches[0][0]", "command")
    bad(accept(list(PUT), [7, -1, OP_PUT, b"k", b"v", None]), "Accept.batches[0][1].seq", "-1")
    bad(accept([2**64, 1, OP_PUT, b"k", b"v", None]), "client_id")
    bad(accept([7, 1, 9, b"k", b"v", None]), "Accept.batches[0][0].op", "9")
    bad(accept([7, 1, True, b"k", b"v", None]), ".op", "bool")
    bad(accept([7, 1, OP_PUT, "k", b"v", None]), ".key", "'k'")
    bad(accept([7, 1, OP_PUT, b"k", None, None]), ".arg1", "bytes")
    bad(accept([7, 1, OP_PUT, b"k", b"v", b"w"]), ".arg2", "null")
    bad(accept([7, 1, OP_DELETE, b"k", b"v", None]), ".arg1", "null")
    bad(accept([7, 1, OP_CAS, b"k", b"v", None]), ".arg2", "bytes")
    bad(accept([7, 1, OP_CAS, b"k", 5, b"w"]), ".arg1", "bytes or null")
    bad([7, 1, 1, [[[1, 2, 6, b"", None, None]]], 1], "Catchup.batches[0][0].op", "6")
    bad([7, 1, 1, [[[1, 2, OP_TXN, b"", None, None]]], 1], ".arg1", "bytes for op 4")


def test_a_transaction_command_crosses_the_peer_wire():
    cmd = (7, 1, OP_TXN, b"", b"\x83\x80\x80\x80", None)  # CBOR [[], [], []]
    msg = Accept(1, B1, 0, 1, ((cmd, PUT),), 0)
    assert wire_roundtrip(msg) == msg


def test_promise_entries_are_checked():
    def promise(*entries):
        return [2, 2, B1, 0, list(entries), 0]

    bad(promise([1, B1]), "Promise.entries[0]", "entry")
    bad(promise([0, B1, []]), "Promise.entries[0].slot", "0")
    bad(promise([3, B1, []], [3, B1, []]), "Promise.entries[1].slot", "increasing")
    bad(promise([1, -1, []]), "Promise.entries[0].ballot")
    bad(promise([1, B1, [[1]]]), "Promise.entries[0].batch[0]")
    bad(promise([1, B1, []], [2, BALLOT_CHOSEN, []]), "Promise.entries[1].ballot", "chosen")
    bad(promise([1, BALLOT_CHOSEN, []], [3, BALLOT_CHOSEN, []]), "Promise.entries[1].ballot")
    bad([2, 2, B1, 0, {}, 0], "Promise.entries", "dict")
    bad([2, 2, B1, 0, [], -1], "Promise.incarnation", "-1")
    bad([5, 2, B1, 1, 1, 0, 0, "x"], "Accepted.incarnation", "'x'")
    bad([5, 2, B1, 1, 1, 0, -2, 0], "Accepted.commit_index", "-2")


def test_probes_are_checked():
    bad([10, 9, 5], "Probe.sender", "9")
    bad([10, 1, -5], "Probe.nonce", "-5")
    bad([10, 1, b"n"], "Probe.nonce", "bytes")
    bad([11, 2, 5, 1], "ProbeReply.used", "a boolean", "int")  # CBOR 1 is not true
    bad([11, 2, 5, None], "ProbeReply.used", "None")
    bad([11, 2, 2**64, False], "ProbeReply.nonce")


def test_members_decide_who_may_send():
    msg = Prepare(3, ballot_pack(1, 3), 1)
    obj = encode_peer(msg)
    assert decode_peer(obj, {1, 2, 3}) == msg
    with pytest.raises(WireError, match="sender"):
        decode_peer(obj, {1, 2})


# ------------------------------------------------------------------------------ garbage

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.binary(max_size=8) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.integers(-3, 3) | st.text(max_size=3), children, max_size=3),
    max_leaves=30,
)
small_ints = st.sampled_from([-1, 0, 1, 2, 3, 4, 7, 8, B1, B2, BALLOT_CHOSEN, 2**62, 2**64 - 1])


@settings(max_examples=500, deadline=None)
@given(cbor_values)
def test_random_garbage_raises_only_wire_error(obj):
    try:
        msg = decode_peer(obj, MEMBERS)
    except WireError:
        return
    assert type(msg) in PEER_MESSAGES


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(EXAMPLES), st.data())
def test_mutated_messages_decode_or_raise_wire_error(msg, data):
    """Replace one item anywhere in a valid message with garbage or a near-valid value."""
    obj = fastpath.loads(fastpath.dumps(encode_peer(msg)))
    paths = []

    def walk(node, path):
        if isinstance(node, list):
            for i, child in enumerate(node):
                paths.append(path + (i,))
                walk(child, path + (i,))

    walk(obj, ())
    path = data.draw(st.sampled_from(paths))
    value = data.draw(cbor_values | small_ints)
    target = obj
    for i in path[:-1]:
        target = target[i]
    if data.draw(st.booleans()):
        target[path[-1]] = value
    else:
        del target[path[-1]]
    try:
        back = decode_peer(obj, MEMBERS)
    except WireError:
        return
    assert type(back) in PEER_MESSAGES
    assert_tuples(back.batches if hasattr(back, "batches") else ())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_through_loads_raise_only_frame_or_wire_errors(data):
    try:
        obj = fastpath.loads(data)
    except fastpath.FrameError:
        return
    try:
        decode_peer(obj, MEMBERS)
    except WireError:
        pass


# ------------------------------------------------------------------------------ hello

def test_hello_accepts_a_member_of_the_same_cluster():
    hello = fastpath.loads(fastpath.dumps(wire.encode_hello("demo", 2)))
    assert wire.check_hello(hello, "demo", MEMBERS, 1) == 2


@pytest.mark.parametrize("hello,words", [
    (["paxosd", 5, "other", 2], ["cluster 'other'", "'demo'"]),
    (["paxosd", 4, "demo", 2], ["protocol version 4", "version 5"]),
    (["paxosd", True, "demo", 2], ["protocol version True"]),
    (["paxosd", 5, "demo", 9], ["node id 9", "not a member"]),
    (["paxosd", 5, "demo", 1], ["node id 1", "own id"]),
    (["raft", 1, "demo", 2], ["not a paxosd hello"]),
    ([1, 2], ["not a paxosd hello"]),
    ("paxosd", ["not a paxosd hello"]),
])
def test_hello_refusals_say_what_is_wrong(hello, words):
    with pytest.raises(wire.HelloError) as info:
        wire.check_hello(hello, "demo", MEMBERS, 1)
    for word in words:
        assert word in str(info.value)


@settings(max_examples=300, deadline=None)
@given(cbor_values)
def test_hello_garbage_raises_only_hello_error(obj):
    try:
        wire.check_hello(obj, "demo", MEMBERS, 1)
    except wire.HelloError:
        pass


# ------------------------------------------------------------------------------ client protocol

def test_client_requests_decode():
    req = decode_request(fastpath.loads(fastpath.dumps(
        wire.encode_request(5, "cas", 7, 3, b"k", None, b"new"))))
    assert req == wire.Request(5, "cas", 7, 3, b"k", None, b"new")
    assert decode_request([6, "get", 0, 0, b"k", None, None]).op == "get"
    assert decode_request([7, "status", 0, 0, b"", None, None]).op == "status"
    assert decode_request([8, "put", 1, 1, b"k", b"v", None]).arg1 == b"v"
    assert decode_request([9, "delete", 1, 2, b"k", None, None]).op == "delete"


@pytest.mark.parametrize("obj,field", [
    ([1, "frobnicate", 0, 0, b"k", None, None], "request.op"),
    ([1, b"put", 0, 0, b"k", b"v", None], "request.op"),
    ([1, "put", -1, 0, b"k", b"v", None], "request.client_id"),
    ([1, "put", 0, "1", b"k", b"v", None], "request.seq"),
    ([1, "put", 0, 0, "k", b"v", None], "request.key"),
    ([1, "put", 0, 0, b"k", None, None], "request.arg1"),
    ([1, "get", 0, 0, b"k", b"v", None], "request.arg1"),
    ([1, "cas", 0, 0, b"k", None, None], "request.arg2"),
    ([1, "put", 0, 0, b"k", b"v"], "7 items"),
])
def test_bad_client_requests_name_the_field_and_keep_the_req_id(obj, field):
    with pytest.raises(wire.BadRequest) as info:
        decode_request(obj)
    assert info.value.req_id == 1
    assert field in str(info.value)


@pytest.mark.parametrize("obj", [None, [], ["x", "get"], [-1, "get"], [True, "get"], {"a": 1}])
def test_unanswerable_requests_raise_plain_wire_error(obj):
    with pytest.raises(WireError) as info:
        decode_request(obj)
    assert not isinstance(info.value, wire.BadRequest)


@settings(max_examples=300, deadline=None)
@given(cbor_values)
def test_client_garbage_raises_only_wire_error(obj):
    try:
        decode_request(obj)
    except WireError:
        pass


def test_replies_round_trip():
    obj = fastpath.loads(fastpath.dumps(wire.encode_reply(3, "not_leader", None, "127.0.0.1:7001")))
    assert wire.decode_reply(obj) == wire.ClientReply(3, "not_leader", None, "127.0.0.1:7001")
    with pytest.raises(WireError, match="reply.status"):
        wire.decode_reply([3, "maybe", None, None])


def test_format_ballot():
    assert wire.format_ballot(ballot_pack(3, 2)) == "3.2"
    assert wire.format_ballot(0) == "0.0"
    assert wire.format_ballot(BALLOT_CHOSEN) == "chosen"


def test_a_snapshot_chunk_must_fit_its_total():
    bad([8, 1, 5, 90, 100, b"x" * 20], "SnapshotChunk.data", "20 bytes")
    bad([8, 1, 5, 0, 100, b""], "SnapshotChunk.data")
    bad([8, 1, 5, 0, 100, "text"], "SnapshotChunk.data", "byte string")
    bad([8, 1, 0, 0, 100, b"x"], "SnapshotChunk.index")


def test_a_transfer_request_names_a_node_in_client_id():
    from daemon.codec.wire import BadRequest

    assert decode_request([1, "transfer", 2, 0, b"", None, None]).client_id == 2
    with pytest.raises(BadRequest, match="client_id"):
        decode_request([1, "transfer", 0, 0, b"", None, None])


def test_membership_requests_carry_the_member_and_its_addresses():
    from daemon.codec.wire import BadRequest

    req = decode_request([1, "member_add", 4, 0, b"10.0.0.4:7001", b"10.0.0.4:7000", None])
    assert (req.op, req.client_id, req.key, req.arg1) == ("member_add", 4, b"10.0.0.4:7001",
                                                          b"10.0.0.4:7000")
    assert decode_request([2, "member_remove", 1, 0, b"", None, None]).client_id == 1
    for obj, field in [
        ([3, "member_add", 0, 0, b"h:1", b"h:2", None], "client_id"),
        ([3, "member_add", 4, 0, b"h", b"h:2", None], "request.key"),
        ([3, "member_add", 4, 0, b"h:1", b"h:99999", None], "request.arg1"),
        ([3, "member_add", 4, 0, b"h:1", None, None], "request.arg1"),
        ([3, "member_add", 4, 0, b"\xff:1", b"h:2", None], "UTF-8"),
        ([3, "member_remove", 70000, 0, b"", None, None], "client_id"),
    ]:
        with pytest.raises(BadRequest, match=field) as info:
            decode_request(obj)
        assert info.value.req_id == 3
