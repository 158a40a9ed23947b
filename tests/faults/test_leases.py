"""Leases on real processes: three daemons, the holder a separate client process
(``paxosd lease keepalive``), killed by its pid.

- While the holder's keepalives are acknowledged, its key never disappears, also while the
  leader is killed with SIGKILL and another takes over (the new leader gives every lease a
  full TTL before it expires any).
- Once the holder is killed, the key disappears within TTL + one election timeout (the leader
  expires the lease on its clock and deletes the key through the log).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import trio

from daemon.client.client import Client, PaxosdError
from tests.faults.cluster import REPO, ProcessCluster

TTL = 2  # seconds
ELECTION_MS = (200, 400)
POLL = 0.02  # seconds between reads of the key


def start_holder(cluster: ProcessCluster, lease_id: int, out) -> subprocess.Popen:
    """``paxosd lease keepalive ID``: a client process renewing the lease every TTL / 3."""
    return subprocess.Popen(
        [sys.executable, "-m", "daemon.tools.cli", "lease", "keepalive", str(lease_id),
         "--endpoints", ",".join(cluster.endpoints), "--timeout", "30"],
        cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


async def absent(client: Client, key: bytes) -> bool:
    """Whether a linearizable read finds ``key`` absent (False when no answer came: no leader
    for a moment makes no claim)."""
    try:
        return await client.get(key, timeout=5) is None
    except PaxosdError:
        return False


async def watch_key(client: Client, key: bytes, seconds: float) -> list[float]:
    """Read ``key`` every POLL for ``seconds``; the times (monotonic) it was seen absent."""
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if await absent(client, key):
            seen.append(time.monotonic())
        await trio.sleep(POLL)
    return seen


async def vanishes_within(client: Client, key: bytes, limit: float) -> float:
    """Seconds until ``key`` is read absent (at most ``limit`` + 5 waited)."""
    start = time.monotonic()
    while time.monotonic() - start < limit + 5:
        if await absent(client, key):
            return time.monotonic() - start
        await trio.sleep(POLL)
    return float("inf")


def test_a_leased_key_lives_while_kept_alive_across_a_leader_kill_and_goes_after_its_holder(
        tmp_path):
    cluster = ProcessCluster(tmp_path, 3, proxy=False, election_timeout_ms=ELECTION_MS)
    holder = None
    try:
        cluster.start_all()

        async def main():
            assert await cluster.wait_for_leader(30) is not None, await cluster.describe()
            async with Client(cluster.endpoints, timeout=10) as client:
                lease = await client.lease_grant(TTL)
                await client.put("svc/holder", "up", lease=lease.id)
                nonlocal holder
                with open(tmp_path / "holder.out", "wb") as out:
                    holder = start_holder(cluster, lease.id, out)
                # Kept alive: never absent, before and after the leader is killed.
                absent = await watch_key(client, b"svc/holder", 2 * TTL)
                leader = await cluster.wait_for_leader(10)
                cluster.kill(leader)
                absent += await watch_key(client, b"svc/holder", 3 * TTL)
                assert absent == [], (absent, (tmp_path / "holder.out").read_text())
                assert holder.poll() is None, (tmp_path / "holder.out").read_text()
                # It renewed throughout (every TTL / 3 for 5 TTLs: about 15; half is plenty).
                assert (tmp_path / "holder.out").read_text().count("keepalived") >= 7
                # The holder dies: the key goes within TTL + one election timeout.
                os.kill(holder.pid, signal.SIGKILL)
                holder.wait()
                took = await vanishes_within(client, b"svc/holder", TTL + ELECTION_MS[1] / 1000)
                print(f"key gone {took:.3f} s after its holder was killed (TTL {TTL} s)")
                assert took <= TTL + ELECTION_MS[1] / 1000 + POLL, took
                with trio.fail_after(10):
                    while True:  # every replica applied the expiry
                        found = [await client.status(e) for e in cluster.endpoints
                                 if cluster.running(cluster.endpoints.index(e) + 1)]
                        if len({s["revision"] for s in found}) == 1:
                            break
                        await trio.sleep(0.05)

        trio.run(main)
    finally:
        if holder is not None and holder.poll() is None:
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait()
        cluster.close()
