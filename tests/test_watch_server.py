"""Watches through the real daemon: three ``serve()`` on loopback, the Python client over real
sockets, and the raw protocol where the wire itself is the point (a reader that does not read,
a connection that closes)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from daemon.codec import wire
from daemon.runtime.server import serve
from daemon.client import txn
from daemon.client.client import Client, KeyValue
from daemon.client.watch import WatchCompacted
from tests.test_server import TEST_TIMEOUT, Cluster, write_config

BIG_VALUE = 200 * 1024


@asynccontextmanager
async def watch_cluster(tmp_path, watch: str = ""):
    """Three nodes; ``watch``: the watch section's settings, as YAML flow mapping items."""
    path = write_config(tmp_path)
    if watch:
        path.write_text(path.read_text() + f"watch: {{{watch}}}\n")
    cluster = Cluster(path)
    async with trio.open_nursery() as nursery:
        for i, config in cluster.configs.items():
            cluster.servers[i] = await nursery.start(partial(serve, new_cluster=True), config)
        try:
            await cluster.wait_for_leader()
            yield cluster
        finally:
            nursery.cancel_scope.cancel()


def endpoints(cluster, among=(1, 2, 3)) -> list[str]:
    return [str(cluster.client_address(i)) for i in among]


async def take(events, n: int) -> list:
    out = []
    async for event in events:
        out.append(event)
        if len(out) == n:
            return out
    raise AssertionError(f"the watch ended after {len(out)} events")


async def test_a_watch_sees_puts_deletes_and_a_transaction_with_previous_records(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with watch_cluster(tmp_path) as cluster:
            async with Client(endpoints(cluster), timeout=10) as client:
                first = await client.put("svc/a", "1")
                follower = next(i for i in (1, 2, 3) if cluster.servers[i].node.role != "leader")
                # served by a follower, from its own applied state
                async with Client(endpoints(cluster, [follower]), timeout=10) as there:
                    async with there.watch("svc/", prefix=True, prev_kv=True,
                                           start_revision=first + 1) as events:
                        await client.put("other", "x")
                        await client.put("svc/b", "2")
                        await client.delete("svc/a")
                        done = await client.txn([], [txn.put("svc/c", "3"), txn.put("svc/b", "4"),
                                                     txn.delete("svc/c")])
                        seen = await take(events, 5)
                assert [(e.type, e.key, e.value) for e in seen] == [
                    ("put", b"svc/b", b"2"), ("delete", b"svc/a", None),
                    ("put", b"svc/c", b"3"), ("put", b"svc/b", b"4"), ("delete", b"svc/c", None)]
                assert seen[1].prev == KeyValue(b"svc/a", b"1", first, first, 1, 0)
                assert seen[3].prev.value == b"2" and seen[0].prev is None
                assert seen[3].version == 2 and seen[3].create_revision == seen[0].revision
                # the transaction's changes: one revision, its own
                assert {e.revision for e in seen[2:]} == {done.revision}
                assert seen[0].revision < seen[1].revision < done.revision


async def test_a_watch_resumes_from_an_old_revision_and_below_the_history_is_compacted(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with watch_cluster(tmp_path, "history_revisions: 20") as cluster:
            async with Client(endpoints(cluster), timeout=10) as client:
                revisions = [await client.put(f"k/{i}", str(i)) for i in range(5)]
                async with client.watch("k/", prefix=True, start_revision=revisions[1]) as events:
                    seen = await take(events, 4)
                assert [e.revision for e in seen] == revisions[1:]
                assert [e.value for e in seen] == [b"1", b"2", b"3", b"4"]
                for i in range(25):
                    await client.put("k/x", str(i))
                with pytest.raises(WatchCompacted) as err:
                    async with client.watch("k/", prefix=True, start_revision=revisions[1]) as events:
                        await take(events, 1)
                assert err.value.revision >= revisions[-1] and "list again" in str(err.value)
                # from the compacted revision + 1 the history holds everything
                async with client.watch("k/", prefix=True,
                                        start_revision=err.value.revision + 1) as events:
                    assert (await take(events, 1))[0].revision == err.value.revision + 1


async def test_a_reader_that_does_not_read_is_cut_off_with_its_reason(tmp_path):
    """max_pending_bytes 64 KiB; 80 puts of 200 KiB (16 MB, more than the socket buffers
    hold) while the watcher reads nothing: the server cuts the watch off instead of queueing,
    and what came before the reason is every change up to the revision it names."""
    with trio.fail_after(TEST_TIMEOUT):
        async with watch_cluster(tmp_path, "max_pending_bytes: 65536") as cluster:
            leader = await cluster.wait_for_leader()
            raw = await cluster.client(leader)
            await raw.send([wire.encode_watch_request(1, 0, b"big/", b"big0", False)])
            async with Client(endpoints(cluster), timeout=10) as client:
                for i in range(80):
                    await client.put(b"big/%02d" % i, bytes([i]) * BIG_VALUE)
            replies = []
            while not replies or replies[-1].status == wire.REPLY_STATUSES[6]:  # "events"
                data = await raw.stream.receive_some(1 << 20)
                assert data, "the server closed the connection"
                for payload in raw.reader.feed(data):
                    replies += [wire.decode_reply(obj) for obj in wire.loads(payload)]
                while replies and replies[-1].status == "ok":
                    replies.pop()
            await raw.aclose()
            end = replies[-1]
            assert end.status == "cancelled" and "too slow" in end.result
            assert "watch.max_pending_bytes is 65536" in end.result
            assert f"resume from revision {end.revision + 1}" in end.result
            keys = [e[1] for r in replies[:-1] for e in wire.decode_events(r.result)]
            assert keys == [b"big/%02d" % i for i in range(len(keys))] and len(keys) < 80
            assert cluster.servers[leader].watches.count() == 0


async def test_unwatch_ends_a_watch_and_a_closed_connection_frees_its_watches(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with watch_cluster(tmp_path) as cluster:
            server = cluster.servers[1]
            raw = await cluster.client(1)
            raw.next_id = 100  # the ids below are the watches'
            await raw.send([wire.encode_watch_request(1, 0, b"a", None, False),
                            wire.encode_watch_request(2, 0, b"b", None, False)])
            (gone,) = await raw.call_many([["unwatch", 1, 0, b"", None, None]])
            assert gone.status == "ok" and gone.result is True
            assert [raw.replies[i].status for i in (1,)] == ["cancelled"]
            assert raw.replies[1].result == "cancelled by the client"
            (again,) = await raw.call_many([["unwatch", 1, 0, b"", None, None]])
            assert again.result is False and server.watches.count() == 1
            (bad,) = await raw.call_many([["watch", 2, 0, b"a", None, None]])
            assert bad.status == "error" and "flags" in bad.result
            await raw.aclose()
            while server.watches.count():  # dropped at the next tick
                await trio.sleep(0.01)


async def test_the_sync_client_watches_and_is_cut_off_like_the_async_one(tmp_path):
    from daemon.client.client import SyncClient

    with trio.fail_after(TEST_TIMEOUT):
        async with watch_cluster(tmp_path) as cluster:
            async with Client(endpoints(cluster), timeout=10) as client:
                revision = await client.put("s", "1")
                await client.put("s", "2")

            def follow():
                with SyncClient(endpoints(cluster), timeout=10) as sync:
                    with sync.watch("s", start_revision=revision) as events:
                        return [next(events).value, next(events).value]

            assert await trio.to_thread.run_sync(follow) == [b"1", b"2"]

