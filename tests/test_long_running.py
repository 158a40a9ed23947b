"""Snapshots and log compaction in the running daemon: the log stays small, restarts work."""

import trio

from daemon.runtime.server import serve
from daemon.runtime.storage import WAL_FILE, read_snapshot
from tests.test_server import Cluster, write_config

TEST_TIMEOUT = 60


def compacting_config(tmp_path, every: int):
    path = write_config(tmp_path)
    text = path.read_text()
    assert "storage: {fsync: true}" in text
    path.write_text(text.replace("storage: {fsync: true}",
                                 f"storage: {{fsync: true, snapshot_every_slots: {every}}}"))
    return Cluster(path)


async def run_cluster(cluster, body):
    async with trio.open_nursery() as nursery:
        for i, config in cluster.configs.items():
            cluster.servers[i] = await nursery.start(serve, config)
        try:
            await body()
        finally:
            nursery.cancel_scope.cancel()


async def test_nodes_snapshot_compact_their_log_and_restart_from_the_snapshot(tmp_path):
    cluster = compacting_config(tmp_path, every=10)
    writes = 80

    async def write_one_at_a_time():
        leader = await cluster.wait_for_leader()
        c = await cluster.client(leader)
        for i in range(writes):  # one command per slot: many slots, many snapshots
            assert (await c.call("put", 500 + i, 1, b"k%d" % i, b"v%d" % i)).status == "ok"
        # Let the followers learn the last commit index from a heartbeat or two.
        with trio.fail_after(10):
            while min(s.node.commit_index for s in cluster.servers.values()) < writes:
                await trio.sleep(0.02)
        await c.aclose()

    with trio.fail_after(TEST_TIMEOUT):
        await run_cluster(cluster, write_one_at_a_time)
    for i, config in cluster.configs.items():
        node_dir = config.node_dir(i)
        index, blob = read_snapshot(node_dir)
        assert index >= writes - 10, (i, index)
        # The log holds the checkpoint and what came after the last snapshot, not 80 slots.
        assert (node_dir / WAL_FILE).stat().st_size < 4000, i

    async def read_back():
        leader = await cluster.wait_for_leader()
        c = await cluster.client(leader)
        for i in range(writes):
            assert (await c.call("get", key=b"k%d" % i)).result == b"v%d" % i
        # A retried write from before the snapshots is still answered from its session.
        assert (await c.call("put", 500, 1, b"k0", b"again")).status == "ok"
        assert (await c.call("get", key=b"k0")).result == b"v0"
        await c.aclose()

    cluster.servers.clear()
    with trio.fail_after(TEST_TIMEOUT):
        await run_cluster(cluster, read_back)


async def test_leadership_can_be_handed_to_a_named_node_and_writes_go_on(tmp_path):
    from daemon.client.client import Client

    cluster = compacting_config(tmp_path, every=1000)

    async def hand_over():
        leader = await cluster.wait_for_leader()
        target = next(i for i in (1, 2, 3) if i != leader)
        endpoints = [str(cluster.client_address(i)) for i in (1, 2, 3)]
        async with Client.connect(endpoints, timeout=10) as c:
            await c.put("before", "1")
            await c.transfer_leader(target)
            assert cluster.servers[target].node.role == "leader"
            await c.put("after", "2")
            assert await c.get("before") == b"1" and await c.get("after") == b"2"

    with trio.fail_after(TEST_TIMEOUT):
        await run_cluster(cluster, hand_over)
