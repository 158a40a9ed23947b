"""The server's WAL writer and the synced-length marker: an idle writer seals the marker (a
second fsync, of wal.synced) only once it has been idle IDLE_SEAL_DELAY, so a write that comes
sooner (the next command, one at a time) does not wait behind that fsync."""

from __future__ import annotations

import threading

import trio
import trio.testing

from daemon.core.messages import AcceptRecord
from daemon.runtime.config import load_config
from daemon.runtime.server import EV_DURABLE, IDLE_SEAL_DELAY, Server
from daemon.runtime.storage import WAL
from tests.test_server import write_config


async def test_an_idle_wal_writer_seals_only_after_a_quiet_moment(tmp_path, mock_clock):
    config = load_config(write_config(tmp_path, fsync=True, members=1), node_id=1)
    server = Server(config)
    server.wal, _ = WAL.open(config.node_dir(1), fsync=True)
    wal = server.wal
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
            nursery.start_soon(server._wal_writer)
            for slot in range(1, 6):
                server._gate.handed += 1  # as Server._carry_out numbers a hand-off
                server._wal_pending.append(AcceptRecord(ballot=(1 << 16) | 1, first_slot=slot,
                                                        batches=()))
                server._wal_has_work.set()
                assert await server._inbox_recv.receive() == (EV_DURABLE, slot)
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
