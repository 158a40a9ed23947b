"""Specification tests for the linearizability checker (tests/linearizability.py).

Each test states one property of the checker in its name; the randomised
tests at the bottom compare it against histories produced by a real
sequential key-value store and against a brute-force definition of
linearizability.
"""

from __future__ import annotations

import random
import time

import pytest

from tests.linearizability import CheckResult, Operation, check

K = b"k"
NEVER = b"never-written"


# -- helpers: ret=None means "outcome unknown" ---------------------------------


def put(client, key, value, call, ret):
    return Operation(client, "put", key, value, None, call, ret, None)


def get(client, key, call, ret, result=None):
    return Operation(client, "get", key, None, None, call, ret, result)


def delete(client, key, call, ret, result=None):
    return Operation(client, "delete", key, None, None, call, ret, result)


def cas(client, key, expected, new, call, ret, result=None):
    return Operation(client, "cas", key, new, expected, call, ret, result)


def assert_linearizable(history):
    result = check(history)
    assert result.ok is True, result.info
    assert result.key is None
    return result


def assert_not_linearizable(history, key=K):
    result = check(history)
    assert result.ok is False, result.info
    assert result.key == key
    assert repr(key) in result.info
    return result


# -- sequential histories --------------------------------------------------------


def test_empty_history_is_linearizable():
    assert_linearizable([])


def test_sequential_history_following_the_model_is_linearizable():
    assert_linearizable(
        [
            get(1, K, 0, 1, None),
            put(1, K, b"a", 2, 3),
            get(2, K, 4, 5, b"a"),
            cas(1, K, b"a", b"b", 6, 7, True),
            cas(2, K, b"a", b"c", 8, 9, False),
            get(3, K, 10, 11, b"b"),
            delete(1, K, 12, 13, True),
            delete(2, K, 14, 15, False),
            get(3, K, 16, 17, None),
        ]
    )


def test_order_of_the_history_list_does_not_matter():
    history = [put(1, K, b"a", 0, 1), put(1, K, b"b", 2, 3), get(2, K, 4, 5, b"b")]
    assert_linearizable(list(reversed(history)))
    assert_not_linearizable(list(reversed(history[:2])) + [get(2, K, 4, 5, b"a")])


def test_read_of_a_missing_key_returns_none():
    assert_linearizable([get(1, K, 0, 1, None)])
    assert_not_linearizable([get(1, K, 0, 1, b"")])


# -- real-time order -------------------------------------------------------------


def test_stale_read_after_completed_write_is_not_linearizable():
    result = assert_not_linearizable(
        [
            put(1, K, b"old", 0, 1),
            put(1, K, b"new", 2, 3),
            get(2, K, 4, 5, b"old"),
        ]
    )
    # The explanation names the longest prefix and the read that cannot follow it.
    assert "Longest linearizable prefix: 2 of 3" in result.info
    assert "get(b'k') -> b'old' @ [4, 5]" in result.info
    assert "the model would return b'new'" in result.info


@pytest.mark.parametrize("seen", [b"old", b"new"])
def test_read_overlapping_a_write_may_see_either_value(seen):
    assert_linearizable(
        [
            put(1, K, b"old", 0, 1),
            put(1, K, b"new", 2, 6),
            get(2, K, 3, 4, seen),
        ]
    )


def test_read_overlapping_a_write_cannot_see_a_value_never_written():
    assert_not_linearizable([put(1, K, b"old", 0, 1), put(1, K, b"new", 2, 6), get(2, K, 3, 4, NEVER)])


def test_once_a_read_saw_the_new_value_a_later_read_cannot_see_the_old_one():
    # Both reads overlap the write, but they do not overlap each other.
    history = [put(1, K, b"old", 0, 1), put(1, K, b"new", 2, 10), get(2, K, 3, 4, b"new")]
    assert_not_linearizable(history + [get(3, K, 5, 6, b"old")])
    assert_linearizable(history + [get(3, K, 5, 6, b"new")])
    # ... whereas if the reads overlap, they may be ordered either way.
    assert_linearizable(history + [get(3, K, 4, 6, b"old")])


def test_operations_whose_intervals_touch_are_concurrent():
    # put returns at t=1 and get is called at t=1: not ordered.
    assert_linearizable([put(1, K, b"a", 0, 1), get(2, K, 1, 2, None)])
    assert_not_linearizable([put(1, K, b"a", 0, 1), get(2, K, 1.5, 2, None)])


def test_concurrent_writes_may_be_ordered_either_way_but_consistently():
    writes = [put(1, K, b"a", 0, 5), put(2, K, b"b", 0, 5)]
    assert_linearizable(writes + [get(3, K, 6, 7, b"a"), get(3, K, 8, 9, b"a")])
    assert_linearizable(writes + [get(3, K, 6, 7, b"b"), get(3, K, 8, 9, b"b")])
    assert_not_linearizable(writes + [get(3, K, 6, 7, b"a"), get(3, K, 8, 9, b"b")])


# -- compare-and-swap ----------------------------------------------------------------


def test_cas_swaps_iff_the_current_value_is_the_expected_one():
    assert_linearizable([put(1, K, b"a", 0, 1), cas(1, K, b"a", b"b", 2, 3, True), get(1, K, 4, 5, b"b")])
    assert_linearizable([put(1, K, b"a", 0, 1), cas(1, K, b"x", b"b", 2, 3, False), get(1, K, 4, 5, b"a")])
    # A cas reported as failed although the value matched.
    assert_not_linearizable([put(1, K, b"a", 0, 1), cas(1, K, b"a", b"b", 2, 3, False)])
    # A failed cas must not change the value.
    assert_not_linearizable([put(1, K, b"a", 0, 1), cas(1, K, b"x", b"b", 2, 3, False), get(1, K, 4, 5, b"b")])


def test_cas_that_succeeded_on_a_value_never_written_is_not_linearizable():
    assert_not_linearizable([put(1, K, b"a", 0, 1), cas(2, K, NEVER, b"b", 2, 3, True)])


def test_cas_expecting_none_means_expecting_the_key_to_be_absent():
    assert_linearizable([cas(1, K, None, b"a", 0, 1, True), get(1, K, 2, 3, b"a")])
    assert_linearizable([put(1, K, b"a", 0, 1), cas(1, K, None, b"b", 2, 3, False)])
    assert_not_linearizable([put(1, K, b"a", 0, 1), cas(1, K, None, b"b", 2, 3, True)])
    assert_not_linearizable([cas(1, K, b"a", b"b", 0, 1, True)])


def test_only_one_of_two_concurrent_identical_cas_can_succeed():
    assert_linearizable([cas(1, K, None, b"a", 0, 2, True), cas(2, K, None, b"b", 1, 3, False)])
    assert_not_linearizable([cas(1, K, None, b"a", 0, 2, True), cas(2, K, None, b"b", 1, 3, True)])


# -- delete ------------------------------------------------------------------------


def test_delete_removes_the_key_and_reports_whether_it_existed():
    assert_linearizable(
        [
            delete(1, K, 0, 1, False),
            put(1, K, b"a", 2, 3),
            delete(2, K, 4, 5, True),
            get(3, K, 6, 7, None),
            delete(3, K, 8, 9, False),
        ]
    )
    assert_not_linearizable([put(1, K, b"a", 0, 1), delete(2, K, 2, 3, False)])
    assert_not_linearizable([delete(1, K, 0, 1, True)])
    assert_not_linearizable([put(1, K, b"a", 0, 1), delete(2, K, 2, 3, True), get(1, K, 4, 5, b"a")])


def test_concurrent_deletes_only_one_finds_the_key():
    history = [put(1, K, b"a", 0, 1)]
    assert_linearizable(history + [delete(1, K, 2, 5, True), delete(2, K, 3, 4, False)])
    assert_not_linearizable(history + [delete(1, K, 2, 5, True), delete(2, K, 3, 4, True)])


# -- unknown outcomes ------------------------------------------------------------------


@pytest.mark.parametrize("seen", [None, b"a"])
def test_unknown_outcome_write_may_be_seen_or_not(seen):
    assert_linearizable([put(1, K, b"a", 0, None), get(2, K, 5, 6, seen)])


def test_unknown_outcome_write_cannot_be_seen_by_a_read_that_finished_before_it_was_called():
    assert_not_linearizable([get(2, K, 0, 1, b"a"), put(1, K, b"a", 2, None)])
    # Touching intervals are concurrent, as for known outcomes.
    assert_linearizable([get(2, K, 0, 2, b"a"), put(1, K, b"a", 2, None)])


def test_unknown_outcome_write_may_take_effect_long_after_its_call_but_only_once():
    history = [put(1, K, b"a", 0, None), get(2, K, 10, 11, None), get(2, K, 20, 21, b"a")]
    assert_linearizable(history)
    assert_not_linearizable(history + [get(3, K, 30, 31, None)])


def test_unknown_outcome_write_does_not_constrain_anything_when_unobserved():
    assert_linearizable([put(1, K, b"a", 0, 1), put(2, K, b"x", 0, None), get(3, K, 5, 6, b"a")])


def test_unknown_outcome_results_are_ignored():
    # Whatever `result` says, an unknown-outcome operation asserts nothing.
    assert_linearizable([get(1, K, 0, None, NEVER), cas(1, K, NEVER, b"a", 1, None, True), delete(1, K, 2, None, True)])


def test_unknown_outcome_cas_and_delete_may_or_may_not_apply():
    history = [put(1, K, b"a", 0, 1), cas(2, K, b"a", b"b", 2, None)]
    assert_linearizable(history + [get(3, K, 5, 6, b"a")])
    assert_linearizable(history + [get(3, K, 5, 6, b"b")])
    # ... but when it applies, it applies its own semantics.
    assert_not_linearizable([put(1, K, b"a", 0, 1), cas(2, K, b"x", b"b", 2, None), get(3, K, 5, 6, b"b")])
    history = [put(1, K, b"a", 0, 1), delete(2, K, 2, None)]
    assert_linearizable(history + [get(3, K, 5, 6, None)])
    assert_linearizable(history + [get(3, K, 5, 6, b"a")])


# -- keys are independent ----------------------------------------------------------------


def test_keys_are_checked_independently():
    x, y = b"x", b"y"
    # A write to x is never visible on y.
    assert_not_linearizable([put(1, x, b"v", 0, 1), get(2, y, 2, 3, b"v")], key=y)
    # Cross-key real-time order does not matter: each key on its own is fine.
    assert_linearizable(
        [
            put(1, x, b"1", 0, 1),
            put(1, y, b"1", 2, 3),
            get(2, y, 4, 5, b"1"),
            get(2, x, 6, 7, b"1"),
        ]
    )


def test_the_failing_key_is_reported_even_if_other_keys_are_fine():
    history = [
        put(1, b"a", b"1", 0, 1),
        get(2, b"a", 2, 3, b"1"),
        put(1, b"b", b"1", 0, 1),
        get(2, b"b", 2, 3, None),  # stale
        put(1, b"c", b"1", 0, 1),
    ]
    result = assert_not_linearizable(history, key=b"b")
    assert "b'a'" not in result.info


# -- API behaviour -------------------------------------------------------------------


def test_malformed_operations_are_rejected():
    with pytest.raises(ValueError):
        check([put(1, K, b"a", 2, 1)])  # returns before it is called
    with pytest.raises(ValueError):
        check([Operation(1, "append", K, b"a", None, 0, 1, None)])
    with pytest.raises(ValueError):
        check([put(1, K, None, 0, 1)])


def test_check_is_deterministic():
    history = [put(c, K, bytes([c]), 0, 10) for c in range(6)] + [get(9, K, 11, 12, NEVER)]
    first = check(history)
    assert first.ok is False
    assert all(check(history) == first for _ in range(3))


def test_checker_gives_up_on_timeout():
    # 24 concurrent writes of distinct values followed by an impossible read:
    # the search must try every subset of writes before concluding.
    history = [put(c, K, b"%d" % c, 0, 100) for c in range(24)] + [get(99, K, 200, 201, NEVER)]
    start = time.monotonic()
    result = check(history, timeout=0.3)
    assert result.ok is None
    assert result.key == K
    assert "timeout" in result.info
    assert time.monotonic() - start < 5


def test_orders_reaching_the_same_state_are_explored_once():
    # 12 concurrent writes then an impossible read: 12! orders, but only
    # 2**12 * 12 distinct (written set, value) configurations.
    history = [put(c, K, b"%d" % c, 0, 100) for c in range(12)] + [get(99, K, 200, 201, NEVER)]
    start = time.monotonic()
    result = check(history, timeout=10)
    assert result.ok is False, result.info
    assert time.monotonic() - start < 3


def test_result_type():
    result = check([put(1, K, b"a", 0, 1)])
    assert isinstance(result, CheckResult)
    assert result == CheckResult(True, None, result.info)


# -- randomised: histories from a real sequential store ---------------------------------

KEYS = (b"k0", b"k1", b"k2")


def random_history(seed, n_ops=50, n_clients=5, keys=KEYS, p_unknown=0.1):
    """A history of `n_ops` operations issued by `n_clients` sequential clients.

    Each operation gets an interval and a linearization point inside it (for an
    unknown-outcome operation: any time after its call, or never); the results
    are those of a real dict-backed store applying the operations in the order
    of their linearization points. Such a history is linearizable by
    construction. Returns the history in call order.
    """
    rng = random.Random(seed)
    # Small value pools make values repeat (ABA, cache collisions); large ones don't.
    pool = [b"v%d" % i for i in range(3 if seed % 2 else 1000)]
    integer_times = seed % 3 == 0  # many equal timestamps

    skeleton = []  # (linearization point or None, client, call, ret)
    clock = [0.0] * n_clients
    for _ in range(n_ops):
        c = rng.randrange(n_clients)
        call = clock[c] + (rng.randrange(3) if integer_times else rng.uniform(0, 2))
        ret = call + (rng.randrange(4) if integer_times else rng.uniform(0, 3))
        clock[c] = ret + (rng.randrange(2) if integer_times else rng.uniform(0, 1))
        if rng.random() < p_unknown:
            # Outcome unknown: it takes effect at some time after its call, or never.
            point = call + rng.uniform(0, 30) if rng.random() < 0.6 else None
            ret = None
        else:
            point = rng.uniform(call, ret)
        skeleton.append((point, c, call, ret))

    # Decide each operation's arguments and result in linearization order, so
    # that cas operations often expect the current value.
    store: dict[bytes, bytes] = {}
    history = []
    applied = sorted((s for s in skeleton if s[0] is not None), key=lambda s: s[0])
    never_applied = [s for s in skeleton if s[0] is None]
    for point, c, call, ret in applied + never_applied:
        key = rng.choice(keys)
        kind = rng.choice(("put", "get", "get", "delete", "cas", "cas"))
        current = store.get(key)
        if kind == "put":
            value = rng.choice(pool)
            op = put(c, key, value, call, ret)
        elif kind == "get":
            op = get(c, key, call, ret, current)
        elif kind == "delete":
            op = delete(c, key, call, ret, current is not None)
        else:
            expected = current if rng.random() < 0.5 else rng.choice(pool + [None])
            value = rng.choice(pool)
            op = cas(c, key, expected, value, call, ret, current == expected)
        if point is not None:  # apply to the real store
            if kind == "put" or (kind == "cas" and current == expected):
                store[key] = value
            elif kind == "delete":
                store.pop(key, None)
        history.append(op)
    history.sort(key=lambda o: (o.call, o.client))
    return history


SEEDS = range(200)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_histories_from_a_real_store_are_linearizable(seed):
    assert_linearizable(random_history(seed))


def test_random_histories_exercise_unknown_outcomes_equal_times_and_cas():
    ops = [o for seed in SEEDS for o in random_history(seed)]
    assert sum(o.ret is None for o in ops) > 500
    assert sum(o.op == "cas" and o.ret is not None and o.result for o in ops) > 500
    touching = 0
    for seed in SEEDS:
        history = random_history(seed)
        rets = {o.ret for o in history}
        touching += sum(o.call in rets for o in history)
    assert touching > 100


@pytest.mark.parametrize("seed", SEEDS)
def test_random_history_with_one_read_of_a_value_never_written_is_not_linearizable(seed):
    history = random_history(seed)
    rng = random.Random(-seed)
    reads = [i for i, o in enumerate(history) if o.op == "get" and o.ret is not None]
    assert reads
    i = rng.choice(reads)
    history[i] = get(history[i].client, history[i].key, history[i].call, history[i].ret, NEVER)
    result = assert_not_linearizable(history, key=history[i].key)
    assert "b'never-written'" in result.info


# -- randomised: against a brute-force definition of linearizability --------------------


def _step(state, op):
    """(new state, output) of the sequential model."""
    if op.op == "put":
        return op.value, None
    if op.op == "get":
        return state, state
    if op.op == "delete":
        return None, state is not None
    swapped = state == op.expected
    return (op.value if swapped else state), swapped


def brute_force_linearizable(history):
    """Literal definition: search every order respecting real time.

    Unknown-outcome operations may be left out (equivalently, put last);
    an operation may come next iff no remaining known-outcome operation
    returned strictly before its call. Keys are handled jointly (no
    P-compositionality), with one register per key.
    """

    def search(remaining, store):
        known = [o for o in remaining if o.ret is not None]
        if not known:
            return True
        first_ret = min(o.ret for o in known)
        for idx, o in enumerate(remaining):
            if o.call > first_ret:
                continue
            new_state, out = _step(store.get(o.key), o)
            if o.ret is not None and o.op != "put" and out != o.result:
                continue
            new_store = dict(store)
            if new_state is None:
                new_store.pop(o.key, None)
            else:
                new_store[o.key] = new_state
            if search(remaining[:idx] + remaining[idx + 1 :], new_store):
                return True
        return False

    return search(list(history), {})


def arbitrary_history(rng, n_ops):
    """Random operations with random (mostly wrong) results on two keys."""
    values = [None, b"a", b"b"]
    history = []
    for _ in range(n_ops):
        call = rng.randrange(8)
        ret = None if rng.random() < 0.15 else call + rng.randrange(4)
        key = rng.choice((b"x", b"y"))
        kind = rng.choice(("put", "get", "delete", "cas"))
        client = rng.randrange(3)
        if kind == "put":
            history.append(put(client, key, rng.choice(values[1:]), call, ret))
        elif kind == "get":
            history.append(get(client, key, call, ret, rng.choice(values)))
        elif kind == "delete":
            history.append(delete(client, key, call, ret, rng.random() < 0.5))
        else:
            history.append(cas(client, key, rng.choice(values), rng.choice(values[1:]), call, ret, rng.random() < 0.5))
    return history


def test_agrees_with_brute_force_on_small_arbitrary_histories():
    rng = random.Random(2024)
    verdicts = {True: 0, False: 0}
    for _ in range(600):
        history = arbitrary_history(rng, rng.randrange(1, 8))
        expected = brute_force_linearizable(history)
        assert check(history).ok is expected, history
        verdicts[expected] += 1
    # Both verdicts are well represented.
    assert min(verdicts.values()) > 100, verdicts


# -- scale ---------------------------------------------------------------------------------


def test_thousands_of_operations_on_one_key_are_checked_quickly():
    history = random_history(7, n_ops=3000, n_clients=5, keys=(K,), p_unknown=0.002)
    start = time.monotonic()
    assert_linearizable(history)
    assert time.monotonic() - start < 5
