"""Concurrent clients on a small key set, recording a history for tests.linearizability.

Each client is a ``daemon.client.client.Client`` of its own (its own connections and sessions) with
short timeouts, doing put, get and cas on a few keys. Every value written is unique
(``c<client>-<n>``), so a value read names the write that made it. Every operation is recorded
with its call and return times (``time.monotonic``, one clock for all) and its outcome:

- a definite answer: ``ret`` and ``result`` set;
- ``OutcomeUnknown`` (the write may or may not have been applied, now or later), or a write
  cut short by cancellation: ``ret=None``;
- a definite failure that did not apply (``Unavailable``/``NoLeader`` on a write that never
  reached a node; any failed read): left out of the history, counted.

``read_back`` runs after the faults are healed: every key is read (the reads join the history)
and ``lost_writes`` lists each key whose last acknowledged write is neither visible nor
superseded by a write that may have come after it.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

import trio

from daemon.client.client import (
    Client,
    NoLeader,
    OperationFailed,
    OutcomeUnknown,
    PaxosdError,
    Unavailable,
)
from tests.linearizability import Operation

__all__ = ["Workload", "lost_writes"]


@dataclass
class Workload:
    endpoints: list[str]
    seed: int = 0
    clients: int = 4
    keys: int = 6
    timeout: float = 1.5
    attempt_timeout: float = 0.4
    think: float = 0.0  # seconds between two operations of one client
    history: list[Operation] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def key_names(self) -> list[bytes]:
        return [b"k%d" % i for i in range(self.keys)]

    async def run(self, stop: trio.Event, deadline: float) -> None:
        """Run every client until ``stop`` is set (each then finishes the operation it is in,
        within its timeout) or trio's clock passes ``deadline`` (operations cut short are
        recorded with an unknown outcome)."""
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                for n in range(self.clients):
                    nursery.start_soon(self._client, n, random.Random(f"{self.seed}/{n}"), stop)

    async def _client(self, n: int, rng: random.Random, stop: trio.Event) -> None:
        keys = self.key_names()
        seen: dict[bytes, bytes | None] = {}
        written = 0
        async with Client(self.endpoints, timeout=self.timeout,
                          attempt_timeout=self.attempt_timeout) as client:
            while not stop.is_set():
                key = rng.choice(keys)
                r = rng.random()
                if r < 0.4:
                    await self._get(client, n, key, seen)
                else:
                    written += 1
                    value = b"c%d-%d" % (n, written)
                    if r < 0.75:
                        await self._write(client, n, "put", key, value, None)
                    else:
                        expected = seen.get(key) if rng.random() < 0.8 else None
                        if await self._write(client, n, "cas", key, value, expected):
                            seen[key] = value
                if self.think:
                    await trio.sleep(self.think * rng.random())

    async def _get(self, client: Client, n: int, key: bytes, seen: dict) -> None:
        call = time.monotonic()
        try:
            result = await client.get(key)
        except PaxosdError as exc:
            # A read changes nothing: a failed one is simply not in the history.
            self.counts[f"get failed: {type(exc).__name__}"] += 1
            return
        ret = time.monotonic()
        seen[key] = result
        self.counts["get ok"] += 1
        self.history.append(Operation(n, "get", key, None, None, call, ret, result))

    async def _write(self, client: Client, n: int, op: str, key: bytes, value: bytes,
                     expected: bytes | None) -> bool | None:
        call = time.monotonic()
        try:
            if op == "put":
                result = await client.put(key, value)
            else:
                result = await client.cas(key, expected, value)
        except trio.Cancelled:
            # Cut short: it may have reached a node and may yet be applied.
            self.counts[f"{op} cancelled"] += 1
            self.history.append(Operation(n, op, key, value, expected, call, None, None))
            raise
        except OutcomeUnknown:
            self.counts[f"{op} unknown"] += 1
            self.history.append(Operation(n, op, key, value, expected, call, None, None))
            return None
        except (Unavailable, NoLeader) as exc:
            # Never reached a node (the client says so): it was not applied.
            self.counts[f"{op} failed: {type(exc).__name__}"] += 1
            return None
        except OperationFailed as exc:
            # An "error" or "stale" answer is not expected for well-formed requests with fresh
            # sessions; count it and keep the write as possibly applied, to stay sound.
            self.counts[f"{op} refused: {exc}"[:120]] += 1
            self.history.append(Operation(n, op, key, value, expected, call, None, None))
            return None
        ret = time.monotonic()
        self.counts[f"{op} ok"] += 1
        self.history.append(Operation(n, op, key, value, expected, call, ret, result))
        return result

    async def read_back(self, timeout: float = 30.0) -> dict[bytes, bytes | None]:
        """Read every key once (retrying until ``timeout``); the reads join the history.

        KeyError-free: a key that could not be read in time is missing from the result.
        """
        final: dict[bytes, bytes | None] = {}
        deadline = trio.current_time() + timeout
        async with Client(self.endpoints, timeout=2.0, attempt_timeout=0.5) as client:
            for key in self.key_names():
                while key not in final and trio.current_time() < deadline:
                    call = time.monotonic()
                    try:
                        result = await client.get(key)
                    except PaxosdError:
                        await trio.sleep(0.1)
                        continue
                    final[key] = result
                    self.history.append(Operation(-1, "get", key, None, None, call,
                                                  time.monotonic(), result))
        return final

    def acknowledged_writes(self) -> int:
        return sum(1 for op in self.history if op.ret is not None and _writes(op))


def _writes(op: Operation) -> bool:
    """Whether an acknowledged operation changed the key (a put, or a cas that swapped)."""
    return op.op == "put" or (op.op == "cas" and op.result is True)


def lost_writes(history: list[Operation], final: dict[bytes, bytes | None]) -> list[str]:
    """For each key read back: its last acknowledged write must be what the read saw, or be
    superseded by a write (acknowledged or of unknown outcome) that does not precede it in
    real time. One line per key where neither holds."""
    problems = []
    for key, value in final.items():
        ops = [op for op in history if op.key == key and op.client >= 0]
        acked = [op for op in ops if op.ret is not None and _writes(op)]
        if not acked:
            continue
        last = max(acked, key=lambda op: op.ret)
        if value == last.value:
            continue
        later = [op for op in ops
                 if op is not last and op.op in ("put", "cas") and op.value == value
                 and (op.ret is None or op.ret >= last.call)
                 and not (op.ret is not None and op.op == "cas" and op.result is not True)]
        if not later:
            problems.append(f"key {key!r}: last acknowledged write {last} is lost: the value "
                            f"read back is {value!r}")
    return problems


def summarize_counts(counts: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
