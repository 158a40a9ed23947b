"""A fault campaign: a real cluster, the seeded nemesis, a concurrent workload, the verdict.

    python -m tests.faults.campaign --nodes 3 --minutes 10 --seed 1
    python -m tests.faults.campaign --nodes 5 --seconds 45 --seed 7 --faults kill,partition -v

Runs ``--nodes`` paxosd processes on 127.0.0.1 behind the fault proxy (with the power-loss
marker on), plays the nemesis schedule of ``--seed`` for the given time while ``--clients``
clients run put/get/cas on ``--keys`` keys, heals everything, waits for the cluster to recover,
reads every key back, and prints a summary: operations and their outcomes, acknowledged writes,
faults injected by kind, whether the history is linearizable, acknowledged writes lost, and
anything else that went wrong (a node that exited by itself, a traceback in a node's log, no
recovery after healing). Exit status 0 when all is well, 1 on any violation.

Beside that workload runs the coordination load of tests.faults.coord (watchers, a kept-alive
lease, transactions, ranges, each with its own exact checks: see there); ``--no-coord`` runs
the single-key workload alone.

The working directory (``--dir``, default a new temporary one) keeps each node's log, the
nemesis's event log and, after a violation, the history as JSON lines; it is removed after a
clean run unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trio

from tests.faults.cluster import ProcessCluster
from tests.faults.coord import Coordination
from tests.faults.nemesis import KINDS, Nemesis, schedule
from tests.faults.workload import Workload, lost_writes, summarize_counts
from tests.linearizability import check

__all__ = ["Report", "main", "run_campaign"]

CHECK_TIMEOUT = 300.0  # seconds the linearizability search may take
# Often enough that compaction, and catch-up from a snapshot after a restart, happen under faults.
SNAPSHOT_EVERY = 300


@dataclass
class Report:
    nodes: int
    seed: int
    seconds: float
    operations: int = 0
    outcomes: Counter = field(default_factory=Counter)
    acknowledged_writes: int = 0
    unknown_writes: int = 0
    faults: Counter = field(default_factory=Counter)
    unsynced_bytes_cut: int = 0
    lossy_power_cuts: int = 0
    linearizable: bool | None = None
    check_info: str = ""
    lost: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    coordination: list[str] = field(default_factory=list)  # its summary lines
    coord_violations: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    directory: str = ""

    @property
    def ok(self) -> bool:
        return (self.linearizable is True and not self.lost and not self.problems
                and not self.coord_violations)

    def summary(self) -> str:
        verdict = {True: "yes", False: "NO", None: "unknown (the check timed out)"}
        lines = [
            f"campaign: {self.nodes} nodes, seed {self.seed}, {self.seconds:g} s of faults "
            f"({self.elapsed:.0f} s in all)",
            f"operations: {self.operations} in the history ({summarize_counts(self.outcomes)})",
            f"acknowledged writes: {self.acknowledged_writes}; outcome unknown: "
            f"{self.unknown_writes}",
            f"faults injected: {sum(self.faults.values())} ("
            + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) + ")",
            f"power cuts that dropped unsynced WAL bytes: {self.lossy_power_cuts} "
            f"({self.unsynced_bytes_cut} bytes in all)",
            f"linearizable: {verdict[self.linearizable]}",
            f"acknowledged writes lost: {len(self.lost)}",
        ]
        if self.linearizable is not True:
            lines.append(self.check_info)
        lines += [f"LOST: {line}" for line in self.lost]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines += self.coordination
        lines.append("result: " + ("ok" if self.ok else f"VIOLATION (see {self.directory})"))
        return "\n".join(lines)


async def _interrupt_on_sigterm() -> None:
    """SIGTERM as Ctrl-C, delivered by trio inside a task: the KeyboardInterrupt then unwinds
    the nurseries and trio.run, and the cluster's ``finally`` ends every node it started. (A
    plain signal handler raising it lands wherever the main thread happens to be, where trio
    may not pass it on.)"""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            raise KeyboardInterrupt


async def _campaign(report: Report, cluster: ProcessCluster, workload: Workload,
                    nemesis: Nemesis, rounds, coord: Coordination | None) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_interrupt_on_sigterm)
        await nursery.start(cluster.proxy.run)
        cluster.start_all()
        if await cluster.wait_for_leader(timeout=60) is None:
            report.problems.append("no leader was elected at the start\n"
                                   + await cluster.describe())
            nursery.cancel_scope.cancel()
            return
        stop = trio.Event()
        if coord is not None and await coord.prepare():
            nursery.start_soon(coord.run, stop, trio.current_time() + report.seconds + 180)
        deadline = trio.current_time() + report.seconds
        async with trio.open_nursery() as clients:
            clients.start_soon(workload.run, stop, deadline + 120)
            await nemesis.run(rounds, deadline)
            nemesis.note("healed; the workload goes on for 2 s")
            await trio.sleep(2.0)
            stop.set()
        nemesis.check_processes()
        if await cluster.wait_for_leader(timeout=30) is None:
            report.problems.append("no leader within 30 s of healing every fault\n"
                                   + await cluster.describe())
        elif not await cluster.wait_caught_up(timeout=30):
            report.problems.append("not every node applied the leader's commit index within "
                                   "30 s of healing")
        final = await workload.read_back(timeout=30)
        missing = [k for k in workload.key_names() if k not in final]
        if missing:
            report.problems.append(f"keys not readable after healing: {missing}")
        report.lost = lost_writes(workload.history, final)
        if coord is not None:
            await coord.finish(timeout=30)
        nemesis.check_processes()
        nursery.cancel_scope.cancel()


def run_campaign(nodes: int, seconds: float, seed: int, directory: Path, *,
                 clients: int = 4, keys: int = 6, kinds: tuple[str, ...] = KINDS,
                 snapshot_every_slots: int = SNAPSHOT_EVERY, verbose: bool = False,
                 coordination: bool = True) -> Report:
    """Run one campaign in ``directory``; the Report (``report.ok`` says whether all is well).
    ``coordination``: run tests.faults.coord's load beside the workload, and check it."""
    started = time.monotonic()
    report = Report(nodes, seed, seconds, directory=str(directory))
    cluster = ProcessCluster(directory, nodes, power_loss=True,
                             snapshot_every_slots=snapshot_every_slots)
    workload = Workload(cluster.endpoints, seed=seed, clients=clients, keys=keys)
    nemesis = Nemesis(cluster, seed=seed, verbose=verbose)
    coord = Coordination(cluster.endpoints, seed=seed) if coordination else None
    rounds = schedule(seed, cluster.ids, seconds, kinds)
    try:
        trio.run(_campaign, report, cluster, workload, nemesis, rounds, coord)
    finally:
        cluster.close()
        (Path(directory) / "nemesis.log").write_text("\n".join(nemesis.events) + "\n")
    report.problems += nemesis.problems
    for i in cluster.ids:
        text = cluster.log_text(i)
        if "Traceback" in text or "CRITICAL" in text:
            report.problems.append(f"node {i}'s log has a traceback or critical error "
                                   f"({cluster.log_path(i)})")
    report.faults = nemesis.counts
    report.unsynced_bytes_cut = nemesis.bytes_cut
    report.lossy_power_cuts = nemesis.cuts
    history = workload.history
    report.operations = len(history)
    report.outcomes = workload.counts
    report.acknowledged_writes = workload.acknowledged_writes()
    report.unknown_writes = sum(1 for op in history if op.ret is None)
    result = check(history, timeout=CHECK_TIMEOUT)
    report.linearizable = result.ok
    report.check_info = result.info
    if coord is not None:
        report.coord_violations = coord.check(history)
        report.problems += coord.problems
        report.coordination = coord.summary()
    report.elapsed = time.monotonic() - started
    if not report.ok:
        with open(Path(directory) / "history.jsonl", "w") as f:
            for op in history:
                f.write(json.dumps({
                    "client": op.client, "op": op.op, "key": op.key.decode(),
                    "value": op.value and op.value.decode(),
                    "expected": op.expected and op.expected.decode(), "call": op.call,
                    "ret": op.ret,
                    "result": op.result.decode() if isinstance(op.result, bytes) else op.result,
                }) + "\n")
        if coord is not None:
            coord.dump(Path(directory))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.campaign",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="how long the faults go on")
    length.add_argument("--seconds", type=float, help="the same, in seconds (default 60)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--keys", type=int, default=6)
    parser.add_argument("--snapshot-every", type=int, default=SNAPSHOT_EVERY, metavar="SLOTS",
                        help=f"storage.snapshot_every_slots (default {SNAPSHOT_EVERY})")
    parser.add_argument("--faults", default=",".join(KINDS),
                        help=f"comma-separated fault kinds (default all: {','.join(KINDS)})")
    parser.add_argument("--no-coord", action="store_true",
                        help="run the single-key workload alone (no watches, lease, "
                             "transactions or ranges)")
    parser.add_argument("--dir", help="working directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each fault")
    args = parser.parse_args(argv)
    seconds = args.minutes * 60 if args.minutes is not None else (args.seconds or 60.0)
    kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown fault kinds {unknown}; known: {', '.join(KINDS)}")
    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="paxosd-faults-"))
    # SIGTERM as Ctrl-C: the cluster's ``finally`` then ends every node it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = run_campaign(args.nodes, seconds, args.seed, directory, clients=args.clients,
                          keys=args.keys, kinds=kinds, snapshot_every_slots=args.snapshot_every,
                          verbose=args.verbose, coordination=not args.no_coord)
    print(report.summary(), flush=True)
    if report.ok and not args.keep and not args.dir:
        shutil.rmtree(directory, ignore_errors=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
