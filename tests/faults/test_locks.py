"""Locks on real processes: three daemons and ``paxosd lock NAME -- COMMAND`` processes.

- Two contenders started together run their commands one after the other, never at once.
- A holder killed with SIGKILL (its lock process and its command) loses the lock once its lease
  expires; the next contender gets it, and a write fenced with the dead holder's token is
  refused by the cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.faults.cluster import REPO, ProcessCluster

TTL = 2
# The command a holder runs: note its start (time, fencing token, pid), sleep, note its end.
WORK = ("import os, sys, time\n"
        "log = open(sys.argv[1], 'a')\n"
        "log.write(f\"start {time.time()} {os.environ['PAXOSD_LOCK_REVISION']} {os.getpid()}\\n\")\n"
        "log.flush()\n"
        "time.sleep(float(sys.argv[2]))\n"
        "log.write(f'end {time.time()}\\n')\n")


def paxosd(cluster: ProcessCluster, *args: str, **kwargs) -> subprocess.Popen:
    """``paxosd ARGS`` with the cluster's endpoints (before a ``--``: what follows is a
    command's)."""
    args = list(args)
    at = args.index("--") if "--" in args else len(args)
    args[at:at] = ["--endpoints", ",".join(cluster.endpoints), "--timeout", "30"]
    return subprocess.Popen(
        [sys.executable, "-m", "daemon.tools.cli", *args],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, **kwargs)


def lock(cluster: ProcessCluster, log, seconds: float) -> subprocess.Popen:
    return paxosd(cluster, "lock", "jobs/nightly", "--ttl", str(TTL), "--", sys.executable,
                  "-c", WORK, str(log), str(seconds))


def wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_lock_holders_never_overlap_and_a_dead_holders_fenced_write_is_refused(tmp_path):
    cluster = ProcessCluster(tmp_path, 3, proxy=False)
    procs: list[subprocess.Popen] = []
    pids: list[int] = []  # commands started by lock processes (ended by pid at the end)
    try:
        cluster.start_all()
        # Two contenders at once: one after the other.
        turns = tmp_path / "turns.log"
        procs += [lock(cluster, turns, 1.0), lock(cluster, turns, 1.0)]
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            assert out.startswith("jobs/nightly/"), out
        lines = [line.split() for line in turns.read_text().splitlines()]
        assert [line[0] for line in lines] == ["start", "end", "start", "end"], lines
        assert float(lines[2][1]) >= float(lines[1][1])  # the second began after the first ended
        assert int(lines[2][2]) > int(lines[0][2])  # and holds a later token

        # A holder dies (its lock process and its command, SIGKILL): the lock moves on once its
        # lease expires, and the dead holder's fenced write is refused.
        dead_log, next_log = tmp_path / "dead.log", tmp_path / "next.log"
        dead = lock(cluster, dead_log, 60)
        procs.append(dead)
        assert wait_for(lambda: dead_log.exists() and "start" in dead_log.read_text(), 30)
        _start, _when, token, pid = dead_log.read_text().split()
        pids.append(int(pid))
        key = dead.stdout.readline().strip()
        os.kill(dead.pid, signal.SIGKILL)
        os.kill(int(pid), signal.SIGKILL)
        dead.wait()
        following = lock(cluster, next_log, 0.5)
        procs.append(following)
        out, err = following.communicate(timeout=TTL + 30)
        assert following.returncode == 0, err
        assert int(next_log.read_text().split()[2]) > int(token)
        stale = paxosd(cluster, "put", "jobs/result", "from the dead", "--fence-key", key,
                       "--fence-revision", token)
        procs.append(stale)
        out, err = stale.communicate(timeout=60)
        assert stale.returncode == 1 and "fenced write refused" in err, (out, err)
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        cluster.close()
