"""Transactions: etcd-style compare / then / else, applied as ONE log command.

A transaction is ``(compares, success, failure)``. Every compare is tested against the store as
the command finds it; if all hold, the ``success`` ops run, else the ``failure`` ops, in order,
each seeing the effects of the ones before it. The command is one write command of the log:
it takes exactly one revision, whichever branch ran and whether or not it changed a key (the
store's rule, see daemon.core.kv: a revision per applied command; a read-only transaction is
no exception, so the revision stays the count of applied commands). Every key it writes gets
that revision as its ``mod_revision`` (and, created, as its ``create_revision``); a key written
twice in one transaction goes up a version per write. Retries are answered from the client's
session like any command (at most once).

The shapes (JSON-friendly: lists, strings, integers, bytes, null):

- compare ``[key, target, op, operand]``: ``target`` one of TARGETS, ``op`` one of COMPARE_OPS;
  the operand is bytes or null for "value" (null: the key is absent), an integer otherwise. A
  missing key has value null and version, create, mod and lease 0; "<" and ">" on a null value
  never hold.
- op ``["put", key, value]`` (or ``["put", key, value, lease]``: attached to that lease, see
  daemon.core.leases; a plain put detaches a key from its lease), ``["delete", key, end]`` (``end`` null: the key alone; b"": every
  key from ``key`` on; else ``[key, end)``), ``["range", key, end, limit, flags]`` (``end`` as
  for delete, ``limit`` 0: none, ``flags`` 1 keys only, 2 count only: the "range" request's).
- result ``[succeeded, results]``: per op, put -> null, delete -> the count of keys deleted,
  range -> ``[kvs, count, more]`` as a "range" reply carries it (``encode_range``). If a put
  of the branch that runs names a lease that does not exist, no op runs and the result is
  ``[LEASE_NOT_FOUND, lease id]`` (the command still takes its revision).

In the log a transaction is the command ``(client_id, seq, OP_TXN, b"", blob, None)``, ``blob``
the canonical CBOR of ``[compares, success, failure]``: the batch and record formats carry it
as they carry any command with a bytes argument.
"""

from __future__ import annotations

from fastpath import U64_MAX, KeyRecord, dumps, loads

from daemon.core.kv import RANGE_ENTRY_OVERHEAD, RangeQuery
from daemon.core.membership import MEMBERS_KEY
from daemon.core.messages import OP_TXN

__all__ = ["OP_TXN", "TxnError", "apply_txn", "check_txn", "decode_txn", "encode_range",
           "encode_txn"]
TARGETS = ("value", "version", "create", "mod", "lease")
COMPARE_OPS = ("=", "!=", "<", ">")
TXN_OPS = ("put", "delete", "range")
RANGE_KEYS_ONLY = 1  # a range op's flags, and the "range" request's (daemon.codec.wire)
RANGE_COUNT_ONLY = 2
# The bytes all the range ops of one transaction may return, together: a constant (not a node's
# config) so that every replica computes the same result; well under the message limit.
TXN_READ_BYTES = 4 << 20
MAX_TXN_OPS = 1024  # compares, and ops per branch
LEASE_NOT_FOUND = "lease_not_found"  # a result's first item: a put named a missing lease


class TxnError(ValueError):
    """A transaction of the wrong shape; the text names the field and what was wrong."""


def _fail(where: str, expected: str, value) -> TxnError:
    text = repr(value)
    return TxnError(f"{where}: expected {expected}, got {text[:60]}")


def _list(value, where: str, what: str) -> list:
    if type(value) not in (list, tuple):
        raise _fail(where, what, value)
    return value


def _bytes(value, where: str, *, null: bool = False) -> bytes | None:
    if value is None and null:
        return None
    if type(value) is not bytes:
        raise _fail(where, "bytes or null" if null else "bytes", value)
    return value


def _uint(value, where: str) -> int:
    if type(value) is not int or not 0 <= value <= U64_MAX:
        raise _fail(where, f"an integer in [0, {U64_MAX}]", value)
    return value


def check_compare(cmp, where: str) -> tuple:
    """``cmp`` as a tuple ``(key, target, op, operand)``; TxnError if it is not a compare."""
    if type(cmp) not in (list, tuple) or len(cmp) != 4:
        raise _fail(where, "a compare [key, target, op, operand]", cmp)
    key, target, op, operand = cmp
    _bytes(key, f"{where}.key")
    if target not in TARGETS or type(target) is not str:
        raise _fail(f"{where}.target", f"one of {', '.join(TARGETS)}", target)
    if op not in COMPARE_OPS or type(op) is not str:
        raise _fail(f"{where}.op", f"one of {' '.join(COMPARE_OPS)}", op)
    if target == "value":
        _bytes(operand, f"{where}.operand", null=True)
    else:
        _uint(operand, f"{where}.operand")
    return (key, target, op, operand)


def check_op(op, where: str) -> tuple:
    """``op`` as a tuple (put, delete or range); TxnError if it is not one, or if it would
    write the membership's key (reserved: see daemon.core.membership)."""
    if type(op) not in (list, tuple) or not op or op[0] not in TXN_OPS or type(op[0]) is not str:
        raise _fail(where, f"an op starting with one of {', '.join(TXN_OPS)}", op)
    name = op[0]
    size = {"put": 3, "delete": 3, "range": 5}[name]
    if len(op) != size and not (name == "put" and len(op) == 4):
        raise TxnError(f"{where}: a {name} op has {size} items"
                       f"{' (4 with a lease)' if name == 'put' else ''}, got {len(op)}")
    key = _bytes(op[1], f"{where}.key")
    if name == "put":
        _bytes(op[2], f"{where}.value")
        if key == MEMBERS_KEY:
            raise TxnError(f"{where}: the key {MEMBERS_KEY!r} is reserved for membership")
        lease = _uint(op[3], f"{where}.lease") if len(op) == 4 else 0
        return (name, key, op[2], lease) if lease else (name, key, op[2])
    end = _bytes(op[2], f"{where}.end", null=True)
    if name == "delete":
        if key == MEMBERS_KEY or (end is not None and key <= MEMBERS_KEY
                                  and (end == b"" or MEMBERS_KEY < end)):
            raise TxnError(f"{where}: the key {MEMBERS_KEY!r} is reserved for membership")
        return (name, key, end)
    _uint(op[3], f"{where}.limit")
    flags = op[4]
    if type(flags) is not int or not 0 <= flags <= RANGE_KEYS_ONLY | RANGE_COUNT_ONLY:
        raise _fail(f"{where}.flags", "0 to 3 (1 keys only, 2 count only)", flags)
    return (name, key, end, op[3], flags)


def check_txn(compares, success, failure) -> tuple:
    """The transaction as tuples ``(compares, success, failure)``; TxnError naming the first
    field of the wrong shape."""
    out = []
    for name, items, check in (("compares", compares, check_compare),
                               ("success", success, check_op), ("failure", failure, check_op)):
        _list(items, name, "an array")
        if len(items) > MAX_TXN_OPS:
            raise TxnError(f"{name}: at most {MAX_TXN_OPS} items, got {len(items)}")
        out.append(tuple(check(item, f"{name}[{i}]") for i, item in enumerate(items)))
    return tuple(out)


def encode_txn(compares, success, failure) -> bytes:
    """The command argument (canonical CBOR) of a checked transaction."""
    return dumps([list(map(list, part)) for part in (compares, success, failure)])


def decode_txn(blob) -> tuple:
    """The checked ``(compares, success, failure)`` a command argument holds; TxnError if it
    holds none."""
    try:
        parts = loads(blob) if type(blob) is bytes else None
    except ValueError as exc:
        raise TxnError(f"txn: not CBOR: {exc}") from None
    if type(parts) is not list or len(parts) != 3:
        raise _fail("txn", "[compares, success, failure]", parts)
    return check_txn(*parts)


def encode_range(result) -> list:
    """A range read's result (daemon.core.kv.RangeResult) as replies carry it: ``[kvs, count,
    more]``, each entry ``[key, value (null if keys only), create_revision, mod_revision,
    version, lease]``."""
    keys_only = result.keys_only
    kvs = [[key, None if keys_only else r.value, r.create_revision, r.mod_revision, r.version,
            r.lease] for key, r in result.kvs]
    return [kvs, result.count, result.more]


def _holds(record: KeyRecord | None, target: str, op: str, operand) -> bool:
    if target == "value":
        actual = None if record is None else record.value
        if op == "=":
            return actual == operand
        if op == "!=":
            return actual != operand
        if actual is None or operand is None:
            return False
    elif record is None:
        actual = 0
    else:
        actual = getattr(record, {"version": "version", "create": "create_revision",
                                  "mod": "mod_revision", "lease": "lease"}[target])
    if op == "=":
        return actual == operand
    if op == "!=":
        return actual != operand
    return actual < operand if op == "<" else actual > operand


def apply_txn(kv, blob: bytes, revision: int) -> list:
    """Run the transaction ``blob`` holds on the store ``kv`` (a daemon.core.kv.KVStore) as the
    command of ``revision``; return its result ``[succeeded, results]``. Deterministic: depends
    only on ``kv``'s state and ``blob``."""
    compares, success, failure = decode_txn(blob)
    data = kv.data
    succeeded = all(_holds(data.get(c[0]), c[1], c[2], c[3]) for c in compares)
    ops = success if succeeded else failure
    for op in ops:
        if len(op) == 4 and op[3] not in kv.leases:
            return [LEASE_NOT_FOUND, op[3]]
    results = []
    budget = TXN_READ_BYTES
    for op in ops:
        name, key = op[0], op[1]
        if name == "put":
            kv._write(key, op[2], data.get(key), revision, op[3] if len(op) == 4 else 0)
            results.append(None)
        elif name == "delete":
            results.append(_delete(kv, key, op[2], revision))
        else:
            query = RangeQuery(key, op[2], op[3], bool(op[4] & RANGE_KEYS_ONLY),
                               bool(op[4] & RANGE_COUNT_ONLY))
            found = kv.range(query, max(budget, 1))
            budget -= sum(len(k) + len(r.value) + RANGE_ENTRY_OVERHEAD for k, r in found.kvs)
            results.append(encode_range(found))
    return [succeeded, results]


def _delete(kv, key: bytes, end: bytes | None, revision: int) -> int:
    """Delete ``key`` (``end`` None) or the keys in ``[key, end)``; the count deleted."""
    if end is None:
        keys = [key] if key in kv.data else []
    else:
        keys = list(kv.keys_in(key, end)[0])
    for k in keys:
        kv.remove(k, revision)
    return len(keys)
