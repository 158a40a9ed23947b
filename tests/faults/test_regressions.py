"""Regression tests for bugs the fault tests found, each the smallest scenario that shows it."""

from __future__ import annotations

import trio

from daemon.client import Client


async def test_a_client_cancelled_while_it_closes_exits_its_nursery():
    # Found by the campaign: when the workload's scope was cancelled, Client.__aexit__ raised
    # Cancelled from aclose() before exiting its nursery, and trio reported "Nursery stack
    # corrupted". The client must leave the task tree as it found it.
    with trio.CancelScope() as scope:
        async with Client(["127.0.0.1:1"]):
            scope.cancel()
    assert scope.cancelled_caught
