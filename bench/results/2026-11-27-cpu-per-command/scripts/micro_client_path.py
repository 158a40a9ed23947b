"""The leader's per-command client path, in one process: a work list of 1,400 writes into the
queue (Node.submit_work vs the per-item loop it replaced) and 1,400 replies onto connections
(clients.queue_replies vs the per-reply loop it replaced). Prints us per command, min of
repeats, GC off. Run from a worktree:
PYTHONPATH=. .venv/bin/python bench/results/2026-11-27-cpu-per-command/scripts/micro_client_path.py"""

import gc
import random
import time

from daemon.core.messages import OK, OP_PUT, Reply
from daemon.core.node import CoreConfig
from daemon.runtime import clients
from daemon.runtime.clients import ClientConnection
from tests.scripted import led_by_1

N, REPEATS = 1400, 30
CFG = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.30), window=64)
rng = random.Random(1)
conns = [ClientConnection(None) for _ in range(4)]


def work(seq0):
    return [(False, (conns[i % 4], i), (1 + i % 4, seq0 + i, OP_PUT,
                                         b"%d" % rng.randrange(100000), b"v" * 64, None))
            for i in range(N)]


def per_item(node, items, now):
    for is_read, tag, arg in items:
        if is_read:
            node.read(tag, arg, now)
        else:
            node.submit(tag, arg, now)


def reply_loop(replies, address, current, applied):
    for reply in replies:
        clients._queue_reply(reply, address, current, applied)


def timed(fn, make):
    best = float("inf")
    for r in range(REPEATS):
        args = make(r)
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return best / N * 1e6


node = led_by_1(CFG).nodes[1]


def fresh_node(r):
    node.pending.clear(); node.waiting.clear(); node.pending_bytes = 0
    return (node, work(r * N * 2), 1.0)


def submit_work(node, items, now):
    node.submit_work(items, now)


def replies(r):
    for c in conns:
        c.replies = []
    return ([Reply((conns[i % 4], i), OK, None, None, 7) for i in range(N)], {}, "n1", 7)


gc.disable()
for name, fn, make in (("submit: per-item loop", per_item, fresh_node),
                       ("submit: Node.submit_work", submit_work, fresh_node),
                       ("replies: per-reply loop", reply_loop, replies),
                       ("replies: queue_replies", clients.queue_replies, replies)):
    print(f"{name:28s} {timed(fn, make):.3f} us/command")
