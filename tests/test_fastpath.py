"""Property tests of the compiled fastpath against its plain-Python twins (tests/twins.py).

Every test drives the Cython primitive and its twin with the same random operations and requires
the same outcome: the same return value, or an exception of the same type. The CBOR codec is also
held to byte-identity with cbor2, and the quorum tracker to a brute-force model.
"""

from __future__ import annotations

import gc
import weakref

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastpath
from tests import twins

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

U64 = 2**64 - 1


def outcome(fn, *args):
    """("ok", value) or ("raise", exception type): what calling fn(*args) did."""
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # noqa: BLE001 - the type is the result
        return ("raise", type(exc))


def same(fast_fn, twin_fn, *args):
    """Call both with args and require the same outcome; return it."""
    a = outcome(fast_fn, *args)
    b = outcome(twin_fn, *args)
    if a[0] == "raise" and b[0] == "raise":
        # Compare the exception classes by name: each side defines its own FrameError.
        assert a[1].__name__ == b[1].__name__, (args, a, b)
    else:
        assert a == b, (args, a, b)
    return a


# --- the package -----------------------------------------------------------------------------


def test_public_surface():
    for name in fastpath.__all__:
        assert hasattr(fastpath, name), name
    assert fastpath.BALLOT_NONE == 0
    assert fastpath.BALLOT_CHOSEN == 2**64 - 1
    assert fastpath.MAX_ROUND == 2**48 - 2
    assert fastpath.MAX_NODE == 2**16 - 1
    assert fastpath.DEFAULT_MAX_FRAME == 64 * 1024 * 1024
    assert issubclass(fastpath.FrameError, ValueError)
    assert issubclass(fastpath.FrameTooLarge, fastpath.FrameError)
    # No real ballot reaches the sentinel.
    assert fastpath.ballot_pack(fastpath.MAX_ROUND, fastpath.MAX_NODE) < fastpath.BALLOT_CHOSEN
    for name in fastpath.__all__:
        assert hasattr(twins, name), name
        if name.isupper():  # the constants: the twins state the contract's values
            assert getattr(fastpath, name) == getattr(twins, name), name


# --- ballots ---------------------------------------------------------------------------------

rounds = st.integers(0, fastpath.MAX_ROUND)
nodes = st.integers(0, fastpath.MAX_NODE)
any_ints = st.one_of(
    st.integers(-5, 2**17),
    st.integers(2**48 - 4, 2**48 + 2),
    st.integers(2**64 - 3, 2**64 + 2),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2**48 - 2, 2**48 - 1, 2**16 - 1, 2**16, 2**64 - 1, 2**64, -1]),
)


@FAST
@given(rounds, nodes, rounds, nodes)
def test_ballot_roundtrip_and_order(r1, n1, r2, n2):
    b1, b2 = fastpath.ballot_pack(r1, n1), fastpath.ballot_pack(r2, n2)
    assert b1 == twins.ballot_pack(r1, n1)
    assert (fastpath.ballot_round(b1), fastpath.ballot_node(b1)) == (r1, n1)
    assert fastpath.BALLOT_NONE <= b1 < fastpath.BALLOT_CHOSEN
    assert (b1 < b2) == ((r1, n1) < (r2, n2))
    assert (b1 == b2) == ((r1, n1) == (r2, n2))
    if r1 < fastpath.MAX_ROUND:
        nxt = fastpath.ballot_next(b1, n2)
        assert nxt > b1 and nxt == twins.ballot_next(b1, n2)
        assert fastpath.ballot_round(nxt) == r1 + 1 and fastpath.ballot_node(nxt) == n2
    else:
        with pytest.raises(ValueError):
            fastpath.ballot_next(b1, n2)


@FAST
@given(any_ints, any_ints)
def test_ballot_functions_agree_on_any_int(a, b):
    same(fastpath.ballot_pack, twins.ballot_pack, a, b)
    same(fastpath.ballot_round, twins.ballot_round, a)
    same(fastpath.ballot_node, twins.ballot_node, a)
    same(fastpath.ballot_next, twins.ballot_next, a, b)


def test_ballot_edges():
    assert fastpath.ballot_round(fastpath.BALLOT_CHOSEN) == 2**48 - 1
    assert fastpath.ballot_node(fastpath.BALLOT_CHOSEN) == 0xFFFF
    with pytest.raises(ValueError, match="BALLOT_CHOSEN"):
        fastpath.ballot_next(fastpath.BALLOT_CHOSEN, 1)
    with pytest.raises(ValueError, match=str(2**48 - 1)):
        fastpath.ballot_pack(2**48 - 1, 0)
    with pytest.raises(ValueError, match="65536"):
        fastpath.ballot_pack(0, 65536)
    for bad in (-1, 2**64):
        with pytest.raises(ValueError):
            fastpath.ballot_round(bad)
        with pytest.raises(ValueError):
            fastpath.ballot_node(bad)
    for bad in (1.0, "1", None):
        with pytest.raises(TypeError):
            fastpath.ballot_pack(bad, 0)
        with pytest.raises(TypeError):
            twins.ballot_pack(bad, 0)
    assert fastpath.ballot_next(fastpath.BALLOT_NONE, 3) == fastpath.ballot_pack(1, 3)


# --- QuorumTracker ---------------------------------------------------------------------------


def tracker_state(t):
    return (t.members, t.quorum, t.capacity, t.ballot, t.commit_index)


@st.composite
def tracker_setup(draw, max_capacity=12):
    members = draw(st.integers(1, 64))
    quorum = draw(st.integers(1, members))
    capacity = draw(st.integers(1, max_capacity))
    return members, quorum, capacity


def tracker_op(members, ballots):
    member = st.one_of(st.integers(0, members - 1), st.integers(-2, members + 2))
    slot = st.integers(-3, 60)
    return st.one_of(
        st.tuples(st.just("reset"), ballots, st.integers(0, 20)),
        st.tuples(st.just("record"), member, ballots, slot, slot),
        st.tuples(st.just("record"), member, ballots, slot, slot),
        st.tuples(st.just("record"), member, ballots, slot, slot),
        st.tuples(st.just("acked"), slot),
        st.tuples(st.just("count"), slot),
    )


@SLOW
@given(st.data())
def test_quorum_tracker_matches_twin(data):
    members, quorum, capacity = data.draw(tracker_setup())
    fast = fastpath.QuorumTracker(members, quorum, capacity)
    twin = twins.QuorumTracker(members, quorum, capacity)
    ballots = st.sampled_from([0, 5, 7, 2**64 - 1, 2**64, -1])
    ops = data.draw(st.lists(tracker_op(members, ballots), max_size=80))
    for name, *args in ops:
        same(getattr(fast, name), getattr(twin, name), *args)
        assert tracker_state(fast) == tracker_state(twin)
        ci = fast.commit_index
        # Invariants: untracked slots read as 0, the next slot has no quorum.
        assert fast.acked(ci) == 0 and fast.acked(ci + capacity + 1) == 0
        assert fast.count(ci + 1) < quorum
        for slot in range(ci - 1, ci + capacity + 2):
            assert fast.acked(slot) == twin.acked(slot)
            assert fast.count(slot) == bin(fast.acked(slot)).count("1") == twin.count(slot)


@SLOW
@given(st.data())
def test_quorum_tracker_brute_force(data):
    """With a window wider than every slot used, commit_index is exactly the longest run of
    slots after the reset point whose distinct ackers (at the current ballot) reach quorum."""
    members = data.draw(st.integers(1, 64))
    quorum = data.draw(st.integers(1, members))
    fast = fastpath.QuorumTracker(members, quorum, 64)
    base, ballot = 0, 0
    acks: dict[int, set[int]] = {}
    ops = data.draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("reset"), st.sampled_from([1, 2]), st.integers(0, 6)),
                st.tuples(
                    st.just("record"),
                    st.integers(0, members - 1),
                    st.sampled_from([1, 2]),
                    st.integers(0, 30),
                    st.integers(0, 30),
                ),
            ),
            max_size=60,
        )
    )
    for name, *args in ops:
        if name == "reset":
            ballot, base = args
            acks = {}
            fast.reset(ballot, base)
            continue
        member, b, first, last = args
        before = fast.commit_index
        moved = fast.record(member, b, first, last)
        if b == ballot:
            for slot in range(max(first, base + 1), last + 1):
                acks.setdefault(slot, set()).add(member)
        expected = base
        while len(acks.get(expected + 1, ())) >= quorum:
            expected += 1
        assert fast.commit_index == expected
        assert moved == (expected if expected != before else -1)
        for slot in range(expected + 1, 32):
            mask = sum(1 << m for m in acks.get(slot, ()))
            assert fast.acked(slot) == mask


def test_quorum_tracker_validation_and_basics():
    for args in [(0, 1, 1), (65, 1, 1), (3, 0, 1), (3, 4, 1), (3, 2, 0), (3, 2, -1)]:
        with pytest.raises(ValueError):
            fastpath.QuorumTracker(*args)
        with pytest.raises(ValueError):
            twins.QuorumTracker(*args)
    t = fastpath.QuorumTracker(5, 3, 8)
    assert tracker_state(t) == (5, 3, 8, 0, 0)
    t.reset(fastpath.ballot_pack(2, 1), 10)
    b = t.ballot
    with pytest.raises(ValueError):
        t.record(5, b, 11, 11)
    assert t.record(0, b + 1, 11, 12) == -1  # another ballot: ignored
    assert t.record(0, b, 11, 100) == -1  # clipped to 11..18
    assert t.acked(18) == 1 and t.acked(19) == 0 and t.acked(10) == 0
    assert t.record(1, b, 11, 12) == -1  # two acks, quorum is three
    assert t.record(2, b, 11, 12) == 12
    assert t.commit_index == 12 and t.acked(12) == 0 and t.count(13) == 1
    assert t.record(3, b, 5, 4) == -1  # empty range
    # Full-width masks: all 64 members.
    t = fastpath.QuorumTracker(64, 64, 2)
    for m in range(63):
        assert t.record(m, 0, 1, 1) == -1
    assert t.acked(1) == 2**63 - 1
    assert t.record(63, 0, 1, 1) == 1


# --- SlotWindow ------------------------------------------------------------------------------


def window_state(w):
    return (w.capacity, w.first_slot, w.next_slot, w.in_flight, w.has_room())


@SLOW
@given(st.data())
def test_slot_window_matches_twin(data):
    capacity = data.draw(st.integers(1, 8))
    fast, twin = fastpath.SlotWindow(capacity), twins.SlotWindow(capacity)
    batches = [object() for _ in range(4)] + [(), ((1, 2, 3, b"k", b"v", None),), None]
    near = st.integers(-3, capacity + 3)  # offsets from first_slot: below, inside, beyond
    ops = data.draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("open"), st.sampled_from(batches)),
                st.tuples(st.just("open"), st.sampled_from(batches)),
                st.tuples(st.just("advance"), near),
                st.tuples(st.just("get"), near),
                st.tuples(st.just("reset"), st.integers(-1, 40)),
                st.tuples(st.just("has_room")),
            ),
            max_size=80,
        )
    )
    for name, *args in ops:
        if name in ("advance", "get"):  # relative to the window, to hit both edges
            args = [fast.first_slot + args[0]]
        # Batches compare by identity (object()), so equal outcomes mean the same objects.
        same(getattr(fast, name), getattr(twin, name), *args)
        assert window_state(fast) == window_state(twin)
    # Whatever is open is still retrievable, in order.
    opened = [fast.get(s) for s in range(fast.first_slot, fast.next_slot)]
    assert fast.advance(2**70) == opened and fast.in_flight == 0


def test_slot_window_basics_and_release():
    with pytest.raises(ValueError):
        fastpath.SlotWindow(0)
    w = fastpath.SlotWindow(3)
    assert window_state(w) == (3, 1, 1, 0, True)

    class Batch:
        pass

    b = Batch()
    ref = weakref.ref(b)
    assert w.open(b) == 1 and w.open("x") == 2 and w.open("y") == 3
    assert not w.has_room()
    with pytest.raises(OverflowError, match="slot window full"):
        w.open("z")
    with pytest.raises(KeyError, match=r"slot 4 .*\[1, 4\)"):
        w.get(4)
    assert w.get(1) is b
    assert w.advance(0) == []
    got = w.advance(1)
    assert got == [b]
    del got, b
    gc.collect()
    assert ref() is None  # the ring let go of the batch
    assert w.advance(99) == ["x", "y"] and (w.first_slot, w.next_slot) == (4, 4)
    assert w.open("a") == 4
    w.reset(10)
    assert window_state(w) == (3, 10, 10, 0, True)
    with pytest.raises(ValueError):
        w.reset(0)


# --- frames ----------------------------------------------------------------------------------


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@FAST
@given(
    st.lists(st.binary(max_size=300), max_size=12),
    st.lists(st.integers(0, 10_000), max_size=20),
    st.sampled_from([bytes, bytearray, memoryview]),
)
def test_frame_reader_any_split(payloads, cuts, kind):
    stream = b"".join(fastpath.encode_frame(p) for p in payloads)
    assert stream == b"".join(twins.encode_frame(p) for p in payloads)
    fast, twin = fastpath.FrameReader(), twins.FrameReader()
    got = []
    for chunk in split(stream, cuts):
        out = fast.feed(kind(chunk))
        assert out == twin.feed(chunk)
        assert all(type(p) is bytes for p in out)
        assert fast.buffered == twin.buffered
        got.extend(out)
    assert got == payloads
    assert fast.buffered == 0


@FAST
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=8),
    st.integers(0, 30),
    st.lists(st.integers(0, 500), max_size=10),
)
def test_frame_reader_oversize_matches_twin(lengths, max_frame, cuts):
    stream = b"".join(twins.encode_frame(bytes([i % 251]) * n) for i, n in enumerate(lengths))
    fast, twin = fastpath.FrameReader(max_frame), twins.FrameReader(max_frame)
    for chunk in split(stream, cuts):
        a, b = outcome(fast.feed, chunk), outcome(twin.feed, chunk)
        assert (a[0], a[1] if a[0] == "ok" else a[1].__name__) == (
            b[0],
            b[1] if b[0] == "ok" else b[1].__name__,
        )
        assert fast.buffered == twin.buffered
    if any(n > max_frame for n in lengths):
        with pytest.raises(fastpath.FrameError):
            fast.feed(b"")
        assert fast.buffered == 0


def test_frame_reader_rejects_oversize_before_buffering():
    r = fastpath.FrameReader(1000)
    assert r.feed(b"\x00\x00\x03") == [] and r.buffered == 3
    with pytest.raises(fastpath.FrameTooLarge, match=r"1001 .*1000"):
        r.feed(b"\xe9" + b"x" * 5000)
    assert r.buffered == 0
    with pytest.raises(fastpath.FrameError):
        r.feed(b"\x00\x00\x00\x00")
    # A hostile 4 GiB announcement is refused from the 4 header bytes alone.
    r = fastpath.FrameReader()
    with pytest.raises(fastpath.FrameTooLarge):
        r.feed(b"\xff\xff\xff\xff")
    assert r.buffered == 0
    # A frame exactly at the limit is fine; bytes are held only as they arrive.
    r = fastpath.FrameReader(8)
    assert r.feed(fastpath.encode_frame(b"12345678")) == [b"12345678"]
    assert r.feed(b"\x00\x00\x00\x08abc") == [] and r.buffered == 7
    assert r.feed(b"defgh\x00\x00\x00\x00\x00") == [b"abcdefgh", b""] and r.buffered == 1
    with pytest.raises(ValueError):
        fastpath.FrameReader(-1)


# --- CBOR ------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64 - 1),
    st.integers(-30, 300),
    st.sampled_from([23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, -24, -25, -257, -(2**64)]),
    st.binary(max_size=40),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-(2**64), 2**64 - 1)),
                        children, max_size=6),
    ),
    max_leaves=30,
)


@FAST
@given(values)
def test_cbor_matches_cbor2(x):
    encoded = fastpath.dumps(x)
    assert encoded == cbor2.dumps(x)
    assert encoded == twins.dumps(x)
    assert fastpath.loads(encoded) == x
    assert cbor2.loads(encoded) == x
    assert twins.loads(encoded) == x
    assert fastpath.loads(bytearray(encoded)) == x
    assert fastpath.loads(memoryview(encoded)) == x


def as_lists(x):
    if isinstance(x, (list, tuple)):
        return [as_lists(i) for i in x]
    if isinstance(x, dict):
        return {k: as_lists(v) for k, v in x.items()}
    return x


@FAST
@given(st.lists(st.tuples(values, st.binary(max_size=8), st.tuples(values)), max_size=4))
def test_cbor_tuples_and_frames(objs):
    assert fastpath.dumps(objs) == cbor2.dumps(objs)
    assert fastpath.loads(fastpath.dumps(objs)) == as_lists(objs)
    frames = fastpath.encode_frames(objs)
    assert frames == b"".join(fastpath.encode_frame(cbor2.dumps(o)) for o in objs)
    assert frames == twins.encode_frames(objs)
    assert fastpath.encode_frames(tuple(objs)) == frames
    assert [fastpath.loads(p) for p in fastpath.FrameReader().feed(frames)] == as_lists(objs)


@FAST
@given(st.binary(max_size=40))
def test_cbor_byte_likes(b):
    expected = cbor2.dumps(b)
    assert fastpath.dumps(bytearray(b)) == expected == twins.dumps(bytearray(b))
    assert fastpath.dumps(memoryview(b)) == expected == twins.dumps(memoryview(b))
    assert fastpath.dumps(memoryview(b)[::2]) == cbor2.dumps(b[::2])


def check_loads_agree(data: bytes):
    a, b = outcome(fastpath.loads, data), outcome(twins.loads, data)
    if a[0] == "raise":
        assert a[1] is fastpath.FrameError, (data, a)
        assert b == ("raise", twins.FrameError), (data, b)
    else:
        assert b[0] == "ok", (data, b)
        assert a[1] == b[1] and twins.dumps(a[1]) == twins.dumps(b[1]), data
        assert cbor2.loads(data) == a[1], data  # what we accept, cbor2 reads the same way


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=48))
def test_loads_garbage(data):
    check_loads_agree(data)


@FAST
@given(values, st.data())
def test_loads_mutated(x, data):
    enc = bytearray(fastpath.dumps(x))
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["flip", "cut", "add", "insert"]))
        pos = data.draw(st.integers(0, len(enc)))
        byte = data.draw(st.integers(0, 255))
        if action == "flip" and pos < len(enc):
            enc[pos] = byte
        elif action == "cut":
            del enc[pos:]
        elif action == "add":
            enc.append(byte)
        else:
            enc.insert(pos, byte)
    check_loads_agree(bytes(enc))


@pytest.mark.parametrize(
    "hexdata",
    [
        "",  # nothing
        "f7", "f0", "f818", "f93c00", "fa3f800000", "fb3ff0000000000000",  # simple, floats
        "1c", "3d", "5e", "7f", "9f01ff", "bfff", "ff", "df",  # reserved / indefinite / break
        "c001", "d82001", "c249010000000000000000",  # tags, bignums
        "62c328", "61ff", "63eda080",  # invalid UTF-8 (incl. an encoded surrogate)
        "0101", "8001",  # trailing bytes
        "1b00", "5a00000005", "6541", "8201", "a101",  # truncated
        "9bffffffffffffffff00", "5bffffffffffffffff", "bb0000000100000000",  # hostile counts
        "a2000101",  # 2 pairs need 4 bytes, 3 remain
        "a1800102", "a1a00102",  # unhashable keys
        "81" * 64 + "80",  # 65 nested containers
    ],
)
def test_loads_rejects(hexdata):
    data = bytes.fromhex(hexdata)
    with pytest.raises(fastpath.FrameError):
        fastpath.loads(data)
    with pytest.raises(twins.FrameError):
        twins.loads(data)


def test_cbor_edges():
    assert fastpath.loads(bytes.fromhex("81" * 63 + "80"))  # 64 nested containers: fine
    deep = []
    for _ in range(63):
        deep = [deep]
    assert fastpath.dumps(deep) == cbor2.dumps(deep) and fastpath.loads(fastpath.dumps(deep))
    for bad in ([deep], {"k": [deep]}):
        with pytest.raises(ValueError):
            fastpath.dumps(bad)
        with pytest.raises(ValueError):
            twins.dumps(bad)
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError):
        fastpath.dumps(cyclic)
    assert fastpath.loads(b"\x18\x01") == 1  # non-shortest heads are accepted
    assert fastpath.loads(b"\xa2\x01\x02\x01\x03") == {1: 3}  # last duplicate wins, as cbor2
    for bad, exc in [(1.5, TypeError), ({1}, TypeError), (object(), TypeError),
                     (2**64, ValueError), (-(2**64) - 1, ValueError), ("\ud800", ValueError),
                     (range(3), TypeError), ([1, 2.0], TypeError)]:
        with pytest.raises(exc):
            fastpath.dumps(bad)
        with pytest.raises(exc):
            twins.dumps(bad)
        with pytest.raises(exc):
            fastpath.encode_frames([1, bad])
    with pytest.raises(TypeError, match="float"):
        fastpath.dumps(1.5)
    with pytest.raises(TypeError):
        fastpath.loads("text")


def test_cbor_subclasses_match_cbor2():
    import collections
    import enum

    class Op(enum.IntEnum):
        PUT = 1

    class Name(str):
        pass

    Pair = collections.namedtuple("Pair", "a b")
    od = collections.OrderedDict(a=1, b=2)
    od.move_to_end("a")
    for obj in [Op.PUT, Name("x"), Pair(1, b"2"), od, [Op.PUT, {Name("k"): Pair(None, True)}]]:
        assert fastpath.dumps(obj) == cbor2.dumps(obj) == twins.dumps(obj)


def test_command_batch_roundtrip():
    cmds = [(2**40 + i, i, 1, b"key%d" % i, b"x" * 64, None) for i in range(1000)]
    enc = fastpath.dumps(cmds)
    assert enc == cbor2.dumps(cmds)
    assert fastpath.loads(enc) == [list(c) for c in cmds] == cbor2.loads(enc)


# --- key records -----------------------------------------------------------------------------

record_fields = st.tuples(st.one_of(st.binary(max_size=4), st.text(max_size=2), st.none()),
                          *[st.integers(-2, 2**64)] * 3,
                          st.one_of(st.integers(-2, 2**63), st.just(1.5)))


def _outcome(make, fields):
    try:
        record = make(*fields)
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)
    return record.astuple(), repr(record), hash(record) == hash(make(*fields))


@given(record_fields)
def test_key_record_matches_its_twin(fields):
    assert _outcome(fastpath.KeyRecord, fields) == _outcome(twins.KeyRecord, fields)
