"""What the peer benchmarks share with `paxosd bench`: the closed-loop client measurements, the
nearest-rank percentiles and free loopback ports (daemon.tools.stats and daemon.tools.ports, the
same ones), the report's JSON shape and the machine description. Standard library only (those
two modules are too), so each peer script runs in whatever environment its system needs."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from daemon.tools.ports import free_ports  # noqa: E402
from daemon.tools.stats import latency_summary, percentile  # noqa: E402

__all__ = ["cpu_seconds", "cpu_used", "free_ports", "git_commit", "latency_summary", "machine",
           "measure", "percentile", "print_report", "report", "sample_cpu", "write_json"]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def measure(workers, pids: list[int], start_at: float, warmup: float, duration: float,
            results) -> tuple[dict, dict, list]:
    """Start the client processes ``workers`` (each puts one result on the queue ``results``),
    note the CPU seconds of the node processes ``pids`` when the measured interval starts and
    when it ends, and collect the results: ``(cpu before, cpu after, results)``."""
    for w in workers:
        w.start()
    before, after = sample_cpu(pids, start_at, warmup, duration)
    outputs = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=10)
    return before, after, outputs


def sample_cpu(pids: list[int], start_at: float, warmup: float,
               duration: float) -> tuple[dict, dict]:
    """Sleep until the measured interval starts (``start_at + warmup`` on time.monotonic()) and
    until it ends, noting the CPU seconds of the processes ``pids`` at both moments, keyed
    "1", "2", ... in the order given: ``(before, after)``."""
    time.sleep(max(0.0, start_at + warmup - time.monotonic()))
    before = {str(i + 1): cpu_seconds(pid) for i, pid in enumerate(pids)}
    time.sleep(max(0.0, start_at + warmup + duration - time.monotonic()))
    after = {str(i + 1): cpu_seconds(pid) for i, pid in enumerate(pids)}
    return before, after


def cpu_used(before: dict, after: dict) -> dict:
    """CPU seconds each process used between the two samples (processes not read are left
    out)."""
    return {k: round(after[k] - before[k], 3) for k in after
            if after[k] is not None and before.get(k) is not None}


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}"}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def report(system: str, writes: list | None, duration: float, settings: dict, nodes_cpu: dict,
           clients_cpu: list, errors: int, command: str, variant: str | None = None,
           measured: tuple[int, dict | None] | None = None) -> dict:
    """The report's JSON shape. ``writes`` are the latencies (seconds) of the commits in the
    measured interval; a client that summarises them itself (the Go one) passes ``writes=None``
    and ``measured=(commits, latency_ms summary)`` instead. ``variant`` names how the peer was
    driven (etcd-native, pysyncobj-innode, ...): bench/compare.py shows each variant."""
    total = sum(nodes_cpu.values()) + sum(clients_cpu)
    commits, latency = measured if writes is None else (len(writes), latency_summary(writes))
    return {
        "system": system,
        "variant": variant,
        "commits": commits,
        "commits_per_s": commits / duration,
        "latency_ms": latency,
        "errors": errors,
        "cpu_seconds": {"nodes": nodes_cpu, "clients": clients_cpu, "total": round(total, 3)},
        "cpu_us_per_commit": total / commits * 1e6 if commits else None,
        "settings": settings,
        "machine": machine(),
        "commit": git_commit(),
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def print_report(r: dict) -> None:
    s = r["settings"]
    lat = r["latency_ms"] or {}
    name = f"{r['system']} ({r['variant']})" if r.get("variant") else r["system"]
    print(f"{name}: {s['nodes']} nodes, fsync {'on' if s.get('fsync') else 'off'}, "
          f"{s['clients']} clients x {s['in_flight']} in flight, {s['value_size']} B values, "
          f"{s['duration_s']:g} s")
    print(f"  commits/s        {r['commits_per_s']:,.0f}  ({r['commits']:,} commits, "
          f"{r['errors']} errors)")
    if lat:
        print(f"  latency ms       p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
              f"p99.9 {lat['p999']:.2f}  max {lat['max']:.2f}")
    cpu = r["cpu_seconds"]
    print(f"  cpu seconds      nodes {sum(cpu['nodes'].values()):.2f}, clients "
          f"{sum(cpu['clients']):.2f}; per command "
          f"{r['cpu_us_per_commit'] or float('nan'):.1f} us")


def write_json(r: dict, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(r, indent=2) + "\n")
