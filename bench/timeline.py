"""Where one command's time goes: a timeline of the one-at-a-time critical path.

    .venv/bin/python bench/timeline.py [--commands 2000] [--warmup 300] [--value-size 64]
                                       [--fsync/--no-fsync] [--out bench/results/DATE-timeline.md]

Starts a 3-node cluster on loopback (separate processes, as ``paxosd bench`` does) with
``PAXOSD_TIMELINE`` set, so each node records timestamps at fixed points of its path
(daemon.runtime.timeline); this process is the one client, with one command in flight, and
stamps each put's send and reply. All stamps are ``time.perf_counter_ns`` (CLOCK_MONOTONIC,
one clock for every process on the machine). Each command's window [send, reply] is then cut
into segments: for each node, the first mark of each kind after the previous step of the
chain. It reports the median and p90 of each segment, and the cost of a bare fdatasync on
the same file system (appending; in place in a zero-filled file; in place in a fallocated one).
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import shutil
import sys
import tempfile
import time
from bisect import bisect_right
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.codec.wire import encode_request  # noqa: E402
from daemon.core.messages import OK  # noqa: E402
from daemon.tools.bench import LocalCluster, _Conn, find_leader, machine  # noqa: E402
from daemon.tools.stats import percentile  # noqa: E402

# ------------------------------------------------------------------------------ the client

def drive(address: str, commands: int, warmup: int, value_size: int) -> list[tuple[int, int]]:
    """Send ``warmup`` then ``commands`` puts one at a time; (send ns, reply ns) of the latter."""
    conn = _Conn(address, timeout=10.0)
    rng = random.Random(1)
    value = rng.randbytes(value_size)
    session = rng.getrandbits(62) + 1
    windows = []
    try:
        for i in range(1, warmup + commands + 1):
            req = encode_request(i, "put", session, i, b"k%d" % rng.randrange(100_000), value)
            sent = time.perf_counter_ns()
            conn.send([req])
            replies = conn.receive()
            got = time.perf_counter_ns()
            if len(replies) != 1 or replies[0][1] != OK:
                raise RuntimeError(f"command {i}: unexpected replies {replies!r}")
            if i > warmup:
                windows.append((sent, got))
    finally:
        conn.close()
    return windows


# ------------------------------------------------------------------------------ the marks

class Marks:
    """One process's marks: for each name, the sorted times (ns)."""

    def __init__(self, path: Path) -> None:
        by_name: dict[str, list[int]] = {}
        for line in path.read_text().splitlines():
            name, _thread, ns = line.split("\t")
            by_name.setdefault(name, []).append(int(ns))
        for times in by_name.values():
            times.sort()
        self.by_name = by_name

    def first(self, name: str, after: int | None, until: int) -> int | None:
        """The first ``name`` mark in (after, until], or None."""
        if after is None:
            return None
        times = self.by_name.get(name)
        if not times:
            return None
        i = bisect_right(times, after)
        if i < len(times) and times[i] <= until:
            return times[i]
        return None

    def any_in(self, name: str, start: int | None, end: int | None) -> bool:
        if start is None or end is None:
            return False
        return self.first(name, start, end) is not None


def leader_chain(L: Marks, s: int, r: int) -> dict:
    """The leader's own steps for the command sent at ``s`` and answered at ``r``."""
    t = {"client_send": s, "client_recv": r}
    t["L.client_read"] = L.first("client_read", s, r)
    t["L.core_client"] = L.first("core_client", t["L.client_read"], r)
    t["L.core_fed"] = L.first("core_fed", t["L.core_client"], r)
    t["L.core_carried"] = L.first("core_carried", t["L.core_fed"], r)
    prev = t["L.core_fed"]
    for step in ("wal_wake", "wal_thread", "wal_written", "wal_synced", "wal_back",
                 "core_durable"):
        prev = t[f"L.{step}"] = L.first(step, prev, r)
    return t


def follower_chain(L: Marks, F: Marks, lid: int, fid: int, t: dict, r: int) -> dict:
    """Follower ``fid``'s steps (and the leader's on its behalf) for the command of ``t``."""
    f = {}
    f["L.tx_wake"] = L.first(f"peer_tx_wake{fid}", t["L.core_fed"], r)
    f["L.tx_sent"] = L.first(f"peer_tx_sent{fid}", f["L.tx_wake"], r)
    f["F.rx"] = F.first(f"peer_rx{lid}", f["L.tx_wake"], r)
    f["F.core_accept"] = F.first(f"core_peer_Accept_slots{lid}", f["F.rx"], r)
    f["F.core_fed"] = F.first("core_fed", f["F.core_accept"], r)
    f["F.core_carried"] = F.first("core_carried", f["F.core_fed"], r)
    prev = f["F.core_fed"]
    for step in ("wal_wake", "wal_thread", "wal_written", "wal_synced", "wal_back",
                 "gate_released"):
        prev = f[f"F.{step}"] = F.first(step, prev, r)
    f["F.tx_wake"] = F.first(f"peer_tx_wake{lid}", f["F.gate_released"], r)
    f["F.tx_sent"] = F.first(f"peer_tx_sent{lid}", f["F.tx_wake"], r)
    f["L.rx"] = L.first(f"peer_rx{fid}", f["F.tx_wake"], r)
    f["L.core_accepted"] = L.first(f"core_peer_Accepted{fid}", f["L.rx"], r)
    # Did the WAL writer's idle seal (marker fsync) of the previous command hold this write?
    f["F.seal_in_the_way"] = F.any_in("seal_done", f["F.core_carried"], f["F.wal_wake"])
    return f


# The segments of the table: (label, from, to). F.* are the follower whose Accepted reached the
# leader's core first (the one that made the quorum with the leader).
SEGMENTS = [
    ("client send -> leader client-port reader returns (loopback + trio wake-up)",
     "client_send", "L.client_read"),
    ("leader reader -> core loop has the request (decode, inbox, task switch)",
     "L.client_read", "L.core_client"),
    ("leader core: submit, batch closes, Accept made (Node)", "L.core_client", "L.core_fed"),
    ("leader core: ready(), durability gate, queue WAL + Accept", "L.core_fed", "L.core_carried"),
    ("[leader WAL] core done -> WAL writer task wakes", "L.core_carried", "L.wal_wake"),
    ("[leader WAL] writer task -> write starts (one yield inline, or to_thread hand-off)",
     "L.wal_wake", "L.wal_thread"),
    ("[leader WAL] encode group + write()", "L.wal_thread", "L.wal_written"),
    ("[leader WAL] fdatasync", "L.wal_written", "L.wal_synced"),
    ("[leader WAL] sync done -> writer resumes (to_thread return; none inline)",
     "L.wal_synced", "L.wal_back"),
    ("[leader WAL] writer -> core loop (EV_DURABLE: its own vote)", "L.wal_back",
     "L.core_durable"),
    ("[repl] core done -> peer sender task wakes", "L.core_carried", "F.L.tx_wake"),
    ("[repl] leader sender: encode + send_all", "F.L.tx_wake", "F.L.tx_sent"),
    ("[repl] leader sender wakes -> follower receive_some returns (wire)", "F.L.tx_wake",
     "F.F.rx"),
    ("[repl] follower receiver -> core loop has the Accept (decode, validate, inbox)",
     "F.F.rx", "F.F.core_accept"),
    ("[repl] follower core: accept entries (Node)", "F.F.core_accept", "F.F.core_fed"),
    ("[repl] follower core: ready(), gate, queue WAL", "F.F.core_fed", "F.F.core_carried"),
    ("[repl] follower core done -> WAL writer task wakes", "F.F.core_carried", "F.F.wal_wake"),
    ("[repl] follower writer -> write starts (one yield inline, or to_thread hand-off)",
     "F.F.wal_wake", "F.F.wal_thread"),
    ("[repl] follower encode group + write()", "F.F.wal_thread", "F.F.wal_written"),
    ("[repl] follower fdatasync", "F.F.wal_written", "F.F.wal_synced"),
    ("[repl] follower sync done -> writer resumes (to_thread return; none inline)",
     "F.F.wal_synced", "F.F.wal_back"),
    ("[repl] follower writer -> gate releases Accepted (in the writer's task)",
     "F.F.wal_back", "F.F.gate_released"),
    ("[repl] follower core -> peer sender task wakes", "F.F.gate_released", "F.F.tx_wake"),
    ("[repl] follower sender wakes -> leader receive_some returns (encode, wire)",
     "F.F.tx_wake", "F.L.rx"),
    ("[repl] leader receiver -> core loop has the Accepted (decode, inbox)", "F.L.rx",
     "F.L.core_accepted"),
    ("commit: the quorum's second vote reaches the core -> core done (commit, apply, "
     "reply queued)", "commit_trigger", "L.commit"),
    ("leader core done -> client-port writer wakes", "L.commit", "L.writer_wake"),
    ("leader writer wakes -> client recv returns (encode, send_all, loopback, wake-up)",
     "L.writer_wake", "client_recv"),
]


def analyse(windows: list, marks: dict[int, Marks], leader: int) -> list:
    """Per command, the times of each step (None where a mark was not found). A chain may run
    past the reply (the leader's own write is not needed when both followers answer first),
    up to the next command's send."""
    L = marks[leader]
    followers = [i for i in marks if i != leader]
    rows = []
    for i, (s, r) in enumerate(windows):
        until = windows[i + 1][0] if i + 1 < len(windows) else r + 50_000_000
        t = leader_chain(L, s, until)
        chains = [follower_chain(L, marks[fid], leader, fid, t, until) for fid in followers]
        chains = [f for f in chains if f["L.core_accepted"] is not None]
        if not chains:
            rows.append(None)
            continue
        best = min(chains, key=lambda f: f["L.core_accepted"])
        for k, v in best.items():
            t[f"F.{k}"] = v
        # The quorum: two of (the leader's own write durable, each follower's Accepted).
        votes = sorted([f["L.core_accepted"] for f in chains] +
                       ([t["L.core_durable"]] if t["L.core_durable"] is not None else []))
        if len(votes) < 2 or votes[1] > r:
            rows.append(None)
            continue
        t["commit_trigger"] = votes[1]
        t["quorum_by"] = ("leader WAL" if votes[1] == t["L.core_durable"] else
                          "second follower" if votes[1] != best["L.core_accepted"] else
                          "first follower")
        t["L.commit"] = L.first("core_carried", t["commit_trigger"], r)
        t["L.writer_wake"] = L.first("client_writer_wake", t["L.commit"], r)
        t["L.seal_in_the_way"] = L.any_in("seal_done", t["L.core_carried"], t["L.wal_wake"])
        rows.append(t)
    return rows


def table(rows: list) -> list[tuple[str, float | None, float | None, int]]:
    """(label, median us, p90 us, samples) per segment, and the end-to-end line."""
    out = []
    segments = SEGMENTS + [("end to end (client send -> client recv)", "client_send",
                            "client_recv")]
    for label, a, b in segments:
        values = sorted((t[b] - t[a]) / 1000 for t in rows
                        if t is not None and t.get(a) is not None and t.get(b) is not None)
        if values:
            out.append((label, percentile(values, 0.5), percentile(values, 0.9), len(values)))
        else:
            out.append((label, None, None, 0))
    return out


# ------------------------------------------------------------------------------ the disk

FILE_KINDS = ("append", "zero-filled", "fallocated")


def fdatasync_cost(directory: Path, count: int = 2000, size: int = 100,
                   writers: tuple = (1, 3)) -> dict[tuple[str, int], tuple[float, float]]:
    """Median and p90 (us) of write(``size`` bytes) + fdatasync, ``count`` times, by (file
    kind, writers): appending to a new file, in place in a zero-filled (preallocated and
    written) file, in place in a posix_fallocate'd one (unwritten extents); by one process, and
    by three at once, each on a file of its own (as three nodes on one disk). The figure of
    several writers is the median of their medians (and p90s)."""
    import multiprocessing

    out = {}
    for how in FILE_KINDS:
        for n in writers:
            if n == 1:
                out[how, n] = _fsync_samples(directory / f"fsync-{how}-0.bin", how, count, size)
                continue
            barrier, results = multiprocessing.Barrier(n), multiprocessing.Queue()
            procs = [multiprocessing.Process(target=_fsync_writer, args=(
                directory / f"fsync-{how}-{i}.bin", how, count, size, barrier, results))
                for i in range(n)]
            for proc in procs:
                proc.start()
            found = sorted(results.get(timeout=600) for _ in procs)
            for proc in procs:
                proc.join()
            out[how, n] = found[len(found) // 2]
    return out


def _fsync_writer(path: Path, how: str, count: int, size: int, barrier, results) -> None:
    results.put(_fsync_samples(path, how, count, size, barrier))


def _fsync_samples(path: Path, how: str, count: int, size: int,
                   barrier=None) -> tuple[float, float]:
    """Median and p90 (us) of ``count`` writes + fdatasyncs on ``path``, after preparing the
    file and waiting at ``barrier`` (the other writers start their loops together)."""
    data = os.urandom(size)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        if how == "zero-filled":
            os.write(fd, bytes(count * size + 4096))
            os.fsync(fd)
        elif how == "fallocated":
            os.posix_fallocate(fd, 0, count * size + 4096)
            os.fsync(fd)
        if barrier is not None:
            barrier.wait()
        samples = []
        for i in range(count):
            start = time.perf_counter_ns()
            if how == "append":
                os.write(fd, data)
            else:
                os.pwrite(fd, data, i * size)
            os.fdatasync(fd)
            samples.append((time.perf_counter_ns() - start) / 1000)
        samples.sort()
        return percentile(samples, 0.5), percentile(samples, 0.9)
    finally:
        os.close(fd)
        path.unlink()


# ------------------------------------------------------------------------------ the report

def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _machine_text() -> str:
    m = machine()
    return f"{m['cores']} cores, {m['cpu']}, Python {m['python']}, {m['system']}"


def report(args, rows, disk, leader, command: str, started: str) -> str:
    found = [t for t in rows if t is not None]
    lines = [f"# One command's timeline ({started})", "",
             f"Command: `{command}`", "",
             f"Machine: {_machine_text()}; one-minute load average at the start "
             f"{os.getloadavg()[0]:.2f} (it counts whatever ran in the minute before). "
             f"{args.note or ''}", "",
             f"Setup: 3 nodes on loopback, separate processes, fsync "
             f"{'on' if args.fsync else 'OFF'}, one client process, 1 command in flight, "
             f"{args.value_size}-byte values, {args.commands} measured puts after "
             f"{args.warmup} warm-up ones; leader node {leader}. {len(found)} of {len(rows)} "
             f"commands were traced; each segment's samples are those with both ends.",
             "", "Segments in microseconds. [leader WAL] and [repl] run in parallel; the "
             "commit waits for the quorum's second vote (F = the follower whose Accepted "
             "reached the leader first).", "",
             "| segment | median us | p90 us | n |", "|---|---:|---:|---:|"]
    for label, p50, p90, n in table(rows):
        lines.append(f"| {label} | {_fmt(p50)} | {_fmt(p90)} | {n} |")
    by = {}
    for t in found:
        by[t["quorum_by"]] = by.get(t["quorum_by"], 0) + 1
    seal = sum(1 for t in found if t["F.F.seal_in_the_way"])
    lead_seal = sum(1 for t in found if t["L.seal_in_the_way"])
    made = ", ".join(f"{who} {n}" for who, n in sorted(by.items()))
    lines += ["", f"What completed the quorum (leader + 1 follower, or 2 followers): {made}, "
              f"of {len(found)} commands. The WAL write waited for the writer's idle seal of the "
              f"synced-length marker (a second fdatasync, of wal.synced, after the previous "
              f"command's) on the leader for {lead_seal} and on F for {seal} of "
              f"{len(found)} commands.", ""]
    if disk:
        lines += [f"Bare cost on this file system ({args.disk_dir}), write of 100 B + "
                  f"fdatasync, {args.disk_count} times, by one process and by three at once "
                  f"(each on its own file, as three nodes on one disk):", "",
                  "| file | writers | median us | p90 us |", "|---|---:|---:|---:|"]
        for (how, writers), (p50, p90) in disk.items():
            lines.append(f"| {how} | {writers} | {_fmt(p50)} | {_fmt(p90)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--value-size", type=int, default=64)
    parser.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--disk-count", type=int, default=2000)
    parser.add_argument("--disk-dir", default=tempfile.gettempdir(),
                        help="where to measure the bare fdatasync (default: where the "
                             "cluster's data goes)")
    parser.add_argument("--no-disk", action="store_true", help="skip the bare fdatasync test")
    parser.add_argument("--out", help="write the markdown table here (default: print it)")
    parser.add_argument("--note", help="what else ran on the machine, said in the report")
    parser.add_argument("--keep-marks", help="copy the raw mark files into this directory")
    args = parser.parse_args(argv)
    command = " ".join(["python", "bench/timeline.py", *sys.argv[1:]])
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    marks_dir = Path(tempfile.mkdtemp(prefix="paxosd-timeline-"))
    os.environ["PAXOSD_TIMELINE"] = str(marks_dir / "marks")
    cluster = LocalCluster(3, args.fsync)
    try:
        endpoints = cluster.start()
        address = find_leader(endpoints, time.monotonic() + 30)
        leader = endpoints.index(address) + 1
        windows = drive(address, args.commands, args.warmup, args.value_size)
    finally:
        cluster_pids = cluster.pids()
        cluster.stop()
        del os.environ["PAXOSD_TIMELINE"]
    try:
        marks = {node: Marks(marks_dir / f"marks.{pid}.tsv")
                 for node, pid in cluster_pids.items()}
        if args.keep_marks:
            (marks_dir / "client.tsv").write_text(
                "".join(f"{a}\t{b}\n" for a, b in windows))
            (marks_dir / "leader").write_text(f"{leader}\n")
            shutil.copytree(marks_dir, args.keep_marks, dirs_exist_ok=True)
    finally:
        shutil.rmtree(marks_dir, ignore_errors=True)
    rows = analyse(windows, marks, leader)
    disk = None if args.no_disk else fdatasync_cost(Path(args.disk_dir), args.disk_count)
    text = report(args, rows, disk, leader, command, started)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
