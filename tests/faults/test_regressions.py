"""Regression tests for bugs the fault tests found, each the smallest scenario that shows it."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import trio

from daemon.client.client import Client
from tests.faults.workload import Workload, lost_writes
from tests.linearizability import Operation

REPO = Path(__file__).resolve().parents[2]


async def test_a_client_cancelled_while_it_closes_exits_its_nursery():
    # Found by the campaign: when the workload's scope was cancelled, Client.__aexit__ raised
    # Cancelled from aclose() before exiting its nursery, and trio reported "Nursery stack
    # corrupted". The client must leave the task tree as it found it.
    with trio.CancelScope() as scope:
        async with Client(["127.0.0.1:1"]):
            scope.cancel()
    assert scope.cancelled_caught


async def test_a_write_cut_short_when_the_workload_stops_stays_in_the_history():
    # Found by a 5-node campaign (seed 11): writes in flight when the workload's deadline
    # cancelled it were left out of the history, yet reached the leader and were applied; the
    # read-back then saw values no recorded write had made and reported acknowledged writes as
    # lost. A cancelled write may have been applied: it is recorded with an unknown outcome.
    async def silent(stream):  # accepts and reads, never answers
        async with stream:
            while await stream.receive_some(65536):
                pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        workload = Workload([f"127.0.0.1:{port}"], timeout=30.0, attempt_timeout=20.0)
        async with Client(workload.endpoints, timeout=30.0, attempt_timeout=20.0) as client:
            with trio.move_on_after(0.3) as scope:
                await workload._write(client, 0, "put", b"k0", b"c0-1", None)
        assert scope.cancelled_caught
        nursery.cancel_scope.cancel()
    [op] = workload.history
    assert (op.client, op.op, op.key, op.value, op.ret) == (0, "put", b"k0", b"c0-1", None)
    assert workload.counts["put cancelled"] == 1
    # And the read-back accepts that value as the cut-short write's, not as a lost write.
    ack = Operation(1, "put", b"k0", b"c1-1", None, op.call - 1, op.call - 0.5, None)
    assert lost_writes([ack, op], {b"k0": b"c0-1"}) == []
    assert lost_writes([ack], {b"k0": b"c0-1"}) != []


def _nodes_under(directory: Path) -> list[int]:
    """Pids of the node processes whose command line names a file in ``directory``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"daemon.runtime.server" in argv and any(str(directory).encode() in a for a in argv):
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_a_campaign_ended_by_sigterm_ends_the_nodes_it_started(tmp_path):
    # Found when a long campaign was stopped with kill: SIGTERM ended the runner at once and
    # its nodes were left running, holding their ports. SIGTERM must end them, as Ctrl-C does.
    work = tmp_path / "campaign"
    runner = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.campaign", "--seconds", "60", "--seed", "3",
         "--dir", str(work), "--verbose"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    nodes: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(nodes) < 3 and runner.poll() is None:
            time.sleep(0.2)
            nodes = _nodes_under(work)
        assert len(nodes) == 3, f"the campaign did not start its 3 nodes: {nodes}"
        # Into the workload and faults: --verbose prints each fault as it is injected.
        assert select.select([runner.stdout], [], [], 30)[0], "no fault within 30 s"
        first = runner.stdout.readline().decode()
        assert first.strip(), "the campaign ended before its first fault"
        runner.send_signal(signal.SIGTERM)
        runner.communicate(timeout=30)
        left = [pid for pid in _nodes_under(work) if pid in nodes]
        assert not left, f"nodes {left} outlived the campaign"
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        for pid in _nodes_under(work):
            os.kill(pid, signal.SIGKILL)
