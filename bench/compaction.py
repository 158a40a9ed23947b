"""The log's size under a long write load, with snapshots and compaction.

    python bench/compaction.py --minutes 10
    python bench/compaction.py --minutes 1 --snapshot-every 20000 --sample 5

Starts a 3-node cluster on loopback (fsync on, ``storage.snapshot_every_slots`` as given,
timing and batching from etc/paxosd.yaml), runs ``paxosd bench`` against it for the given time,
and every ``--sample`` seconds records for each node the size of wal.log (with the up to 8 MiB
allocated ahead of its records: what it occupies) and of the snapshot file, and the bytes appended to the WAL so far (``paxosd_disk_wal_write_bytes_total`` from the
node's /metrics): that last figure is what the log would hold without compaction. Prints one
line per sample and a summary; ``--json`` keeps everything. Every process is ended by its pid.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.tools.bench import machine, scrape_metric, stop_processes  # noqa: E402
from daemon.runtime.storage import SNAPSHOT_FILE, WAL_FILE  # noqa: E402
from daemon.tools.ports import free_ports  # noqa: E402


def wal_bytes_appended(port: int) -> int | None:
    value = scrape_metric(port, "paxosd_disk_wal_write_bytes_total")
    return None if value is None else int(value)


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--snapshot-every", type=int, default=100_000, metavar="SLOTS")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--value-size", type=int, default=64)
    parser.add_argument("--json", help="write samples and summary here")
    args = parser.parse_args(argv)

    directory = Path(tempfile.mkdtemp(prefix="paxosd-compaction-"))
    ports = free_ports(9)
    config = write_config(directory, ports, args.snapshot_every)
    procs: dict = {}
    samples: list[dict] = []
    bench_json = directory / "bench.json"
    try:
        for i in (1, 2, 3):
            with open(directory / f"node-{i}.log", "wb") as log:
                procs[i] = subprocess.Popen(
                    [sys.executable, "-m", "daemon.tools.cli", "serve", "--config", str(config),
                     "--node-id", str(i)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        seconds = args.minutes * 60
        procs["bench"] = subprocess.Popen(
            [sys.executable, "-m", "daemon.tools.cli", "bench", "--config", str(config),
             "--duration", str(seconds), "--warmup", "1", "--clients", str(args.clients),
             "--in-flight", str(args.in_flight), "--value-size", str(args.value_size),
             "--quiet", "--json", str(bench_json)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        sample_until_done(procs["bench"], directory, ports, seconds, args.sample, samples)
    finally:
        stop_processes(procs.values(), grace=15)
    bench = json.loads(bench_json.read_text()) if bench_json.exists() else {}
    summary = summarize(samples)
    print()
    print(f"{args.minutes:g} minutes, snapshot every {args.snapshot_every} slots, "
          f"{bench.get('commits_per_s', 0):,.0f} commits/s "
          f"({bench.get('commits', 0):,} commits; {args.clients} clients x {args.in_flight} "
          f"in flight, {args.value_size}-byte values, fsync on)")
    for i, s in summary.items():
        print(f"node {i}: WAL at most {s['wal_max'] / 1e6:.1f} MB, {s['wal_last'] / 1e6:.1f} MB at "
              f"the end, snapshot {s['snapshot_last'] / 1e6:.1f} MB; appended in all "
              f"{s['appended_total'] / 1e6:.1f} MB (the log without compaction)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine(), "settings": vars(args), "samples": samples,
            "summary": summary, "bench": {k: bench.get(k) for k in (
                "commits", "commits_per_s", "latency_ms")}}, indent=2, default=str) + "\n")
    return 0 if samples else 1


def write_config(directory: Path, ports: list[int], snapshot_every: int) -> Path:
    """The 3-node cluster's file (timing and batching from etc/paxosd.yaml, a metrics address
    per node), written in ``directory``."""
    base = yaml.safe_load((REPO / "etc" / "paxosd.yaml").read_text())
    doc = {
        "cluster": "compaction",
        "members": {i: {"peer": f"127.0.0.1:{ports[3 * (i - 1)]}",
                        "client": f"127.0.0.1:{ports[3 * (i - 1) + 1]}",
                        "metrics": f"127.0.0.1:{ports[3 * (i - 1) + 2]}"} for i in (1, 2, 3)},
        "data_dir": str(directory / "data"),
        "timing": base["timing"],
        "batching": base["batching"],
        "storage": {"fsync": True, "snapshot_every_slots": snapshot_every},
    }
    config = directory / "cluster.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return config


def sample_until_done(bench: subprocess.Popen, directory: Path, ports: list[int],
                      seconds: float, every: float, samples: list[dict]) -> None:
    """Every ``every`` seconds until the bench process ends (or 180 s past its duration),
    append each node's WAL, snapshot and appended sizes to ``samples`` and print a line."""
    started = time.monotonic()
    print(f"{'t (s)':>6}  " + "  ".join(
        f"{'node ' + str(i) + ' wal/snapshot/appended (MB)':>36}" for i in (1, 2, 3)))
    while bench.poll() is None and time.monotonic() - started < seconds + 180:
        time.sleep(every)
        row = {"t": round(time.monotonic() - started, 1)}
        for i in (1, 2, 3):
            node_dir = directory / "data" / f"node-{i}"
            row[i] = {"wal": size(node_dir / WAL_FILE),
                      "snapshot": size(node_dir / SNAPSHOT_FILE),
                      "appended": wal_bytes_appended(ports[3 * (i - 1) + 2])}
        samples.append(row)
        mb = lambda b: f"{b / 1e6:9.2f}" if b is not None else f"{'?':>9}"  # noqa: E731
        print(f"{row['t']:6.0f}  " + "  ".join(
            f"{mb(row[i]['wal'])} {mb(row[i]['snapshot'])} {mb(row[i]['appended'])}      "
            for i in (1, 2, 3)), flush=True)


def summarize(samples: list[dict]) -> dict:
    """Per node: the WAL's largest and last size, the last snapshot size, the bytes appended."""
    summary = {}
    for i in (1, 2, 3):
        wal = [s[i]["wal"] for s in samples]
        appended = [s[i]["appended"] for s in samples if s[i]["appended"] is not None]
        summary[i] = {"wal_max": max(wal, default=0), "wal_last": wal[-1] if wal else 0,
                      "snapshot_last": samples[-1][i]["snapshot"] if samples else 0,
                      "appended_total": max(appended, default=0)}
    return summary


if __name__ == "__main__":
    sys.exit(main())
