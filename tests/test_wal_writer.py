"""The WAL writer (daemon.runtime.walwriter) on a real WAL with fsync: where each group is
synced (on the trio thread when idle with a small group, in a worker thread otherwise), that
the server hears of each durable hand-off at once and in order, and that an idle writer seals
the synced-length marker (a second fsync, of wal.synced) only once idle IDLE_SEAL_DELAY, so a
write that comes sooner (the next command, one at a time) does not wait behind that fsync."""

from __future__ import annotations

import logging
import threading

import pytest
import trio
import trio.testing

from daemon.core.messages import AcceptRecord, CommitRecord
from daemon.runtime.metrics import NodeMetrics
from daemon.runtime.storage import WAL
from daemon.runtime.walwriter import IDLE_SEAL_DELAY, INLINE_MAX_COMMANDS, WalWriter

BALLOT = (1 << 16) | 1


def accept(slot: int, commands: int = 1) -> AcceptRecord:
    batch = tuple((7, slot * 1000 + i, 1, b"k%d" % i, b"v", None) for i in range(commands))
    return AcceptRecord(ballot=BALLOT, first_slot=slot, batches=(batch,))


class Harness:
    """A WalWriter on a real WAL, recording which thread each fsync ran in and every
    durable report."""

    def __init__(self, tmp_path, *, busy: bool = False):
        self.wal, _ = WAL.open(tmp_path / "node", fsync=True)
        self.sync_threads: list[int] = []
        self.reports: list[tuple[int, int]] = []  # (writer.durable, wal.synced_bytes)
        self.busy = busy
        self.reported = trio.Event()
        real_sync = self.wal.sync

        def sync() -> float:
            self.sync_threads.append(threading.get_ident())
            return real_sync()

        self.wal.sync = sync
        self.writer = WalWriter(self.wal, fsync=True, metrics=NodeMetrics(64),
                                log=logging.getLogger("test"), write_special=None,
                                on_durable=self._on_durable, core_busy=lambda: self.busy)
        self.seq = 0

    def _on_durable(self) -> None:
        self.reports.append((self.writer.durable, self.wal.synced_bytes))
        self.reported.set()

    async def hand_and_wait(self, records: list) -> None:
        self.seq += 1
        self.reported = trio.Event()
        self.writer.hand(self.seq, records)
        await self.reported.wait()
        assert self.reports[-1][0] == self.seq


@pytest.mark.parametrize("case", ["idle small", "core busy", "large group"])
async def test_where_the_fsync_runs(tmp_path, case):
    h = Harness(tmp_path, busy=case == "core busy")
    commands = INLINE_MAX_COMMANDS + 1 if case == "large group" else 1
    trio_thread = threading.get_ident()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.writer.run)
            for slot in range(1, 4):
                await h.hand_and_wait([accept(slot, commands)])
            nursery.cancel_scope.cancel()
        inline = case == "idle small"
        assert [t == trio_thread for t in h.sync_threads] == [inline] * 3
        assert h.writer.inline_syncs == (3 if inline else 0)
        # Reported once per hand-off, in order, each only once its bytes were synced.
        assert [d for d, _ in h.reports] == [1, 2, 3]
        assert [s for _, s in h.reports] == sorted(s for _, s in h.reports)
        assert h.reports[-1][1] == h.wal.written_bytes
    finally:
        h.wal.close()


async def test_a_group_of_commit_records_is_reported_without_an_fsync(tmp_path):
    h = Harness(tmp_path)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.writer.run)
            await h.hand_and_wait([accept(1)])
            synced = h.wal.synced_bytes
            await h.hand_and_wait([CommitRecord(1)])
            assert len(h.sync_threads) == 1  # no fsync for the commit record
            assert h.wal.written_bytes > synced == h.wal.synced_bytes
            nursery.cancel_scope.cancel()
    finally:
        h.wal.close()


async def test_an_idle_wal_writer_seals_only_after_a_quiet_moment(tmp_path, mock_clock):
    h = Harness(tmp_path)
    wal = h.wal
    sealed: list[int] = []
    done = threading.Event()
    real_seal = wal.seal

    def seal() -> None:  # the writer's idle seal (WAL.sync's own seals do not come here)
        real_seal()
        sealed.append(wal.synced_bytes)
        done.set()

    wal.seal = seal
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.writer.run)
            for slot in range(1, 6):
                await h.hand_and_wait([accept(slot)])
                await trio.testing.wait_all_tasks_blocked()
            # The clock stands still: the writer is idle, but not yet IDLE_SEAL_DELAY long.
            # (Sealing at once, it would have sealed after every write; the wait only bounds
            # how long a seal that should not happen is given to show up.)
            assert not await trio.to_thread.run_sync(done.wait, 1.0)
            assert sealed == []
            assert wal.synced_bytes == wal.written_bytes  # every write was synced
            mock_clock.jump(IDLE_SEAL_DELAY)
            assert await trio.to_thread.run_sync(done.wait, 30.0)
            assert sealed == [wal.synced_bytes]  # one seal, covering everything synced
            nursery.cancel_scope.cancel()
    finally:
        wal.close()
