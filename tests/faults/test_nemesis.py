"""Faults on real processes: the proxy itself, stale reads from a paused or cut-off leader, and
short seeded campaigns (every fault kind, power cuts alone) whose histories must be
linearizable with no acknowledged write lost, and whose coordination load (watches, a lease,
transactions, ranges: tests.faults.coord) must pass its checks.

The campaigns here are short (the suite's budget); ``python -m tests.faults.campaign`` runs
long ones. ``PAXOSD_FAULT_SEED`` changes the seed of the campaigns in this file.
"""

from __future__ import annotations

import os

import pytest
import trio

from fastpath import FrameReader, dumps, encode_frame, loads

from daemon.codec import wire
from daemon.client.client import Client
from tests.faults.campaign import run_campaign
from tests.faults.cluster import ProcessCluster
from tests.faults.proxy import FaultProxy

SEED = int(os.environ.get("PAXOSD_FAULT_SEED", "20240501"))
TEST_TIMEOUT = 60

# ------------------------------------------------------------------------------ the proxy


class Echo:
    """A TCP echo server that counts what it received."""

    def __init__(self) -> None:
        self.received = 0
        self.port = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._echo, listeners, task_status=task_status)

    async def _echo(self, stream) -> None:
        try:
            while data := await stream.receive_some(65536):
                self.received += len(data)
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def until(predicate, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def receive_or_closed(stream, timeout: float = 5.0) -> bytes | None:
    """What arrives next (b"" when the proxy closed the connection); None if nothing within
    ``timeout``."""
    with trio.move_on_after(timeout):
        try:
            return await stream.receive_some(65536)
        except (trio.BrokenResourceError, OSError):
            return b""
    return None


@pytest.fixture
async def proxied_echo(nursery):
    echo = Echo()
    await nursery.start(echo.run)
    proxy = FaultProxy({1: 9, 2: echo.port})  # node 1 dials node 2, the echo server
    await nursery.start(proxy.run)
    yield echo, proxy
    proxy.close()


async def test_the_proxy_forwards_both_ways(proxied_echo):
    echo, proxy = proxied_echo
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port(1, 2))
    await stream.send_all(b"hello")
    assert await receive_or_closed(stream) == b"hello"
    await stream.aclose()


async def test_a_one_way_cut_drops_that_direction_and_the_heal_resets_the_connection(
        proxied_echo):
    echo, proxy = proxied_echo
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port(1, 2))
    proxy.set_blocked({(2, 1)})  # the answers are lost, the requests arrive
    await stream.send_all(b"abc")
    await until(lambda: echo.received == 3)
    assert await receive_or_closed(stream, timeout=0.3) is None  # nothing came back
    proxy.heal()  # a stream that lost bytes cannot go on: closed, never resumed with a hole
    assert await receive_or_closed(stream) == b""
    fresh = await trio.open_tcp_stream("127.0.0.1", proxy.port(2, 1))
    await fresh.send_all(b"again")
    assert await receive_or_closed(fresh) == b"again"
    await fresh.aclose()
    await stream.aclose()


async def test_a_cut_holds_new_connections_silent_and_reset_closes_live_ones(proxied_echo):
    echo, proxy = proxied_echo
    live = await trio.open_tcp_stream("127.0.0.1", proxy.port(1, 2))
    await live.send_all(b"x")
    assert await receive_or_closed(live) == b"x"
    proxy.set_blocked({(1, 2), (2, 1)})
    cut = await trio.open_tcp_stream("127.0.0.1", proxy.port(1, 2))  # accepted, then silence
    await cut.send_all(b"lost")
    assert await receive_or_closed(cut, timeout=0.3) is None
    assert echo.received == 1
    proxy.heal()
    assert await receive_or_closed(cut) == b""
    assert proxy.reset(1, 2) == 1  # the live connection lost nothing, so it was still up
    assert await receive_or_closed(live) == b""
    for s in (live, cut):
        await s.aclose()


# ------------------------------------------------------------------------------ stale reads


async def _get_from(port: int, key: bytes, before_reading=None, timeout: float = 3.0):
    """Send a get to one node; call ``before_reading()`` (e.g. SIGCONT) once it is sent; the
    reply, or None if none came."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(encode_frame(dumps([[1, "get", 0, 0, key, None, None]])))
        if before_reading is not None:
            before_reading()
        reader = FrameReader(1 << 20)
        with trio.move_on_after(timeout):
            while data := await stream.receive_some(65536):
                for payload in reader.feed(data):
                    return wire.decode_reply(loads(payload)[0])
        return None
    finally:
        await trio.aclose_forcefully(stream)


def _others(cluster: ProcessCluster, node: int) -> list[str]:
    return [f"127.0.0.1:{cluster.client_port[i]}" for i in cluster.ids if i != node]


def test_a_paused_leader_serves_no_stale_read_after_a_new_leader_commits(tmp_path):
    """SIGSTOP the leader; the others elect a leader and commit a new value; a read sent to the
    old leader while it is stopped (it waits in the socket) and served when it wakes must not
    return the old value. Three rounds, pausing whoever leads."""
    cluster = ProcessCluster(tmp_path, 3, proxy=False)
    answers = []

    async def scenario():
        with trio.fail_after(TEST_TIMEOUT):
            cluster.start_all()
            async with Client(cluster.endpoints, timeout=10) as client:
                for round_ in range(3):
                    old = await cluster.wait_for_leader()
                    assert old is not None
                    await client.put(b"k", b"old-%d" % round_)
                    cluster.pause(old)
                    async with Client(_others(cluster, old), timeout=10) as majority:
                        await majority.put(b"k", b"new-%d" % round_)  # a new leader committed
                    reply = await _get_from(cluster.client_port[old], b"k",
                                            before_reading=lambda: cluster.resume(old))
                    answers.append(reply)
                    if reply is not None and reply.status == "ok":
                        assert reply.result == b"new-%d" % round_, (round_, reply)

    try:
        trio.run(scenario)
    finally:
        cluster.close()
    print(f"answers of the woken leaders: {answers}")
    assert not cluster.unexpected_exits()


@pytest.mark.parametrize("cut", ["both ways", "leader cannot send", "leader cannot receive"])
def test_a_cut_off_leader_serves_no_stale_read(tmp_path, cut):
    """Cut the leader's links (by the proxy); once the others committed a new value, a read at
    the old leader (still cut off, clients still reach it) must not return the old value; after
    the heal every node agrees on the new value."""
    cluster = ProcessCluster(tmp_path, 3)

    async def scenario():
        with trio.fail_after(TEST_TIMEOUT):
            async with trio.open_nursery() as nursery:
                await nursery.start(cluster.proxy.run)
                cluster.start_all()
                old = await cluster.wait_for_leader()
                assert old is not None
                async with Client(cluster.endpoints, timeout=10) as client:
                    await client.put(b"k", b"old")
                rest = [i for i in cluster.ids if i != old]
                blocked = set()
                if cut != "leader cannot receive":
                    blocked |= {(old, i) for i in rest}
                if cut != "leader cannot send":
                    blocked |= {(i, old) for i in rest}
                cluster.proxy.set_blocked(blocked)
                async with Client(_others(cluster, old), timeout=10) as majority:
                    await majority.put(b"k", b"new")
                reply = await _get_from(cluster.client_port[old], b"k", timeout=1.0)
                if reply is not None and reply.status == "ok":
                    assert reply.result == b"new", reply
                cluster.proxy.heal()
                async with Client(cluster.endpoints, timeout=10) as client:
                    assert await client.get(b"k") == b"new"
                assert await cluster.wait_caught_up()
                nursery.cancel_scope.cancel()

    try:
        trio.run(scenario)
    finally:
        cluster.close()
    assert not cluster.unexpected_exits()


# ------------------------------------------------------------------------------ campaigns


def _assert_clean(report) -> None:
    print(report.summary())
    assert report.linearizable is True, report.summary()
    assert report.lost == [], report.summary()
    assert report.problems == [], report.summary()
    assert report.coord_violations == [], report.summary()
    assert report.coordination, "the coordination load (tests.faults.coord) did not run"
    assert report.acknowledged_writes > 0


def test_a_campaign_of_every_fault_on_three_nodes(tmp_path):
    _assert_clean(run_campaign(3, 30, SEED, tmp_path))


def test_a_campaign_of_every_fault_on_five_nodes(tmp_path):
    _assert_clean(run_campaign(5, 12, SEED + 1, tmp_path))


def test_power_cuts_lose_no_acknowledged_write(tmp_path):
    """Cycle after cycle, kill -9 a node (or all of them) while its WAL holds unsynced bytes,
    cut those bytes (sometimes leaving a torn part), restart: nothing acknowledged is lost."""
    report = run_campaign(3, 12, SEED + 2, tmp_path,
                          kinds=("power-cut", "power-cut-all", "kill-leader"))
    _assert_clean(report)
    assert report.faults["power-cut"] + report.faults["power-cut-all"] > 0
