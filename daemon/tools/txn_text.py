"""The text form of a transaction that ``paxosd txn`` reads from stdin, as etcdctl's does:
the compares one a line, a blank line, the success ops one a line, a blank line, the failure
ops one a line::

    mod("job/a") > "0"
    value("job/b") = "ready"

    put job/a "new value"
    del job/b
    get job/ --prefix

    get job/a

A compare is ``TARGET("KEY") OP "OPERAND"`` (TARGET value, version, create, mod or lease; OP
=, !=, < or >; the key and operand quoted as JSON strings; a number's quotes may be left out).
An op is ``put KEY VALUE``, ``del KEY [END]`` or ``get KEY [END]`` (shell-style quoting), with
``--prefix`` (del, get) and ``--limit N``, ``--keys-only``, ``--count-only`` (get).
"""

from __future__ import annotations

import json
import os
import re
import shlex

from daemon.codec.wire import RANGE_COUNT_ONLY
from daemon.client import txn

__all__ = ["TxnTextError", "kv_json", "kv_lines", "parse_txn_text", "result_json", "result_lines"]

_COMPARE = re.compile(r'^\s*(\w+)\(\s*("(?:[^"\\]|\\.)*")\s*\)\s*(!=|=|<|>)\s*(.*?)\s*$')


class TxnTextError(ValueError):
    """Text that is no transaction; the message names the line and what was wrong."""


def _string(text: str, where: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if type(value) is not str:
        raise TxnTextError(f"{where}: expected a quoted string, got {text!r}")
    return value


def _compare(line: str, where: str) -> list:
    match = _COMPARE.match(line)
    if match is None:
        raise TxnTextError(f'{where}: expected TARGET("KEY") OP "OPERAND", got {line!r}')
    target, key, op, operand = match.groups()
    if target not in txn.COMPARES:
        raise TxnTextError(f"{where}: the target must be one of {', '.join(txn.COMPARES)}, "
                           f"got {target!r}")
    text = _string(operand, where) if operand.startswith('"') else operand
    if target == "value":
        value = os.fsencode(text)
    elif text.isdigit():
        value = int(text)
    else:
        raise TxnTextError(f"{where}: {target} compares with a whole number, got {operand!r}")
    return txn.COMPARES[target](os.fsencode(_string(key, where)), op, value)


def _op(line: str, where: str) -> list:
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise TxnTextError(f"{where}: {exc}") from None
    flags = {w for w in words if w.startswith("--")}
    args = [os.fsencode(w) for w in words if not w.startswith("--")]
    name = args.pop(0).decode() if args else ""
    limit = 0
    if "--limit" in flags:  # its number is the word after it
        at = words.index("--limit")
        if at + 1 >= len(words) or not words[at + 1].isdigit():
            raise TxnTextError(f"{where}: --limit takes a whole number")
        limit = int(words[at + 1])
        args.remove(os.fsencode(words[at + 1]))
        flags.discard("--limit")
    allowed = {"put": set(), "del": {"--prefix"},
               "get": {"--prefix", "--keys-only", "--count-only"}}.get(name)
    if allowed is None:
        raise TxnTextError(f"{where}: expected put, del or get, got {line.strip()!r}")
    if flags - allowed or (limit and name != "get"):
        extra = " ".join(sorted(flags - allowed)) or "--limit"
        raise TxnTextError(f"{where}: {name} takes no {extra}")
    if name == "put":
        if len(args) != 2:
            raise TxnTextError(f"{where}: expected put KEY VALUE, got {line.strip()!r}")
        return txn.put(*args)
    if not 1 <= len(args) <= 2:
        raise TxnTextError(f"{where}: expected {name} KEY [END], got {line.strip()!r}")
    prefix = "--prefix" in flags
    if name == "del":
        return txn.delete(*args, prefix=prefix)
    return txn.get_range(*args, prefix=prefix, limit=limit, keys_only="--keys-only" in flags,
                         count_only="--count-only" in flags)


def parse_txn_text(text: str) -> tuple[list, list, list]:
    """``(compares, success, failure)`` from the text form; TxnTextError naming the line."""
    sections: list[list] = [[], [], []]
    part = 0
    for number, line in enumerate(text.splitlines(), 1):
        where = f"line {number}"
        if not line.strip():
            part += 1
            if part > 2:
                raise TxnTextError(f"{where}: a third blank line (after the compares, success "
                                   f"and failure ops there is nothing more)")
            continue
        try:
            sections[part].append(_compare(line, where) if part == 0 else _op(line, where))
        except ValueError as exc:  # the helpers' own complaints
            raise TxnTextError(str(exc) if isinstance(exc, TxnTextError)
                               else f"{where}: {exc}") from None
    return sections[0], sections[1], sections[2]


def result_lines(response, ops) -> list[bytes]:
    """The response as etcdctl prints it: SUCCESS or FAILURE, a blank line, then per op: OK
    (put), the count deleted (del), key and value lines (get; the count if count only)."""
    lines = [b"SUCCESS" if response.succeeded else b"FAILURE", b""]
    for op, result in zip(ops, response.results):
        if op[0] == "put":
            lines.append(b"OK")
        elif op[0] == "delete":
            lines.append(str(result).encode())
        elif op[4] & RANGE_COUNT_ONLY:
            lines.append(str(result.count).encode())
        else:
            lines += kv_lines(result.kvs)
    return lines


def kv_lines(kvs) -> list[bytes]:
    """KeyValues as etcdctl prints them: the key on a line, then the value (unless keys only)."""
    lines = []
    for kv in kvs:
        lines += [kv.key] + ([] if kv.value is None else [kv.value])
    return lines


def kv_json(kv) -> dict:
    """A KeyValue as JSON output shows it (no "value" when keys only)."""
    return {"key": kv.key, "create_revision": kv.create_revision,
            "mod_revision": kv.mod_revision, "version": kv.version, "lease": kv.lease,
            **({} if kv.value is None else {"value": kv.value})}


def result_json(response, ops) -> dict:
    """The response as a JSON document: ``{"header": {"revision"}, "succeeded", "responses":
    [{"put": {}} | {"delete": {"deleted"}} | {"range": {"kvs", "count", "more"}}]}``."""
    return {"header": {"revision": response.revision}, "succeeded": response.succeeded,
            "responses": txn.results_json(ops, response.results, kv_json)}
