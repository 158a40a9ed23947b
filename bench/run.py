"""Run the benchmark scenarios and record them: `python bench/run.py [--peers] [SCENARIO ...]`.

Each scenario is one `paxosd bench` run (and, with --peers, the same workload against every
variant of PySyncObj and etcd, see bench/peers/ and PEER_VARIANTS below); each writes
bench/results/<date>-<system or variant>-<scenario>.json, the paxosd inflight100 and peak ones
a plot beside it. At the end bench/compare.py prints the side-by-side table of what this run
recorded. The peers need Debian's etcd-server, golang-go and golang-etcd-server-dev
(bench/peers/etcd_native.sh installs them) and pysyncobj in the Python of --peers-python (`pip install -e '.[peers]'`).

Scenarios (all 64-byte values, 3 nodes, fsync on, clients in separate processes, unless named):

    one          one command at a time: 1 client x 1 in flight
    inflight100  100 commands in flight: 2 clients x 50
    peak         the most throughput: 4 clients x 1000 in flight
    nodes5       5 nodes, 2 clients x 100
    value1k      1 KiB values, 2 clients x 100
    nofsync      fsync off, 2 clients x 100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PEERS = ROOT / "bench" / "peers"

SCENARIOS = {
    "one": ["--clients", "1", "--in-flight", "1"],
    "inflight100": ["--clients", "2", "--in-flight", "50"],
    "peak": ["--clients", "4", "--in-flight", "1000"],
    "nodes5": ["--nodes", "5", "--clients", "2", "--in-flight", "100"],
    "value1k": ["--value-size", "1024", "--clients", "2", "--in-flight", "100"],
    "nofsync": ["--no-fsync", "--clients", "2", "--in-flight", "100"],
}
# The same workloads for every variant of the peers (see bench/peers/): the script, whether it
# needs the Python that has pysyncobj, and its arguments per scenario. etcd native: gRPC
# connections x goroutines each; etcd gateway: processes x threads, one request per connection;
# PySyncObj in-node: calls outstanding on the leader (the peak one with appendEntriesUseBatch,
# its best here); PySyncObj TCP: client processes x in flight on one connection each.
PEER_VARIANTS = {
    "etcd-native": ("etcd_native.py", False),
    "etcd-gateway": ("etcd_bench.py", False),
    "pysyncobj-innode": ("pysyncobj_innode.py", True),
    "pysyncobj-tcp": ("pysyncobj_bench.py", True),
}
PEER_SCENARIOS = {
    "one": {"etcd-native": ["--clients", "1", "--in-flight", "1"],
            "etcd-gateway": ["--clients", "1", "--in-flight", "1"],
            "pysyncobj-innode": ["--in-flight", "1"],
            "pysyncobj-tcp": ["--clients", "1", "--in-flight", "1"]},
    "inflight100": {"etcd-native": ["--clients", "10", "--in-flight", "10"],
                    "etcd-gateway": ["--clients", "4", "--in-flight", "25"],
                    "pysyncobj-innode": ["--in-flight", "100"],
                    "pysyncobj-tcp": ["--clients", "2", "--in-flight", "50"]},
    # Each variant at the concurrency where it was highest here: etcd native at 4,000 in flight
    # on 100 connections (bench/results/2026-11-27-1351-peak-concurrency/: 2 runs each, 1,000
    # in flight 18,838 and 17,434 commits/s, 2,000 18,825 and 19,964, 4,000 20,060 and 22,877;
    # 10,000 was lower in the sweep); the gateway at 400 threads; PySyncObj falls off beyond a few hundred commands in
    # flight through its front end.
    "peak": {"etcd-native": ["--clients", "100", "--in-flight", "40"],
             "etcd-gateway": ["--clients", "4", "--in-flight", "100"],
             "pysyncobj-innode": ["--in-flight", "1000", "--batch"],
             "pysyncobj-tcp": ["--clients", "4", "--in-flight", "200"]},
}


def _run(cmd: list[str], out: Path, system: str, scenario: str) -> dict | None:
    print(f"$ {' '.join(cmd)}", flush=True)
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode != 0 or not out.exists():
        print(f"  {system} {scenario}: failed (exit {result.returncode})", file=sys.stderr)
        return None
    report = json.loads(out.read_text())
    shown = ["python", *cmd[1:]] if cmd[0] == sys.executable else cmd
    shown = [a[len(str(ROOT)) + 1:] if a.startswith(str(ROOT) + "/") else a for a in shown]
    report.update(system=report.get("system", system), scenario=scenario, command=" ".join(shown))
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("scenarios", nargs="*", default=list(SCENARIOS), help="default: all")
    p.add_argument("--duration", default="10")
    p.add_argument("--warmup", default="2")
    p.add_argument("--peers", action="store_true", help="also run PySyncObj and etcd")
    p.add_argument("--variants", default=",".join(PEER_VARIANTS),
                   help="with --peers, which peer variants (default: all of "
                        f"{','.join(PEER_VARIANTS)})")
    p.add_argument("--peers-python", default=os.environ.get("PEERS_PYTHON", sys.executable),
                   help="a Python with pysyncobj installed (default $PEERS_PYTHON or this "
                        "Python: pip install pysyncobj into .venv)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M")
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in PEER_VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}: one of {', '.join(PEER_VARIANTS)}")
    written = []
    for scenario in args.scenarios:
        if scenario not in SCENARIOS:
            p.error(f"unknown scenario {scenario!r}: one of {', '.join(SCENARIOS)}")
        out = out_dir / f"{stamp}-paxosd-{scenario}.json"
        cmd = [sys.executable, "-m", "daemon.tools.cli", "bench", *SCENARIOS[scenario],
               "--duration", args.duration, "--warmup", args.warmup, "--quiet", "--json", str(out)]
        if scenario in ("inflight100", "peak"):
            cmd += ["--plot", str(out.with_suffix(".png"))]
        if _run(cmd, out, "paxosd", scenario):
            written.append(out)
        if args.peers and scenario in PEER_SCENARIOS:
            for variant in variants:
                out = out_dir / f"{stamp}-{variant}-{scenario}.json"
                script, needs_pysyncobj = PEER_VARIANTS[variant]
                cmd = [args.peers_python if needs_pysyncobj else sys.executable,
                       str(PEERS / script), *PEER_SCENARIOS[scenario][variant],
                       "--duration", args.duration, "--warmup", args.warmup, "--json", str(out)]
                if _run(cmd, out, variant, scenario):
                    written.append(out)
    if written:
        subprocess.run([sys.executable, str(ROOT / "bench" / "compare.py"), *map(str, written)])
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
