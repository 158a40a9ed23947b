"""etcd (Debian's etcd-server, fdatasync on) driven by its native gRPC client: our Go program
bench/peers/etcdbench/main.go on clientv3, closed loop, ``--clients`` gRPC connections x
``--in-flight`` goroutines each, every goroutine putting one value after another (the shape of
etcd's own `benchmark put --conns --clients`), all to the leader. 3 members on loopback, data
in a temporary directory (the file system paxosd's bench uses), 64-byte values over 100,000 keys
by default. The Go client is one separate process; its CPU and the members' CPU are read over
the measured interval, which the program announces on its standard output.

With ``--read-ratio`` a fraction of the operations are reads (``--range-limit L``: ranges of up
to L keys); with ``--watchers N`` the client process also holds N watches of every key written
(their connections spread over the members, as paxosd bench spreads its watches over the
nodes) and reports the changes they receive per second (the report's "reads" and "watch").

The program is built offline, in GOPATH mode, against the clientv3 sources that Debian's
golang-etcd-server-dev puts under /usr/share/gocode/src (no module download, GOPROXY=off):

    apt-get install etcd-server golang-go golang-etcd-server-dev
    python3 bench/peers/etcd_native.py --build-only
    python3 bench/peers/etcd_native.py --clients 10 --in-flight 10 --duration 10 \
        --json bench/results/DATE-etcd-native-inflight100.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import etcd_cluster  # noqa: E402

SOURCE = Path(__file__).resolve().parent / "etcdbench" / "main.go"
BUILD = common.REPO / "build" / "etcdbench"
GOCODE = Path("/usr/share/gocode/src")
# The clientv3 import path of Debian's etcd 3.4 sources, and of 3.5 and later.
CLIENTV3 = ("go.etcd.io/etcd/clientv3", "go.etcd.io/etcd/client/v3")


class BuildError(RuntimeError):
    """The Go program cannot be built here; the message says what is missing."""


def clientv3_path(gocode: Path = GOCODE) -> str:
    """The clientv3 import path present under ``gocode`` (BuildError naming the paths looked
    for and the package that provides them if none is)."""
    for path in CLIENTV3:
        if (gocode / path).is_dir():
            return path
    raise BuildError(f"no clientv3 under {gocode} (looked for {', '.join(CLIENTV3)}): "
                     "apt-get install golang-etcd-server-dev")


def build(out_dir: Path = BUILD) -> Path:
    """Build etcdbench into ``out_dir`` (kept there; rebuilt when main.go is newer) and return
    the binary's path. GOPATH mode with the network off: only Debian's packaged Go sources are
    used. BuildError says why a build is impossible."""
    go = shutil.which("go")
    if go is None:
        raise BuildError("go not found: apt-get install golang-go")
    binary = out_dir / "etcdbench"
    if binary.exists() and binary.stat().st_mtime >= SOURCE.stat().st_mtime:
        return binary
    import_path = clientv3_path()
    # A GOPATH of our own first, holding the program as package "etcdbench" with the clientv3
    # import Debian ships, then Debian's sources.
    package = out_dir / "gopath" / "src" / "etcdbench"
    package.mkdir(parents=True, exist_ok=True)
    text = SOURCE.read_text().replace(f'"{CLIENTV3[0]}"', f'"{import_path}"')
    (package / "main.go").write_text(text)
    env = dict(os.environ, GO111MODULE="off", GOPROXY="off", GOFLAGS="", GOTOOLCHAIN="local",
               GOPATH=f"{out_dir / 'gopath'}:{GOCODE.parent}")
    # Go's own build cache (~/.cache/go-build) when there is a home: a fresh clone then builds
    # in seconds once any build of clientv3 ran on the machine.
    if not any(env.get(v) for v in ("GOCACHE", "XDG_CACHE_HOME", "HOME")):
        env["GOCACHE"] = str(out_dir / "cache")
    done = subprocess.run([go, "build", "-o", str(binary), "etcdbench"], cwd=package, env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise BuildError(f"go build failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return binary


def _drive(binary: Path, cluster, args) -> tuple[dict, dict, dict]:
    """Run the Go client against the cluster's leader; CPU of the members at the start and end
    of its measured interval, and its result. Ended by its pid if it overruns."""
    cmd = [str(binary), "-endpoints", cluster.url(cluster.leader_port),
           "-conns", str(args.clients), "-clients", str(args.in_flight),
           "-value-size", str(args.value_size), "-keys", str(args.keys),
           "-duration", f"{args.duration}s", "-warmup", f"{args.warmup}s",
           "-read-ratio", str(args.read_ratio), "-range-limit", str(args.range_limit),
           "-watchers", str(args.watchers), "-watch-conns", str(args.watch_conns),
           "-watch-endpoints", ",".join(cluster.url(port) for port in cluster.client_ports)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    before = after = result = None
    try:
        # Bounded: the program stops by itself after warmup + duration; the lines are few.
        for line in proc.stdout:
            message = json.loads(line)
            if message.get("event") == "measure":
                before = {str(i + 1): common.cpu_seconds(p) for i, p in enumerate(cluster.pids)}
            elif message.get("event") == "stop":
                after = {str(i + 1): common.cpu_seconds(p) for i, p in enumerate(cluster.pids)}
            else:
                result = message
        proc.wait(timeout=args.warmup + args.duration + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    if proc.returncode != 0 or result is None or before is None or after is None:
        raise RuntimeError(f"etcdbench failed (exit {proc.returncode})")
    return before, after, result


def _print_extras(r: dict) -> None:
    reads, watch = r.get("reads"), r.get("watch")
    if reads:
        lat = reads["latency_ms"] or {}
        print(f"  reads/s          {reads['reads_per_s']:,.0f} ({reads['keys_per_s']:,.0f} keys/s, "
              f"range limit {reads['range_limit']}); p50 {lat.get('p50', float('nan')):.2f}  "
              f"p99 {lat.get('p99', float('nan')):.2f} ms")
    if watch:
        print(f"  watch            {watch['started']}/{watch['watchers']} watches on "
              f"{watch['conns']} connections: {watch['events_per_s']:,.0f} changes/s delivered, "
              f"{watch['canceled']} cancelled")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--clients", type=int, default=1, help="gRPC connections")
    p.add_argument("--in-flight", type=int, default=1,
                   help="goroutines per connection, each one put at a time")
    p.add_argument("--value-size", type=int, default=64)
    p.add_argument("--keys", type=int, default=100_000, help="key space")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--read-ratio", type=float, default=0.0,
                   help="fraction of the operations that are linearizable reads")
    p.add_argument("--range-limit", type=int, default=0,
                   help="reads are ranges of up to this many keys from a random key (0: one key)")
    p.add_argument("--watchers", type=int, default=0,
                   help="watches of every key the writers write, in the client process")
    p.add_argument("--watch-conns", type=int, default=0,
                   help="connections the watches share (default: one per 10 watches)")
    p.add_argument("--build-only", action="store_true", help="build the Go program and stop")
    p.add_argument("--json")
    args = p.parse_args()
    try:
        binary = build()
    except BuildError as e:
        print(f"cannot build the etcd client: {e}", file=sys.stderr)
        return 2
    if args.build_only:
        print(binary)
        return 0
    if etcd_cluster.etcd_binary() is None:
        print("etcd not found: apt-get install etcd-server", file=sys.stderr)
        return 2
    with etcd_cluster.running(args.nodes) as cluster:
        before, after, out = _drive(binary, cluster, args)
    settings = {"nodes": args.nodes, "clients": args.clients, "in_flight": args.in_flight,
                "value_size": args.value_size, "duration_s": args.duration,
                "warmup_s": args.warmup, "fsync": True, "keys": args.keys,
                "read_ratio": args.read_ratio, "range_limit": args.range_limit,
                "watchers": args.watchers,
                "notes": "native gRPC client (Go clientv3, Debian's golang-etcd-server-dev), "
                         "closed loop, all to the leader; clients = gRPC connections in one "
                         "Go process, in_flight = goroutines per connection"}
    if out.get("first_error"):
        settings["first_error"] = out["first_error"]
    r = common.report(cluster.version, None, args.duration, settings,
                      common.cpu_used(before, after), [round(out["cpu_seconds"], 3)],
                      out["errors"], "bench/peers/etcd_native.py " + " ".join(sys.argv[1:]),
                      variant="etcd-native", measured=(out["commits"], out["latency_ms"]))
    for extra in ("reads", "watch"):  # the watch and range-read comparisons (issue 19, item 5)
        if out.get(extra):
            r[extra] = out[extra]
    common.print_report(r)
    _print_extras(r)
    common.write_json(r, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
