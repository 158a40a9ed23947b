"""The WAL writer: the one task that appends what the core hands over and makes it durable.

The core hands records over in order, one numbered hand-off per ``Ready`` with records
(``hand``; the numbers are the durability gate's). The writer takes everything handed over since
its last write as one group (a group commit), appends it, fsyncs, records the last hand-off
now durable (``durable``) and calls ``on_durable`` at once, from its own task: the server sends
what the gate releases (a follower's Accepted) without a hop through the core's inbox.

Where the write and the fsync run:

- In a worker thread while the node is busy, so the core goes on while the disk works.
- On the trio thread itself when the writer had been waiting for work, the core has nothing
  waiting and the group is small (``INLINE_MAX_COMMANDS``): one command at a time, or the
  first after a pause. Then the loop would be idle during the fsync anyway, and the two thread
  hand-offs (to the worker and back: ~100-280 us each on a small VM, more than the fsync) were
  what the command waited for. The messages the core just queued are sent first.
- Inline when fsync is off (there is nothing to wait for).

A group of CommitRecords alone is appended without an fsync: nothing sent waits on a commit
index, and one lost in a crash is learned again. A group holding a Snapshot or an
IncarnationChosen goes to ``write_special`` in a worker thread (the server's: snapshot files,
rotation, the incarnation file).

Once idle for ``IDLE_SEAL_DELAY`` the writer seals the WAL's synced-length marker (a second
fsync, of a small file) so that damage to the last synced group is reported on restart; not at
once, or the next command's write would wait behind it.
"""

from __future__ import annotations

from typing import Callable

import trio

from daemon.core.messages import AcceptRecord, CommitRecord, IncarnationChosen, Snapshot
from daemon.runtime.storage import WAL
from daemon.runtime.timeline import ENABLED as TIMELINE, mark

__all__ = ["IDLE_SEAL_DELAY", "INLINE_MAX_COMMANDS", "SLOW_FSYNC", "WalWriter"]

# Seconds the writer stays idle before it seals the synced-length marker.
IDLE_SEAL_DELAY = 0.010
# The most commands a group may hold to be written and synced on the trio thread (see above).
INLINE_MAX_COMMANDS = 64
SLOW_FSYNC = 0.100  # seconds; a slower WAL sync is logged
SLOW_FSYNC_LOG_INTERVAL = 10.0  # seconds; slow syncs in between are counted, said in one line


class WalWriter:
    """One node's WAL writer (run ``run`` as a task of the node's nursery)."""

    def __init__(self, wal: WAL, *, fsync: bool, metrics, log,
                 write_special: Callable[[list], float], on_durable: Callable[[], None],
                 core_busy: Callable[[], bool]) -> None:
        self.wal = wal
        self.fsync = fsync
        self.metrics = metrics
        self.log = log
        self.write_special = write_special  # a group with a Snapshot or IncarnationChosen
        self.on_durable = on_durable  # called (in the writer's task) after ``durable`` grows
        self.core_busy = core_busy  # True: the core has work waiting (keep the fsync off-thread)
        self.pending: list = []  # records handed over, not yet taken by a write
        self.handed = 0  # the last hand-off number given to ``hand``
        self.durable = 0  # the last hand-off made durable
        self.inline_syncs = 0  # groups synced on the trio thread (the rest in a worker)
        self._has_work = trio.Event()
        self._slow_fsyncs = 0  # slow syncs not yet logged
        self._slow_fsync_logged = -SLOW_FSYNC_LOG_INTERVAL

    def hand(self, seq: int, records: list) -> None:
        """Queue hand-off ``seq`` (the gate's number) for the next write."""
        self.pending.extend(records)
        self.handed = seq
        self._has_work.set()

    async def run(self) -> None:
        """Write, sync and report, group after group, until cancelled."""
        idle = True  # nothing was left waiting when the last write finished
        while True:
            if not self.pending:
                await self._has_work.wait()
            if TIMELINE:
                mark("wal_wake")
            self._has_work = trio.Event()
            if not self.pending:
                continue
            # Whatever the core hands over while this write runs waits for the next one.
            records, self.pending = self.pending, []
            target = self.handed
            before = self.wal.written_bytes
            seconds = await self._write(records, idle)
            after = self.wal.written_bytes
            # A snapshot starts the log afresh: then all of the new log was written.
            self.metrics.wal_bytes.inc(after - before if after >= before else after)
            if self.fsync and seconds is not None:
                self.metrics.fsync.observe(seconds)
                if seconds > SLOW_FSYNC:
                    self._slow_fsync(seconds, len(records))
            self.durable = target
            self.on_durable()
            idle = not self.pending
            if self.fsync and idle:
                await self._seal_when_idle()

    async def _write(self, records: list, idle: bool) -> float | None:
        """Append and sync one group where it costs the least (see the module); the seconds
        the fsync took, None when there was none."""
        wal = self.wal
        if any(type(r) is Snapshot or type(r) is IncarnationChosen for r in records):
            return await trio.to_thread.run_sync(self.write_special, records)
        if not self.fsync:
            return append_and_sync(wal, records)
        if all(type(r) is CommitRecord for r in records):
            # Rides on the next fsync instead of delaying the next Accept's.
            wal.append(records)
            return None
        if idle and not self.core_busy() and fits_inline(records):
            # Let the tasks the core just woke (its senders) run first: the followers' writes
            # then overlap this one. Shielded: the records are taken, they must be written.
            await trio.lowlevel.cancel_shielded_checkpoint()
            self.inline_syncs += 1
            seconds = append_and_sync(wal, records)
        else:
            seconds = await trio.to_thread.run_sync(append_and_sync, wal, records)
        if TIMELINE:
            mark("wal_back")
        return seconds

    async def _seal_when_idle(self) -> None:
        """Seal the synced-length marker once nothing was handed over for IDLE_SEAL_DELAY.

        Sealed at once, this second fsync held the next write behind it whenever the next
        command came within it (one command at a time: nearly always). A writer that is never
        idle that long is sealed by WAL.sync, at least every storage.MARKER_SEAL_INTERVAL."""
        with trio.move_on_after(IDLE_SEAL_DELAY):
            await self._has_work.wait()
        if not self.pending:
            if TIMELINE:
                mark("seal_start")
            await trio.to_thread.run_sync(self.wal.seal)
            if TIMELINE:
                mark("seal_done")

    def _slow_fsync(self, seconds: float, records: int) -> None:
        """Log a slow fsync, at most once per SLOW_FSYNC_LOG_INTERVAL (a slow disk is slow for
        every group commit: one line says it, with how many were slow since the last line)."""
        self._slow_fsyncs += 1
        now = trio.current_time()
        if now - self._slow_fsync_logged < SLOW_FSYNC_LOG_INTERVAL:
            return
        since = (f"; {self._slow_fsyncs - 1} more slower than {SLOW_FSYNC * 1000:.0f} ms since "
                 f"the last report" if self._slow_fsyncs > 1 else "")
        self.log.warning("slow WAL fsync: %.0f ms for %d records%s", seconds * 1000, records,
                         since)
        self._slow_fsyncs = 0
        self._slow_fsync_logged = now


def fits_inline(records: list) -> bool:
    """Whether the AcceptRecords of ``records`` carry at most INLINE_MAX_COMMANDS client
    commands (counted per batch, and no further than the limit: a large group is told at
    its first batches)."""
    n = 0
    for r in records:
        if type(r) is AcceptRecord:
            for batch in r.batches:
                n += len(batch)
                if n > INLINE_MAX_COMMANDS:
                    return False
    return True


def append_and_sync(wal: WAL, records: list) -> float:
    """Append ``records`` as one group and fsync; the seconds the fsync took."""
    if TIMELINE:
        mark("wal_thread")
        wal.append(records)
        mark("wal_written")
        seconds = wal.sync()
        mark("wal_synced")
        return seconds
    wal.append(records)
    return wal.sync()
