"""Transactions on the store (daemon.core.txn): every compare target and operator, ranges and
delete ranges in the branches, revisions and versions, at-most-once retries, and the C batch
loop agreeing with the Python path."""

from __future__ import annotations

import pytest

from daemon.core.kv import KVStore
from daemon.core.membership import MEMBERS_KEY
from daemon.core.messages import OK, OP_DELETE, OP_PUT, STALE
from daemon.core.txn import OP_TXN, TxnError, check_txn, decode_txn, encode_txn


def txn_cmd(client_id: int, seq: int, compares, success, failure=()) -> tuple:
    return (client_id, seq, OP_TXN, b"", encode_txn(*check_txn(compares, success, failure)),
            None)


def store() -> KVStore:
    """a=1 (revision 1), b=2 (2), a=1+ (3): a has version 2, create 1, mod 3."""
    kv = KVStore()
    kv.apply_batch([(1, 1, OP_PUT, b"a", b"1", None), (1, 2, OP_PUT, b"b", b"2", None),
                    (1, 3, OP_PUT, b"a", b"1+", None)])
    return kv


@pytest.mark.parametrize("target, op, operand, holds", [
    ("value", "=", b"1+", True), ("value", "=", b"1", False),
    ("value", "!=", b"1", True), ("value", "!=", b"1+", False),
    ("value", "<", b"2", True), ("value", "<", b"1", False),
    ("value", ">", b"1", True), ("value", ">", b"2", False),
    ("value", "=", None, False), ("value", "!=", None, True),
    ("version", "=", 2, True), ("version", "!=", 2, False),
    ("version", "<", 3, True), ("version", ">", 2, False),
    ("create", "=", 1, True), ("create", "<", 1, False), ("create", ">", 0, True),
    ("create", "!=", 1, False),
    ("mod", "=", 3, True), ("mod", ">", 2, True), ("mod", "<", 3, False), ("mod", "!=", 1, True),
    ("lease", "=", 0, True), ("lease", "!=", 0, False), ("lease", ">", 0, False),
    ("lease", "<", 1, True),
])
def test_every_target_and_operator_on_a_present_key(target, op, operand, holds):
    kv = store()
    status, result, revision = kv.apply(txn_cmd(2, 1, [[b"a", target, op, operand]],
                                                [["put", b"t", b"then"]],
                                                [["put", b"t", b"else"]]))
    assert status == OK and result == [holds, [None]] and revision == 4
    assert kv.get(b"t") == (b"then" if holds else b"else")


@pytest.mark.parametrize("target, op, operand, holds", [
    ("value", "=", None, True), ("value", "!=", b"x", True), ("value", "<", b"x", False),
    ("value", ">", b"", False), ("version", "=", 0, True), ("create", "=", 0, True),
    ("mod", "<", 1, True), ("lease", "=", 0, True),
])
def test_a_missing_key_compares_as_absent(target, op, operand, holds):
    kv = store()
    _, result, _ = kv.apply(txn_cmd(2, 1, [[b"zz", target, op, operand]], [], []))
    assert result == [holds, []]


def test_all_compares_must_hold():
    kv = store()
    both = [[b"a", "version", "=", 2], [b"b", "value", "=", b"2"]]
    assert kv.apply(txn_cmd(2, 1, both, []))[1][0] is True
    one = [[b"a", "version", "=", 2], [b"b", "value", "=", b"no"]]
    assert kv.apply(txn_cmd(2, 2, one, []))[1][0] is False


def test_ops_see_the_ones_before_and_take_one_revision():
    kv = store()
    status, result, revision = kv.apply(txn_cmd(
        2, 1, [], [["put", b"c", b"3"], ["put", b"a", b"x"], ["put", b"a", b"y"],
                   ["range", b"", b"", 0, 0], ["delete", b"b", None],
                   ["range", b"a", b"c", 0, 1], ["range", b"", b"", 0, 2]]))
    assert (status, revision) == (OK, 4) and kv.revision == 4
    succeeded, (p1, p2, p3, everything, deleted, keys, counted) = result
    assert succeeded and (p1, p2, p3, deleted) == (None, None, None, 1)
    assert everything == [[[b"a", b"y", 1, 4, 4, 0], [b"b", b"2", 2, 2, 1, 0],
                           [b"c", b"3", 4, 4, 1, 0]], 3, False]
    assert keys == [[[b"a", None, 1, 4, 4, 0]], 1, False]  # b was deleted just before
    assert counted == [[], 2, False]
    record = kv.record(b"a")
    assert (record.create_revision, record.mod_revision, record.version) == (1, 4, 4)
    assert kv.apply((1, 4, OP_PUT, b"d", b"4", None))[2] == 5  # the next command: the next one


def test_a_read_only_or_failed_txn_still_takes_one_revision():
    kv = store()
    assert kv.apply(txn_cmd(2, 1, [], [["range", b"a", None, 0, 0]]))[2] == 4
    assert kv.apply(txn_cmd(2, 2, [[b"a", "version", "=", 9]], [["put", b"a", b"z"]]))[2] == 5
    assert kv.get(b"a") == b"1+" and kv.record(b"a").mod_revision == 3


def test_delete_ranges():
    kv = KVStore()
    kv.apply_batch([(1, i + 1, OP_PUT, k, b"v", None)
                    for i, k in enumerate([b"a", b"p/1", b"p/2", b"p/3", b"q"])])
    _, result, _ = kv.apply(txn_cmd(2, 1, [], [["delete", b"p/", b"p0"],
                                               ["delete", b"nope", None],
                                               ["range", b"", b"", 0, 1]]))
    assert result == [True, [3, 0, [[[b"a", None, 1, 1, 1, 0], [b"q", None, 5, 5, 1, 0]], 2,
                                     False]]]
    _, result, _ = kv.apply(txn_cmd(2, 2, [], [["delete", b"b", b""]]))
    assert result == [True, [1]] and sorted(kv.data) == [b"a"]
    kv.apply((1, 6, OP_PUT, b"q", b"again", None))
    assert kv.record(b"q").version == 1 and kv.record(b"q").create_revision == 8


def test_a_retry_is_answered_from_the_session_not_applied_again():
    kv = store()
    cmd = txn_cmd(2, 1, [[b"a", "version", "=", 2]], [["put", b"a", b"again"]])
    first = kv.apply(cmd)
    assert first == (OK, [True, [None]], 4)
    assert kv.apply(cmd) == first  # the compare no longer holds: the session answers
    assert kv.record(b"a").version == 3 and kv.revision == 4
    assert kv.apply(txn_cmd(2, 0, [], [["put", b"a", b"old"]]))[0] == STALE
    assert kv.get(b"a") == b"again"


def test_the_batch_loop_agrees_with_apply():
    cmds = [(1, 1, OP_PUT, b"a", b"1", None),
            txn_cmd(2, 1, [[b"a", "value", "=", b"1"]],
                    [["put", b"b", b"2"], ["range", b"", b"", 0, 0]]),
            (1, 2, OP_DELETE, b"a", None, None),
            txn_cmd(2, 1, [], []),  # a retry inside the batch
            txn_cmd(3, 1, [[b"a", "version", ">", 0]], [], [["delete", b"a", b"c"]]),
            (1, 3, OP_PUT, b"c", b"3", None)]
    one, batch = KVStore(), KVStore()
    expected = [one.apply(cmd) for cmd in cmds]
    results: list = []
    batch.apply_batch(cmds, results)
    assert results == expected and batch.state() == one.state()
    assert sorted(batch.sorted_keys()) == sorted(batch.data) == [b"c"]


def test_the_batch_loop_hands_a_txn_a_fresh_index():
    """The loop may give the key index up mid-batch; a txn range after that sorts again."""
    kv = KVStore()
    kv.touched_slack = 0
    kv.sorted_keys()
    cmds = [(1, i + 1, OP_PUT, b"k%d" % i, b"v", None) for i in range(5)]
    cmds += [(1, 6, OP_DELETE, b"k0", None, None), (1, 7, OP_DELETE, b"k1", None, None)]
    cmds.append(txn_cmd(2, 1, [], [["range", b"", b"", 0, 2]]))
    results: list = []
    kv.apply_batch(cmds, results)
    assert results[-1][1] == [True, [[[], 3, False]]]


@pytest.mark.parametrize("parts, words", [
    (([["k", "value", "=", b"v"]], [], []), "compares[0].key"),
    (([[b"k", "size", "=", 1]], [], []), "compares[0].target"),
    (([[b"k", "value", "<=", b"v"]], [], []), "compares[0].op"),
    (([[b"k", "version", "=", b"1"]], [], []), "compares[0].operand"),
    (([[b"k", "value", "=", 1]], [], []), "compares[0].operand"),
    (([], [["get", b"k"]], []), "success[0]"),
    (([], [], [["put", b"k"]]), "failure[0]: a put op has 3 items"),
    (([], [["range", b"k", None, -1, 0]], []), "success[0].limit"),
    (([], [["range", b"k", None, 0, 4]], []), "success[0].flags"),
    (([], [["put", MEMBERS_KEY, b"x"]], []), "reserved for membership"),
    (([], [["delete", b"", b""]], []), "reserved for membership"),
    (([], [["delete", MEMBERS_KEY, None]], []), "reserved for membership"),
    (([], [["put", b"k", b"v"]] * 1025, []), "success: at most 1024"),
    (("x", [], []), "compares: expected an array"),
])
def test_malformed_txns_are_refused_naming_the_field(parts, words):
    with pytest.raises(TxnError, match=words.replace("[", r"\[").replace("]", r"\]")):
        check_txn(*parts)


def test_decode_refuses_what_is_no_txn():
    with pytest.raises(TxnError, match="not CBOR"):
        decode_txn(b"\xff")
    with pytest.raises(TxnError, match="compares, success, failure"):
        decode_txn(b"\x80")
    with pytest.raises(ValueError, match="unknown op 9"):
        KVStore().apply((1, 1, 9, b"", None, None))
