"""Range reads of the key-value store: a key, a prefix or [start, end), in key order, with a
limit and a continuation, counts and keys only, cut to a byte budget; and through the read
index, at the leader, with the revision they were read at."""

import random

from fastpath import KeyRecord

from daemon.core.kv import RANGE_ENTRY_OVERHEAD, KVStore, RangeQuery, prefix_end
from daemon.core.messages import OK, OP_DELETE, OP_PUT
from daemon.core.node import CoreConfig
from daemon.core.reads import RANGE_REPLY_MARGIN
from tests.scripted import ScriptedCluster

BIG = 1 << 30


def store(*keys, value=b"v"):
    kv = KVStore()
    for seq, key in enumerate(keys, 1):
        kv.apply((1, seq, OP_PUT, key, value, None))
    return kv


def keys(result):
    return [k for k, _ in result.kvs]


def test_prefix_end_is_the_smallest_key_above_the_prefix():
    assert prefix_end(b"a/") == b"a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"" and prefix_end(b"") == b""


def test_a_single_key_range_gives_its_record():
    kv = store(b"a", b"b")
    result = kv.range(RangeQuery(b"b"), BIG)
    assert result.kvs == [(b"b", KeyRecord(b"v", 2, 2, 1, 0))]
    assert result.count == 1 and not result.more
    assert kv.range(RangeQuery(b"zz"), BIG) == ([], 0, False, False)


def test_a_prefix_gives_exactly_its_keys_in_order():
    kv = store(b"svc/b", b"svc0", b"svc/a", b"sv", b"svc/", b"svc/a/x")
    result = kv.range(RangeQuery(b"svc/", prefix_end(b"svc/")), BIG)
    assert keys(result) == [b"svc/", b"svc/a", b"svc/a/x", b"svc/b"]
    assert result.count == 4 and not result.more


def test_start_end_is_half_open_and_an_empty_end_means_to_the_last_key():
    kv = store(b"a", b"b", b"c", b"d")
    assert keys(kv.range(RangeQuery(b"b", b"d"), BIG)) == [b"b", b"c"]
    assert keys(kv.range(RangeQuery(b"b", b""), BIG)) == [b"b", b"c", b"d"]
    assert keys(kv.range(RangeQuery(b"d", b"b"), BIG)) == []


def test_a_limit_and_the_continuation_walk_the_whole_range_once():
    kv = store(*[b"k%02d" % i for i in range(10)])
    seen, start = [], b"k"
    while True:
        result = kv.range(RangeQuery(start, prefix_end(b"k"), limit=3), BIG)
        assert result.count == 10 - len(seen)  # the keys left in the range, whatever the limit
        seen += keys(result)
        if not result.more:
            break
        start = keys(result)[-1] + b"\x00"
    assert seen == [b"k%02d" % i for i in range(10)]


def test_a_range_is_cut_to_the_byte_budget_and_says_more():
    kv = store(*[b"k%d" % i for i in range(8)], value=b"x" * 100)
    entry = 2 + 100 + RANGE_ENTRY_OVERHEAD
    result = kv.range(RangeQuery(b"k", b"l"), 3 * entry)
    assert len(result.kvs) == 3 and result.more and result.count == 8
    # The first entry always goes in, so a walk makes progress even under a tiny budget.
    assert len(kv.range(RangeQuery(b"k", b"l"), 1).kvs) == 1
    # Keys only: the values do not count against the budget.
    budget = 8 * (2 + RANGE_ENTRY_OVERHEAD)
    only = kv.range(RangeQuery(b"k", b"l", keys_only=True), budget)
    assert len(only.kvs) == 8 and not only.more and only.keys_only
    assert kv.range(RangeQuery(b"k", b"l"), budget).more


def test_count_only_counts_without_giving_keys():
    kv = store(b"a", b"b", b"c")
    assert kv.range(RangeQuery(b"a", b"c", count_only=True), BIG) == ([], 2, False, False)


def test_the_index_follows_creates_and_deletes_between_ranges():
    kv = store(b"a", b"b", b"c")
    assert keys(kv.range(RangeQuery(b"", b""), BIG)) == [b"a", b"b", b"c"]
    kv.apply((1, 10, OP_DELETE, b"b", None, None))
    kv.apply((1, 11, OP_PUT, b"bb", b"v", None))
    kv.apply((1, 12, OP_DELETE, b"bb", None, None))
    kv.apply((1, 13, OP_PUT, b"bb", b"w", None))
    kv.apply((1, 14, OP_PUT, b"a", b"x", None))  # an overwrite: nothing for the index
    assert kv.touched == [b"b", b"bb", b"bb", b"bb"]
    assert keys(kv.range(RangeQuery(b"", b""), BIG)) == [b"a", b"bb", b"c"]
    assert kv.touched == []


def test_the_index_matches_the_keys_under_random_writes_batches_and_restores():
    rng = random.Random(3)
    kv = KVStore()
    kv.touched_slack = 5  # drop the index now and then, too
    seq = 0
    for step in range(300):
        batch = []
        for _ in range(rng.randrange(1, 8)):
            seq += 1
            key = b"k%d" % rng.randrange(30)
            op = rng.choice([OP_PUT, OP_PUT, OP_DELETE])
            batch.append((1, seq, op, key, b"v" if op == OP_PUT else None, None))
        kv.apply_batch(tuple(batch))
        if step % 7 == 0:
            assert keys(kv.range(RangeQuery(b"", b""), BIG)) == sorted(kv.data)
        if step % 50 == 0:
            kv = KVStore.from_image(kv.image())
            kv.touched_slack = 5
    assert keys(kv.range(RangeQuery(b"k1", b"k2"), BIG)) == sorted(
        k for k in kv.data if b"k1" <= k < b"k2")


def test_a_range_read_goes_through_the_read_index_and_names_its_revision():
    cfg = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.30), window=8,
                     max_message_bytes=RANGE_REPLY_MARGIN + 2 * (3 + 1 + RANGE_ENTRY_OVERHEAD))
    c = ScriptedCluster([1, 2, 3], cfg)
    c.fire(1)
    c.settle()
    leader = c.nodes[1]
    for i in range(3):
        leader.submit(("w", i), (7, i + 1, OP_PUT, b"p/%d" % i, b"v", None), c.now)
        c.settle()
    leader.read("r", RangeQuery(b"p/", prefix_end(b"p/")), c.now)
    c.collect()
    assert not [r for i, r in c.replies if r.req == "r"]  # not before a quorum confirms
    c.settle()
    (reply,) = [r for i, r in c.replies if r.req == "r"]
    assert reply.status == OK and reply.revision == leader.kv.revision
    assert keys(reply.result) == [b"p/0", b"p/1"] and reply.result.more  # cut by the budget
    assert reply.result.count == 3
    writes = [r for i, r in c.replies if r.req[0] == "w"]
    assert [r.revision for r in writes] == sorted(r.revision for r in writes)
    assert writes[-1].revision == leader.kv.revision
