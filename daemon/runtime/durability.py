"""The durability gate: "persist, wait until durable, then send" coded once.

The protocol core (daemon.core.node) hands its driver a ``Ready``: records to persist, messages to
send at once (``send``), messages that vouch for persisted state (``send_after_persist``:
Promise, Accepted) and client replies. Safety rule 1 says nothing leaves that depends on a
record not yet durable. This module is the driver's half of that contract, for every driver
(the trio server, the simulator, the scenario tests' pump): pure bookkeeping, no I/O, no
clock, no trio.

    gate = DurabilityGate()
    handoff = gate.take(node.ready())
    # hand handoff.records (numbered handoff.seq) to the log writer,
    # send handoff.send now, deliver handoff.replies
    ...
    released = gate.durable(n)   # the writer made hand-offs 1..n durable
    # send ``released`` now, in order

The promises it keeps:

- Hand-offs are numbered 1, 2, ... in the order ``take`` sees records; ``take`` without records
  hands off nothing and keeps the number.
- A ``send_after_persist`` message is released only once every hand-off before it that holds a
  record other than a CommitRecord is reported durable. CommitRecords may lag (daemon.core.node:
  nothing sent depends on them, and a commit index lost in a crash is learned again), so a
  hand-off of CommitRecords alone holds nothing back.
- Released messages keep the core's order: a ready's ``send`` before its ``send_after_persist``;
  held messages before any later ones (one FIFO, never overtaken).
- ``durable(n)`` is monotone: a smaller n than one already reported changes nothing; an n
  beyond the last hand-off is an error (a writer cannot make durable what it was not given).

A gate belongs to one boot of one node: after a crash the driver starts a new gate and the
held messages are gone with the process, as they must be.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from daemon.core.messages import CommitRecord

__all__ = ["DurabilityGate", "Handoff"]


class Handoff(NamedTuple):
    """What a driver does with one ``Ready`` now."""

    seq: int  # the hand-off number of ``records``; 0 when there are none
    records: list  # to append to the log, in order (records, now and then a Snapshot or an
    # IncarnationChosen: the driver's writer acts on those too, in their place)
    send: list  # (destination id, message) that may leave now, in order
    replies: list  # client replies, deliverable now


class DurabilityGate:
    """Holds ``send_after_persist`` messages until the records before them are durable."""

    __slots__ = ("handed", "durable_seq", "_needed", "_held")

    def __init__(self) -> None:
        self.handed = 0  # hand-offs numbered so far
        self.durable_seq = 0  # the highest hand-off reported durable
        self._needed = 0  # the last hand-off holding a record that messages must wait for
        self._held: deque = deque()  # (hand-off a message waits for, [(dest, msg), ...])

    @property
    def held(self) -> int:
        """How many messages wait for durability."""
        return sum(len(batch) for _, batch in self._held)

    def take(self, ready) -> Handoff:
        """Number ``ready.persist`` and say what may be sent at once."""
        records = ready.persist
        seq = 0
        if records:
            self.handed += 1
            seq = self.handed
            for record in records:
                if type(record) is not CommitRecord:
                    self._needed = seq
                    break
        send = ready.send
        after = ready.send_after_persist
        if after:
            if not self._held and self.durable_seq >= self._needed:
                send = send + after if send else after
            else:
                self._held.append((self._needed, after))
        return Handoff(seq, records, send, ready.replies)

    def durable(self, seq: int) -> list:
        """Hand-offs 1..``seq`` are durable: the messages that may now be sent, in order."""
        if seq > self.handed:
            raise ValueError(f"hand-off {seq} reported durable, but only {self.handed} were "
                             "handed off")
        if seq > self.durable_seq:
            self.durable_seq = seq
        held = self._held
        if not held or held[0][0] > self.durable_seq:
            return []
        released: list = []
        durable = self.durable_seq
        while held and held[0][0] <= durable:
            released.extend(held.popleft()[1])
        return released
