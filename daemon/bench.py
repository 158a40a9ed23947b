"""``paxosd bench``: commit throughput and latency, measured from separate client processes.

Against the cluster named by ``--config``, or, by default, a local cluster it starts from
etc/paxosd.yaml (or etc/paxosd-5.yaml with ``--nodes 5``) on free loopback ports and in a
temporary data directory, and stops afterwards.

Each client process keeps ``--in-flight`` commands outstanding on one connection to the leader,
one client session per outstanding command (a session carries one write at a time). Replies
that arrive together are answered with one frame of new requests, so the client costs a few
system calls per batch, not per command. Latency is measured per command from the moment its
frame is written to the moment its reply frame is read.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastpath import FrameReader, dumps, encode_frame, loads

REPO_ETC = Path(__file__).resolve().parent.parent / "etc"
PROGRESS_EVERY = 1.0


# ------------------------------------------------------------------------------ client worker

class _Conn:
    """A blocking, pipelined connection speaking the client protocol."""

    def __init__(self, address: str, timeout: float) -> None:
        host, port = address.rsplit(":", 1)
        self.address = address
        self.sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = FrameReader()

    def send(self, requests: list) -> None:
        self.sock.sendall(encode_frame(dumps(requests)))

    def receive(self) -> list:
        """Block until at least one reply frame arrives; return all replies read."""
        while True:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError(f"{self.address} closed the connection")
            frames = self.reader.feed(data)
            if frames:
                replies = []
                for frame in frames:
                    replies.extend(loads(frame))
                return replies

    def close(self) -> None:
        self.sock.close()


def find_leader(endpoints: list[str], deadline: float) -> str:
    """The client address of the current leader, asking each endpoint for its status."""
    while time.monotonic() < deadline:
        for address in endpoints:
            try:
                conn = _Conn(address, timeout=1.0)
                try:
                    conn.send([[0, "status", 0, 0, b"", None, None]])
                    (reply,) = conn.receive()
                finally:
                    conn.close()
            except (OSError, ValueError):
                continue
            status = reply[2] if reply[1] == "ok" else None
            if isinstance(status, dict) and status.get("role") == "leader":
                return address
        time.sleep(0.05)
    raise TimeoutError(f"no leader among {', '.join(endpoints)}")


def _worker(index: int, endpoints: list[str], in_flight: int, value_size: int, read_ratio: float,
            warmup: float, duration: float, start_at: float, results, progress) -> None:
    """One client process: closed loop with ``in_flight`` commands outstanding."""
    rng = random.Random(os.getpid() ^ index)
    value = rng.randbytes(value_size)
    sessions = [[rng.getrandbits(62) + 1, 0] for _ in range(in_flight)]
    keyspace = 100_000
    conn = None
    sent_at: dict[int, tuple[float, int]] = {}  # req_id -> (time sent, session index)
    next_req = 1
    samples: list[float] = []
    per_second: dict[int, int] = {}
    errors = 0
    error_kinds: dict[str, int] = {}
    redirects = 0
    measure_from = start_at + warmup
    stop_at = measure_from + duration
    last_report = time.monotonic()
    reported = 0
    done = 0

    def make(session_index: int, now: float) -> list:
        nonlocal next_req
        req_id = next_req
        next_req += 1
        sent_at[req_id] = (now, session_index)
        key = b"k%d" % rng.randrange(keyspace)
        if read_ratio and rng.random() < read_ratio:
            return [req_id, "get", 0, 0, key, None, None]
        session = sessions[session_index]
        session[1] += 1
        return [req_id, "put", session[0], session[1], key, value, None]

    def resend(session_index: int, now: float) -> list:
        # Same session, same seq: a retried write applies at most once.
        nonlocal next_req
        req_id = next_req
        next_req += 1
        sent_at[req_id] = (now, session_index)
        session = sessions[session_index]
        return [req_id, "put", session[0], session[1], b"retry", value, None]

    while time.monotonic() < start_at:
        time.sleep(0.005)
    while time.monotonic() < stop_at:
        if conn is None:
            try:
                leader = find_leader(endpoints, time.monotonic() + 10.0)
                conn = _Conn(leader, timeout=10.0)
            except (OSError, TimeoutError):
                errors += 1
                time.sleep(0.05)
                continue
            now = time.monotonic()
            sent_at.clear()
            conn.send([make(i, now) for i in range(in_flight)])
        try:
            replies = conn.receive()
        except (OSError, ValueError):
            conn.close()
            conn = None
            errors += 1
            continue
        now = time.monotonic()
        second = int(now - measure_from)
        out = []
        for reply in replies:
            entry = sent_at.pop(reply[0], None)
            if entry is None:
                continue
            t0, session_index = entry
            if reply[1] == "ok":
                done += 1
                if t0 >= measure_from and now < stop_at:
                    samples.append(now - t0)
                    per_second[second] = per_second.get(second, 0) + 1
                out.append(make(session_index, now))
            elif reply[1] == "not_leader":
                redirects += 1
                out = None
                break
            else:
                errors += 1
                error_kinds[f"{reply[1]}: {reply[2]}"[:120]] = error_kinds.get(f"{reply[1]}: {reply[2]}"[:120], 0) + 1
                out.append(resend(session_index, now))
        if out is None:  # leadership moved: reconnect and start the window afresh
            conn.close()
            conn = None
            continue
        if out:
            conn.send(out)
        if now - last_report >= 0.5:
            progress.put((index, done - reported))
            reported = done
            last_report = now
    if conn is not None:
        conn.close()
    results.put({"index": index, "samples": samples, "per_second": per_second,
                 "errors": errors, "error_kinds": error_kinds, "redirects": redirects,
                 "cpu_seconds": sum(os.times()[:2])})


# ------------------------------------------------------------------------------ local cluster

def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class LocalCluster:
    """A cluster of child processes on loopback, in a temporary directory."""

    nodes: int
    fsync: bool
    window: int | None = None
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="paxosd-bench-")))
    processes: dict = field(default_factory=dict)
    config_path: Path | None = None

    def start(self) -> list[str]:
        ports = _free_ports(2 * self.nodes)
        lines = ["cluster: bench", "members:"]
        for i in range(self.nodes):
            lines.append(f"  {i + 1}: {{peer: 127.0.0.1:{ports[2 * i]}, client: 127.0.0.1:{ports[2 * i + 1]}}}")
        lines.append(f"data_dir: {self.directory / 'data'}")
        lines.append(f"storage: {{fsync: {'true' if self.fsync else 'false'}}}")
        if self.window:
            lines.append(f"batching: {{window: {self.window}}}")
        self.config_path = self.directory / "paxosd.yaml"
        self.config_path.write_text("\n".join(lines) + "\n")
        for i in range(1, self.nodes + 1):
            log = open(self.directory / f"node-{i}.log", "wb")
            self.processes[i] = subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", "serve", "--config", str(self.config_path),
                 "--node-id", str(i)], stdout=log, stderr=subprocess.STDOUT)
        return [f"127.0.0.1:{ports[2 * i + 1]}" for i in range(self.nodes)]

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def cpu_seconds(self) -> dict[int, float]:
        out = {}
        tick = os.sysconf("SC_CLK_TCK")
        for i, proc in self.processes.items():
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[i] = (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                pass
        return out


# ------------------------------------------------------------------------------ reporting

def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[k]


def _status(endpoint: str) -> dict | None:
    try:
        conn = _Conn(endpoint, timeout=2.0)
        try:
            conn.send([[0, "status", 0, 0, b"", None, None]])
            (reply,) = conn.receive()
        finally:
            conn.close()
        return reply[2] if reply[1] == "ok" else None
    except (OSError, ValueError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(args) -> int:
    """Run the benchmark described by the parsed command-line ``args``; returns an exit code."""
    cluster = None
    settings = {
        "clients": args.clients, "in_flight": args.in_flight, "value_size": args.value_size,
        "duration_s": args.duration, "warmup_s": args.warmup, "read_ratio": args.read_ratio,
    }
    try:
        if args.config:
            from daemon.config import load_config

            config = load_config(args.config)
            endpoints = [str(m.client) for m in config.members]
            settings.update(nodes=len(endpoints), fsync=config.storage.fsync, cluster="external")
        else:
            cluster = LocalCluster(args.nodes, args.fsync, window=args.window)
            endpoints = cluster.start()
            settings.update(nodes=args.nodes, fsync=args.fsync, cluster="local")
        leader = find_leader(endpoints, time.monotonic() + 30.0)
        before = _status(leader) or {}
        ctx = multiprocessing.get_context("spawn")
        results, progress = ctx.Queue(), ctx.Queue()
        start_at = time.monotonic() + 1.0 + 0.2 * args.clients
        workers = [ctx.Process(target=_worker, args=(
            i, [leader] + [e for e in endpoints if e != leader], args.in_flight, args.value_size,
            args.read_ratio, args.warmup, args.duration, start_at, results, progress))
            for i in range(args.clients)]
        for w in workers:
            w.start()
        _show_progress(progress, start_at, args.warmup, args.duration, args.quiet)
        outputs = [results.get(timeout=args.duration + args.warmup + 120) for _ in workers]
        for w in workers:
            w.join(timeout=30)
        after = _status(leader) or {}
        server_cpu = cluster.cpu_seconds() if cluster else {}
    finally:
        if cluster is not None:
            cluster.stop()
    report = _report(outputs, settings, before, after, server_cpu, args)
    _print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        _plot(report, outputs, args.plot)
    return 0 if report["commits"] else 1


def _show_progress(progress, start_at: float, warmup: float, duration: float, quiet: bool) -> None:
    end = start_at + warmup + duration
    # On a terminal the progress line rewrites itself; in a log, one line per update.
    lead, tail = ("\r", "") if sys.stderr.isatty() else ("", "\n")
    window_count = 0
    last = time.monotonic()
    total = 0
    while time.monotonic() < end + 0.5:
        try:
            _, n = progress.get(timeout=0.2)
            window_count += n
            total += n
        except Exception:  # queue.Empty
            pass
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY and not quiet:
            phase = "warmup" if now < start_at + warmup else "measure"
            print(f"{lead}  {phase}: {window_count / (now - last):>10,.0f} commits/s   "
                  f"{total:>10,} total   {max(0.0, now - start_at):5.1f}s", end=tail, file=sys.stderr,
                  flush=True)
            window_count = 0
            last = now
    if not quiet and lead:
        print(file=sys.stderr)


def _report(outputs, settings, before, after, server_cpu, args) -> dict:
    samples = sorted(s for o in outputs for s in o["samples"])
    commits = len(samples)
    per_second: dict[int, int] = {}
    for o in outputs:
        for sec, n in o["per_second"].items():
            per_second[int(sec)] = per_second.get(int(sec), 0) + n
    slots = after.get("commit_index", 0) - before.get("commit_index", 0)
    applied = after.get("commands_applied", 0) - before.get("commands_applied", 0)
    client_cpu = sum(o["cpu_seconds"] for o in outputs)
    total_cpu = client_cpu + sum(server_cpu.values())
    ms = 1000.0
    return {
        "commits": commits,
        "commits_per_s": commits / args.duration if args.duration else 0.0,
        "latency_ms": {
            "p50": percentile(samples, 0.50) * ms, "p90": percentile(samples, 0.90) * ms,
            "p99": percentile(samples, 0.99) * ms, "p999": percentile(samples, 0.999) * ms,
            "max": (samples[-1] * ms) if samples else float("nan"),
        },
        "throughput_per_second": [per_second.get(i, 0) for i in range(int(args.duration))],
        "errors": sum(o["errors"] for o in outputs),
        "error_kinds": {k: v for o in outputs for k, v in o["error_kinds"].items()},
        "redirects": sum(o["redirects"] for o in outputs),
        "leader": {"slots_committed": slots, "commands_applied": applied,
                   "mean_batch_commands": (applied / slots) if slots else None,
                   "window_in_flight_at_end": after.get("in_flight")},
        "cpu_seconds": {"servers": server_cpu, "clients": client_cpu},
        "cpu_us_per_commit": (total_cpu / commits * 1e6) if commits and server_cpu else None,
        "settings": settings,
        "machine": {"cores": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def _print_report(r: dict) -> None:
    lat = r["latency_ms"]
    s = r["settings"]
    print(f"paxosd bench: {s['nodes']} nodes ({s['cluster']}), fsync {'on' if s['fsync'] else 'off'}, "
          f"{s['clients']} clients x {s['in_flight']} in flight, {s['value_size']}-byte values, "
          f"read ratio {s['read_ratio']}, {s['duration_s']}s after {s['warmup_s']}s warmup")
    print(f"  commits/s      {r['commits_per_s']:>12,.0f}   ({r['commits']:,} commits)")
    print(f"  latency ms     p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
          f"p99.9 {lat['p999']:.2f}  max {lat['max']:.2f}")
    ld = r["leader"]
    if ld["mean_batch_commands"] is not None:
        print(f"  leader         {ld['slots_committed']:,} slots, mean batch {ld['mean_batch_commands']:.1f} commands")
    cpu = r["cpu_seconds"]
    servers = ", ".join(f"node {k}: {v:.1f}s" for k, v in sorted(cpu["servers"].items()))
    print(f"  cpu            clients {cpu['clients']:.1f}s" + (f"; {servers}" if servers else ""))
    if r["cpu_us_per_commit"] is not None:
        print(f"  cpu/commit     {r['cpu_us_per_commit']:.1f} us (all processes)")
    if r["errors"] or r["redirects"]:
        print(f"  errors         {r['errors']} errors, {r['redirects']} redirects")
        for kind, n in sorted(r["error_kinds"].items(), key=lambda kv: -kv[1])[:3]:
            print(f"                 {n} x {kind}")


def _plot(report: dict, outputs, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib: pip install 'paxosd[plot]'", file=sys.stderr)
        return
    samples = sorted(s * 1000 for o in outputs for s in o["samples"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    tp = report["throughput_per_second"]
    ax1.plot(range(len(tp)), tp)
    ax1.set_xlabel("second")
    ax1.set_ylabel("commits/s")
    ax1.set_title("throughput")
    if samples:
        ys = [i / len(samples) for i in range(len(samples))]
        ax2.plot(samples, ys)
        ax2.set_xscale("log")
    ax2.set_xlabel("latency (ms)")
    ax2.set_ylabel("fraction of commits")
    ax2.set_title("latency distribution")
    s = report["settings"]
    fig.suptitle(f"paxosd bench: {s['nodes']} nodes, fsync {'on' if s['fsync'] else 'off'}, "
                 f"{s['clients']}x{s['in_flight']} in flight, {s['value_size']} B values")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="benchmark this running cluster instead of starting one")
    parser.add_argument("--nodes", type=int, choices=[3, 5], default=3, help="local cluster size")
    parser.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--in-flight", type=int, default=100, help="commands in flight per client")
    parser.add_argument("--value-size", type=int, default=64, help="bytes per value (default 64)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--read-ratio", type=float, default=0.0, help="fraction of reads (0..1)")
    parser.add_argument("--fsync", action=__import__("argparse").BooleanOptionalAction, default=True,
                        help="fsync the local cluster's WAL (default on)")
    parser.add_argument("--window", type=int, help="slot window of the local cluster")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--plot", help="draw throughput and latency to this PNG (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no live progress line")
