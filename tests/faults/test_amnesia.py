"""A follower loses its data directory and systemd restarts it as always: on real processes.

Three nodes from a test YAML take writes from several clients. One follower is killed, its
data directory deleted, and it is started again with the systemd unit's own command line
(``systemd/paxosd.service``'s ExecStart: only the program's location and the config path are
replaced; no ``--join``). While the load goes on, every node's status is watched: the wiped
node must never count as a voter before the leader has made it one again under its new
incarnation, and no acknowledged write may be lost.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import trio

from daemon.client.client import Client, PaxosdError
from tests.faults.cluster import REPO, ProcessCluster

UNIT = REPO / "systemd" / "paxosd.service"
UNIT_PROGRAM = "/opt/paxosd/bin/paxosd"
UNIT_CONFIG = "/etc/paxosd/paxosd.yaml"
WRITERS = 4
TIMEOUT = 60.0


def unit_command(config_path: Path) -> list[str]:
    """The unit's ExecStart with the program's location and the config path replaced (and
    nothing else: the unit passes no --node-id, no --join)."""
    line = next(text for text in UNIT.read_text().splitlines() if text.startswith("ExecStart="))
    argv = shlex.split(line[len("ExecStart="):])
    assert argv == [UNIT_PROGRAM, "serve", "--config", UNIT_CONFIG], argv
    program = Path(sys.executable).parent / "paxosd"  # the console script of this install
    head = [str(program)] if program.exists() else [sys.executable, "-m", "daemon.tools.cli"]
    return head + ["serve", "--config", str(config_path)]


def start_as_the_unit(cluster: ProcessCluster, i: int) -> list[str]:
    """Start node ``i`` as systemd would: the unit's command line on a file naming node_id
    (the unit's file does). Registered with the cluster, so it is ended by pid as the others."""
    path = cluster.directory / f"unit-node-{i}.yaml"
    path.write_text(cluster.config_path[i].read_text() + f"node_id: {i}\n")
    argv = unit_command(path)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    cluster.starts[i] += 1
    with open(cluster.log_path(i), "ab") as log:
        log.write(f"==== start #{cluster.starts[i]} as the unit: {shlex.join(argv)}\n".encode())
        log.flush()
        cluster.procs[i] = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT)
    cluster.expected_exit.discard(i)
    return argv


def entry(status: dict | None, member_id: int) -> list | None:
    """[id, peer, client, voter, incarnation] of ``member_id`` in a status' configuration."""
    if not status:
        return None
    return next((m for m in status["members"] if m[0] == member_id), None)


async def test_a_wiped_follower_restarted_by_the_unit_rejoins_and_votes_only_once_readded(
        tmp_path):
    cluster = ProcessCluster(tmp_path, 3, proxy=False)
    acked: dict[bytes, bytes] = {}
    try:
        with trio.fail_after(4 * TIMEOUT):
            cluster.start_all()
            leader = await cluster.wait_for_leader(TIMEOUT)
            assert leader is not None, await cluster.describe()
            victim = next(i for i in cluster.ids if i != leader)
            other = next(i for i in cluster.ids if i not in (leader, victim))
            async with Client.connect(cluster.endpoints, timeout=10) as client:
                stop = trio.Event()
                goal = [50, trio.Event()]  # [acknowledged writes to wait for, set when reached]

                async def acked_reach(count: int) -> None:
                    goal[:] = [count, trio.Event()]
                    if len(acked) >= count:
                        goal[1].set()
                    await goal[1].wait()

                async def writer(n: int) -> None:
                    i = n
                    while not stop.is_set():
                        key, value = b"w%d" % i, b"v%d" % i
                        try:
                            await client.put(key, value)
                        except PaxosdError:
                            pass  # not acknowledged: it may or may not be there
                        else:
                            acked[key] = value
                            if len(acked) >= goal[0]:
                                goal[1].set()
                        i += WRITERS

                async with trio.open_nursery() as nursery:
                    for n in range(WRITERS):
                        nursery.start_soon(writer, n)
                    await acked_reach(50)
                    cluster.kill(victim)
                    shutil.rmtree(cluster.node_dir(victim))
                    argv = start_as_the_unit(cluster, victim)
                    seen = await watch_until_readded(cluster, victim)
                    # Back as a voter under its new incarnation: with the third node down it
                    # is needed for every quorum, and writes go on.
                    cluster.kill(other)
                    before = len(acked)
                    with trio.fail_after(TIMEOUT):
                        await acked_reach(before + 20)
                    stop.set()
                cluster.start(other)
                assert await cluster.wait_caught_up(TIMEOUT), await cluster.describe()
                lost = {}
                for key, value in acked.items():
                    got = await client.get(key)
                    if got != value:
                        lost[key] = got
                assert not lost, f"acknowledged writes lost: {sorted(lost)[:10]}"
        incarnation = seen["incarnation"]
        assert incarnation != 0
        assert (cluster.node_dir(victim) / "incarnation").read_text() == f"{incarnation}\n"
        log = cluster.log_text(victim)
        assert "--join" not in shlex.join(argv) and "incarnation undecided" in log
        assert "reports that the cluster has run: rejoining as a learner" in log
        # The leader re-added it by a configuration change naming the new incarnation.
        assert f"membership: {victim} (incarnation {incarnation})" in cluster.log_text(leader) \
            or f", {victim} (incarnation {incarnation})" in cluster.log_text(leader)
    finally:
        cluster.close()


async def watch_until_readded(cluster: ProcessCluster, victim: int) -> dict:
    """Poll every node's status until the leader's configuration names the victim a voter
    under the incarnation it now runs, in effect; at every poll, check it has not counted as
    one before. What was seen: its incarnation."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert time.monotonic() < deadline, await cluster.describe()
        statuses = await cluster.statuses()
        mine = statuses.get(victim)
        leaders = [s for s in statuses.values() if s and s["role"] == "leader"]
        if mine is None or len(leaders) != 1:
            await trio.sleep(0.02)
            continue
        named = entry(leaders[0], victim)  # [id, peer, client, voter, incarnation]
        incarnation = mine["incarnation"]  # None while it decides
        # It never runs as incarnation 0, whose promises it forgot.
        assert incarnation != 0, mine
        # The leader names it under 0 (as before the loss) or under its new incarnation.
        assert named[4] in (0, incarnation), (named, mine)
        # It says it votes only once the configuration names its new incarnation...
        assert not mine["voter"] or (entry(mine, victim)[3:] == [True, incarnation]), mine
        if named[3] and named[4] == incarnation:
            # Re-added; done once that configuration is in effect (slots from
            # members_effective on are decided by it).
            if mine["voter"] and leaders[0]["commit_index"] >= leaders[0]["members_effective"]:
                return {"incarnation": incarnation}
        else:
            # ...and until then the leader's configuration does not count its votes: they
            # come under an incarnation it does not name.
            assert incarnation is None or named[4] != incarnation
        await trio.sleep(0.02)
