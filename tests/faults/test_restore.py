"""Backup and restore on real processes, as the README's "Backup and restore" says it: save a
snapshot from a running 3-node cluster, stop every node, wipe every data directory, restore each
member from the file, start them with a plain serve. Every key reads back with its revisions, a
new write gets a higher revision, the leases are there and renewable, and a retry of a write an
old client made before the backup is refused, not applied again."""

from __future__ import annotations

import shutil

import trio

from daemon.client.client import Client, SessionExpired
from daemon.core.membership import MEMBERS_KEY
from daemon.tools.cli import read_range
from tests.faults.cluster import ProcessCluster, put_concurrently
from tests.test_cli import paxosd

KEYS = 2000
LEASED = 100
WRITERS = 32
OLD_CLIENT = 4242  # a session the test drives by hand


async def _write(endpoints: list[str]) -> int:
    """KEYS plain keys and LEASED keys on one lease; one write under OLD_CLIENT's session."""
    async with Client(endpoints, timeout=20) as client:
        await put_concurrently(client, ((f"data/{i:05d}", f"value {i}") for i in range(KEYS)),
                               WRITERS)
        lease = await client.lease_grant(3600)
        for i in range(LEASED):
            await client.put(f"leased/{i:03d}", "held", lease=lease.id)
        await client.submit("put", "old/session", "once", client_id=OLD_CLIENT, seq=1)
        return lease.id


async def _listing(endpoints: list[str]) -> tuple[list, int]:
    """Every client key with its value and revisions, and the revision it was read at."""
    async with Client(endpoints, timeout=20) as client:
        response = await read_range(client, b"", prefix=True, limit=0, keys_only=False,
                                    count_only=False)
        # The membership key is the cluster's own: the restore writes the new members there.
        return ([kv for kv in response["kvs"] if kv.key != MEMBERS_KEY],
                response["revision"])


def test_backup_wipe_restore_serves_every_key_with_its_revisions(tmp_path):
    cluster = ProcessCluster(tmp_path, 3, proxy=False)
    config = str(cluster.config_path[None])
    backup = str(tmp_path / "backup.snap")
    try:
        cluster.start_all()
        lease_id = trio.run(_write, cluster.endpoints)
        before, revision = trio.run(_listing, cluster.endpoints)
        assert len(before) == KEYS + LEASED + 1

        saved = paxosd("snapshot", "save", backup, "-c", config)
        assert saved.returncode == 0, saved.stderr
        status = paxosd("snapshot", "status", backup)
        assert status.returncode == 0, status.stderr
        assert f"revision: {revision}" in status.stdout
        assert f"keys: {KEYS + LEASED + 1}" in status.stdout

        for i in cluster.ids:
            assert cluster.terminate(i) == 0
        shutil.rmtree(tmp_path / "data")
        for i in cluster.ids:
            restored = paxosd("snapshot", "restore", backup, "-c", config, "--node-id", str(i))
            assert restored.returncode == 0, restored.stderr
        cluster.start_all()

        after, _ = trio.run(_listing, cluster.endpoints)
        assert after == before

        async def use_it() -> None:
            async with Client(cluster.endpoints, timeout=20) as client:
                assert (await client.put("new", "write")) > revision
                assert await client.lease_keepalive(lease_id) == 3600
                record = (await client.range("old/session")).kvs[0]
                try:
                    await client.submit("put", "old/session", "once", client_id=OLD_CLIENT,
                                        seq=1)
                    raise AssertionError("the old session's retry was answered, not refused")
                except SessionExpired:
                    pass
                assert (await client.range("old/session")).kvs[0] == record

        trio.run(use_it)
        assert not cluster.unexpected_exits()
    finally:
        cluster.close()
