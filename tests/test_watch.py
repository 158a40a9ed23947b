"""The watch history (daemon.core.watch) on a real store: what it holds, its bounds, and what
it says of the revisions it no longer holds."""

from __future__ import annotations

import pytest

from daemon.codec import wire
from daemon.core.kv import KVStore, prefix_end
from daemon.core.messages import OP_DELETE, OP_PUT, OP_TXN
from daemon.core.txn import encode_txn
from daemon.core.watch import Compacted, WatchHistory, matches, select

_seq = iter(range(1, 1 << 30))


def put(key: bytes, value: bytes) -> tuple:
    return (7, next(_seq), OP_PUT, key, value, None)


def delete(key: bytes) -> tuple:
    return (7, next(_seq), OP_DELETE, key, None, None)


def txn(*ops) -> tuple:
    return (7, next(_seq), OP_TXN, b"", encode_txn([], list(ops), []), None)


def regroup(chunks) -> list:
    """What ``take`` drained, grouped by revision."""
    return select([e for chunk in chunks for e in chunk.events], b"", b"")[0]


def summary(groups) -> list:
    """Each group as (revision, [(key, value or None, previous value or None)])."""
    return [(g.revision, [(k, r and r.value, p and p.value) for _rev, k, r, p in g.events])
            for g in groups]


def test_changes_are_held_by_revision_with_previous_records_and_gaps_for_unchanged_ones():
    kv = KVStore()
    history = WatchHistory(kv, 1000, 1 << 20)
    kv.apply_batch((put(b"a", b"1"), put(b"b", b"2"), delete(b"zz"), put(b"a", b"3")))
    kv.apply_batch((delete(b"b"), txn(["put", b"c", b"4"], ["put", b"a", b"5"],
                                      ["delete", b"c", None])))
    chunks, replaced = history.take(kv)
    assert not replaced and history.revision == kv.revision == 6
    assert len(chunks) == 1 and (chunks[0].first, chunks[0].last) == (1, 6)
    assert summary(regroup(chunks)) == [
        (1, [(b"a", b"1", None)]), (2, [(b"b", b"2", None)]),
        # revision 3 deleted a missing key: nothing changed there
        (4, [(b"a", b"3", b"1")]), (5, [(b"b", None, b"2")]),
        # one transaction: one revision, its changes together, in order
        (6, [(b"c", b"4", None), (b"a", b"5", b"3"), (b"c", None, b"4")]),
    ]
    assert history.take(kv) == ([], False) and kv.events == []
    found, complete = history.since(4, b"a", None)
    assert complete and summary(found) == [(4, [(b"a", b"3", b"1")]), (6, [(b"a", b"5", b"3")])]


def test_a_watch_from_the_attach_revision_or_below_is_told_compacted():
    kv = KVStore()
    kv.apply_batch((put(b"a", b"1"), put(b"a", b"2")))
    history = WatchHistory(kv, 1000, 1 << 20)  # the changes before it attached are not held
    assert history.compacted == 2
    with pytest.raises(Compacted) as err:
        history.since(2, b"a", None)
    assert err.value.revision == 2 and "list again" in str(err.value)
    assert history.since(3, b"a", None) == ([], True)


def test_the_history_keeps_at_most_its_revisions_and_then_its_bytes():
    kv = KVStore()
    history = WatchHistory(kv, 5, 1 << 20)
    kv.apply_batch(tuple(put(b"k%d" % i, b"v") for i in range(12)))
    history.take(kv)
    assert history.compacted == 7 and [g.revision for g in history.held()] == [8, 9, 10, 11, 12]
    with pytest.raises(Compacted):
        history.since(7, b"", b"")
    assert [g.revision for g in history.since(8, b"", b"")[0]] == [8, 9, 10, 11, 12]

    kv = KVStore()
    history = WatchHistory(kv, 1000, 1000)
    for i in range(10):  # one take per change: ~366 bytes each
        kv.apply_batch((put(b"k%d" % i, bytes(300)),))
        history.take(kv)
    held = history.held()
    assert [g.revision for g in held] == [9, 10] and history.compacted == 8
    assert history.bytes == history.held_bytes() <= 1000
    # a take bigger than the bound alone is let go of whole
    kv.apply_batch(tuple(put(b"k%d" % i, bytes(300)) for i in range(3)))
    history.take(kv)
    assert history.held() == [] and history.compacted == history.revision == 13
    assert history.bytes == 0


def test_a_replaced_store_starts_the_history_again_compacted_at_its_revision():
    kv = KVStore()
    history = WatchHistory(kv, 1000, 1 << 20)
    kv.apply_batch((put(b"a", b"1"),))
    history.take(kv)
    kv.apply_batch((put(b"a", b"2"),))  # applied, not yet drained, when the store is replaced
    image = kv.image()
    newer = KVStore.from_image(image)
    newer.apply_batch((put(b"b", b"3"), put(b"b", b"4")))  # as a snapshot from the leader
    fresh = KVStore.from_image(newer.image())
    chunks, replaced = history.take(fresh)
    assert replaced and summary(regroup(chunks)) == [(2, [(b"a", b"2", b"1")])]  # the old's last
    assert kv.events is None and fresh.events == []
    assert history.compacted == history.revision == 4 and history.held() == []
    with pytest.raises(Compacted):
        history.since(3, b"", b"")
    fresh.apply_batch((put(b"c", b"5"),))
    assert summary(regroup(history.take(fresh)[0])) == [(5, [(b"c", b"5", None)])]


def test_a_watch_follows_a_key_a_prefix_or_a_range():
    assert matches(b"a", b"a", None) and not matches(b"ab", b"a", None)
    end = prefix_end(b"a/")
    assert matches(b"a/", b"a/", end) and matches(b"a/z", b"a/", end)
    assert not matches(b"a0", b"a/", end) and not matches(b"a", b"a/", end)
    assert matches(b"zzz", b"b", b"") and not matches(b"a", b"b", b"")
    assert matches(b"b", b"b", b"c") and not matches(b"c", b"b", b"c")
    kv = KVStore()
    history = WatchHistory(kv, 1000, 1 << 20)
    kv.apply_batch((put(b"a/1", b"x"), put(b"a0", b"y"), put(b"a/2", b"z")))
    history.take(kv)
    found, _ = history.since(1, b"a/", end)
    assert summary(found) == [(1, [(b"a/1", b"x", None)]), (3, [(b"a/2", b"z", None)])]


def test_a_budget_stops_at_a_whole_revision():
    kv = KVStore()
    history = WatchHistory(kv, 1000, 1 << 20)
    kv.apply_batch((txn(["put", b"a", bytes(100)], ["put", b"b", bytes(100)]),
                    put(b"c", bytes(100))))
    history.take(kv)
    found, complete = history.since(1, b"", b"", budget=10)
    assert not complete and summary(found) == [(1, [(b"a", bytes(100), None),
                                                     (b"b", bytes(100), None)])]


def test_the_events_encoding_round_trips_and_bad_events_are_named():
    kv = KVStore()
    history = WatchHistory(kv, 1000, 1 << 20)
    kv.apply_batch((put(b"a", b"1"), put(b"a", b"2"), delete(b"a")))
    groups = regroup(history.take(kv)[0])
    decoded = wire.decode_events(wire.encode_events(groups, True))
    assert decoded == [(1, b"a", (b"1", 1, 1, 1, 0), None),
                       (2, b"a", (b"2", 1, 2, 2, 0), (b"1", 1, 1, 1, 0)),
                       (3, b"a", None, (b"2", 1, 2, 2, 0))]
    assert wire.decode_events(wire.encode_events(groups, False))[1][3] is None
    with pytest.raises(wire.WireError, match=r"events\[1\].revision: 1 after 2"):
        wire.decode_events([[2, b"a", None, None], [1, b"a", None, None]])
    with pytest.raises(wire.WireError, match=r"events\[0\].record"):
        wire.decode_events([[2, b"a", [b"v", 1], None]])
    with pytest.raises(wire.BadRequest, match="watch's flags"):
        wire.decode_request([1, "watch", 4, 0, b"a", None, None])
    assert wire.decode_request(wire.encode_watch_request(3, 9, b"a", b"", True)) == \
        wire.Request(3, "watch", wire.WATCH_PREV_KV, 9, b"a", b"", None)


def test_the_bench_counts_a_replys_changes_from_its_cbor_heads():
    from fastpath import dumps

    from daemon.tools.bench_watch import events_in

    for req_id in (5, 500_000, 2**40):
        for n in (0, 3, 23, 24, 300, 70_000):
            payload = dumps([[req_id, "events", [[1, b"k", None, None]] * n, "h:1", 9]])
            assert events_in(payload) == n
    assert events_in(dumps([[5, "ok", 3, None, 3]])) is None
    assert events_in(dumps([[5, "events", [], None, 3], [6, "ok", 3, None, 3]])) is None


def test_a_frame_encoded_once_goes_out_as_the_reply_it_encodes_in_its_order():
    from fastpath import FrameReader, loads

    from daemon.runtime.clients import _encode_apart, _frames_apart

    events = [[3, b"k", [b"v", 3, 3, 1, 0], None]]
    for req_id in (0, 23, 24, 300, 70_000, 2**33, 2**64 - 1):
        frame = wire.events_frame(req_id, wire.events_reply_tail(events, "h:1", 9))
        replies = [[1, "ok", None, "h:1", 2], frame, (2, "ok", [b"big"], None, 2),
                   [4, "ok", None, None, 3], frame]
        payloads = FrameReader().feed(_encode_apart(_frames_apart(replies)))
        assert [loads(p) for p in payloads] == [
            [[1, "ok", None, "h:1", 2]], [[req_id, "events", events, "h:1", 9]],
            [[2, "ok", [b"big"], None, 2]], [[4, "ok", None, None, 3]],
            [[req_id, "events", events, "h:1", 9]]]


class FakeConn:
    """What daemon.runtime.watches uses of a client connection; ``taken()`` plays its writer."""

    def __init__(self) -> None:
        self.replies: list = []
        self.closed = False
        self.outstanding = 0
        self.watch_bytes = 0

    def push(self, reply: list) -> None:
        self.replies.append(reply)

    def push_frame(self, frame: bytes) -> None:
        from fastpath import FrameReader, loads

        [payload] = FrameReader().feed(frame)
        self.replies.append(loads(payload)[0])

    def taken(self) -> list:
        replies, self.replies, self.watch_bytes = self.replies, [], 0
        return replies


def test_a_watch_behind_a_replaced_store_ends_compacted_at_its_revision():
    from daemon.runtime.config import WatchSettings
    from daemon.runtime.watches import Watches

    kv = KVStore()
    watches = Watches(kv, WatchSettings(), 1 << 20)
    conn = FakeConn()
    watches.request(conn, wire.Request(1, "watch", 0, 0, b"a", None, None), None)
    kv.apply_batch((put(b"a", b"1"),))
    watches.deliver(kv, None)
    assert conn.taken() == [[1, "ok", 0, None, 0],
                            [1, "events", [[1, b"a", [b"1", 1, 1, 1, 0], None]], None, 1]]
    newer = KVStore.from_image(kv.image())
    newer.apply_batch((put(b"a", b"2"), put(b"b", b"3")))  # the leader's, as a snapshot
    watches.deliver(KVStore.from_image(newer.image()), None)
    assert conn.taken() == [[1, "compacted", 3, None, 1]] and watches.count() == 0


def test_a_watch_from_the_history_catches_up_a_part_at_a_time_then_follows():
    from daemon.runtime.config import WatchSettings
    from daemon.runtime.watches import Watches

    kv = KVStore()
    watches = Watches(kv, WatchSettings(max_pending_bytes=1000), 1 << 20)
    kv.apply_batch(tuple(put(b"k%d" % i, bytes(100)) for i in range(20)))
    watches.deliver(kv, None)
    conn = FakeConn()
    watches.request(conn, wire.Request(1, "watch", 0, 5, b"k", b"l", None), None)
    assert conn.taken() == [[1, "ok", 4, None, 4]]
    seen = []
    for _ in range(20):  # each round: what half the pending bound lets through
        watches.deliver(kv, None)
        replies = conn.taken()
        assert all(r[1] == "events" for r in replies) and len(replies) <= 1
        seen += [e[0] for r in replies for e in r[2]]
        if seen and seen[-1] == 20:
            break
    assert seen == list(range(5, 21))
    kv.apply_batch((put(b"k1", b"x"), put(b"z", b"not watched")))
    watches.deliver(kv, None)
    assert [(r[1], [e[0] for e in r[2]], r[4]) for r in conn.taken()] == [("events", [21], 22)]
