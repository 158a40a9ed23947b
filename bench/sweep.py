"""The scaling sweep of issue 19 (items 4 and 5), paxosd next to etcd, in one invocation:
`python bench/sweep.py [--groups inflight,value,config,watch,reads] [--duration 5] ...`.

Groups of points, each point one `paxosd bench` run or one run of etcd with its native Go
client (bench/peers/etcd_native.py), one after the other, the two systems alternating:

    inflight  commits/s and latency against the commands in flight in total (--in-flight,
              default 1 to 10,000), spread over client processes as `paxosd bench` does
              (1 process up to 10, 2 up to 100, else 4) and, for etcd, over gRPC connections
              x goroutines (1 connection up to 10, 10 up to 100, else 100); etcd up to
              --etcd-max-in-flight
    value     against the value size (--value-sizes, default 16 B to 64 KiB) at --fixed-in-flight
    config    paxosd on 3 and 5 nodes with fsync on and off; etcd on 3 and 5 nodes (fsync is
              always on in etcd 3.4) at --fixed-in-flight
    watch     --watchers (default 0, 100, 1000) watches of every key written, with writers at
              --watch-in-flight: changes delivered per second and the writers' commits/s
    reads     --read-ratio of the operations reads at --fixed-in-flight, for both systems: point
              reads ("get" of a random key of 100,000, most never written) and ranges of up to
              --range-limit keys from a random key on (`paxosd bench --range-limit`, etcd's
              Get WithFromKey WithLimit): reads/s, keys returned/s, read p99 and the writers'
              commits/s. paxosd bench writes every key once before its ranges (so they are
              full); etcd's ranges find the keys its writers wrote (about 98% full at 100)

Every point's report is written as bench/results/<stamp>-sweep-<group>-<system>-<x>.json (the
report of the tool that ran it, plus a "sweep" section: the exact command, the load average
before and after, the wall time and a summary in one shape for both systems), and the whole
sweep as <stamp>-sweep.json (machine, commit, settings, points run and missed). The plots
(bench/sweep_plot.py) go beside them as <stamp>-sweep-<group>.png; `--plot-only
<stamp>-sweep.json` redraws them from the files. A point that fails is reported and skipped;
once --budget seconds have passed no new point starts (the ones left are listed as missed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PEERS = ROOT / "bench" / "peers"
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(PEERS))

import common  # noqa: E402  (bench/peers/common.py: machine, git commit)
import sweep_plot  # noqa: E402

GROUPS = ("inflight", "value", "config", "watch", "reads")
SYSTEMS = ("paxosd", "etcd")


@dataclass
class Point:
    """One run: which group and system, its x (a number or a label), and the tool's options
    (without duration, warmup and output)."""
    group: str
    system: str
    x: object
    options: list


def paxosd_split(total: int) -> tuple[int, int]:
    """Client processes x commands in flight each for ``total`` in flight (rounded up)."""
    clients = 1 if total <= 10 else 2 if total <= 100 else 4
    return clients, -(-total // clients)


def etcd_split(total: int) -> tuple[int, int]:
    """gRPC connections x goroutines each for ``total`` in flight (rounded up)."""
    conns = 1 if total <= 10 else 10 if total <= 100 else 100
    return conns, -(-total // conns)


def _load(system: str, total: int, extra: list | None = None) -> tuple[int, list]:
    """The actual total in flight and the options that put ``total`` in flight on ``system``."""
    a, b = (paxosd_split if system == "paxosd" else etcd_split)(total)
    return a * b, ["--clients", str(a), "--in-flight", str(b), *(extra or [])]


def _inflight(args, s: str) -> list[Point]:
    return [Point("inflight", s, *_load(s, total)) for total in args.in_flight
            if s == "paxosd" or total <= args.etcd_max_in_flight]


def _value(args, s: str) -> list[Point]:
    return [Point("value", s, size, _load(s, args.fixed_in_flight, ["--value-size", str(size)])[1])
            for size in args.value_sizes]


def _config(args, s: str) -> list[Point]:
    """paxosd: 3 and 5 nodes, fsync on and off; etcd (always fsyncs): 3 and 5 nodes."""
    out = []
    for nodes in (3, 5):
        for fsync in ((True, False) if s == "paxosd" else (True,)):
            extra = ["--nodes", str(nodes)] + (["--fsync" if fsync else "--no-fsync"]
                                               if s == "paxosd" else [])
            out.append(Point("config", s, f"{nodes}n-fsync-{'on' if fsync else 'off'}",
                             _load(s, args.fixed_in_flight, extra)[1]))
    return out


def _watch(args, s: str) -> list[Point]:
    return [Point("watch", s, n, _load(s, args.watch_in_flight, ["--watchers", str(n)])[1])
            for n in args.watchers]


def _reads(args, s: str) -> list[Point]:
    ratio = ["--read-ratio", str(args.read_ratio)]
    out = [Point("reads", s, "get", _load(s, args.fixed_in_flight, ratio)[1])]
    if args.range_limit:
        out.append(Point("reads", s, f"range{args.range_limit}", _load(
            s, args.fixed_in_flight, ratio + ["--range-limit", str(args.range_limit)])[1]))
    return out


PLANS = {"inflight": _inflight, "value": _value, "config": _config, "watch": _watch,
         "reads": _reads}


def plan(args) -> list[Point]:
    """Every point of the groups asked for, in the order they run: group by group, and in
    each the x values in order, the systems alternating at each x (so that a drift of the
    machine's state over the sweep falls on both)."""
    points: list[Point] = []
    for group in args.groups:
        per_system = [PLANS[group](args, s) for s in args.systems]
        for i in range(max(len(p) for p in per_system)):
            points += [p[i] for p in per_system if i < len(p)]
    return points


def command(point: Point, args, out: Path) -> list[str]:
    """The command line of ``point``, writing its report to ``out``."""
    timing = ["--duration", str(args.duration), "--warmup", str(args.warmup), "--json", str(out)]
    if point.system == "paxosd":
        return [sys.executable, "-m", "daemon.tools.cli", "bench", *point.options, "--quiet",
                *timing]
    return [sys.executable, str(PEERS / "etcd_native.py"), *point.options, *timing]


def shown(cmd: list[str]) -> str:
    """``cmd`` as one would type it in the repository: python for this interpreter, paths
    relative to the repository."""
    words = ["python", *cmd[1:]] if cmd[0] == sys.executable else list(cmd)
    return " ".join(w[len(str(ROOT)) + 1:] if w.startswith(str(ROOT) + "/") else w
                    for w in words)


def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def run_one(cmd: list[str], timeout: float) -> int:
    """Run ``cmd`` to its end (its output passes through) and return its exit status. Past
    ``timeout`` seconds, or if this sweep is interrupted (SIGINT, or SIGTERM: see main), the
    command is stopped by its pid (`stop`) and the status is -1 (or the interrupt goes on)."""
    # SIGINT at its default in the command: a shell's background job inherits it ignored,
    # and then a Python command would not turn it into KeyboardInterrupt to stop cleanly.
    proc = subprocess.Popen(cmd, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  timed out after {timeout:.0f} s: stopping pid {proc.pid}", file=sys.stderr)
        stop(proc)
        return -1
    except KeyboardInterrupt:
        stop(proc)
        raise


def stop(proc) -> None:
    """SIGINT ``proc`` (`paxosd bench` then stops its cluster; etcd_native.py its members),
    and SIGKILL it if it is still running 20 s later."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def summary(report: dict, system: str) -> dict:
    """The figures the plots and the table use, in one shape for both systems' reports."""
    lat = report.get("latency_ms") or {}
    settings = report.get("settings") or {}
    duration = settings.get("duration_s") or 1.0
    out = {"commits_per_s": report.get("commits_per_s", 0.0), "p50_ms": lat.get("p50"),
           "p99_ms": lat.get("p99"), "errors": report.get("errors", 0),
           "cpu_us_per_commit": report.get("cpu_us_per_commit"),
           "nodes": settings.get("nodes"), "fsync": settings.get("fsync"),
           "value_size": settings.get("value_size")}
    reads = report.get("reads")  # one shape in both tools' reports (etcdbench's)
    if reads:
        out.update(reads_per_s=reads["reads_per_s"], read_keys_per_s=reads["keys_per_s"],
                   read_keys_per_read=(reads["keys_per_s"] / reads["reads_per_s"]
                                       if reads["reads_per_s"] else None),
                   read_p99_ms=(reads.get("latency_ms") or {}).get("p99"))
    watch = report.get("watch")
    if watch and system == "paxosd":
        out.update(watchers=watch["watchers"], watch_started=watch["started"],
                   watch_events_per_s=watch["events"] / duration, watch_cut_off=watch["cut_off"])
    elif watch:
        out.update(watchers=watch["watchers"], watch_started=watch["started"],
                   watch_events_per_s=watch["events_per_s"], watch_cut_off=watch["canceled"])
    if out.get("watchers") and out["commits_per_s"]:
        # Of the changes committed in the interval times the watchers, the share delivered in
        # it: below 1, the watchers fell behind the writers (or were cut off).
        out["watch_delivered"] = out["watch_events_per_s"] / (out["commits_per_s"]
                                                              * out["watchers"])
    return out


def run_point(point: Point, args, stamp: str, out_dir: Path) -> dict | None:
    """Run ``point``; its report with the "sweep" section, also written back to its file
    (None if the run failed)."""
    out = out_dir / f"{stamp}-sweep-{point.group}-{point.system}-{point.x}.json"
    cmd = command(point, args, out)
    print(f"$ {shown(cmd)}", flush=True)
    before, t0 = loadavg(), time.monotonic()
    status = run_one(cmd, args.warmup + args.duration + 120)
    wall = time.monotonic() - t0
    if status != 0 or not out.exists():
        print(f"  {point.group} {point.system} {point.x}: failed (exit {status})", file=sys.stderr)
        return None
    report = json.loads(out.read_text())
    report["sweep"] = {"name": stamp, "group": point.group, "system": point.system,
                       "x": point.x, "command": shown(cmd), "load_before": before,
                       "load_after": loadavg(), "wall_s": round(wall, 1),
                       "summary": summary(report, point.system)}
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def _names(allowed):
    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {bad[0] if bad else 'empty list'!r}: one or more of {','.join(allowed)}")
        return names
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--groups", type=_names(GROUPS), default=list(GROUPS))
    p.add_argument("--systems", type=_names(SYSTEMS), default=list(SYSTEMS))
    p.add_argument("--in-flight", type=_ints, default=[1, 10, 100, 1000, 4000, 10000],
                   help="totals in flight of the inflight group")
    p.add_argument("--etcd-max-in-flight", type=int, default=10000)
    p.add_argument("--value-sizes", type=_ints, default=[16, 256, 4096, 65536])
    p.add_argument("--fixed-in-flight", type=int, default=100,
                   help="in flight in the value, config and reads groups")
    p.add_argument("--watchers", type=_ints, default=[0, 100, 1000])
    p.add_argument("--watch-in-flight", type=int, default=1000, help="the writers' in flight")
    p.add_argument("--read-ratio", type=float, default=0.9)
    p.add_argument("--range-limit", type=int, default=100,
                   help="keys per range of the reads group, both systems (0: gets only)")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--budget", type=float, default=21 * 60,
                   help="seconds after which no new point starts (default 21 minutes)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--note", default="",
                   help="what the plots' titles say of the conditions (e.g. the machine)")
    p.add_argument("--plot-only", metavar="SWEEP.json",
                   help="redraw the plots of a finished sweep from its files and stop")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.fixed_in_flight < 1 \
            or args.watch_in_flight < 1 or not 0 < args.read_ratio <= 1 or args.range_limit < 0:
        p.error("need --duration > 0, --warmup >= 0, --fixed-in-flight >= 1, "
                "--watch-in-flight >= 1, 0 < --read-ratio <= 1, --range-limit >= 0")
    if 0 in args.in_flight:
        p.error("--in-flight: every total must be at least 1")
    return args


def load_sweep(manifest: Path) -> list[dict]:
    """The "sweep" sections of the points of the sweep ``manifest`` names, from their files."""
    doc = json.loads(manifest.read_text())
    return [json.loads((manifest.parent / name).read_text())["sweep"] for name in doc["points"]]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plot_only:
        manifest = Path(args.plot_only)
        doc = json.loads(manifest.read_text())
        for path in sweep_plot.plot_all(load_sweep(manifest), manifest.parent, doc["name"],
                                        doc.get("note", "")):
            print(path)
        return 0
    signal.signal(signal.SIGTERM, _interrupt)  # a sweep ended by its pid ends its run too
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M")
    points = plan(args)
    print(f"sweep {stamp}: {len(points)} points, {args.warmup:g} s warmup + {args.duration:g} s "
          f"each, budget {args.budget:.0f} s", flush=True)
    started = time.monotonic()
    done, missed, failed = run_all(points, args, stamp, out_dir, started)
    manifest = write_manifest(out_dir, stamp, args, done, missed, failed,
                              time.monotonic() - started)
    sections = load_sweep(manifest)
    for path in sweep_plot.plot_all(sections, out_dir, stamp, args.note):
        print(path)
    print(sweep_plot.markdown(sections))
    return 0 if done and not failed and not missed else 1


def run_all(points: list[Point], args, stamp: str, out_dir: Path,
            started: float) -> tuple[list, list, list]:
    """Run the points in turn until they are done, the budget is spent or the sweep is
    interrupted: (the sweep sections of those that ran, the names of those not run, the names
    of those that failed)."""
    done, missed, failed = [], [], []
    for i, point in enumerate(points):
        names = [f"{p.group}-{p.system}-{p.x}" for p in points[i:]]
        if time.monotonic() - started > args.budget:
            print(f"budget spent: {len(names)} points not run", file=sys.stderr)
            return done, names, failed
        try:
            report = run_point(point, args, stamp, out_dir)
        except KeyboardInterrupt:
            print(f"interrupted: {len(names)} points not run", file=sys.stderr)
            return done, names, failed
        if report is None:
            failed.append(names[0])
        else:
            done.append(report["sweep"])
    return done, missed, failed


def write_manifest(out_dir: Path, stamp: str, args, done: list, missed: list, failed: list,
                   wall: float) -> Path:
    """<stamp>-sweep.json: what ran (the point files), what did not, on what, with what."""
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "plot_only")}
    doc = {"name": stamp, "machine": common.machine(), "commit": common.git_commit(),
           "command": shown([sys.executable, *sys.argv]), "settings": settings,
           "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "wall_s": round(wall, 1),
           "note": args.note,
           "points": [f"{stamp}-sweep-{s['group']}-{s['system']}-{s['x']}.json" for s in done],
           "failed": failed, "missed": missed}
    path = out_dir / f"{stamp}-sweep.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
