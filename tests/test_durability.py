"""The durability gate on its own: what may leave when, for any order of durability reports."""

import random

import pytest

from daemon.core.node import Ready
from daemon.runtime.durability import DurabilityGate
from daemon.core.messages import AcceptRecord, CommitRecord, PromiseRecord, Snapshot


def ready(persist=(), send=(), after=(), replies=()):
    return Ready(list(persist), list(send), list(after), list(replies))


def test_a_promise_waits_for_its_record_and_leaves_once_durable():
    gate = DurabilityGate()
    h = gate.take(ready([PromiseRecord(5)], send=[(2, "reject")], after=[(2, "promise")],
                        replies=["r"]))
    assert (h.seq, h.records, h.send, h.replies) == (1, [PromiseRecord(5)], [(2, "reject")], ["r"])
    assert gate.held == 1
    assert gate.durable(1) == [(2, "promise")]
    assert gate.held == 0 and gate.durable(1) == []


def test_without_pending_records_messages_leave_at_once_after_the_plain_sends():
    gate = DurabilityGate()
    h = gate.take(ready(send=[(1, "a")], after=[(2, "b")]))
    assert h.seq == 0 and h.send == [(1, "a"), (2, "b")]


def test_a_later_message_waits_for_every_earlier_hand_off():
    gate = DurabilityGate()
    gate.take(ready([AcceptRecord(9, 1, ((),))], after=[(1, "acc1")]))
    h = gate.take(ready([AcceptRecord(9, 2, ((),))], after=[(1, "acc2")]))
    assert h.seq == 2 and h.send == []
    assert gate.durable(1) == [(1, "acc1")]
    assert gate.durable(2) == [(1, "acc2")]


def test_held_messages_are_never_overtaken_by_ones_that_need_nothing():
    gate = DurabilityGate()
    gate.take(ready([PromiseRecord(3)], after=[(1, "first")]))
    h = gate.take(ready(after=[(1, "second")]))
    assert h.send == []
    assert gate.durable(1) == [(1, "first"), (1, "second")]


def test_commit_records_alone_hold_nothing_back():
    # A commit index lost in a crash is learned again: nothing sent depends on it.
    gate = DurabilityGate()
    h = gate.take(ready([CommitRecord(7)], after=[(1, "accepted")]))
    assert h.seq == 1 and h.send == [(1, "accepted")]


def test_commit_records_do_not_release_what_waits_for_an_earlier_record():
    gate = DurabilityGate()
    gate.take(ready([AcceptRecord(9, 1, ((),))], after=[(1, "a")]))
    h = gate.take(ready([CommitRecord(1)], after=[(1, "b")]))
    assert h.seq == 2 and h.send == []
    assert gate.durable(1) == [(1, "a"), (1, "b")]


def test_a_snapshot_is_a_record_to_wait_for():
    gate = DurabilityGate()
    gate.take(ready([Snapshot(4, [{}, {}, 0], ())], after=[(1, "promise")]))
    assert gate.held == 1 and gate.durable(1) == [(1, "promise")]


def test_durable_reports_are_monotone_and_bounded_by_the_hand_offs():
    gate = DurabilityGate()
    gate.take(ready([PromiseRecord(1)]))
    gate.take(ready([PromiseRecord(2)], after=[(1, "x")]))
    assert gate.durable(2) == [(1, "x")]
    assert gate.durable(1) == [] and gate.durable_seq == 2
    with pytest.raises(ValueError, match="hand-off 3 reported durable, but only 2"):
        gate.durable(3)


@pytest.mark.parametrize("seed", range(20))
def test_random_hand_offs_release_each_message_once_in_order_and_never_early(seed):
    rng = random.Random(seed)
    gate = DurabilityGate()
    needs = {}  # message -> the hand-off it waits for
    last_real = 0
    out = []
    n = 0
    for step in range(300):
        if rng.random() < 0.6:
            kind = rng.choice(["none", "commit", "promise"])
            persist = [] if kind == "none" else [CommitRecord(1) if kind == "commit" else PromiseRecord(1)]
            after = [(1, n + i) for i in range(rng.randint(0, 2))]
            n += len(after)
            h = gate.take(ready(persist, after=after))
            if kind == "promise":
                last_real = h.seq
            for _, m in after:
                needs[m] = last_real
            out.extend((m, gate.durable_seq) for _, m in h.send)
        elif gate.handed:
            seq = rng.randint(0, gate.handed)
            out.extend((m, gate.durable_seq) for _, m in gate.durable(seq))
    out.extend((m, gate.durable_seq) for _, m in gate.durable(gate.handed))
    assert [m for m, _ in out] == list(range(n))
    assert all(durable >= needs[m] for m, durable in out)
