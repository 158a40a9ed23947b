"""Linearizability checker for key-value histories recorded by the paxosd tests.

A *history* is a list of :class:`Operation` records, one per client request:
what was asked (``op``, ``key``, ``value``, ``expected``), when the client
invoked it (``call``), when the client saw the reply (``ret``) and what the
reply was (``result``).  :func:`check` decides whether the history is
*linearizable* with respect to a sequential key-value store: whether every
operation can be assigned a single instant inside its ``[call, ret]`` interval
such that replaying the operations in the order of those instants against the
sequential model reproduces every observed result.

Sequential model (one register per key, initially absent)
---------------------------------------------------------
``put(key, value)``
    sets the value; its output carries no information (any ``result`` is
    accepted, conventionally ``None``).
``get(key)``
    returns the current value, or ``None`` if the key is absent.
``delete(key)``
    removes the key; returns ``True`` iff it existed.
``cas(key, expected, value)``
    if the current value equals ``expected`` (``None`` meaning "absent"),
    sets ``value`` and returns ``True``; otherwise changes nothing and returns
    ``False``.

Timing rules
------------
* Operation ``A`` *precedes* ``B`` (so ``A`` must be linearized before ``B``)
  only if ``A.ret < B.call`` strictly.  Operations whose intervals merely
  touch (``A.ret == B.call``) are concurrent.
* ``ret=None`` means the outcome is unknown (the client timed out, the
  connection dropped, ...): the operation may or may not have taken effect,
  at any instant after ``call``.  Its ``result`` is ignored and its return
  time is taken to be ``+inf``.  Because such an operation can always be
  placed after everything else (where it affects nothing observable), it is
  *optional*: the checker may linearize it wherever that explains later
  observations, or not at all.  Unknown-outcome ``get`` operations therefore
  constrain nothing and are dropped, as is every unknown-outcome operation
  invoked after the last known reply on its key.

Algorithm
---------
Linearizability is *local* (Herlihy & Wing's P-compositionality): a history
is linearizable iff the sub-history of each key is.  The history is therefore
partitioned by key, and each key's sub-history is checked with the Wing & Gong
search as refined by Lowe and implemented by Porcupine
(https://github.com/anishathalye/porcupine):

* the call and return events are sorted by time (calls before returns at
  equal times) into a doubly linked list;
* a depth-first search walks the list from its head.  At a call event whose
  model step reproduces the observed result, the operation is *linearized*:
  pushed on a stack together with the previous model state, and its call and
  return events are unlinked ("lifted") from the list; the walk restarts at
  the head.  Reaching a return event means some pending operation must
  already have been linearized, so the search backtracks: it pops the last
  linearized operation, restores the state, relinks its events and resumes
  at the event following its call;
* every (set of linearized operations, model state) configuration entered is
  memoised (the set is a Python ``int`` used as a bitset); a configuration
  already explored is never entered again, which is Lowe's key pruning.

The search is iterative (no recursion limit), deterministic (no dependence on
hash ordering or wall-clock, except for the optional ``timeout``), and for
linearizable histories with modest concurrency runs in roughly linear time.

When a key is not linearizable, :attr:`CheckResult.info` describes the
longest linearizable prefix found by the search, the register value after it,
and the operations that could have come next but none of which can be placed
there (with what the model would have returned).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

__all__ = ["Operation", "CheckResult", "check", "OPS"]

#: The operation kinds understood by the model.
OPS = ("put", "get", "delete", "cas")

_PUT, _GET, _DELETE, _CAS = range(4)
_KIND = {name: code for code, name in enumerate(OPS)}

# How many search steps between two looks at the clock when a timeout is set.
_CLOCK_EVERY = 2048
# Limits on the size of failure explanations.
_SHOW_PREFIX = 15
_SHOW_CANDIDATES = 20


@dataclass(frozen=True)
class Operation:
    """One client request and its (possibly unknown) outcome.

    ``value`` is the value written by ``put`` and the new value of ``cas``;
    ``expected`` is the value ``cas`` requires (``None`` = key absent).
    ``call`` and ``ret`` are invocation and response times on a common clock
    (any comparable numbers); ``ret=None`` means the outcome is unknown.
    ``result`` is the observed output: ``get`` -> ``bytes`` or ``None``,
    ``put`` -> ``None``, ``delete`` -> ``bool`` (existed),
    ``cas`` -> ``bool`` (swapped); it is ignored when ``ret`` is ``None``.
    """

    client: int
    op: str
    key: bytes
    value: bytes | None
    expected: bytes | None
    call: float
    ret: float | None
    result: object = None

    def __str__(self) -> str:
        if self.op == "put":
            args = f"{self.key!r}, {self.value!r}"
        elif self.op == "cas":
            args = f"{self.key!r}, {self.expected!r} -> {self.value!r}"
        else:
            args = f"{self.key!r}"
        if self.ret is None:
            return f"client {self.client}: {self.op}({args}) -> ? (outcome unknown) @ [{self.call}, ...)"
        return f"client {self.client}: {self.op}({args}) -> {self.result!r} @ [{self.call}, {self.ret}]"


@dataclass(frozen=True)
class CheckResult:
    """Verdict of :func:`check`.

    ``ok`` is ``True`` (linearizable), ``False`` (not linearizable) or
    ``None`` (the timeout expired before a verdict).  ``key`` is the first key
    found not linearizable (``None`` when ``ok`` is ``True``; the key being
    searched when the timeout expired if ``ok`` is ``None``).  ``info`` is a
    human-readable explanation.
    """

    ok: bool | None
    key: bytes | None
    info: str


def check(history: list[Operation], timeout: float | None = None) -> CheckResult:
    """Check ``history`` for linearizability against the key-value model.

    Keys are checked one at a time, in order of first appearance in
    ``history``; the first non-linearizable key stops the check.  ``timeout``
    (seconds, for the whole call) makes the checker give up with
    ``ok=None`` instead of searching indefinitely.  Malformed operations
    raise :class:`ValueError`.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    by_key: dict[object, list[Operation]] = {}
    for op in history:
        _validate(op)
        by_key.setdefault(op.key, []).append(op)

    for key, ops in by_key.items():
        verdict, detail = _check_key(ops, deadline)
        if verdict is None:
            return CheckResult(
                None,
                key,
                f"gave up after the {timeout}s timeout while checking key {key!r} "
                f"({len(ops)} operations); {detail}",
            )
        if not verdict:
            return CheckResult(False, key, f"key {key!r} is not linearizable ({len(ops)} operations).\n{detail}")
    n_ops = sum(len(ops) for ops in by_key.values())
    return CheckResult(True, None, f"linearizable: {n_ops} operations on {len(by_key)} keys")


def _validate(op: Operation) -> None:
    if op.op not in _KIND:
        raise ValueError(f"unknown operation kind {op.op!r} (expected one of {OPS}): {op}")
    if op.call is None or (isinstance(op.call, float) and math.isnan(op.call)):
        raise ValueError(f"operation has no call time: {op}")
    if op.ret is not None and op.ret < op.call:
        raise ValueError(f"operation returns before it is called: {op}")
    if op.op in ("put", "cas") and op.value is None:
        raise ValueError(f"{op.op} needs a value: {op}")


def _as_bytes(v: object) -> object:
    # bytearray/memoryview values are unhashable; the model state must be hashable.
    if v is None or isinstance(v, bytes):
        return v
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    return v


def _check_key(history: list[Operation], deadline: float | None) -> tuple[bool | None, str]:
    """Search one key's sub-history. Returns (verdict, explanation)."""
    # Drop operations that cannot matter: unknown-outcome gets (no effect) and
    # unknown-outcome operations called after the last known reply (they can
    # all be placed after every known operation).
    last_known_ret = max((o.ret for o in history if o.ret is not None), default=None)
    ops = [
        o
        for o in history
        if o.ret is not None or (o.op != "get" and last_known_ret is not None and o.call <= last_known_ret)
    ]
    n = len(ops)
    if n == 0:
        return True, ""

    kind = [_KIND[o.op] for o in ops]
    val = [_as_bytes(o.value) for o in ops]
    exp = [_as_bytes(o.expected) for o in ops]
    res = [_as_bytes(o.result) for o in ops]
    known = [o.ret is not None for o in ops]

    # Doubly linked list of events: node 2*i is the call of ops[i], node
    # 2*i + 1 its return; `head` and `tail` are sentinels.
    events = []
    for i, o in enumerate(ops):
        events.append((o.call, 0, i))
        events.append((math.inf if o.ret is None else o.ret, 1, i))
    events.sort()  # by time, calls before returns at equal times, then by index
    head, tail = 2 * n, 2 * n + 1
    nxt = [0] * (2 * n + 2)
    prv = [0] * (2 * n + 2)
    prev_node = head
    for _, is_ret, i in events:
        node = 2 * i + is_ret
        nxt[prev_node] = node
        prv[node] = prev_node
        prev_node = node
    nxt[prev_node] = tail
    prv[tail] = prev_node

    state: object = None  # the register starts absent
    linearized = 0  # bitset of linearized operation indices
    remaining_known = sum(known)
    stack: list[tuple[int, object]] = []  # (operation index, state before it)
    cache: set[tuple[int, object]] = set()
    best: list[int] = []  # longest linearizable prefix seen so far
    best_state: object = None
    steps = 0
    entry = nxt[head]

    while remaining_known:
        steps += 1
        if deadline is not None and steps % _CLOCK_EVERY == 0 and time.monotonic() > deadline:
            return None, f"longest linearizable prefix so far: {max(len(best), len(stack))} of {n} operations"
        i = entry >> 1
        if not entry & 1:
            # A call event: try to linearize ops[i] now.
            k = kind[i]
            if k == _GET:
                new_state = state
                ok = state == res[i] or not known[i]
            elif k == _PUT:
                new_state = val[i]
                ok = True
            elif k == _DELETE:
                new_state = None
                ok = not known[i] or (state is not None) == res[i]
            else:  # _CAS
                swapped = state == exp[i]
                new_state = val[i] if swapped else state
                ok = not known[i] or swapped == res[i]
            if ok:
                new_linearized = linearized | (1 << i)
                config = (new_linearized, new_state)
                if config not in cache:
                    cache.add(config)
                    stack.append((i, state))
                    state = new_state
                    linearized = new_linearized
                    if known[i]:
                        remaining_known -= 1
                    # lift: unlink the call and the return of ops[i]
                    c, r = 2 * i, 2 * i + 1
                    nxt[prv[c]] = nxt[c]
                    prv[nxt[c]] = prv[c]
                    nxt[prv[r]] = nxt[r]
                    prv[nxt[r]] = prv[r]
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
        else:
            # A return event: the operation it ends should already have been
            # linearized. Backtrack.
            if len(stack) > len(best):
                best = [j for j, _ in stack]
                best_state = state
            if not stack:
                return False, _explain(ops, best, best_state)
            i, state = stack.pop()
            linearized &= ~(1 << i)
            if known[i]:
                remaining_known += 1
            # unlift: relink the return, then the call, of ops[i]
            c, r = 2 * i, 2 * i + 1
            prv[nxt[r]] = r
            nxt[prv[r]] = r
            prv[nxt[c]] = c
            nxt[prv[c]] = c
            entry = nxt[c]
    return True, ""


def _model_output(op: Operation, state: object) -> object:
    """What the sequential model would return for ``op`` in ``state``."""
    if op.op == "get":
        return state
    if op.op == "delete":
        return state is not None
    if op.op == "cas":
        return state == _as_bytes(op.expected)
    return None


def _explain(ops: list[Operation], best: list[int], best_state: object) -> str:
    """Describe the longest linearizable prefix and what could not follow it."""
    lines = [
        f"Longest linearizable prefix: {len(best)} of {len(ops)} operations, "
        f"after which the value is {best_state!r}:"
    ]
    start = max(0, len(best) - _SHOW_PREFIX)
    if start:
        lines.append(f"  ... ({start} earlier operations)")
    for pos in range(start, len(best)):
        lines.append(f"  {pos + 1:4d}. {ops[best[pos]]}")
    if not best:
        lines.append("  (none)")

    placed = set(best)
    rest = [j for j in range(len(ops)) if j not in placed]
    # Candidates to come next: not preceded by any other unplaced operation.
    first_ret = min((ops[j].ret for j in rest if ops[j].ret is not None), default=math.inf)
    candidates = [j for j in rest if ops[j].call <= first_ret]
    lines.append("None of these operations can be placed next:")
    for j in candidates[:_SHOW_CANDIDATES]:
        op = ops[j]
        if op.ret is None:
            note = "(outcome unknown: placing it here leads to a dead end)"
        else:
            note = f"(the model would return {_model_output(op, best_state)!r})"
        lines.append(f"  {op}  {note}")
    if len(candidates) > _SHOW_CANDIDATES:
        lines.append(f"  ... ({len(candidates) - _SHOW_CANDIDATES} more)")
    if len(rest) > len(candidates):
        lines.append(f"({len(rest) - len(candidates)} later operations not placed)")
    return "\n".join(lines)
