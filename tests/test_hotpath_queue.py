"""The leader's per-batch C loops on the client path: ``fastpath.take_commands`` (a client
work list's writes into the pending queue, through ``Node.submit_work``) and
``fastpath.push_replies`` (replies onto their connections, through
``daemon.runtime.clients.queue_replies``). Each must do exactly what the Python path it
stands in for does one item at a time: same queue, same waiting map, same replies."""

from __future__ import annotations

import gc

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastpath
from daemon.core.kv import KeyRecord, RangeResult
from daemon.core.membership import MEMBERS_KEY
from daemon.core.messages import (BUSY, COMMAND_OVERHEAD, ERROR, NOT_LEADER, OK, OP_CAS,
                                  OP_DELETE, OP_PUT, STALE, Reply, command_cost)
from daemon.core.node import CoreConfig
from daemon.runtime import clients
from daemon.runtime.clients import ClientConnection, queue_replies
from tests import twins
from tests.scripted import led_by_1

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CFG = CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.30), window=4,
                 max_pending_commands=6, max_batch_bytes=COMMAND_OVERHEAD + 40)

# ------------------------------------------------------------------------------ take_commands

CLIENT_IDS = st.sampled_from([0, 1, 2, 2**63 - 1, 2**63, 2**64 - 1, -1])
KEYS = st.sampled_from([b"k", b"", MEMBERS_KEY, b"x" * 40, MEMBERS_KEY + b"!"])
ARGS = st.sampled_from([None, b"", b"v", b"w" * 8, b"z" * 41])


@st.composite
def work_items(draw, tag: int):
    """One ``(is_read, tag, arg)`` item as ClientPort makes them, odd ones included."""
    kind = draw(st.sampled_from(["write", "write", "write", "read", "odd"]))
    if kind == "read":
        return (True, ("conn", tag), draw(KEYS))
    op = draw(st.sampled_from([OP_PUT, OP_DELETE, OP_CAS]))
    cmd = (draw(CLIENT_IDS), draw(st.integers(0, 3)), op, draw(KEYS), draw(ARGS), draw(ARGS))
    if kind == "odd":  # what the C loop does not take but Node.submit does
        cmd = draw(st.sampled_from([cmd[:1] + ("seq",) + cmd[2:], cmd[:3] + ("key",) + cmd[4:],
                                    cmd[:4] + (bytearray(b"v"),) + cmd[5:]]))
    return (draw(st.sampled_from([False, 0])) if kind == "odd" else False, ("conn", tag), cmd)


def leader_state(node) -> tuple:
    """What a submit leaves behind in ``node``, in order where order counts."""
    return (list(node.pending), node.pending_bytes, list(node.waiting.items()),
            {k: list(v) for k, v in node.also_waiting.items()}, list(node._out.replies),
            node.ready())


def two_leaders(already_waiting):
    """Two equal leaders (node 1 of a fresh cluster each) with the same commands on their way."""
    nodes = []
    for _ in range(2):
        node = led_by_1(CFG).nodes[1]
        for client, seq in already_waiting:
            node.submit(("old", client, seq), (client, seq, OP_PUT, b"old", b"v", None), 0.0)
        nodes.append(node)
    return nodes


@SETTINGS
@given(st.data())
def test_take_commands_matches_its_twin(data):
    work = [data.draw(work_items(i)) for i in range(data.draw(st.integers(0, 14)))]
    waiting = {k: ("old", k) for k in data.draw(st.lists(st.tuples(st.integers(1, 2),
                                                                   st.integers(0, 3))))}
    start = data.draw(st.integers(0, 15))
    max_pending, max_cost = data.draw(st.integers(0, 8)), data.draw(st.integers(30, 80))
    got = []
    for fn in (fastpath.take_commands, twins.take_commands):
        w, p = dict(waiting), []
        got.append((fn(work, start, w, p, max_pending, max_cost, COMMAND_OVERHEAD, MEMBERS_KEY),
                    list(w.items()), p))
    assert got[0] == got[1]


@SETTINGS
@given(st.data())
def test_submit_work_matches_submit_and_read_one_by_one(data):
    work = [data.draw(work_items(i)) for i in range(data.draw(st.integers(0, 14)))]
    already = data.draw(st.lists(st.tuples(st.integers(1, 2), st.integers(0, 3)), max_size=3))
    fast, slow = two_leaders(already)
    if data.draw(st.booleans()):  # a follower: everything NOT_LEADER, the C loop unused
        fast.role = slow.role = "follower"
    fast.submit_work(list(work), 1.0)
    for is_read, tag, arg in work:
        if is_read:
            slow.read(tag, arg, 1.0)
        else:
            slow.submit(tag, arg, 1.0)
    assert leader_state(fast) == leader_state(slow)


def test_submit_work_edge_cases_each_answered_as_submit_answers():
    node = led_by_1(CFG).nodes[1]
    ok = (5, 1, OP_PUT, b"k", b"v", None)
    work = [(False, ("c", 1), ok),
            (False, ("c", 2), ok),  # the same (client, seq) again: a retry, answered with 1
            (False, ("c", 3), (0, 1, OP_PUT, b"k", b"v", None)),  # reserved client id
            (False, ("c", 4), (2**63, 1, OP_PUT, b"k", b"v", None)),  # reserved client id
            (False, ("c", 5), (5, 2, OP_PUT, MEMBERS_KEY, b"v", None)),  # reserved key
            (False, ("c", 6), (5, 3, OP_PUT, b"k", b"v" * 41, None)),  # over max_batch_bytes
            (False, ("c", 7), (5, 4, OP_PUT, b"k", b"v" * 39, None))]  # exactly the limit
    work += [(False, ("c", 8 + n), (6, n, OP_DELETE, b"d", None, None)) for n in range(6)]
    node.submit_work(work, 1.0)
    assert node.pending == [ok, work[6][2]] + [w[2] for w in work[7:11]]  # 6: the queue is full
    assert node.also_waiting == {(5, 1): [("c", 2)]}
    statuses = [(r.req, r.status) for r in node._out.replies]
    assert statuses == [(("c", 3), ERROR), (("c", 4), ERROR), (("c", 5), ERROR),
                        (("c", 6), ERROR), (("c", 12), BUSY), (("c", 13), BUSY)]
    assert node.pending_bytes == sum(map(command_cost, node.pending))
    # The (client, seq) keys the C loop made hold two ints: the collector never walks them.
    assert not any(gc.is_tracked(key) for key in node.waiting)


def test_take_commands_stops_at_a_read_and_resumes_where_told():
    waiting, pending = {}, []
    work = [(False, "a", (1, 1, OP_PUT, b"k", b"v", None)), (True, "b", b"k"),
            (False, "c", (1, 2, OP_PUT, b"k", None, b"w"))]
    assert fastpath.take_commands(work, 0, waiting, pending, 10, 100, 32, MEMBERS_KEY) == (1, 34)
    assert fastpath.take_commands(work, 2, waiting, pending, 10, 100, 32, MEMBERS_KEY) == (3, 34)
    assert fastpath.take_commands(work, 3, waiting, pending, 10, 100, 32, MEMBERS_KEY) == (3, 0)
    assert waiting == {(1, 1): "a", (1, 2): "c"} and pending == [work[0][2], work[2][2]]
    with pytest.raises(ValueError, match="negative"):
        fastpath.take_commands(work, -1, waiting, pending, 10, 100, 32, MEMBERS_KEY)
    with pytest.raises(TypeError):
        fastpath.take_commands(tuple(work), 0, waiting, pending, 10, 100, 32, MEMBERS_KEY)


# ------------------------------------------------------------------------------- push_replies


class Sink:
    """A reply taker that is not a ClientConnection (as a snapshot sink is): what it got."""

    def __init__(self, closed: bool) -> None:
        self.closed = closed
        self.got: list = []

    def push(self, reply) -> None:
        self.got.append(("push", reply))

    def push_alone(self, reply) -> None:
        self.got.append(("alone", reply))


RANGE = RangeResult([(b"a", KeyRecord(b"1", 1, 2, 1))], 1, False)


REPLY_SPECS = st.lists(st.tuples(st.sampled_from([0, 1, 2, 0, 1, 2, 3, 4]),
                                  st.sampled_from([OK, OK, STALE, ERROR, NOT_LEADER]),
                                  st.sampled_from([None, True, b"v", 3, "why", RANGE]),
                                  st.sampled_from([None, 2, 3]), st.sampled_from([None, 0, 7])),
                        max_size=16)


def reply_lists(spec):
    """Connections (the third closed), sinks (the second closed) and replies to them, as
    ``spec`` says: (target index, status, result, leader, revision) per reply."""
    conns = [ClientConnection(None) for _ in range(3)]
    conns[2].closed = True
    sinks = [Sink(False), Sink(True)]
    targets = conns + sinks
    replies = [Reply((targets[to], req_id), status, result, leader, revision)
               for req_id, (to, status, result, leader, revision) in enumerate(spec)]
    return conns, sinks, replies


def delivered(conns, sinks) -> list:
    return ([(c.replies, c.alone, c.has_replies.is_set()) for c in conns]
            + [s.got for s in sinks])


ADDRESS = {2: "10.0.0.2:2379", 3: "10.0.0.3:2379"}


@SETTINGS
@given(REPLY_SPECS)
def test_queue_replies_matches_queueing_one_by_one(spec):
    conns, sinks, replies = reply_lists(spec)
    queue_replies(replies, ADDRESS, "10.0.0.1:2379", 41)
    conns2, sinks2, replies2 = reply_lists(spec)
    for reply in replies2:  # the Python path, one reply at a time (Server._reply's old loop)
        clients._queue_reply(reply, ADDRESS, "10.0.0.1:2379", 41)
    assert delivered(conns, sinks) == delivered(conns2, sinks2)


@SETTINGS
@given(REPLY_SPECS, st.integers(0, 17))
def test_push_replies_matches_its_twin(spec, start):
    got = []
    for fn in (fastpath.push_replies, twins.push_replies):
        conns, sinks, replies = reply_lists(spec)
        stop = fn(replies, start, ClientConnection, RangeResult, NOT_LEADER, "n1", 41)
        got.append((stop, delivered(conns, sinks)))
    assert got[0] == got[1]


def test_queue_replies_examples():
    a, b, shut = ClientConnection(None), ClientConnection(None), ClientConnection(None)
    shut.closed = True
    replies = [Reply((a, 1), OK, b"v", None, 5), Reply((a, 2), OK, None, None, None),
               Reply((shut, 3), OK, None, None, 6), Reply((b, 4), NOT_LEADER, None, 2, None),
               Reply((b, 5), OK, RANGE, None, 9), Reply((a, 6), ERROR, "no", None, None)]
    queue_replies(replies, {2: "n2"}, "n1", 8)
    assert a.replies == [[1, OK, b"v", "n1", 5], [2, OK, None, "n1", 8],
                         [6, ERROR, "no", "n1", 8]]
    assert b.replies[0] == [4, NOT_LEADER, None, "n2", 8] and type(b.replies[1]) is tuple
    assert b.alone == 1 and shut.replies == []
    assert a.has_replies.is_set() and b.has_replies.is_set() and not shut.has_replies.is_set()
    assert fastpath.push_replies([], 0, ClientConnection, RangeResult, NOT_LEADER, "n1", 0) == 0
    with pytest.raises(ValueError, match="negative"):
        fastpath.push_replies(replies, -1, ClientConnection, RangeResult, NOT_LEADER, "n1", 0)
