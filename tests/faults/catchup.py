"""A member down for many slots catches up by snapshot, on real processes.

    python -m tests.faults.catchup --slots 1000000 --snapshot-every 100000
    python -m tests.faults.catchup --slots 3000 --snapshot-every 300 -v
    python -m tests.faults.catchup --slots 3000 --snapshot-every 300 --wipe
    python -m tests.faults.catchup --slots 20000 --snapshot-every 5000 --keys 100000 --value-size 64

Starts a 3-node cluster on 127.0.0.1 (fsync on, snapshots every ``--snapshot-every`` slots),
kills one follower, writes until the leader's commit index has moved ``--slots`` past what the
follower had (``--sessions`` concurrent writers; every slot is one batch), checks that the
leader's log no longer reaches back to the follower (so only a snapshot can bring it back),
restarts it and times how long it takes to apply everything the leader had committed. Then the
follower is made leader and reads back a sample of keys. Prints a summary; exit status 0 when
the follower caught up by snapshot and agrees.

With ``--wipe`` the follower's data directory is deleted while it is down and it comes back
with ``serve --join``: under a new incarnation, as a learner, until the leader sees it caught up
and makes it a voter again (only a voter can take over leadership, which the check asks of it).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from daemon.client.client import Client
from daemon.runtime.storage import SNAPSHOT_FILE, read_snapshot
from tests.faults.cluster import ProcessCluster

__all__ = ["CatchupReport", "run_catchup"]


@dataclass
class CatchupReport:
    slots_behind: int = 0
    writes: int = 0
    write_seconds: float = 0.0
    leader_log_start: int = 0
    follower_commit_before: int = 0
    follower_snapshot_after: int = 0
    snapshot_bytes: int = 0
    snapshot_durable_seconds: float = 0.0
    catchup_seconds: float = 0.0
    caught_up: bool = False
    agrees: bool = False
    wiped: bool = False
    incarnation_after: int = 0
    problems: str = ""

    @property
    def ok(self) -> bool:
        return (self.caught_up and self.agrees and not self.problems
                and self.follower_snapshot_after > self.follower_commit_before
                and (not self.wiped or self.incarnation_after != 0))

    def summary(self) -> str:
        return "\n".join([
            f"follower {'wiped and ' if self.wiped else ''}down for {self.slots_behind} slots "
            f"({self.writes} writes in "
            f"{self.write_seconds:.1f} s); leader's log starts at slot {self.leader_log_start}, "
            f"follower had {self.follower_commit_before}",
            f"caught up: {'yes' if self.caught_up else 'NO'} in {self.catchup_seconds:.1f} s "
            f"(installed the snapshot of slot {self.follower_snapshot_after}; "
            f"{self.snapshot_bytes:,} bytes, on its disk {self.snapshot_durable_seconds:.1f} s "
            f"after the restart)"
            + (f"; back as a voter under incarnation {self.incarnation_after}"
               if self.wiped else ""),
            f"agrees after taking over as leader: {'yes' if self.agrees else 'NO'}",
            *( [f"problems: {self.problems}"] if self.problems else []),
            f"verdict: {'OK' if self.ok else 'FAILED'}",
        ])


async def _wait_status(cluster: ProcessCluster, i: int, pred, timeout: float) -> dict | None:
    with trio.move_on_after(timeout):
        while True:
            st = await cluster.status(i, timeout=2.0)
            if st and pred(st):
                return st
            await trio.sleep(0.05)
    return None


async def _wait_snapshot_on_disk(directory: Path, index: int, timeout: float) -> int:
    """The size of the snapshot file in ``directory`` once it holds slot ``index`` or later; 0
    if it does not within ``timeout``. (The WAL writer stores an installed snapshot after the
    node has applied it.)"""
    path = directory / SNAPSHOT_FILE
    seen = None
    with trio.move_on_after(timeout):
        while True:
            try:
                st = path.stat()
            except FileNotFoundError:
                st = None
            # Read the file only when a new one has been renamed into place.
            if st is not None and (st.st_ino, st.st_size) != seen:
                seen = (st.st_ino, st.st_size)
                on_disk = read_snapshot(directory)
                if on_disk is not None and on_disk[0] >= index:
                    return st.st_size
            await trio.sleep(0.05)
    return 0


async def _catchup(cluster: ProcessCluster, slots: int, sessions: int, keys: int,
                   value_size: int, report: CatchupReport, verbose: bool, wipe: bool) -> None:
    leader = await cluster.wait_for_leader(30)
    if leader is None:
        report.problems = "no leader"
        return
    follower = next(i for i in cluster.ids if i != leader)
    async with Client.connect(cluster.endpoints, timeout=30) as c:
        await c.put(b"first", b"1")
        st = await _wait_status(cluster, follower, lambda s: s["commit_index"] >= 1, 10)
        report.follower_commit_before = st["commit_index"] if st else 0
        cluster.kill(follower)
        if wipe:
            shutil.rmtree(cluster.node_dir(follower))
            report.wiped = True
        target = report.follower_commit_before + slots
        started = time.monotonic()
        done = trio.Event()
        written = [0]

        async def writer(n: int) -> None:
            i = n
            while not done.is_set():
                await c.put(b"k%d" % (i % keys), (b"v%d." % i).ljust(value_size, b"x"))
                written[0] += 1
                i += sessions

        async def watch() -> None:
            last = 0.0
            while True:
                st = await cluster.status(leader, timeout=2.0)
                if st and st["commit_index"] >= target:
                    report.leader_log_start = st["log_start"]
                    done.set()
                    return
                if verbose and st and time.monotonic() - last > 5:
                    last = time.monotonic()
                    print(f"  {time.monotonic() - started:6.0f} s: leader commit index "
                          f"{st['commit_index']} of {target}", flush=True)
                await trio.sleep(0.2)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            for n in range(sessions):
                nursery.start_soon(writer, n)
        report.writes = written[0]
        report.write_seconds = time.monotonic() - started
        st = await cluster.status(leader, timeout=2.0)
        goal = st["commit_index"]
        report.leader_log_start = st["log_start"]
        report.slots_behind = goal - report.follower_commit_before
        before = await _read_all(c, keys)
        if report.leader_log_start <= report.follower_commit_before + 1:
            report.problems = (f"the leader still holds slot {report.follower_commit_before + 1}: "
                               "the follower could catch up from the log")
        # Back it comes.
        started = time.monotonic()
        cluster.start(follower, join=wipe)
        st = await _wait_status(cluster, follower,
                                lambda s: s["applied_index"] >= goal and s["voter"],
                                max(60.0, slots / 200))
        report.catchup_seconds = time.monotonic() - started
        report.caught_up = st is not None
        if st is None:
            return
        report.follower_snapshot_after = st["snapshot_index"]
        report.snapshot_bytes = await _wait_snapshot_on_disk(
            cluster.node_dir(follower), report.follower_snapshot_after, 60)
        report.snapshot_durable_seconds = time.monotonic() - started
        if not report.snapshot_bytes:
            report.problems = "the installed snapshot was not written to the follower's disk"
            return
        report.incarnation_after = st["incarnation"]
        # It now serves as leader: every key reads back as the old leader had it.
        await c.transfer_leader(follower)
        after = await _read_all(c, keys)
        report.agrees = after == before and await cluster.leader() == follower


async def _read_all(c: Client, keys: int) -> dict:
    out = {}

    async def read(k: int) -> None:
        out[k] = await c.get(b"k%d" % k)

    for first in range(0, keys, 50):
        async with trio.open_nursery() as nursery:
            for k in range(first, min(keys, first + 50)):
                nursery.start_soon(read, k)
    out["first"] = await c.get(b"first")
    return out


def run_catchup(directory: Path, slots: int, snapshot_every: int, *, sessions: int = 32,
                keys: int = 1000, value_size: int = 0, verbose: bool = False,
                wipe: bool = False) -> CatchupReport:
    report = CatchupReport()
    cluster = ProcessCluster(directory, 3, proxy=False, snapshot_every_slots=snapshot_every,
                             heartbeat_ms=50, election_timeout_ms=(150, 300))
    try:
        cluster.start_all()
        trio.run(_catchup, cluster, slots, sessions, keys, value_size, report, verbose, wipe)
        exits = cluster.unexpected_exits()
        if exits:
            report.problems += f" nodes exited by themselves: {exits}"
    finally:
        cluster.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.catchup",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=3000)
    parser.add_argument("--snapshot-every", type=int, default=300, metavar="SLOTS")
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--keys", type=int, default=1000,
                        help="distinct keys written (the size of the state a snapshot holds)")
    parser.add_argument("--value-size", type=int, default=0, metavar="BYTES",
                        help="pad each value to this many bytes")
    parser.add_argument("--dir", help="working directory (default: a new temporary one)")
    parser.add_argument("--wipe", action="store_true", help="delete the follower's data "
                        "directory while it is down; it comes back with serve --join")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="paxosd-catchup-"))
    report = run_catchup(directory, args.slots, args.snapshot_every, sessions=args.sessions,
                         keys=args.keys, value_size=args.value_size, verbose=args.verbose,
                         wipe=args.wipe)
    print(report.summary(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
