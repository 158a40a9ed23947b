"""A watch across a leader failover, on real processes: three paxosd nodes, a watcher
connected to the leader, writes going on while the leader is killed with SIGKILL. The watch
goes on at another node from the last revision it saw, and sees every change exactly once, in
revision order: replaying its changes gives what a final range read finds."""

from __future__ import annotations

import trio

from daemon.client.client import Client, OutcomeUnknown
from tests.faults.cluster import ProcessCluster

WRITES = 150
KILL_AFTER = 50  # acknowledged writes before the leader is killed
KEYS = 7


async def test_a_watcher_sees_every_change_once_in_order_across_a_leader_failover(tmp_path):
    cluster = ProcessCluster(tmp_path, 3, proxy=False)
    try:
        cluster.start_all()
        with trio.fail_after(60):
            leader = await cluster.wait_for_leader()
            assert leader is not None, await cluster.describe()
            there = f"127.0.0.1:{cluster.client_port[leader]}"
            others = [e for e in cluster.endpoints if e != there]
            async with Client(cluster.endpoints, timeout=20) as writer, \
                    Client([there, *others], timeout=20) as watcher:
                base = await writer.put("before", "x")
                events = []
                acked: dict[int, tuple[bytes, bytes]] = {}  # revision -> (key, value)
                async with watcher.watch("f/", prefix=True, start_revision=base + 1) as watch:
                    assert watch.address == there  # on the leader, to begin with

                    async def follow() -> None:
                        async for event in watch:
                            events.append(event)
                            if watch.revision >= final_revision[0]:
                                return

                    final_revision = [1 << 62]  # until the listing below says
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(follow)
                        for i in range(WRITES):
                            if len(acked) == KILL_AFTER:
                                cluster.kill(leader)
                            key, value = b"f/%d" % (i % KEYS), b"v%d" % i
                            try:
                                acked[await writer.put(key, value)] = (key, value)
                            except OutcomeUnknown:
                                pass  # applied or not: the read below says
                        listing = await writer.range("f/", prefix=True)
                        final_revision[0] = listing.revision
                        await writer.put("f/last", "x")  # so the watch gets past the read
                    assert watch.address != there  # it went on at another node
    finally:
        cluster.close()

    revisions = [e.revision for e in events]
    assert revisions == sorted(set(revisions))  # in order, each revision once (puts only)
    values = [e.value for e in events]
    assert len(values) == len(set(values))  # each change once
    seen = {e.revision: (e.key, e.value) for e in events}
    for revision, change in acked.items():
        assert seen.get(revision) == change, f"acknowledged write at {revision} not seen once"
    state: dict[bytes, bytes] = {}
    for event in events:
        if event.revision <= listing.revision:
            state[event.key] = event.value
    assert state == {kv.key: kv.value for kv in listing.kvs}
    assert len(acked) > KILL_AFTER  # writes were acknowledged after the failover too
