"""PySyncObj with the load inside the nodes, as upstream's own benchmark measures it: 3 node
processes on loopback (the same replicated dict as pysyncobj_bench.py), and the nodes
themselves call the replicated ``set`` in a loop, with no client connection and no front end.

Upstream (benchmarks/testobj_delay.py) has every node call the method at a fixed rate and
raises the rate until calls fail; here each calling node instead keeps ``--in-flight`` calls
outstanding (a closed loop, like every other scenario of bench/run.py): a call's commit callback
records its latency and makes the next call. The calls come from the leader only, or with
``--all-nodes`` from every node (a follower's calls go to the leader, as upstream's do).
Latency is from the call to its callback on the calling node. The nodes' CPU includes the load
generation. PySyncObj keeps its log in memory: no fsync.

    .venv/bin/pip install pysyncobj==0.3.17
    .venv/bin/python bench/peers/pysyncobj_innode.py --in-flight 100 --duration 10 \
        --json bench/results/DATE-pysyncobj-innode-inflight100.json
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from pysyncobj_bench import _make_kv, add_common_arguments, finish  # noqa: E402


def _load(kv, in_flight: int, value_size: int, start_at: float, warmup: float,
          duration: float) -> tuple[list, int]:
    """Keep ``in_flight`` calls of ``kv.set`` outstanding from ``start_at`` until the measured
    interval ends; the latencies (seconds) of the calls answered inside it and the count of
    failed calls. Returns once every call is answered or 5 s after the end."""
    rng = random.Random(os.urandom(16))
    value = rng.randbytes(value_size)
    keys = [b"k%d" % i for i in range(100_000)]
    measure_from = start_at + warmup
    stop_at = measure_from + duration
    writes: list = []
    errors = [0]
    outstanding = [0]
    lock = threading.Lock()
    idle = threading.Event()

    def call() -> None:
        t0 = time.monotonic()

        def done(result, error) -> None:
            now = time.monotonic()
            if error:
                errors[0] += 1
            elif measure_from <= now < stop_at:
                writes.append(now - t0)
            if now < stop_at:
                call()
                return
            with lock:
                outstanding[0] -= 1
                if not outstanding[0]:
                    idle.set()

        kv.set(keys[rng.randrange(100_000)], value, callback=done)

    time.sleep(max(0.0, start_at - time.monotonic()))
    with lock:
        outstanding[0] = in_flight
    for _ in range(in_flight):
        call()
    idle.wait(timeout=max(0.0, stop_at - time.monotonic()) + 5.0)
    return writes, errors[0]


def _node(index, peer_ports, batch, value_size, ready, control, results) -> None:
    """A node: report the leader it sees, wait for (start_at, warmup, duration, in_flight) on
    ``control`` (in_flight 0: do not call), run the load and put its result on ``results``."""
    kv = _make_kv(index, peer_ports, batch)
    deadline = time.monotonic() + 30
    while kv._getLeader() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ready.put((index, str(kv._getLeader()), kv._isLeader()))
    start_at, warmup, duration, in_flight = control.get(timeout=120)
    writes, errors = ([], 0) if not in_flight else _load(kv, in_flight, value_size, start_at,
                                                           warmup, duration)
    results.put((index, writes, errors))
    time.sleep(3600)  # ended by its pid


def _callers(views: list, all_nodes: bool) -> list[int]:
    """The indexes of the nodes that call: every node, or the one the nodes agree is leader."""
    if all_nodes:
        return [v[0] for v in views]
    leaders = [v[0] for v in views if v[2]]
    named = {v[1] for v in views}
    if len(leaders) != 1 or len(named) != 1:
        raise RuntimeError(f"the nodes do not agree on a leader: {views}")
    return leaders


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--in-flight", type=int, default=100, help="calls outstanding per calling node")
    p.add_argument("--all-nodes", action="store_true", help="every node calls (upstream's way)")
    add_common_arguments(p)
    args = p.parse_args()
    import pysyncobj  # noqa: F401  (fail here, not in the nodes, if it is missing)

    peer_ports = common.free_ports(args.nodes)
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    controls = [ctx.Queue() for _ in range(args.nodes)]
    nodes = [ctx.Process(target=_node, args=(i, peer_ports, args.batch, args.value_size, ready,
                                             controls[i], results), daemon=True)
             for i in range(args.nodes)]
    for n in nodes:
        n.start()
    try:
        views = sorted(ready.get(timeout=60) for _ in nodes)
        callers = _callers(views, args.all_nodes)
        start_at = time.monotonic() + 1.0
        for i, q in enumerate(controls):
            q.put((start_at, args.warmup, args.duration, args.in_flight if i in callers else 0))
        before, after = common.sample_cpu([n.pid for n in nodes], start_at, args.warmup,
                                          args.duration)
        outputs = [results.get(timeout=60) for _ in nodes]
    finally:
        for n in nodes:
            n.terminate()
        for n in nodes:
            n.join(timeout=10)
    writes = [x for o in outputs for x in o[1]]
    settings = {"nodes": args.nodes, "clients": len(callers), "in_flight": args.in_flight,
                "value_size": args.value_size, "duration_s": args.duration,
                "warmup_s": args.warmup, "fsync": False,
                "notes": "load inside the nodes (upstream's method, closed loop): clients = "
                         "calling nodes (" + ("all" if args.all_nodes else "the leader") + "), "
                         "in_flight = calls outstanding per calling node; log in memory (no "
                         f"journal file); appendEntriesUseBatch={args.batch}"}
    return finish(args, "pysyncobj_innode.py", "pysyncobj-innode", writes, settings,
                  common.cpu_used(before, after), [], sum(o[2] for o in outputs))


if __name__ == "__main__":
    sys.exit(main())
