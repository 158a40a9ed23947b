"""Throughput while a member of a loaded 3-node cluster is replaced (add 4, remove 1).

    python bench/replace.py --seconds 60 --plot bench/results/replace.png

Starts nodes 1-3 on loopback (fsync on; timing and batching from etc/paxosd.yaml) and node 4
with ``serve --join`` (marked ``join: true`` in the file), runs ``paxosd bench`` against the
cluster for ``--seconds`` (its own ``--plot`` picture goes next to the annotated one, with
``-bench`` in the name), and meanwhile: at 25% of the time ``paxosd member add 4``, waits for
node 4 to be a voter, at 50% ``paxosd member remove 1`` (node 1 hands leadership over first if
it leads), then stops node 1. Node 2, a member throughout, is sampled every ``--sample``
seconds for the commands it has applied (``paxosd_proposals_applied_total`` on /metrics): that
series, with the events marked, is the annotated plot. Prints the events and the commits/s
before, during and after. Every process is ended by its pid.
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
from daemon.tools.ports import free_ports  # noqa: E402

METRIC = "paxosd_proposals_applied_total"


def applied(port: int) -> float | None:
    return scrape_metric(port, METRIC)


def cli(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.tools.cli", *args, "--config", str(config),
                           "--timeout", "30"], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--sample", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--value-size", type=int, default=64)
    parser.add_argument("--snapshot-every", type=int, default=20_000, metavar="SLOTS")
    parser.add_argument("--plot", help="draw the annotated throughput to this PNG")
    parser.add_argument("--json", help="write the samples, events and summary here")
    args = parser.parse_args(argv)

    directory = Path(tempfile.mkdtemp(prefix="paxosd-replace-"))
    ports = free_ports(12)
    config, members = write_config(directory, ports, args.snapshot_every)
    procs: dict = {}
    samples: list[tuple[float, float]] = []
    timeline = Timeline()
    bench_json = directory / "bench.json"
    bench_plot = (str(Path(args.plot).with_name(Path(args.plot).stem + "-bench.png"))
                  if args.plot else None)
    try:
        for i in (1, 2, 3):
            serve(procs, directory, config, i)
        serve(procs, directory, config, 4, "--join")
        bench = [sys.executable, "-m", "daemon.tools.cli", "bench", "--config", str(config),
                 "--duration", str(args.seconds), "--warmup", "1", "--clients", str(args.clients),
                 "--in-flight", str(args.in_flight), "--value-size", str(args.value_size),
                 "--quiet", "--json", str(bench_json)] + (["--plot", bench_plot] if bench_plot
                                                          else [])
        procs["bench"] = subprocess.Popen(bench, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, cwd=REPO)
        timeline.start()
        timeline.event("bench started against nodes 1, 2, 3")
        replace_node_1(procs, config, members, ports, args, timeline, samples)
        timeline.event("bench finished")
    finally:
        stop_processes(procs.values(), grace=15)
    bench_report = json.loads(bench_json.read_text()) if bench_json.exists() else {}
    return report(args, samples, timeline.events, bench_report, bench_plot)


class Timeline:
    """The scenario's events, each with its time since ``start``, printed as they happen."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.events: list[tuple[float, str]] = []

    def start(self) -> None:
        self.started = time.monotonic()

    def event(self, text: str) -> None:
        t = time.monotonic() - self.started
        self.events.append((round(t, 2), text))
        print(f"{t:7.2f} s  {text}", flush=True)


def write_config(directory: Path, ports: list[int], snapshot_every: int) -> tuple[Path, dict]:
    """The file of nodes 1, 2, 3 and of node 4, which joins (timing and batching from
    etc/paxosd.yaml, a metrics address per node); returns its path and the members."""
    base = yaml.safe_load((REPO / "etc" / "paxosd.yaml").read_text())
    members = {i: {"peer": f"127.0.0.1:{ports[3 * (i - 1)]}",
                   "client": f"127.0.0.1:{ports[3 * (i - 1) + 1]}",
                   "metrics": f"127.0.0.1:{ports[3 * (i - 1) + 2]}"} for i in (1, 2, 3, 4)}
    members[4]["join"] = True
    doc = {"cluster": "replace", "members": members, "data_dir": str(directory / "data"),
           "timing": base["timing"], "batching": base["batching"],
           "storage": {"fsync": True, "snapshot_every_slots": snapshot_every}}
    config = directory / "cluster.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return config, members


def serve(procs: dict, directory: Path, config: Path, i: int, *extra: str) -> None:
    """Start node ``i`` (its output appended to node-i.log) and record it in ``procs``."""
    with open(directory / f"node-{i}.log", "ab") as log:
        procs[i] = subprocess.Popen(
            [sys.executable, "-m", "daemon.tools.cli", "serve", "--config", str(config),
             "--node-id", str(i), *extra], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def replace_node_1(procs: dict, config: Path, members: dict, ports: list[int], args,
                   timeline: Timeline, samples: list) -> None:
    """While the bench runs: add node 4 at a quarter of the time, wait until it votes, remove
    node 1 at half the time and stop it; sample node 2's applied count all along."""
    node2 = ports[3 * 1 + 2]
    stage = 0
    started = next_sample = timeline.started
    end = started + args.seconds + 15
    while procs["bench"].poll() is None and time.monotonic() < end:
        now = time.monotonic()
        if now >= next_sample:
            value = applied(node2)
            if value is not None:
                samples.append((round(now - started, 3), value))
            next_sample += args.sample
        t = now - started
        if stage == 0 and t >= 0.25 * args.seconds:
            stage = 1
            r = cli(config, "member", "add", "4", members[4]["peer"], members[4]["client"])
            timeline.event("member add 4: " + (r.stdout.split(";")[0].strip() if r.returncode == 0
                                               else "FAILED " + r.stderr.strip()))
        elif stage == 1:
            r = cli(config, "member", "list", "--json")
            if r.returncode == 0 and any(m["id"] == 4 and m["voter"]
                                         for m in json.loads(r.stdout)["members"]):
                stage = 2
                timeline.event("node 4 is a voter")
        elif stage == 2 and t >= 0.5 * args.seconds:
            stage = 3
            st = cli(config, "status", "--json")
            led = st.returncode == 0 and any(
                s.get("id") == 1 and s.get("role") == "leader" for s in json.loads(st.stdout))
            r = cli(config, "member", "remove", "1")
            timeline.event(f"member remove 1 (node 1 {'led' if led else 'did not lead'}): "
                           + (r.stdout.strip() if r.returncode == 0
                              else "FAILED " + r.stderr.strip()))
            procs[1].terminate()
            procs[1].wait(timeout=15)
            timeline.event("node 1 stopped")
        time.sleep(min(0.05, max(0.0, next_sample - time.monotonic())))


def report(args, samples: list, events: list, bench_report: dict, bench_plot: str | None) -> int:
    """Print the applied rate per phase (and plot, and write JSON when asked); 0 if node 4
    became a voter and node 1 was removed."""
    rates = [((t0 + t1) / 2, (v1 - v0) / (t1 - t0))
             for (t0, v0), (t1, v1) in zip(samples, samples[1:]) if t1 > t0]
    marks = {text.split(":")[0]: t for t, text in events}
    add_at = marks.get("member add 4", 0.0)
    remove_at = next((t for t, text in events if text.startswith("member remove 1")), None)

    # The clients stop a few seconds before the bench process exits: the load ends where the
    # rate last stood above a tenth of its median.
    ordered = sorted(r for _, r in rates)
    median = ordered[len(ordered) // 2] if ordered else 0.0
    load_end = max((t for t, r in rates if r > 0.1 * median), default=0.0)

    def mean(lo: float, hi: float) -> float:
        xs = [r for t, r in rates if lo <= t < hi]
        return sum(xs) / len(xs) if xs else 0.0

    phases = {"before the change (1, 2, 3)": mean(2.0, add_at),
              "while node 4 joins and catches up": mean(add_at, marks.get("node 4 is a voter",
                                                                           add_at)),
              "with 1, 2, 3, 4": mean(marks.get("node 4 is a voter", add_at), remove_at or 0),
              "after removing 1 (2, 3, 4)": mean((remove_at or 0) + 1.0, load_end)}
    print()
    print(f"commits/s applied on node 2 ({args.clients} clients x {args.in_flight} in flight, "
          f"{args.value_size}-byte values, fsync on; bench: "
          f"{bench_report.get('commits_per_s', 0):,.0f} commits/s overall, p99 "
          f"{(bench_report.get('latency_ms') or {}).get('p99', float('nan')):.1f} ms)")
    for name, rate in phases.items():
        print(f"  {name:<36} {rate:9,.0f}")
    slowest = min((r for t, r in rates if add_at <= t <= load_end), default=0.0)
    print(f"  {'slowest ' + format(args.sample, 'g') + '-s sample after the add':<36} "
          f"{slowest:9,.0f}")
    if args.plot:
        _plot(rates, events, args.plot)
        print(f"plots: {args.plot} (annotated), {bench_plot} (paxosd bench --plot)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine(), "settings": vars(args), "events": events, "rates": rates,
            "phases": phases, "bench": {k: bench_report.get(k) for k in (
                "commits", "commits_per_s", "latency_ms")}}, indent=2, default=str) + "\n")
    ok = any(text == "node 4 is a voter" for _, text in events) and remove_at is not None
    return 0 if ok else 1


def _plot(rates, events, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.plot([t for t, _ in rates], [r for _, r in rates], lw=1)
    top = ax.get_ylim()[1]
    marked = [(t, text) for t, text in events if text.startswith(("member", "node"))]
    for k, (t, text) in enumerate(marked):
        ax.axvline(t, color="tab:red", lw=0.8, ls="--")
        ax.text(t, top * (0.02 if k % 2 == 0 else 0.5), " " + text.split(":")[0].split(" (")[0],
                rotation=90, va="bottom", fontsize=8, color="tab:red")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds")
    ax.set_ylabel("commands applied/s (node 2)")
    ax.set_title("throughput while node 1 is replaced by node 4 (fsync on)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
