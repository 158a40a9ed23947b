"""Replace a member of a running 3-node cluster under a write load, on real processes.

    python -m tests.faults.replace --seconds 60 -v

Starts nodes 1-3 (fsync on), runs concurrent writers (every write a new key, so every
acknowledged write can be read back), starts node 4 with ``serve --join``, adds it with
``member add`` (a learner until it has caught up, then a voter), removes node 1 with
``member remove`` (if node 1 leads, it hands leadership over first) and stops it. The load goes
on throughout. Then every acknowledged write is read back, node 4 is made leader (only a voter
can lead) and reads them back again. Prints a summary with the commits per second in each phase;
exit status 0 when nothing acknowledged was lost and the membership is 2, 3, 4.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from daemon.client.client import Client, OutcomeUnknown, PaxosdError
from tests.faults.cluster import ProcessCluster

__all__ = ["ReplaceReport", "run_replace"]


@dataclass
class ReplaceReport:
    acknowledged: int = 0
    unknown: int = 0
    failed: int = 0
    lost: list = field(default_factory=list)
    phases: list = field(default_factory=list)  # (name, seconds, acknowledged writes)
    members: list = field(default_factory=list)  # [id, voter] at the end
    new_member_led: bool = False
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (not self.lost and not self.problems and self.new_member_led
                and self.members == [[2, True], [3, True], [4, True]])

    def summary(self) -> str:
        lines = [f"writes: {self.acknowledged} acknowledged, {self.unknown} outcome unknown, "
                 f"{self.failed} failed"]
        for name, seconds, acked in self.phases:
            rate = acked / seconds if seconds > 0 else 0.0
            lines.append(f"  {name:<34} {seconds:6.2f} s  {acked:7d} writes  {rate:8.0f}/s")
        lines.append(f"membership at the end: {self.members}")
        lines.append(f"node 4 took over as leader and read everything back: "
                     f"{'yes' if self.new_member_led else 'NO'}")
        lines += [f"LOST: {k!r}" for k in self.lost[:20]]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines.append(f"verdict: {'OK' if self.ok else 'FAILED'}")
        return "\n".join(lines)


async def _replace(cluster: ProcessCluster, report: ReplaceReport, writers: int,
                   settle: float, verbose: bool) -> None:
    if await cluster.wait_for_leader(30) is None:
        report.problems.append("no leader at the start\n" + await cluster.describe())
        return
    endpoints = [f"127.0.0.1:{cluster.client_port[i]}" for i in (1, 2, 3, 4)]
    acked: list[bytes] = []
    stop = trio.Event()
    mark = [time.monotonic(), 0]

    def phase(name: str) -> None:
        now = time.monotonic()
        report.phases.append((name, now - mark[0], len(acked) - mark[1]))
        mark[0], mark[1] = now, len(acked)
        if verbose:
            print(f"  {name}: done", flush=True)

    async def writer(n: int) -> None:
        async with Client(endpoints, timeout=10) as c:
            i = 0
            while not stop.is_set():
                key = b"w%d-%d" % (n, i)
                i += 1
                try:
                    await c.put(key, key)
                except OutcomeUnknown:
                    report.unknown += 1
                except PaxosdError:
                    report.failed += 1
                    await trio.sleep(0.05)
                else:
                    acked.append(key)

    async with Client(endpoints, timeout=30) as admin:
        async with trio.open_nursery() as nursery:
            for n in range(writers):
                nursery.start_soon(writer, n)
            await trio.sleep(settle)
            phase("load on 1, 2, 3")
            cluster.start(4, join=True)
            await admin.member_add(4, f"127.0.0.1:{cluster.peer_port[4]}",
                                   f"127.0.0.1:{cluster.client_port[4]}")
            phase("node 4 starts, added as a learner")
            if not await _wait(lambda: _voter(admin, 4), 60):
                report.problems.append("node 4 did not become a voter within 60 s")
            phase("node 4 catches up, becomes a voter")
            await trio.sleep(settle)
            phase("load on 1, 2, 3, 4")
            await admin.member_remove(1)
            phase("node 1 removed")
            cluster.terminate(1)
            await trio.sleep(settle)
            phase("load on 2, 3, 4")
            stop.set()
        info = await admin.members()
        report.members = [[m["id"], m["voter"]] for m in info["members"]]
        report.acknowledged = len(acked)
        report.lost = await _missing(admin, acked)
        try:
            await admin.transfer_leader(4)
        except PaxosdError as exc:
            report.problems.append(f"transfer to node 4: {exc}")
            return
        report.new_member_led = not await _missing(admin, acked) and \
            await cluster.leader() == 4


async def _voter(admin: Client, node_id: int) -> bool:
    info = await admin.members(timeout=5)
    return any(m["id"] == node_id and m["voter"] for m in info["members"])


async def _wait(predicate, timeout: float) -> bool:
    with trio.move_on_after(timeout):
        while True:
            try:
                if await predicate():
                    return True
            except PaxosdError:
                pass
            await trio.sleep(0.1)
    return False


async def _missing(c: Client, keys: list[bytes]) -> list[bytes]:
    missing = []

    async def check(key: bytes) -> None:
        if await c.get(key) != key:
            missing.append(key)

    for first in range(0, len(keys), 100):
        async with trio.open_nursery() as nursery:
            for key in keys[first:first + 100]:
                nursery.start_soon(check, key)
    return missing


def run_replace(directory: Path, *, settle: float = 1.0, writers: int = 8,
                snapshot_every: int = 500, verbose: bool = False) -> ReplaceReport:
    report = ReplaceReport()
    cluster = ProcessCluster(directory, 3, proxy=False, spares=1,
                             snapshot_every_slots=snapshot_every,
                             heartbeat_ms=50, election_timeout_ms=(150, 300))
    try:
        cluster.start_all()
        trio.run(_replace, cluster, report, writers, settle, verbose)
        exits = cluster.unexpected_exits()
        if exits:
            report.problems.append(f"nodes exited by themselves: {exits}")
    finally:
        cluster.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.replace",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="how long each steady phase runs (default 10)")
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--snapshot-every", type=int, default=5000, metavar="SLOTS")
    parser.add_argument("--dir", help="working directory (default: a new temporary one)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="paxosd-replace-"))
    report = run_replace(directory, settle=args.seconds, writers=args.writers,
                         snapshot_every=args.snapshot_every, verbose=args.verbose)
    print(report.summary(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
