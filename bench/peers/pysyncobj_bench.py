"""PySyncObj under the workload of `paxosd bench`: 3 nodes as processes on loopback, clients in
separate processes, each keeping ``--in-flight`` writes of ``--value-size``-byte values
outstanding on one TCP connection to the leader (variant "pysyncobj-tcp"; with the load inside
the nodes instead, upstream's method, see pysyncobj_innode.py).

PySyncObj is a library, not a server: each node process here runs a SyncObj holding a replicated
dict plus a small front end on a client port (4-byte length + marshal frames; replies to the
writes that arrive together are answered in one frame, as paxosd's server does). A write is
answered when PySyncObj's commit callback fires on the leader. PySyncObj keeps its log in
memory (no journal file): no fsync, as the results say.

    .venv/bin/pip install pysyncobj==0.3.17
    .venv/bin/python bench/peers/pysyncobj_bench.py --clients 2 --in-flight 50 \
        --duration 10 --json bench/results/DATE-pysyncobj-tcp-inflight100.json
"""

from __future__ import annotations

import argparse
import marshal
import multiprocessing
import os
import random
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

HEADER = struct.Struct(">I")


def _send(sock, obj) -> None:
    data = marshal.dumps(obj)
    sock.sendall(HEADER.pack(len(data)) + data)


class _Frames:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def receive(self) -> list:
        """Block until at least one frame is complete; return every complete frame."""
        while True:
            out = []
            while len(self.buf) >= 4:
                (n,) = HEADER.unpack_from(self.buf)
                if len(self.buf) < 4 + n:
                    break
                out.append(marshal.loads(self.buf[4:4 + n]))
                self.buf = self.buf[4 + n:]
            if out:
                return out
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed")
            self.buf += data


def _make_kv(index: int, peer_ports: list[int], batch: bool):
    """Node ``index`` of the cluster on ``peer_ports``: a SyncObj holding a replicated dict."""
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class KV(SyncObj):
        def __init__(self, me, others, conf):
            super().__init__(me, others, conf)
            self.data = {}

        @replicated
        def set(self, key, value):
            self.data[key] = value

    me = f"127.0.0.1:{peer_ports[index]}"
    others = [f"127.0.0.1:{p}" for i, p in enumerate(peer_ports) if i != index]
    # appendEntriesUseBatch=False: a command wakes the node at once (a pipe) instead of waiting
    # for its next tick (50 ms); that is PySyncObj at its fastest for latency.
    return KV(me, others, SyncObjConf(dynamicMembershipChange=False, appendEntriesUseBatch=batch))


def _node(index: int, peer_ports: list[int], client_port: int, batch: bool, ready) -> None:
    kv = _make_kv(index, peer_ports, batch)

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", client_port))
    listener.listen(64)
    ready.put(index)

    def serve(sock) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        frames = _Frames(sock)
        pending: list = []
        cond = threading.Condition()
        closed = [False]

        def writer() -> None:
            while True:
                with cond:
                    while not pending and not closed[0]:
                        cond.wait()
                    if closed[0]:
                        return
                    out = pending[:]
                    pending.clear()
                try:
                    _send(sock, ("done", out))
                except OSError:
                    return

        def done(req_id):
            def callback(result, error):
                with cond:
                    pending.append((req_id, error))
                    if len(pending) == 1:  # the writer waits only on an empty list
                        cond.notify()
            return callback

        threading.Thread(target=writer, daemon=True).start()
        try:
            while True:
                for kind, body in frames.receive():
                    if kind == "status":
                        _send(sock, ("status", kv._isLeader()))
                    else:
                        for req_id, key, value in body:
                            kv.set(key, value, callback=done(req_id))
        except (OSError, ConnectionError):
            pass
        finally:
            with cond:
                closed[0] = True
                cond.notify()

    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve, args=(sock,), daemon=True).start()


def _is_leader(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            _send(s, ("status", None))
            (reply,) = _Frames(s).receive()[:1]
            return bool(reply[1])
    except OSError:
        return False


def _worker(index, port, in_flight, value_size, warmup, duration, start_at, results) -> None:
    rng = random.Random(os.urandom(16))
    value = rng.randbytes(value_size)
    keys = [b"k%d" % i for i in range(100_000)]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    frames = _Frames(sock)
    sent: dict[int, float] = {}
    next_id = 0
    writes, errors = [], 0
    measure_from = start_at + warmup
    stop_at = measure_from + duration
    cpu_from = None

    def fresh(now):
        nonlocal next_id
        next_id += 1
        sent[next_id] = now
        return (next_id, keys[rng.randrange(100_000)], value)

    while time.monotonic() < start_at:
        time.sleep(0.005)
    now = time.monotonic()
    _send(sock, ("put", [fresh(now) for _ in range(in_flight)]))
    while True:
        now = time.monotonic()
        if now >= stop_at:
            break
        if cpu_from is None and now >= measure_from:
            cpu_from = time.process_time()
        out = []
        for _, done in frames.receive():
            now = time.monotonic()
            for req_id, error in done:
                t0 = sent.pop(req_id)
                if error:
                    errors += 1
                elif measure_from <= now < stop_at:
                    writes.append(now - t0)
                out.append(fresh(now))
        _send(sock, ("put", out))
    results.put((index, writes, errors, time.process_time() - (cpu_from or 0.0)))
    sock.close()


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """The options this script and pysyncobj_innode.py share: value size, timing, batching and
    where the JSON report goes."""
    p.add_argument("--value-size", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--batch", action="store_true",
                   help="appendEntriesUseBatch=True: commands wait for the next tick")
    p.add_argument("--json")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--in-flight", type=int, default=100)
    add_common_arguments(p)
    args = p.parse_args()
    import pysyncobj  # noqa: F401  (fail here, not in the nodes, if it is missing)

    ports = common.free_ports(2 * args.nodes)
    peer_ports, client_ports = ports[:args.nodes], ports[args.nodes:]
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    nodes = [ctx.Process(target=_node, args=(i, peer_ports, client_ports[i], args.batch, ready),
                         daemon=True)
             for i in range(args.nodes)]
    for n in nodes:
        n.start()
    try:
        for _ in nodes:
            ready.get(timeout=30)
        deadline = time.monotonic() + 30
        leader = None
        while leader is None and time.monotonic() < deadline:
            leader = next((port for port in client_ports if _is_leader(port)), None)
            time.sleep(0.1)
        if leader is None:
            print("no PySyncObj leader within 30 s", file=sys.stderr)
            return 1
        start_at = time.monotonic() + 1.0
        workers = [ctx.Process(target=_worker, args=(i, leader, args.in_flight, args.value_size,
                                                      args.warmup, args.duration, start_at, results))
                   for i in range(args.clients)]
        before, after, outputs = common.measure(workers, [n.pid for n in nodes], start_at,
                                                args.warmup, args.duration, results)
    finally:
        for n in nodes:
            n.terminate()
    writes = [x for o in outputs for x in o[1]]
    settings = {"nodes": args.nodes, "clients": args.clients, "in_flight": args.in_flight,
                "value_size": args.value_size, "duration_s": args.duration,
                "warmup_s": args.warmup, "fsync": False,
                "notes": "log in memory (no journal file); appendEntriesUseBatch="
                         f"{args.batch}; front end: one TCP connection per client to the "
                         "leader, replies batched"}
    return finish(args, "pysyncobj_bench.py", "pysyncobj-tcp", writes, settings,
                  common.cpu_used(before, after), [round(o[3], 3) for o in outputs],
                  sum(o[2] for o in outputs))


def finish(args, script: str, variant: str, writes: list, settings: dict, nodes_cpu: dict,
           clients_cpu: list, errors: int) -> int:
    """Prints the run's report and writes it to ``args.json`` (if given), with the installed
    PySyncObj's version and the command line of ``script`` (in bench/peers); the exit status (0)."""
    import pysyncobj
    version = getattr(pysyncobj, "__version__", None) or "0.3.17"
    command = " ".join([f"bench/peers/{script}"] + sys.argv[1:])
    r = common.report(f"PySyncObj {version}", writes, args.duration, settings, nodes_cpu,
                      clients_cpu, errors, command, variant=variant)
    common.print_report(r)
    common.write_json(r, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
