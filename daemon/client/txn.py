"""Transactions for the client library: helper constructors and the call behind ``Client.txn``.

    from daemon.client.txn import compare_value, compare_version, put, delete, get_range
    response = await client.txn([compare_version("k", "=", 0)],   # "k" is absent
                                [put("k", "v1")], [get_range("k")])
    response.succeeded, response.results, response.revision

A transaction is applied as one command of the log (see daemon.core.txn for its meaning and
shapes): every compare is tested, then the ``success`` ops run if all held, else the
``failure`` ops. It takes one revision, and retries are applied at most once, like any write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastpath import dumps

from daemon.codec.wire import WireError, decode_txn_result
from daemon.core.txn import TxnError, check_txn
from daemon.client.client import OperationFailed, _as_bytes, _range_end, _range_flags, _range_response
from daemon.client.leases import lease_refused

__all__ = ["COMPARES", "TxnResponse", "cas_txn", "compare_create", "compare_lease",
           "compare_mod", "compare_value", "compare_version", "delete", "get_range", "put",
           "results_json", "run_txn"]

# The bytes of a request besides its compares and ops (ids, op name, array heads).
REQUEST_OVERHEAD = 64


@dataclass(frozen=True, slots=True)
class TxnResponse:
    """What a transaction did: ``succeeded`` (True: the success ops ran), ``results`` (per op
    of the branch that ran: put None, delete the count of keys deleted, range a
    RangeResponse), and ``revision`` (the one the transaction took)."""

    succeeded: bool
    results: list
    revision: int | None


def results_json(ops, results, kv_json) -> list[dict]:
    """Each op's result (``ops``: the branch that ran) as JSON, etcd's shape: ``{"put": {}}``,
    ``{"delete": {"deleted"}}`` or ``{"range": {"kvs", "count", "more"}}``, each KeyValue
    as ``kv_json`` makes it (the HTTP API and ``paxosd txn --json`` encode keys differently)."""
    out = []
    for op, result in zip(ops, results):
        if op[0] == "put":
            out.append({"put": {}})
        elif op[0] == "delete":
            out.append({"delete": {"deleted": result}})
        else:
            out.append({"range": {"kvs": list(map(kv_json, result.kvs)), "count": result.count,
                                  "more": result.more}})
    return out


def _compare(target: str):
    def make(key: str | bytes, op: str, operand) -> list:
        if target == "value":
            operand = None if operand is None else _as_bytes(operand, "operand")
        return [_as_bytes(key, "key"), target, op, operand]
    make.__name__ = f"compare_{target}"
    make.__doc__ = (f"The compare of ``key``'s {target} with ``operand`` by ``op`` (=, !=, <, >)"
                    + ("; None: the key is absent." if target == "value" else "; 0 if absent."))
    return make


compare_value = _compare("value")
compare_version = _compare("version")
compare_create = _compare("create")
compare_mod = _compare("mod")
compare_lease = _compare("lease")
# A compare's constructor by its target's name (the JSON and text forms name targets so).
COMPARES = {"value": compare_value, "version": compare_version, "create": compare_create,
            "mod": compare_mod, "lease": compare_lease}


def put(key: str | bytes, value: str | bytes, lease: int = 0) -> list:
    """The op that sets ``key`` to ``value`` (attached to ``lease``, if not 0)."""
    op = ["put", _as_bytes(key, "key"), _as_bytes(value, "value")]
    return op + [lease] if lease else op


def delete(key: str | bytes, range_end: str | bytes | None = None, *,
           prefix: bool = False) -> list:
    """The op that deletes ``key`` (or the keys in ``[key, range_end)``, or with the prefix
    ``key``); its result is the count deleted."""
    start = _as_bytes(key, "key")
    return ["delete", start, _range_end(start, range_end, prefix, "")]


def get_range(key: str | bytes, range_end: str | bytes | None = None, *, prefix: bool = False,
              limit: int = 0, keys_only: bool = False, count_only: bool = False) -> list:
    """The op that reads what ``Client.range`` with these arguments reads, as the transaction
    sees the store at that point."""
    start = _as_bytes(key, "key")
    return ["range", start, _range_end(start, range_end, prefix, ""), limit,
            _range_flags(keys_only, count_only)]


def cas_txn(key: str | bytes, expected: str | bytes | None, new: str | bytes) -> tuple:
    """``Client.cas`` as a transaction ``(compares, success, failure)``: set ``key`` to ``new``
    if its value is ``expected`` (None: absent), else read it back (so a failed swap says what
    it found)."""
    return [compare_value(key, "=", expected)], [put(key, new)], [get_range(key)]


async def run_txn(client, compares, success, failure, timeout: float | None,
                  session: tuple[int, int] | None = None) -> TxnResponse:
    """Send the transaction through ``client`` (a Client) as one write, at most once; its
    response. ValueError naming the field if it is malformed or larger than the client's
    message limit; OperationFailed if the cluster refused it. ``session``: the
    ``(client_id, seq)`` to send it under (default: one of the client's own)."""
    try:
        compares, success, failure = check_txn(list(compares), list(success), list(failure))
    except TxnError as exc:
        raise ValueError(f"txn: {exc}") from None
    branches = [list(map(list, success)), list(map(list, failure))]
    compares = list(map(list, compares))
    size = len(dumps([compares, branches])) + REQUEST_OVERHEAD
    if size > client.max_frame:
        raise ValueError(f"txn: {size} bytes exceeds the message limit ({client.max_frame} "
                         f"bytes): split it")
    reply = await client._write("txn", b"", compares, branches, timeout, session)
    lease_refused(reply.result)
    try:
        succeeded, results = _decode(reply.result, success, failure, reply.revision)
    except WireError as exc:
        raise OperationFailed(f"txn: {exc}") from None
    return TxnResponse(succeeded, results, reply.revision)


def _decode(result: Any, success, failure, revision) -> tuple[bool, list]:
    """The checked ``(succeeded, results)`` of a txn reply, range results as RangeResponses."""
    succeeded = type(result) in (list, tuple) and len(result) == 2 and result[0] is True
    ok, raw = decode_txn_result(result, success if succeeded else failure)
    out = []
    for op, value in zip(success if ok else failure, raw):
        if op[0] == "range":
            value = _range_response(value, revision)
        out.append(value)
    return ok, out
