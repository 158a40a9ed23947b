"""The leader's side of ``paxosd snapshot save``: the client request "snapshot" (its shape is in
daemon.codec.wire's docstring).

A new snapshot starts as a linearizable read: the client port hands the core a read of the
membership key whose reply tag is a ``SnapshotSink`` instead of the connection. The core
answers it like any read (daemon.core.reads: only at the leader, after a quorum confirmed
its ballot in a round begun after the request arrived, once the state machine applied the
read index), and the server pushes that reply into the sink, in the core loop. The sink then
takes the state machine as it is at that moment: every slot applied is chosen, and every
write acknowledged before the request arrived is applied, so the image is a linearizable
point. It is encoded once (daemon.codec.backup's payload), in a worker thread so that a big
store does not hold up the core loop, and kept under a random id for the chunks that follow,
which any request on this node may fetch by offset. The core is unchanged: nothing here is
new to it.

At most ``MAX_KEPT`` snapshots are kept, each for at most ``KEEP_SECONDS`` after it was
taken; a chunk is at most ``chunk_bytes`` (a quarter of the frame limit, at most
CHUNK_BYTES), so a reply always fits in a frame.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable

import trio

from daemon.codec.backup import encode_payload
from daemon.codec.wire import SNAPSHOT_ID_BYTES
from daemon.core.kv import encode_image
from daemon.core.messages import BUSY, ERROR, OK

__all__ = ["SnapshotService", "SnapshotSink"]

CHUNK_BYTES = 1 << 20
MAX_KEPT = 2
MAX_PENDING = 2  # snapshots taken and waiting to be encoded; more are answered "busy"
KEEP_SECONDS = 300.0


class SnapshotSink:
    """The tag's connection for a new snapshot's read: ``push`` gets the read's reply."""

    __slots__ = ("conn", "service")

    def __init__(self, conn, service: SnapshotService) -> None:
        self.conn = conn
        self.service = service

    @property
    def closed(self) -> bool:
        return self.conn.closed

    def push(self, reply: list) -> None:
        """The read was answered: on "ok", take the snapshot now (its first chunk follows once
        it is encoded); anything else (not_leader) goes to the client as it is."""
        req_id, status, _result, leader, _revision = reply
        if status != OK:
            self.conn.push(reply)
            return
        self.service.taken(self.conn, req_id, leader)


class SnapshotService:
    """The snapshots one node keeps for the clients fetching them.

    ``take()`` gives ``(applied index, state machine image, members)`` of the node now (the
    server's core loop calls it, through the sink)."""

    def __init__(self, cluster: str, take: Callable[[], tuple], max_frame_bytes: int) -> None:
        self.cluster = cluster
        self._take = take
        self.chunk_bytes = max(1, min(CHUNK_BYTES, max_frame_bytes // 4))
        self._kept: OrderedDict[bytes, tuple[bytes, int, float]] = OrderedDict()
        self._pending_send, self._pending_recv = trio.open_memory_channel(MAX_PENDING)

    def sink(self, conn) -> SnapshotSink:
        return SnapshotSink(conn, self)

    def taken(self, conn, req_id: int, leader: str | None) -> None:
        """The read of a new snapshot was answered at this leader: copy the state machine now
        (dict copies, at C speed, in the core loop) and hand it to ``run`` to encode; "busy"
        if MAX_PENDING are being encoded already."""
        index, image, members = self._take()
        try:
            self._pending_send.send_nowait((conn, req_id, leader, index, image, members))
        except trio.WouldBlock:
            conn.push([req_id, BUSY, None, leader, None])

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Encode each snapshot taken (in a worker thread, off the core loop: a big store
        takes a while), keep it, and send its first chunk."""
        task_status.started()
        async for conn, req_id, leader, index, image, members in self._pending_recv:
            blob = await trio.to_thread.run_sync(
                lambda: encode_payload(self.cluster, index, encode_image(image), members))
            if not conn.closed:
                conn.push_alone(self.keep(req_id, blob, image[2], leader))

    def keep(self, req_id: int, blob: bytes, revision: int, leader: str | None) -> list:
        """Keep the encoded snapshot ``blob`` (at ``revision``) under a new id, forgetting
        the oldest and those too old, and return the reply carrying its first chunk."""
        now = trio.current_time()
        for old, (_blob, _rev, taken) in list(self._kept.items()):
            if now - taken > KEEP_SECONDS:
                del self._kept[old]
        while len(self._kept) >= MAX_KEPT:
            self._kept.popitem(last=False)
        snapshot_id = os.urandom(SNAPSHOT_ID_BYTES)
        self._kept[snapshot_id] = (blob, revision, now)
        return self.chunk(req_id, snapshot_id, 0, leader)

    def chunk(self, req_id: int, snapshot_id: bytes, offset: int, leader: str | None) -> list:
        """The reply carrying the chunk of snapshot ``snapshot_id`` from ``offset``, or an
        "error" reply naming why there is none."""
        kept = self._kept.get(snapshot_id)
        if kept is None:
            return [req_id, ERROR, f"snapshot {snapshot_id.hex()} is not kept on this node (it "
                    f"restarted, or the snapshot is older than {KEEP_SECONDS:g} s or was "
                    f"replaced by newer ones): start again", leader, None]
        blob, revision, _taken = kept
        if offset >= len(blob):
            return [req_id, ERROR, f"snapshot offset {offset} is at or past its end "
                    f"({len(blob)} bytes)", leader, None]
        data = blob[offset:offset + self.chunk_bytes]
        return [req_id, OK, [snapshot_id, len(blob), offset, data], leader, revision]
