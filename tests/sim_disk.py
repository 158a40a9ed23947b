"""The simulator's disks: a node's data directory and its WAL writer, modelled on the daemon's.

A ``SimDisk`` holds what a data directory holds, in the real encodings: the WAL as a list of
record payloads (``daemon.codec.records.encode_record``; recovery decodes them with
``decode_record``) and the snapshot file as (index, ``encode_image`` bytes). Appended payloads
stay in an unsynced tail until a sync; a crash keeps all of that tail, none of it, or a prefix
of it (a write cut part-way: recovery cuts a torn record, so what survives is a prefix).

A ``NodeStorage`` is one node's disk, durability gate (daemon.runtime.durability) and WAL
writer. The writer does what the daemon's (daemon.runtime.walwriter) does: it takes every record
handed over since its last write as one group; a group of CommitRecords alone is appended and reported durable at once (no
fsync: nothing sent waits on it); any other group is appended and synced, and at each Snapshot
in it: sync, write the snapshot file, then rotate the log to the snapshot's checkpoint. Sync,
snapshot write and rotation are separate steps (``Step``), each taking time, with a crash
possible between any two. Any of them may fail (a failed fsync): then the node must stop; the
simulator crashes it and it stays down until a restart, never retrying the write.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from daemon.core.node import DurableState
from daemon.runtime.durability import DurabilityGate, Handoff
from daemon.core.kv import decode_image, encode_image
from daemon.core.messages import (AcceptRecord, CommitRecord, IncarnationChosen, PromiseRecord,
                             Snapshot)
from daemon.codec.records import decode_record, encode_record

SYNC = "sync"
SNAPSHOT = "snapshot"
ROTATE = "rotate"
INCARNATION = "incarnation"  # write the data directory's incarnation file


class Step(NamedTuple):
    """One timed step of a write group: SYNC, SNAPSHOT (write the file), ROTATE or
    INCARNATION (write the incarnation file)."""

    kind: str
    records: list  # SYNC: records to append just before; ROTATE: the checkpoint
    item: Snapshot | IncarnationChosen | None = None


class SimDisk:
    """A node's data directory: the WAL's synced payloads and unsynced tail, the snapshot."""

    __slots__ = ("log", "tail", "snapshot", "incarnation")

    def __init__(self) -> None:
        self.log: list[bytes] = []  # payloads up to the last sync
        self.tail: list[bytes] = []  # appended since
        self.snapshot: tuple[int, bytes] | None = None  # (index, encoded image)
        self.incarnation: int | None = None  # the incarnation file (None: none written)

    def append(self, records: list) -> None:
        self.tail.extend(map(encode_record, records))

    def sync(self) -> None:
        if self.tail:
            self.log.extend(self.tail)
            self.tail = []

    def write_snapshot(self, snapshot: Snapshot) -> bytes:
        """Replace the snapshot file (whole or not at all); return the image's bytes."""
        blob = encode_image(snapshot.state)
        self.snapshot = (snapshot.index, blob)
        return blob

    def rotate(self, checkpoint) -> None:
        """The log becomes the checkpoint's records, synced (written aside, then renamed)."""
        self.log = [encode_record(r) for r in checkpoint]
        self.tail = []

    def crash(self, rng) -> None:
        """Power cut: the unsynced tail is lost, cut part-way or kept whole."""
        tail = self.tail
        if tail:
            keep = rng.choice((0, len(tail), rng.randint(0, len(tail))))
            self.log.extend(tail[:keep])
            self.tail = []

    def recover(self) -> DurableState:
        """What a restart finds: the snapshot file and the log, decoded again."""
        snapshot = None
        if self.snapshot is not None:
            index, blob = self.snapshot
            snapshot = Snapshot(index, decode_image(blob))
        return DurableState.from_records([decode_record(p) for p in self.log], snapshot)


class DiskFailure(Exception):
    """A sync, snapshot write or rotation failed: the node must stop."""


class NodeStorage:
    """One node's disk, durability gate and WAL writer (the gate and writer live one boot)."""

    def __init__(self) -> None:
        self.disk = SimDisk()
        self.durable_promise = 0  # the highest promise a completed write made durable
        self.reset()

    def reset(self) -> None:
        """A new boot: nothing handed over, nothing being written."""
        self.gate = DurabilityGate()
        self.pending: list = []  # handed over, not yet taken by the writer
        self.steps: deque = deque()  # the timed steps of the group being written
        self.target = 0  # the hand-off the group being written makes durable
        self.group_promise = 0
        self.snapshots: list[tuple[int, bytes]] = []  # snapshot files written, for the checks

    def hand_off(self, ready) -> Handoff:
        handoff = self.gate.take(ready)
        if handoff.seq:
            self.pending.extend(handoff.records)
        return handoff

    @property
    def writing(self) -> bool:
        return bool(self.steps)

    def start_group(self) -> list | None:
        """Take every pending record as one write. Returns the messages released when the
        group was durable at once (CommitRecords alone), else None: run ``steps`` then."""
        records, self.pending = self.pending, []
        self.target = self.gate.handed
        if all(type(r) is CommitRecord for r in records):
            self.disk.append(records)
            return self.gate.durable(self.target)
        promise = 0
        start = 0
        steps = self.steps
        for i, item in enumerate(records):
            if type(item) is PromiseRecord or type(item) is AcceptRecord:
                promise = max(promise, item.ballot)
            elif type(item) is Snapshot:
                steps.append(Step(SYNC, records[start:i]))
                steps.append(Step(SNAPSHOT, [], item))
                steps.append(Step(ROTATE, list(item.checkpoint)))
                start = i + 1
            elif type(item) is IncarnationChosen:
                steps.append(Step(SYNC, records[start:i]))
                steps.append(Step(INCARNATION, [], item))
                start = i + 1
        steps.append(Step(SYNC, records[start:]))
        self.group_promise = promise
        self._begin_step()
        return None

    def _begin_step(self) -> None:
        """The instant part of the next step: a sync's records are appended (unsynced) now."""
        step = self.steps[0]
        if step.kind == SYNC:
            self.disk.append(step.records)

    def do_step(self, fail: bool) -> list | None:
        """Carry out the next step (``fail``: it fails). Returns the released messages once
        the group is durable, else None. Raises DiskFailure."""
        step = self.steps.popleft()
        disk = self.disk
        if fail:
            self.steps.clear()
            raise DiskFailure(f"{step.kind} failed")
        if step.kind == SYNC:
            disk.sync()
        elif step.kind == SNAPSHOT:
            self.snapshots.append((step.item.index, disk.write_snapshot(step.item)))
        elif step.kind == INCARNATION:
            disk.incarnation = step.item.incarnation  # written aside, fsynced, renamed
        else:
            disk.rotate(step.records)
        if self.steps:
            self._begin_step()
            return None
        self.durable_promise = max(self.durable_promise, self.group_promise)
        return self.gate.durable(self.target)

    def crash(self, rng) -> None:
        self.disk.crash(rng)
        self.reset()

    def wipe(self) -> None:
        """The data directory is lost."""
        self.disk = SimDisk()
        self.durable_promise = 0
        self.reset()
