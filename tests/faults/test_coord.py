"""The coordination load's checks (tests.faults.coord_checks) on records made by hand: each
finds the violation planted in a record and passes the record without it; and its watchers'
answer to a compacted history, on real processes. (The whole load runs in the campaigns of
test_nemesis.py.)"""

from __future__ import annotations

import time

import trio

from daemon.client.client import Client, KeyValue, RangeResponse
from tests.faults.cluster import ProcessCluster
from tests.faults.coord import (Change, Coordination, LeaseEpoch, Promise, RangeRead,
                               RangeWrite, RevOp, WatchLog)
from tests.faults.coord_checks import (check_counter, check_leases, check_ranges,
                                       check_revision_order, check_watch, compare_watchers)
from tests.linearizability import Operation

HISTORY = [
    Operation(0, "put", b"k0", b"c0-1", None, 1.0, 1.1, 5),
    Operation(1, "cas", b"k0", b"c1-1", b"c0-1", 1.2, 1.3, True),
    Operation(1, "cas", b"k1", b"c1-2", None, 1.4, 1.5, False),
    Operation(0, "put", b"k1", b"c0-2", None, 1.6, None, None),  # outcome unknown
    Operation(0, "put", b"k1", b"c0-3", None, 1.7, 1.8, 9),
]
EVENTS = [Change(5, b"k0", b"c0-1", "put"), Change(7, b"k0", b"c1-1", "put"),
          Change(9, b"k1", b"c0-3", "put")]


def listing(revision: int, *kvs: tuple) -> RangeResponse:
    return RangeResponse([KeyValue(k, v, c, m, 1, 0) for k, v, c, m in kvs], len(kvs), False,
                         revision)


FINAL = listing(12, (b"k0", b"c1-1", 7, 7), (b"k1", b"c0-3", 9, 9))


def watch(events=EVENTS, **kwargs) -> WatchLog:
    log = WatchLog("w", start=kwargs.pop("start", 0), seen=kwargs.pop("seen", 9),
                   events=list(events), **kwargs)
    return log


def kinds(found: list[str]) -> list[str]:
    return [line.removeprefix("counter: ").removeprefix("range: ").split(": ", 1)[0]
            for line in found]


def test_a_clean_watch_stream_passes():
    assert check_watch(watch(), HISTORY, FINAL) == []
    assert compare_watchers([watch(), watch()]) == []


def test_a_watch_stream_that_misses_repeats_or_reorders_is_caught():
    assert kinds(check_watch(watch(EVENTS[1:]), HISTORY, None)) == [
        "an acknowledged put never came"]
    assert "an acknowledged cas never came" in kinds(
        check_watch(watch([EVENTS[0], EVENTS[2]]), HISTORY, FINAL))
    assert kinds(check_watch(watch(EVENTS + [EVENTS[2]]), HISTORY, FINAL)) == [
        "an event came twice", "a write applied twice"]
    assert kinds(check_watch(watch(EVENTS + [EVENTS[1]]), HISTORY, None)) == [
        "revision went down", "an event came twice", "a write applied twice"]
    assert kinds(check_watch(watch(EVENTS + [Change(11, b"k1", b"c0-3", "put")], seen=11),
                             HISTORY, None)) == [
        "a write applied twice", "a put seen at another revision than it was acknowledged at"]
    assert kinds(check_watch(watch(EVENTS + [Change(10, b"k1", b"c1-2", "put")], seen=10),
                             HISTORY, None)) == ["a cas acknowledged as not swapped was applied"]
    assert kinds(check_watch(watch(EVENTS + [Change(10, b"k1", b"zz", "put")], seen=10),
                             HISTORY, None)) == ["an event no workload write explains"]


def test_a_gap_excuses_what_it_skipped_and_nothing_else():
    log = watch(EVENTS[1:], gaps=[(0, 6)])
    assert check_watch(log, HISTORY, FINAL) == []
    log = watch(EVENTS[:2], gaps=[(0, 6)])
    assert "an acknowledged put never came" in kinds(check_watch(log, HISTORY, FINAL))


def test_the_final_listing_must_match_the_stream_and_be_reached():
    stale = listing(12, (b"k0", b"c0-1", 5, 5), (b"k1", b"c0-3", 9, 9))
    assert kinds(check_watch(watch(), HISTORY, stale)) == [
        "the final listing disagrees with the stream"]
    assert kinds(check_watch(watch(seen=8), HISTORY, FINAL)) == ["did not catch up after healing"]


def test_watchers_that_saw_different_events_disagree():
    other = watch(EVENTS[:2] + [Change(9, b"k1", b"c0-2", "put")])
    assert kinds(compare_watchers([watch(), other])) == ["watchers disagree"]


def test_a_leased_key_may_go_only_once_every_promise_ran_out():
    epoch = LeaseEpoch(3, 5, b"l/3", b"lease-3", put_ret=10.5,
                       promises=[Promise(10.0, 5), Promise(11.0, 5)])
    epoch.reads = [(11.5, 11.6, b"lease-3"), (16.5, 16.7, None)]
    assert check_leases([epoch]) == []
    epoch.reads.append((15.0, 15.9, None))  # the keepalive sent at 11.0 holds until 16.0
    epoch.not_found.append((15.5, 15.8))
    assert kinds(check_leases([epoch])) == ["a leased key vanished while its lease was kept alive",
                                            "a kept-alive lease was reported gone"]
    epoch.reads = [(12.0, 12.1, b"other")]
    epoch.not_found = []
    assert kinds(check_leases([epoch])) == ["a leased key read another value"]


def test_the_counter_needs_distinct_increments_and_a_final_value_between_the_bounds():
    assert check_counter([(1, 4), (2, 6), (3, 9)], [4], 4) == []
    assert kinds(check_counter([(1, 4), (1, 6)], [], 2)) == ["an increment lost",
                                                             "increments out of order"]
    assert kinds(check_counter([(1, 4), (2, 6)], [], 3)) == [
        "the final value is not the count of increments applied"]
    assert kinds(check_counter([(1, 4), (2, 6)], [], 1)) == [
        "an acknowledged increment is lost",
        "the final value is not the count of increments applied"]


def _read(response, call=5.0, ret=6.0, limit=0, start=b"r/", end=b"r/\xff") -> RangeRead:
    return RangeRead(start, end, limit, False, False, call, ret, response)


def test_a_listing_must_hold_the_keys_created_before_it_and_none_deleted_before_it():
    writes = [RangeWrite("create", b"r/1", b"r1", 1.0, 1.1, 3),
              RangeWrite("create", b"r/2", b"r2", 1.2, 1.3, 4),
              RangeWrite("delete", b"r/2", None, 2.0, 2.1),
              RangeWrite("create", b"r/3", b"r3", 5.5, None)]  # concurrent, unknown
    good = listing(7, (b"r/1", b"r1", 3, 3))
    assert check_ranges(writes, [_read(good)]) == []
    with_new = listing(7, (b"r/1", b"r1", 3, 3), (b"r/3", b"r3", 6, 6))
    assert check_ranges(writes, [_read(with_new)]) == []
    assert kinds(check_ranges(writes, [_read(listing(7))])) == [
        "a count no history explains", "a key that must be there is missing"]
    deleted = listing(7, (b"r/1", b"r1", 3, 3), (b"r/2", b"r2", 4, 4))
    assert kinds(check_ranges(writes, [_read(deleted)])) == ["a key that cannot be there"]
    wrong = listing(7, (b"r/1", b"r1", 2, 2))
    assert kinds(check_ranges(writes, [_read(wrong)])) == ["a key with the wrong record"]
    unsorted = listing(7, (b"r/3", b"r3", 6, 6), (b"r/1", b"r1", 3, 3))
    assert "keys out of order, repeated or outside the range" in kinds(
        check_ranges(writes, [_read(unsorted)]))
    limited = RangeResponse(good.kvs, 1, True, 7)
    assert kinds(check_ranges(writes, [_read(limited, limit=1)])) == ["more is wrong"]


def test_revisions_must_follow_real_time():
    ops = [RevOp(1.0, 2.0, 10, True, "a"), RevOp(3.0, 4.0, 10, False, "b"),
           RevOp(3.0, 4.0, 11, True, "c")]
    assert check_revision_order(ops) == []
    assert kinds(check_revision_order(ops + [RevOp(2.5, 3.0, 9, False, "stale read")])) == [
        "revisions against real time"]
    assert kinds(check_revision_order(ops + [RevOp(2.5, 3.0, 10, True, "old write")])) == [
        "revisions against real time"]


# ------------------------------------------------------------------------------ on real processes

HISTORY_REVISIONS = 16  # the nodes' watch history: far fewer revisions than the test writes


async def _put_all(client: Client, history: list, first: int, count: int) -> None:
    for n in range(first, first + count):
        call = time.monotonic()
        revision = await client.put(b"k%d" % (n % 3), b"c0-%d" % n)
        history.append(Operation(0, "put", b"k%d" % (n % 3), b"c0-%d" % n, None, call,
                                 time.monotonic(), revision))


def test_a_compacted_watch_lists_again_goes_on_and_its_gap_excuses_only_what_it_skipped(
        tmp_path):
    """The watchers start from a revision the nodes' history no longer holds: each gets
    WatchCompacted, lists the prefix, records the gap and watches on; the writes after the
    listing must all come, and the checks pass."""
    cluster = ProcessCluster(tmp_path, 3, proxy=False)
    for path in cluster.config_path.values():
        with open(path, "a") as f:
            f.write(f"watch: {{history_revisions: {HISTORY_REVISIONS}}}\n")
    coord = Coordination(cluster.endpoints, timeout=5.0, attempt_timeout=2.0)
    history: list[Operation] = []

    async def scenario():
        with trio.fail_after(60):
            cluster.start_all()
            assert await cluster.wait_for_leader() is not None, await cluster.describe()
            assert await coord.prepare()
            async with Client(cluster.endpoints, timeout=10) as client, \
                    trio.open_nursery() as nursery:
                await _put_all(client, history, 0, 60)
                stop = trio.Event()
                stop.set()  # the watchers alone
                nursery.start_soon(coord.run, stop, trio.current_time() + 50)
                with trio.fail_after(20):
                    while not all(log.gaps for log in coord.logs):
                        await trio.sleep(0.05)
                await _put_all(client, history, 60, 30)
                await coord.finish(timeout=20)

    try:
        trio.run(scenario)
    finally:
        cluster.close()
    assert coord.check(history) == [], coord.summary()
    for log in coord.logs:
        assert log.counts["compacted"] >= 1 and log.gaps and log.relists
        assert [e.value for e in log.events][-30:] == [b"c0-%d" % n for n in range(60, 90)]
    assert not cluster.unexpected_exits()
    assert "coordination violations: 0" in coord.summary()
    coord.dump(tmp_path)  # what a campaign writes after a violation
    assert (tmp_path / "watch-0.txt").read_text().count("\n") == len(coord.logs[0].events) + 1
    assert (tmp_path / "coord.txt").exists()
