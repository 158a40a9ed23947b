"""Locks through the real daemon: three ``serve()`` on loopback, contenders over real sockets:
holders never overlap and go in queue order, a fenced write is refused once the lock moved
on, and a holder's lost lease gives the lock to the next in line."""

from __future__ import annotations

import pytest
import trio

from daemon.client.client import Client
from daemon.client.lock import FencedOut
from tests.test_range_server import endpoints
from tests.test_server import TEST_TIMEOUT, running_cluster


async def test_holders_never_overlap_and_take_turns_in_queue_order(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            await cluster.wait_for_leader()
            async with Client(endpoints(cluster), timeout=10) as client:
                inside: list[int] = []
                turns: list[tuple[int, int]] = []  # (contender, fencing token)

                async def contend(n: int) -> None:
                    async with client.lock("locks/job", ttl=5) as held:
                        assert inside == [], inside  # nobody else holds it
                        inside.append(n)
                        turns.append((n, held.revision))
                        await client.put("locks/state", f"{n}", fence=held.fence)
                        await trio.sleep(0.05)
                        inside.remove(n)

                async with trio.open_nursery() as nursery:
                    for n in range(5):
                        nursery.start_soon(contend, n)
                        await trio.sleep(0.01)
                assert len(turns) == 5
                tokens = [token for _n, token in turns]
                assert tokens == sorted(tokens)  # first come, first served
                assert (await client.range("locks/job/", prefix=True)).count == 0  # released


async def test_a_fenced_write_is_refused_once_the_lock_moved_on(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            await cluster.wait_for_leader()
            async with Client(endpoints(cluster), timeout=10) as client:
                async with client.lock("locks/db", ttl=5) as first:
                    await client.put("db/owner", "first", fence=first.fence)
                    stale = first.fence
                async with client.lock("locks/db", ttl=5) as second:
                    assert second.revision > stale[1]
                    with pytest.raises(FencedOut, match="moved on"):
                        await client.put("db/owner", "first again", fence=stale)
                    with pytest.raises(FencedOut):
                        await client.delete("db/owner", fence=stale)
                    await client.put("db/owner", "second", fence=second.fence)
                assert await client.get("db/owner") == b"second"
                with pytest.raises(ValueError, match="a fence is"):
                    await client.put("db/owner", "x", fence=("k", 0))


async def test_a_holder_whose_lease_is_revoked_loses_the_lock_to_the_next(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            await cluster.wait_for_leader()
            async with Client(endpoints(cluster), timeout=10) as client:
                got = trio.Event()
                order = []

                async def second() -> None:
                    async with client.lock("locks/x", ttl=5) as held:
                        order.append(("second", held.revision))
                        got.set()

                async with client.lock("locks/x", ttl=5) as first:
                    order.append(("first", first.revision))
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(second)
                        with trio.fail_after(5):  # until the second is in line
                            while (await client.range("locks/x/", prefix=True)).count < 2:
                                await trio.sleep(0.02)
                        assert not got.is_set()  # it waits in line
                        await client.lease_revoke(first.lease.id)  # as if it expired
                        await got.wait()
                        with pytest.raises(FencedOut):
                            await client.put("x/owner", "first", fence=first.fence)
                assert [who for who, _ in order] == ["first", "second"]
