"""etcd (Debian's etcd-server, fdatasync on, as etcd always does) under the workload of `paxosd
bench`: a 3-member cluster on loopback with its data in a temporary directory, clients in
separate processes writing 64-byte values to 100,000 keys.

The clients speak etcd's HTTP/JSON gateway (POST /v3/kv/put, base64 key and value) over
keep-alive connections: ``--clients`` processes with ``--in-flight`` threads each, one request at a time per thread and connection (HTTP/1.1 has
no pipelining), all to the leader. Latency is per request, from send to response. This is the
variant "etcd-gateway"; etcd_native.py drives etcd with its native gRPC client instead.

    apt-get install etcd-server
    python3 bench/peers/etcd_bench.py --clients 4 --in-flight 25 --duration 10 \
        --json bench/results/DATE-etcd-gateway-inflight100.json
"""

from __future__ import annotations

import argparse
import base64
import http.client
import multiprocessing
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import etcd_cluster  # noqa: E402


def _worker(index, port, threads, value_size, warmup, duration, start_at, results) -> None:
    measure_from = start_at + warmup
    stop_at = measure_from + duration
    lock = threading.Lock()
    writes, errors = [], [0]

    def loop(seed):
        rng = random.Random(seed)
        value = base64.b64encode(rng.randbytes(value_size)).decode()
        keys = [base64.b64encode(b"k%d" % i).decode() for i in range(100_000)]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine = []
        while time.monotonic() < start_at:
            time.sleep(0.005)
        while True:
            t0 = time.monotonic()
            if t0 >= stop_at:
                break
            try:
                etcd_cluster.post(conn, "/v3/kv/put", {"key": keys[rng.randrange(len(keys))], "value": value})
            except (OSError, RuntimeError, http.client.HTTPException):
                with lock:
                    errors[0] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            t1 = time.monotonic()
            if measure_from <= t1 < stop_at:
                mine.append(t1 - t0)
        with lock:
            writes.extend(mine)

    ts = [threading.Thread(target=loop, args=(os.urandom(8),)) for _ in range(threads)]
    for t in ts:
        t.start()
    while time.monotonic() < measure_from:
        time.sleep(0.005)
    cpu_from = time.process_time()
    for t in ts:
        t.join()
    results.put((index, writes, errors[0], time.process_time() - cpu_from))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--clients", type=int, default=4, help="client processes")
    p.add_argument("--in-flight", type=int, default=25, help="connections (threads) per process")
    p.add_argument("--value-size", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--json")
    args = p.parse_args()
    if etcd_cluster.etcd_binary() is None:
        print("etcd not found: apt-get install etcd-server", file=sys.stderr)
        return 2
    with etcd_cluster.running(args.nodes) as cluster:
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        start_at = time.monotonic() + 1.5
        workers = [ctx.Process(target=_worker, args=(i, cluster.leader_port, args.in_flight,
                                                      args.value_size, args.warmup,
                                                      args.duration, start_at, results))
                   for i in range(args.clients)]
        before, after, outputs = common.measure(workers, cluster.pids, start_at, args.warmup,
                                                args.duration, results)
    writes = [x for o in outputs for x in o[1]]
    settings = {"nodes": args.nodes, "clients": args.clients, "in_flight": args.in_flight,
                "value_size": args.value_size, "duration_s": args.duration,
                "warmup_s": args.warmup, "fsync": True,
                "notes": "HTTP/JSON gateway, one request at a time per keep-alive connection; "
                         "in_flight = connections per client process"}
    r = common.report(cluster.version, writes, args.duration, settings,
                      common.cpu_used(before, after), [round(o[3], 3) for o in outputs],
                      sum(o[2] for o in outputs),
                      "bench/peers/etcd_bench.py " + " ".join(sys.argv[1:]),
                      variant="etcd-gateway")
    common.print_report(r)
    common.write_json(r, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
