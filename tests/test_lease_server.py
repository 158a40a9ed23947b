"""Leases through the real daemon: three ``serve()`` on loopback, the Python client over real
sockets: grant, attach, keepalive, time-to-live, revoke, expiry, and the errors."""

from __future__ import annotations

import pytest
import trio

from daemon.client.client import Client, OperationFailed
from daemon.client.leases import LeaseNotFound
from tests.test_range_server import endpoints
from tests.test_server import TEST_TIMEOUT, running_cluster


async def test_a_lease_kept_alive_holds_its_keys_and_revoking_deletes_them(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            await cluster.wait_for_leader()
            async with Client(endpoints(cluster), timeout=10) as client:
                async with client.lease(1) as lease:
                    assert lease.ttl == 1 and lease.id >= 1
                    revision = await client.put("svc/a", "10.0.0.1", lease=lease.id)
                    await client.put("svc/b", "10.0.0.2", lease=lease.id)
                    await trio.sleep(2.5)  # past the TTL: the keepalives hold it
                    found = await client.range("svc/", prefix=True)
                    assert [kv.key for kv in found.kvs] == [b"svc/a", b"svc/b"]
                    assert found.kvs[0].lease == lease.id
                    assert found.kvs[0].mod_revision == revision
                    status = await client.lease_ttl(lease.id)
                    assert status.ttl == 1 and status.keys == [b"svc/a", b"svc/b"]
                    assert 0 <= status.left <= 1
                    assert not lease.lost.is_set()
                assert (await client.range("svc/", prefix=True)).count == 0  # revoked
                with pytest.raises(LeaseNotFound):
                    await client.lease_keepalive(lease.id)
                assert await client.lease_revoke(lease.id) is False


async def test_a_lease_left_alone_expires_and_its_keys_go(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            await cluster.wait_for_leader()
            async with Client(endpoints(cluster), timeout=10) as client:
                lease = await client.lease_grant(1)
                await client.put("tmp/x", "1", lease=lease.id)
                await client.put("tmp/y", "2")  # not attached: stays
                assert await client.lease_keepalive(lease.id) == 1
                with trio.fail_after(5):
                    while await client.get("tmp/x") is not None:
                        await trio.sleep(0.05)
                assert await client.get("tmp/y") == b"2"
                with pytest.raises(LeaseNotFound):
                    await client.lease_ttl(lease.id)
                with pytest.raises(LeaseNotFound, match=f"lease {lease.id} not found"):
                    await client.put("tmp/z", "3", lease=lease.id)
                assert await client.get("tmp/z") is None


async def test_bad_lease_arguments_get_clear_errors(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            await cluster.wait_for_leader()
            async with Client(endpoints(cluster), timeout=10) as client:
                with pytest.raises(ValueError, match="whole seconds"):
                    await client.lease_grant(0)
                with pytest.raises(ValueError, match="positive integer"):
                    await client.lease_keepalive(-1)
                # The server checks too: a raw request with a TTL of the wrong type.
                with pytest.raises(OperationFailed, match="TTL in seconds"):
                    await client.submit("lease_grant", b"", None, client_id=5, seq=1)
