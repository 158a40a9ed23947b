"""``paxosd bench``: commit throughput and latency, measured from separate client processes.

Against the cluster named by ``--config``, or, by default, a local cluster it starts from
etc/paxosd.yaml (or etc/paxosd-5.yaml with ``--nodes 5``): the file's timing, batching, storage
and limits settings are kept and only the member addresses (free loopback ports) and the data
directory (a temporary one) are replaced. The local cluster is stopped afterwards.

Each client process keeps ``--in-flight`` commands outstanding on one connection to the leader,
one client session per outstanding command (a session carries one write at a time). Replies
that arrive together are answered with one frame of new requests, so the client costs a few
system calls per batch, not per command.

Latency is per command: from the moment its request is first written to the moment its "ok"
reply is read, retries (after "busy", or after the leader moved) included. Throughput and the
latency percentiles count the commands whose reply arrives inside the measured interval (after
``--warmup``, for ``--duration`` seconds). Percentiles are nearest-rank: p99 is the smallest
latency that at least 99% of the commands did not exceed. CPU time is counted over the measured
interval only, for every process: the nodes (local cluster) and the clients.

``--read-ratio R`` makes that fraction of the operations linearizable reads of a random key of
the KEYSPACE keys the writers write (k0 .. k99999): "get"s of that one key, or with
``--range-limit N`` ranges of up to N keys from it on, in key order (a "range" request with no
end: the keys >= that key, at most N, values included), as bench/peers/etcdbench does with
etcd's Get(key, WithFromKey(), WithLimit(N)). Ranges need keys to return, so with
``--range-limit`` every key of the keyspace is written once before the load starts (not
measured): a range then returns N keys unless it starts among the N - 1 last keys in key order.
The report gives the reads per second, the keys they returned per second (a get returns one
key or none), the mean keys per read and the read latency.

``--watchers N`` adds N watches of every key the writers write, spread over the nodes and read
by a process of their own (daemon.tools.bench_watch): the report adds the changes delivered
per second, and the watches the servers cut off as too slow, if any.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from fastpath import FrameReader, dumps, encode_frame, loads

from daemon.codec.wire import encode_request
from daemon.core.messages import BUSY, NOT_LEADER, OK
from daemon.tools.ports import free_ports
from daemon.tools.stats import latency_summary, percentile

REPO = Path(__file__).resolve().parents[2]
REPO_ETC = REPO / "etc"
PROGRESS_EVERY = 1.0  # seconds between progress lines
STATUS_EVERY = 0.25  # seconds between samples of the leader's status
BUCKET = 0.25  # seconds per bucket of the throughput-over-time series
KEYSPACE = 100_000
PRELOAD_IN_FLIGHT = 500  # puts outstanding while --range-limit's keyspace is written
# Settings that name files (daemon.runtime.config), resolved against the directory of their file.
PATH_KEYS = (("auth", ("secret_file",)), ("tls", ("ca", "cert", "key")),
             ("client_tls", ("ca", "cert", "key")))


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

    def status(self) -> dict | None:
        self.send([encode_request(0, "status", 0, 0, b"")])
        (reply,) = self.receive()
        return reply[2] if reply[1] == OK and isinstance(reply[2], dict) else None

    def close(self) -> None:
        self.sock.close()


def _status(endpoint: str, timeout: float = 2.0) -> dict | None:
    try:
        conn = _Conn(endpoint, timeout=timeout)
        try:
            return conn.status()
        finally:
            conn.close()
    except (OSError, ValueError):
        return None


def find_leader(endpoints: list[str], deadline: float) -> str:
    """The client address of the current leader, asking each endpoint for its status."""
    while time.monotonic() < deadline:
        for address in endpoints:
            status = _status(address, timeout=1.0)
            if status is not None and status.get("role") == "leader":
                return address
        time.sleep(0.05)
    raise TimeoutError(f"no leader among {', '.join(endpoints)}")


class _Worker:
    """The state of one client process's closed loop (see ``_worker``): ``in_flight`` commands
    outstanding, each on a session of its own, and what was measured of them."""

    def __init__(self, in_flight: int, value_size: int, read_ratio: float, range_limit: int,
                 measure_from: float, stop_at: float) -> None:
        self.rng = random.Random(os.urandom(16))
        self.value = self.rng.randbytes(value_size)
        self.keys = [b"k%d" % i for i in range(KEYSPACE)]
        self.read_ratio = read_ratio
        self.range_limit = range_limit
        self.measure_from = measure_from
        self.stop_at = stop_at
        # Outstanding command i: session sessions[i] at seq seqs[i]; request[i] is its request
        # (element 0, the request id, is renewed on every send); first_sent[i] when first sent.
        self.sessions = [self.rng.getrandbits(62) + 1 for _ in range(in_flight)]
        self.seqs = [0] * in_flight
        self.request: list = [None] * in_flight
        self.first_sent = [0.0] * in_flight
        self.slot_of: dict[int, int] = {}  # request id -> i
        self.next_req = 1
        self.writes = array("d")  # latency in seconds of each write answered inside the interval
        self.reads = array("d")
        self.read_keys = 0  # keys the reads answered inside the interval returned
        self.buckets: dict[int, int] = {}  # BUCKET-long interval since measuring began -> writes
        self.errors: dict[str, int] = {}
        self.redirects = 0
        self.reconnects = 0
        self.done = 0
        self.conn: _Conn | None = None
        self.leader_hint: str | None = None

    def fresh(self, i: int, now: float) -> list:
        """A new command for outstanding slot ``i``: a read (a get, or a range of up to
        range_limit keys from a random key on) or the session's next write."""
        self.first_sent[i] = now
        rng = self.rng
        if self.read_ratio and rng.random() < self.read_ratio:
            key = self.keys[rng.randrange(KEYSPACE)]
            if self.range_limit:  # [req_id, "range", limit, flags, key, end b"" (no end), null]
                req = encode_request(0, "range", self.range_limit, 0, key, b"")
            else:
                req = encode_request(0, "get", 0, 0, key)
        else:
            self.seqs[i] += 1
            req = encode_request(0, "put", self.sessions[i], self.seqs[i],
                                 self.keys[rng.randrange(KEYSPACE)], self.value)
        self.request[i] = req
        return self.stamp(i)

    def stamp(self, i: int) -> list:
        """The same request under a new id: a retried write keeps its session and seq, so it is
        applied at most once."""
        req = self.request[i]
        req[0] = self.next_req
        self.slot_of[self.next_req] = i
        self.next_req += 1
        return req

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def connect(self, endpoints: list[str], now: float) -> list | None:
        """Connect to the leader (the last redirect's, or found anew); everything outstanding
        is to go again on the new connection, as first sent: returns those requests. None if
        no leader could be reached."""
        try:
            address = self.leader_hint or find_leader(endpoints, min(self.stop_at, now + 10.0))
            self.leader_hint = None
            self.conn = _Conn(address, timeout=10.0)
        except (OSError, TimeoutError):
            self.count_error("connect: no leader reachable")
            return None
        self.reconnects += 1
        self.slot_of.clear()
        return [self.stamp(i) for i in range(len(self.request))]

    def lost(self) -> None:
        self.conn.close()
        self.conn = None
        self.count_error("connection lost")

    def take(self, replies: list, now: float) -> list | None:
        """Account for ``replies``; returns the requests to send next, or None if leadership
        moved (the connection is then closed, to follow it and send everything again)."""
        in_interval = self.measure_from <= now < self.stop_at
        slot_of, request, first_sent, buckets = (self.slot_of, self.request, self.first_sent,
                                                 self.buckets)
        out: list = []
        moved = False
        for reply in replies:
            i = slot_of.pop(reply[0], None)
            if i is None:
                continue
            status = reply[1]
            if status == OK:
                self.done += 1
                if in_interval:
                    if request[i][1] == "put":
                        self.writes.append(now - first_sent[i])
                        b = int((now - self.measure_from) / BUCKET)
                        buckets[b] = buckets.get(b, 0) + 1
                    else:
                        self.reads.append(now - first_sent[i])
                        self.read_keys += _keys_returned(request[i][1], reply[2])
                out.append(self.fresh(i, now))
            elif status == NOT_LEADER:
                moved = True
                self.leader_hint = reply[3] if isinstance(reply[3], str) else None
            elif status == BUSY:
                self.count_error("busy")
                out.append(self.stamp(i))
            else:  # stale or error: a bug of the benchmark or the server; count it, go on
                self.count_error(f"{status}: {reply[2]}"[:120])
                out.append(self.fresh(i, now))
        if moved:
            self.redirects += 1
            self.conn.close()
            self.conn = None
            return None
        return out


def _keys_returned(op: str, result) -> int:
    """How many keys an "ok" read reply's result carries: a get's value (or null: none), a
    range's [kvs, count, more] entries."""
    if op == "get":
        return 0 if result is None else 1
    return len(result[0])


def _worker(index: int, endpoints: list[str], load: tuple, warmup: float, duration: float,
            start_at: float, results, progress) -> None:
    """One client process: a closed loop with ``in_flight`` commands outstanding; ``load`` is
    (in_flight, value_size, read_ratio, range_limit)."""
    in_flight = load[0]
    measure_from = start_at + warmup
    stop_at = measure_from + duration
    w = _Worker(*load, measure_from, stop_at)
    cpu_from = None
    last_report = time.monotonic()
    reported = 0
    while time.monotonic() < start_at:
        time.sleep(0.005)
    now = time.monotonic()
    pending_out = [w.fresh(i, now) for i in range(in_flight)]
    while True:
        now = time.monotonic()
        if now >= stop_at:
            break
        if cpu_from is None and now >= measure_from:
            cpu_from = time.process_time()
        if w.conn is None:
            pending_out = w.connect(endpoints, now)
            if pending_out is None:
                time.sleep(0.05)
                continue
        if pending_out:
            try:
                w.conn.send(pending_out)
            except OSError:
                w.lost()
                continue
            pending_out = []
        try:
            replies = w.conn.receive()
        except (OSError, ValueError):
            w.lost()
            continue
        now = time.monotonic()
        pending_out = w.take(replies, now)
        if pending_out is None:  # leadership moved: follow it and send everything again
            continue
        if now - last_report >= 0.5:
            progress.put((index, w.done - reported))
            reported = w.done
            last_report = now
    cpu_to = time.process_time()
    if w.conn is not None:
        w.conn.close()
    results.put({"index": index, "writes": w.writes.tobytes(), "reads": w.reads.tobytes(),
                 "read_keys": w.read_keys, "buckets": w.buckets, "errors": w.errors,
                 "redirects": w.redirects, "reconnects": w.reconnects - 1,
                 "cpu_seconds": cpu_to - cpu_from if cpu_from is not None else 0.0})


def preload(leader: str, value_size: int, deadline: float) -> int:
    """Write every key of the keyspace (k0 .. k<KEYSPACE - 1>) once, with a random value of
    ``value_size`` bytes, through ``leader``: PRELOAD_IN_FLIGHT puts outstanding on one
    connection, each session one put at a time. Returns the keys written. RuntimeError naming
    the reply if the cluster refuses a put or its leader moves; TimeoutError past ``deadline``."""
    rng = random.Random(os.urandom(16))
    value = rng.randbytes(value_size)
    sessions = [rng.getrandbits(62) + 1 for _ in range(PRELOAD_IN_FLIGHT)]
    seqs = [0] * PRELOAD_IN_FLIGHT
    pending: dict[int, tuple[int, list]] = {}  # request id -> (session slot, request)
    ids = iter(range(1, 1 << 62))
    next_key = written = 0

    def send_again(slot: int, req: list) -> list:
        req[0] = next(ids)
        pending[req[0]] = (slot, req)
        return req

    def next_put(slot: int) -> list:
        nonlocal next_key
        seqs[slot] += 1
        req = encode_request(0, "put", sessions[slot], seqs[slot], b"k%d" % next_key, value)
        next_key += 1
        return send_again(slot, req)

    conn = _Conn(leader, timeout=10.0)
    try:
        out = [next_put(slot) for slot in range(min(PRELOAD_IN_FLIGHT, KEYSPACE))]
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"preloading the keyspace: {written:,} of {KEYSPACE:,} keys "
                                   "written before the deadline")
            if out:
                conn.send(out)
                out = []
            for reply in conn.receive():
                slot, req = pending.pop(reply[0], (None, None))
                if req is None:
                    continue
                if reply[1] == OK:
                    written += 1
                    if next_key < KEYSPACE:
                        out.append(next_put(slot))
                elif reply[1] == BUSY:
                    out.append(send_again(slot, req))
                else:
                    raise RuntimeError(f"preloading the keyspace through {leader}: "
                                       f"{reply[1]}: {reply[2]!r:.120}")
    finally:
        conn.close()
    return written


# ------------------------------------------------------------------------------ local cluster

def base_config_path(nodes: int) -> Path:
    return REPO_ETC / ("paxosd.yaml" if nodes == 3 else f"paxosd-{nodes}.yaml")


def local_config(base: Path | None, nodes: int, ports: list[int], data_dir: Path,
                 fsync: bool | None, window: int | None) -> dict:
    """The YAML document of a local cluster: ``base`` (when it exists) with the member
    addresses and the data directory replaced, and fsync or the window when asked for."""
    import yaml

    doc = yaml.safe_load(base.read_text()) if base is not None and base.exists() else {}
    doc = doc or {}
    doc.setdefault("cluster", "bench")
    doc.pop("node_id", None)
    doc["members"] = {i + 1: {"peer": f"127.0.0.1:{ports[2 * i]}",
                              "client": f"127.0.0.1:{ports[2 * i + 1]}"} for i in range(nodes)}
    doc["data_dir"] = str(data_dir)
    if fsync is not None:
        doc["storage"] = dict(doc.get("storage") or {}, fsync=fsync)
    if window:
        doc["batching"] = dict(doc.get("batching") or {}, window=window)
    for section in ("metrics", "http"):  # one address, several nodes: none
        if isinstance(doc.get(section), dict) and doc[section].get("address"):
            doc[section] = dict(doc[section], address=None)
    # The file is written elsewhere: its relative paths keep pointing where they did.
    here = base.resolve().parent if base is not None else Path.cwd()
    for section, keys in PATH_KEYS:
        values = doc.get(section)
        if isinstance(values, dict):
            for key in keys:
                value = values.get(key)
                if isinstance(value, str) and not Path(value).expanduser().is_absolute():
                    values[key] = str(here / value)
    return doc


def scrape_metric(port: int, name: str) -> float | None:
    """The value of the unlabelled metric ``name`` on the /metrics page of the node whose
    metrics endpoint is 127.0.0.1:``port``; None if it cannot be read or has no such line."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def stop_processes(processes, grace: float) -> None:
    """SIGTERM every child process still running, then wait for each; one still running after
    ``grace`` seconds more is killed (and waited for)."""
    processes = list(processes)
    for proc in processes:
        if proc.poll() is None:
            proc.terminate()
    for proc in processes:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class LocalCluster:
    """A cluster of child processes on loopback, in a temporary directory."""

    nodes: int
    fsync: bool | None = None
    window: int | None = None
    base: Path | None = None
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="paxosd-bench-")))
    processes: dict = field(default_factory=dict)
    config_path: Path | None = None
    doc: dict = field(default_factory=dict)

    def start(self) -> list[str]:
        import yaml

        ports = free_ports(2 * self.nodes)
        self.doc = local_config(self.base, self.nodes, ports, self.directory / "data",
                                self.fsync, self.window)
        self.config_path = self.directory / "paxosd.yaml"
        self.config_path.write_text(yaml.safe_dump(self.doc, sort_keys=False))
        for i in range(1, self.nodes + 1):
            with open(self.directory / f"node-{i}.log", "wb") as log:
                self.processes[i] = subprocess.Popen(
                    [sys.executable, "-m", "daemon.tools.cli", "serve", "--config",
                     str(self.config_path), "--node-id", str(i)],
                    stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        return [f"127.0.0.1:{ports[2 * i + 1]}" for i in range(self.nodes)]

    def stop(self) -> None:
        stop_processes(self.processes.values(), grace=10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def cpu_seconds(self) -> dict[int, float]:
        """CPU seconds (user + system, all threads) each node process has used so far."""
        out = {}
        tick = os.sysconf("SC_CLK_TCK")
        for i, proc in self.processes.items():
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[i] = (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                pass
        return out

    def pids(self) -> dict[int, int]:
        return {i: p.pid for i, p in self.processes.items()}


# ------------------------------------------------------------------------------ measuring

class _LeaderWatch:
    """Samples the leader's status every STATUS_EVERY seconds over one connection."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.conn = None
        self.samples: list[tuple[float, dict]] = []

    def sample(self) -> dict | None:
        try:
            if self.conn is None:
                self.conn = _Conn(self.address, timeout=2.0)
            status = self.conn.status()
        except (OSError, ValueError):
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return None
        if status is not None:
            self.samples.append((time.monotonic(), status))
        return status

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "-uno"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict:
    return {"cores": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}"}


def run(args) -> int:
    """Run the benchmark described by the parsed command-line ``args``; returns an exit code."""
    if args.range_limit and not args.read_ratio:
        print("paxosd bench: error: argument --range-limit: the reads are the ranges, and "
              "there are none: give --read-ratio > 0 too", file=sys.stderr)
        return 2
    cluster = None
    settings = {
        "clients": args.clients, "in_flight": args.in_flight, "value_size": args.value_size,
        "duration_s": args.duration, "warmup_s": args.warmup, "read_ratio": args.read_ratio,
        "range_limit": args.range_limit, "preloaded_keys": 0, "watchers": args.watchers,
    }
    watch = None
    watchers = None
    try:
        if args.config:
            from daemon.runtime.config import load_config

            config = load_config(args.config)
            endpoints = [str(m.client) for m in config.members]
            settings.update(nodes=len(endpoints), fsync=config.storage.fsync, cluster="external",
                            config=str(args.config), window=config.batching.window,
                            max_batch_commands=config.batching.max_batch_commands,
                            max_batch_bytes=config.batching.max_batch_bytes,
                            heartbeat_ms=config.timing.heartbeat_ms)
        else:
            base = Path(args.base_config) if args.base_config else base_config_path(args.nodes)
            cluster = LocalCluster(args.nodes, args.fsync, window=args.window, base=base)
            endpoints = cluster.start()
            doc = cluster.doc
            batching, storage = doc.get("batching") or {}, doc.get("storage") or {}
            settings.update(nodes=args.nodes, cluster="local",
                            config=str(base) if base.exists() else None,
                            fsync=storage.get("fsync", True),
                            window=batching.get("window", 64),
                            max_batch_commands=batching.get("max_batch_commands", 4096),
                            max_batch_bytes=batching.get("max_batch_bytes", 1 << 20),
                            heartbeat_ms=(doc.get("timing") or {}).get("heartbeat_ms", 50))
        leader = find_leader(endpoints, time.monotonic() + 30.0)
        if args.range_limit:  # ranges return keys that exist: every key is written first
            t0 = time.monotonic()
            settings["preloaded_keys"] = preload(leader, args.value_size, t0 + 300.0)
            settings["preload_s"] = round(time.monotonic() - t0, 2)
        watch = _LeaderWatch(leader)
        ctx = multiprocessing.get_context("spawn")
        results, progress = ctx.Queue(), ctx.Queue()
        start_at = time.monotonic() + 1.0 + 0.3 * args.clients
        workers = [ctx.Process(target=_worker, args=(
            i, [leader] + [e for e in endpoints if e != leader],
            (args.in_flight, args.value_size, args.read_ratio, args.range_limit),
            args.warmup, args.duration, start_at, results, progress))
            for i in range(args.clients)]
        if args.watchers:  # before the writers: the watches are open when the load begins
            watchers = _start_watchers(ctx, endpoints, args, start_at)
        for w in workers:
            w.start()
        marks = _watch(progress, watch, cluster, start_at, args.warmup, args.duration, args.quiet)
        outputs = [results.get(timeout=args.duration + args.warmup + 120) for _ in workers]
        for w in workers:
            w.join(timeout=30)
        if watchers is not None:
            watchers = _watchers_result(*watchers, args)
    finally:
        if watch is not None:
            watch.close()
        if cluster is not None:
            cluster.stop()
    report = _report(outputs, settings, marks, watch.samples, args)
    if watchers is not None:
        report["watch"] = watchers
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        _plot(report, outputs, args.plot)
    return 0 if report["commits"] else 1


def _start_watchers(ctx, endpoints: list[str], args, start_at: float) -> tuple:
    """The process of ``--watchers`` (daemon.tools.bench_watch), started; and its queue."""
    from daemon.tools.bench_watch import watcher_process

    results = ctx.Queue()
    measure_from = start_at + args.warmup
    process = ctx.Process(target=watcher_process, args=(
        endpoints, args.watchers, start_at, measure_from, measure_from + args.duration, results))
    process.start()
    return process, results


def _watchers_result(process, results, args) -> dict:
    out = results.get(timeout=args.duration + args.warmup + 120)
    process.join(timeout=30)
    return out


def _watch(progress, watch: _LeaderWatch, cluster, start_at: float, warmup: float,
           duration: float, quiet: bool) -> dict:
    """Show the live progress line, sample the leader, and note the nodes' CPU time at the
    start and the end of the measured interval."""
    measure_from = start_at + warmup
    stop_at = measure_from + duration
    # On a terminal the progress line rewrites itself; in a log, one line per update.
    lead, tail = ("\r", "") if sys.stderr.isatty() else ("", "\n")
    marks: dict = {}
    window_count = 0
    last = next_status = time.monotonic()
    total = 0
    in_flight = None
    while True:
        now = time.monotonic()
        if "cpu_from" not in marks and now >= measure_from:
            marks["cpu_from"] = cluster.cpu_seconds() if cluster else {}
            marks["status_from"] = watch.sample()
            next_status = now + STATUS_EVERY
        if now >= stop_at:
            marks["cpu_to"] = cluster.cpu_seconds() if cluster else {}
            marks["status_to"] = watch.sample()
            break
        if now >= next_status:
            status = watch.sample()
            in_flight = status.get("in_flight") if status else None
            next_status = now + STATUS_EVERY
        try:
            _, n = progress.get(timeout=min(0.05, max(0.0, stop_at - now)))
            window_count += n
            total += n
        except queue.Empty:
            pass
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY and not quiet:
            phase = "warmup " if now < measure_from else "measure"
            slots = f"   window {in_flight:>3} in flight" if in_flight is not None else ""
            print(f"{lead}  {phase} {max(0.0, now - start_at):5.1f}s  "
                  f"{window_count / (now - last):>10,.0f} commits/s  {total:>11,} total{slots}",
                  end=tail, file=sys.stderr, flush=True)
            window_count = 0
            last = now
    if not quiet and lead:
        print(file=sys.stderr)
    return marks


def _summary(values: list[float]) -> dict | None:
    if not values:
        return None
    s = sorted(values)
    return {"mean": sum(s) / len(s), "p50": percentile(s, 0.5), "max": s[-1]}


def _report(outputs, settings, marks, status_samples, args) -> dict:
    writes = array("d")
    reads = array("d")
    for o in outputs:
        writes.frombytes(o["writes"])
        reads.frombytes(o["reads"])
    writes = sorted(writes)
    reads = sorted(reads)
    commits = len(writes)
    buckets: dict[int, int] = {}
    for o in outputs:
        for b, n in o["buckets"].items():
            buckets[b] = buckets.get(b, 0) + n
    n_buckets = max(1, int(round(args.duration / BUCKET)))

    # What the leader saw: the batch size (commands per slot) over each sampling interval,
    # and the slots in flight in its window at each sample.
    first, last = marks.get("status_from") or {}, marks.get("status_to") or {}
    slots = last.get("commit_index", 0) - first.get("commit_index", 0)
    applied = last.get("commands_applied", 0) - first.get("commands_applied", 0)
    batch_means, in_flight = [], []
    prev = first
    for t, status in status_samples:
        if not first or status.get("id") != first.get("id"):
            continue
        if status.get("role") == "leader":
            in_flight.append(status.get("in_flight", 0))
        d_slots = status.get("commit_index", 0) - prev.get("commit_index", 0)
        if d_slots > 0:
            batch_means.append((status.get("commands_applied", 0)
                                - prev.get("commands_applied", 0)) / d_slots)
        prev = status

    cpu_from, cpu_to = marks.get("cpu_from") or {}, marks.get("cpu_to") or {}
    nodes_cpu = {str(i): round(cpu_to[i] - cpu_from[i], 3) for i in cpu_to if i in cpu_from}
    clients_cpu = [round(o["cpu_seconds"], 3) for o in sorted(outputs, key=lambda o: o["index"])]
    total_cpu = sum(nodes_cpu.values()) + sum(clients_cpu)
    errors: dict[str, int] = {}
    for o in outputs:
        for k, v in o["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "commits": commits,
        "commits_per_s": commits / args.duration if args.duration else 0.0,
        "latency_ms": latency_summary(writes),
        "reads": _reads_section(reads, sum(o["read_keys"] for o in outputs), args),
        "throughput_per_s": [buckets.get(b, 0) / BUCKET for b in range(n_buckets)],
        "throughput_bucket_s": BUCKET,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "redirects": sum(o["redirects"] for o in outputs),
        "leader": {
            "id": first.get("id"),
            "slots_committed": slots,
            "commands_applied": applied,
            "batch_commands_mean": (applied / slots) if slots else None,
            "batch_commands_per_interval": _summary(batch_means),
            "window_capacity": settings.get("window"),
            "window_in_flight": _summary(in_flight),
        },
        "cpu_seconds": {"nodes": nodes_cpu, "clients": clients_cpu, "total": round(total_cpu, 3)},
        "cpu_us_per_commit": (total_cpu / (commits + len(reads)) * 1e6
                              if commits + len(reads) and nodes_cpu else None),
        "settings": settings,
        "machine": machine(),
        "commit": _git_commit(),
        "command": "paxosd bench " + " ".join(getattr(args, "argv", None) or sys.argv[2:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def _reads_section(latencies: list[float], keys: int, args) -> dict | None:
    """The reads inside the interval, in the shape bench/peers/etcdbench reports them (None
    without --read-ratio): how many, per second, the keys they returned (in total, per second
    and per read) and their latency."""
    if not args.read_ratio:
        return None
    n = len(latencies)
    return {"reads": n, "reads_per_s": n / args.duration, "keys": keys,
            "keys_per_s": keys / args.duration, "keys_per_read_mean": keys / n if n else None,
            "latency_ms": latency_summary(latencies), "read_ratio": args.read_ratio,
            "range_limit": args.range_limit}


def print_report(r: dict) -> None:
    s = r["settings"]
    rows = []
    where = s["cluster"] + (f", {Path(s['config']).name}" if s.get("config") else "")
    rows.append(("settings", f"{s['nodes']} nodes ({where}), fsync {'on' if s['fsync'] else 'OFF'}, "
                             f"{s['clients']} clients x {s['in_flight']} in flight, "
                             f"{s['value_size']} B values, reads {s['read_ratio']:.0%}"
                             + (f" (ranges of <= {s['range_limit']} keys over "
                                f"{s['preloaded_keys']:,} preloaded)" if s["range_limit"] else "")))
    rows.append(("", f"{s['duration_s']:g} s measured after {s['warmup_s']:g} s warmup; window "
                     f"{s.get('window')}, batches of <= {s.get('max_batch_commands')} commands"))
    rows.append(("commits/s", f"{r['commits_per_s']:,.0f}  ({r['commits']:,} commits)"))
    reads = r["reads"]
    if reads:
        mean = reads["keys_per_read_mean"]
        rows.append(("reads/s", f"{reads['reads_per_s']:,.0f}  ({reads['reads']:,} reads); "
                                f"{reads['keys_per_s']:,.0f} keys/s returned, "
                                f"{'-' if mean is None else format(mean, '.1f')} keys per read"))
    for name, lat in (("latency ms", r["latency_ms"]),
                      ("read latency ms", reads["latency_ms"] if reads else None)):
        if lat:
            rows.append((name, f"p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
                               f"p99.9 {lat['p999']:.2f}  max {lat['max']:.2f}"))
    ld = r["leader"]
    if ld["batch_commands_mean"] is not None:
        per = ld["batch_commands_per_interval"]
        text = f"{ld['batch_commands_mean']:.1f} commands per slot ({ld['slots_committed']:,} slots)"
        if per:
            text += f"; per {STATUS_EVERY:g} s: p50 {per['p50']:.1f}, max {per['max']:.1f}"
        rows.append(("leader batch", text))
    occ = ld["window_in_flight"]
    if occ:
        rows.append(("leader window", f"mean {occ['mean']:.1f}, p50 {occ['p50']:g}, max {occ['max']:g} "
                                      f"slots in flight of {ld['window_capacity']}"))
    cpu = r["cpu_seconds"]
    parts = [f"node {k} {v:.2f}" for k, v in sorted(cpu["nodes"].items())]
    parts += [f"client {i + 1} {v:.2f}" for i, v in enumerate(cpu["clients"])]
    rows.append(("cpu seconds", ", ".join(parts) + f"; total {cpu['total']:.2f}"))
    if r["cpu_us_per_commit"] is not None:
        rows.append(("cpu per command", f"{r['cpu_us_per_commit']:.1f} us (all processes)"))
    if "watch" in r:
        from daemon.tools.bench_watch import report_rows

        rows += report_rows(r["watch"], s["duration_s"])
    if r["errors"] or r["redirects"]:
        rows.append(("errors", f"{r['errors']:,} errors, {r['redirects']} redirects"))
        for kind, n in sorted(r["error_kinds"].items(), key=lambda kv: -kv[1])[:3]:
            rows.append(("", f"{n:,} x {kind}"))
    width = max(len(k) for k, _ in rows)
    print(f"paxosd bench ({r['date']}, commit {r['commit']}, {r['machine']['cores']} cores)")
    print(f"  {'-' * width}  {'-' * 60}")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def _plot(report: dict, outputs, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib: pip install 'paxosd[plot]'", file=sys.stderr)
        return
    writes = array("d")
    for o in outputs:
        writes.frombytes(o["writes"])
    samples = sorted(x * 1000 for x in writes)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    tp = report["throughput_per_s"]
    step = report["throughput_bucket_s"]
    ax1.plot([i * step for i in range(len(tp))], tp, lw=1)
    ax1.set_ylim(bottom=0)
    ax1.set_xlabel("seconds since measuring started")
    ax1.set_ylabel("commits/s")
    ax1.set_title("throughput")
    ax1.grid(alpha=0.3)
    if samples:
        lo, hi = max(samples[0], 1e-3), samples[-1]
        bins = [lo * (hi / lo) ** (i / 60) for i in range(61)] if hi > lo else 10
        ax2.hist(samples, bins=bins, color="tab:blue", alpha=0.6)
        ax2.set_xscale("log")
        from matplotlib.ticker import FormatStrFormatter, NullFormatter

        ax2.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        if hi < 100 * lo:  # under two decades: label 2 and 5 times each power of ten too
            from matplotlib.ticker import LogLocator

            ax2.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            ax2.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        else:
            ax2.xaxis.set_minor_formatter(NullFormatter())
        ax2.set_ylabel("commands")
        lat = report["latency_ms"]
        for name, key, color in (("p50", "p50", "tab:green"), ("p99", "p99", "tab:orange"),
                                 ("p99.9", "p999", "tab:red")):
            ax2.axvline(lat[key], color=color, lw=1, label=f"{name} {lat[key]:.2f} ms")
        ax2.legend(fontsize=8)
    ax2.set_xlabel("latency (ms, log scale)")
    ax2.set_title("latency distribution")
    s = report["settings"]
    fig.suptitle(f"paxosd bench: {s['nodes']} nodes, fsync {'on' if s['fsync'] else 'off'}, "
                 f"{s['clients']} clients x {s['in_flight']} in flight, {s['value_size']} B values: "
                 f"{report['commits_per_s']:,.0f} commits/s", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}")
    return value


def _range_limit(text: str) -> int:
    """--range-limit: keys per range, >= 1 (0, the default, means gets)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of keys per range, >= 1 (0: gets), got {text!r}")
    return value


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    return parse


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="benchmark this running cluster instead of starting one")
    parser.add_argument("--base-config", help="the local cluster's settings (default "
                        "etc/paxosd.yaml, or etc/paxosd-5.yaml with --nodes 5)")
    parser.add_argument("--nodes", type=int, choices=[3, 5], default=3, help="local cluster size")
    parser.add_argument("--clients", type=_positive(int), default=2,
                        help="client processes (default 2)")
    parser.add_argument("--in-flight", type=_positive(int), default=100,
                        help="commands in flight per client (default 100)")
    parser.add_argument("--value-size", type=int, default=64, help="bytes per value (default 64)")
    parser.add_argument("--duration", type=_positive(float), default=10.0,
                        help="seconds measured (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds before measuring (default 2)")
    parser.add_argument("--read-ratio", type=_fraction, default=0.0,
                        help="fraction of linearizable reads, each of a random key of the "
                             "keyspace (0..1, default 0)")
    parser.add_argument("--range-limit", type=_range_limit, default=0, metavar="N",
                        help="the reads are ranges: the keys from the random key on, in key "
                             "order, at most N, with their values (etcd's Get WithFromKey "
                             "WithLimit N); every key of the keyspace is written once first so "
                             "that a range returns N keys. Needs --read-ratio > 0 (default 0: "
                             "reads are gets of the one key)")
    parser.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=None,
                        help="fsync the local cluster's WAL (default: as the config file says, on)")
    parser.add_argument("--window", type=int, help="slot window of the local cluster")
    parser.add_argument("--watchers", type=int, default=0, metavar="N",
                        help="N watches of every key the writers write, spread over the nodes, "
                             "read by a process of their own: reports the changes delivered "
                             "per second (default 0: none)")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--plot", help="draw throughput and latency to this PNG (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no live progress line")
