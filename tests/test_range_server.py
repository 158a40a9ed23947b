"""Ranges and revisions through the real daemon: three ``serve()`` on loopback, the Python
client over real sockets (and the raw protocol where the wire itself is the point)."""

from __future__ import annotations

import trio

from fastpath import FrameReader

from daemon.core.kv import prefix_end
from daemon.client.client import Client, KeyValue
from tests.test_server import TEST_TIMEOUT, running_cluster

MAX_FRAME = 4 * 1024 * 1024  # write_config's limits.max_frame_bytes
BIG_VALUE = 200 * 1024  # under write_config's max_batch_bytes (256 KiB)


def endpoints(cluster) -> list[str]:
    return [str(cluster.client_address(i)) for i in (1, 2, 3)]


async def test_replies_name_revisions_and_ranges_read_keys_in_order(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            await cluster.wait_for_leader()
            async with Client(endpoints(cluster), timeout=10) as client:
                revisions = [await client.put(k, v) for k, v in
                             [("svc/b", "2"), ("svc/a", "1"), ("other", "x"), ("svc/c", "3")]]
                assert revisions == sorted(revisions) and len(set(revisions)) == 4
                again = await client.put("svc/a", "1+")
                assert again > revisions[-1] and client.revision == again

                listing = await client.range("svc/", prefix=True)
                assert [kv.key for kv in listing.kvs] == [b"svc/a", b"svc/b", b"svc/c"]
                assert listing.kvs[0] == KeyValue(b"svc/a", b"1+", revisions[1], again, 2, 0)
                assert listing.count == 3 and not listing.more
                assert listing.revision >= again

                single = await client.range("svc/b")
                assert single.kvs == [KeyValue(b"svc/b", b"2", revisions[0], revisions[0], 1, 0)]
                assert (await client.range("svc/zz")).kvs == []
                between = await client.range("svc/a", "svc/c")
                assert [kv.key for kv in between.kvs] == [b"svc/a", b"svc/b"]

                first = await client.range("svc/", prefix=True, limit=2)
                assert len(first.kvs) == 2 and first.more and first.count == 3
                rest = await client.range(first.kvs[-1].key + b"\x00", prefix_end(b"svc/"))
                assert [kv.key for kv in rest.kvs] == [b"svc/c"] and not rest.more

                keys = await client.range("svc/", prefix=True, keys_only=True)
                assert [kv.value for kv in keys.kvs] == [None] * 3
                counted = await client.range("svc/", prefix=True, count_only=True)
                assert counted.kvs == [] and counted.count == 3

                assert await client.delete("svc/b") is True
                deleted_at = client.revision
                await client.put("svc/b", "new")
                recreated = (await client.range("svc/b")).kvs[0]
                assert recreated.create_revision > deleted_at and recreated.version == 1


async def test_a_range_reply_stays_within_the_message_limit_and_a_walk_gets_every_key(tmp_path):
    """Ten values of 200 KiB do not fit in one reply (max_frame_bytes / 2): the reply says
    more, and concurrent ranges each come in a frame of their own, none over the client's
    frame limit (the server's own)."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            await cluster.wait_for_leader()
            async with Client(endpoints(cluster), timeout=10, max_frame=MAX_FRAME) as client:
                for i in range(12):
                    await client.put(b"big/%02d" % i, bytes([i]) * BIG_VALUE)
                first = await client.range("big/", prefix=True)
                assert first.more and first.count == 12
                assert 0 < len(first.kvs) * BIG_VALUE <= MAX_FRAME // 2
                seen = [kv.key for kv in first.kvs]
                page = first
                while page.more:
                    page = await client.range(seen[-1] + b"\x00", prefix_end(b"big/"))
                    assert page.kvs
                    seen += [kv.key for kv in page.kvs]
                assert seen == [b"big/%02d" % i for i in range(12)]

            # Four ranges in one request frame are answered together: each reply in a frame
            # of its own, none over the limit the client reads with.
            raw = await cluster.client(client.leader and _node_of(cluster, client.leader))
            raw.reader = FrameReader(MAX_FRAME)
            replies = await raw.call_many([["range", 0, 0, b"big/", b"big0", None]] * 4)
            assert [len(r.result[0]) for r in replies] == [len(first.kvs)] * 4
            await raw.aclose()


def _node_of(cluster, address: str) -> int:
    return next(i for i in (1, 2, 3) if str(cluster.client_address(i)) == address)


async def test_the_raw_protocol_carries_revisions_and_names_a_bad_range_field(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            leader = await cluster.wait_for_leader()
            c = await cluster.client(leader)
            put = await c.call("put", 1, 1, b"k", b"v")
            assert put.status == "ok" and put.revision >= 1
            get = await c.call("get", key=b"k")  # a request of before revisions still works
            assert (get.result, get.revision) == (b"v", put.revision)
            reply = await c.call("range", 0, 0, b"k", b"l")
            assert reply.result == [[[b"k", b"v", put.revision, put.revision, 1, 0]], 1, False]
            assert reply.revision == put.revision
            bad = await c.call("range", 0, 9, b"k", b"l")
            assert bad.status == "error" and "request.seq (a range's flags" in bad.result
            status = (await c.call("status")).result
            assert status["revision"] == put.revision
            await c.aclose()
