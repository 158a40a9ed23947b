"""Transactions through the real daemon: three ``serve()`` on loopback, the Python client over
real sockets."""

from __future__ import annotations

import pytest
import trio

from daemon.client.client import Client, KeyValue, OperationFailed
from daemon.client.txn import (
    cas_txn,
    compare_mod,
    compare_value,
    compare_version,
    delete,
    get_range,
    put,
)
from tests.test_range_server import MAX_FRAME, endpoints
from tests.test_server import TEST_TIMEOUT, running_cluster


async def test_txn_runs_one_branch_as_one_revision(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            await cluster.wait_for_leader()
            async with Client(endpoints(cluster), timeout=10) as client:
                first = await client.put("job/a", "1")
                await client.put("job/b", "2")
                done = await client.txn(
                    [compare_value("job/a", "=", "1"), compare_mod("job/a", "=", first)],
                    [put("job/a", "1+"), put("job/c", "3"), delete("job/b"),
                     get_range("job/", prefix=True)],
                    [get_range("job/a")])
                assert done.succeeded and done.revision == client.revision
                assert done.results[:3] == [None, None, 1]
                listing = done.results[3]
                assert listing.kvs == [KeyValue(b"job/a", b"1+", first, done.revision, 2, 0),
                                       KeyValue(b"job/c", b"3", done.revision, done.revision,
                                                1, 0)]
                assert listing.revision == done.revision

                other = await client.txn([compare_version("job/a", "=", 0)],
                                         [put("job/a", "never")], [get_range("job/a")])
                assert not other.succeeded and other.revision == done.revision + 1
                assert other.results[0].kvs[0].value == b"1+"

                swapped = await client.txn(*cas_txn("job/new", None, "x"))
                assert swapped.succeeded and await client.get("job/new") == b"x"
                assert not (await client.txn(*cas_txn("job/new", None, "y"))).succeeded

                gone = await client.txn([], [delete("job/", prefix=True)])
                assert gone.results == [3]
                assert (await client.range("job/", prefix=True)).count == 0


async def test_bad_and_oversized_txns_get_clear_errors(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            await cluster.wait_for_leader()
            async with Client(endpoints(cluster), timeout=10, max_frame=MAX_FRAME) as client:
                with pytest.raises(ValueError, match=r"compares\[0\].op"):
                    await client.txn([[b"k", "value", "~", b"v"]], [])
                big = [put(f"k{i}", "v" * 8192) for i in range(MAX_FRAME // 8192 + 1)]
                with pytest.raises(ValueError, match="exceeds the message limit"):
                    await client.txn([], big)
                # Under the message limit, over the server's command bound: refused whole.
                with pytest.raises(OperationFailed, match="exceeds max_batch_bytes"):
                    await client.txn([], big[:40])
                assert await client.get("k0") is None
                # A raw request past the client's checks: the server names the field.
                with pytest.raises(OperationFailed, match="reserved for membership"):
                    await client._write("txn", b"", [], [[["delete", b"", b""]], []], None)
