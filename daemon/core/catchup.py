"""Catch-up: a node missing chosen slots fetches them from a member that has them.

The learner asks with a CatchupRequest (rate-limited: one ask per heartbeat interval, unless
an answer came back); the member answers with a Catchup holding a run of chosen slots, or, if
the learner is behind its oldest retained slot, with the next SnapshotChunk of its snapshot.
A snapshot arrives one chunk per round trip, from one member at a time, and is installed in
full or not at all.

State kept here: the snapshot being received (``incoming``), when the last ask went out, and
the encoded snapshot this node serves (encoded lazily, once per snapshot index).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastpath import BALLOT_CHOSEN

from daemon.core.kv import KVStore, decode_image, encode_image
from daemon.core.messages import Catchup, CatchupRequest, ChosenRecord, Snapshot, SnapshotChunk
from daemon.core.pipeline import runs
from daemon.core.roles import LEADER, ProtocolError


@dataclass(slots=True)
class IncomingSnapshot:
    """A snapshot arriving chunk by chunk."""

    index: int  # the slot it covers up to
    total: int  # its encoded length
    buf: bytearray  # the chunks received so far, in order
    sender: int  # the member it comes from
    last_chunk: float  # when the last chunk arrived (node time)


class CatchupExchange:
    """Asking for, serving and receiving chosen slots and snapshots, for one node."""

    __slots__ = ("node", "incoming", "asked_at", "blob", "blob_index")

    def __init__(self, node) -> None:
        self.node = node
        self.incoming: IncomingSnapshot | None = None
        self.asked_at = -1.0  # when the last CatchupRequest went out; -1: ask at once
        self.blob: bytes | None = None  # node.snapshot_image encoded, for SnapshotChunks
        self.blob_index = -1  # the snapshot index ``blob`` is of

    def ask(self, source: int) -> None:
        """Ask ``source`` for what this node misses, at most once per heartbeat interval
        (an answer lifts the limit); while a snapshot arrives, ask only the member sending it.

        Promises: nothing is asked of this node itself; no second stream of chunks is opened.
        """
        node = self.node
        incoming = self.incoming
        if incoming is not None and node.now - incoming.last_chunk < 2 * node.config.election_timeout[1]:
            source = incoming.sender  # one snapshot, from one member, at a time
        if source == node.id:
            return
        if node.now - self.asked_at < node.config.heartbeat_interval:
            return
        self.asked_at = node.now
        node._out.send.append((source, self.request()))

    def request(self) -> CatchupRequest:
        """The ask: slots from the one after the commit index, and where a snapshot being
        received stands (so the member sends its next chunk)."""
        node = self.node
        incoming = self.incoming
        if incoming is not None:
            return CatchupRequest(node.id, node.commit_index + 1, incoming.index, len(incoming.buf))
        return CatchupRequest(node.id, node.commit_index + 1)

    def on_request(self, msg: CatchupRequest) -> None:
        """Serve a learner: up to catchup_slots chosen slots from ``msg.from_slot`` in one
        Catchup (cut to fit the message limit), or a snapshot chunk if it is behind the oldest
        slot this node retains.

        Promises: only chosen slots (up to the commit index) are sent, with the values this
        node learned; a request for nothing chosen here gets no answer.
        """
        node = self.node
        first = msg.from_slot
        if first > node.commit_index or first < 1:
            return
        if first < node.log_start:
            self.send_snapshot_chunk(msg)
            return
        last = min(node.commit_index, first + node.config.catchup_slots - 1)
        log = node.log
        start, batches = next(runs(first, last, lambda s: log[s][1], node.config.max_message_bytes))
        node._out.send.append((msg.sender, Catchup(node.id, start, batches, node.commit_index)))

    def on_catchup(self, msg: Catchup) -> None:
        """Learn the chosen slots of ``msg`` that extend this node's chosen prefix, and ask
        for more if the sender knows more.

        Promises: a slot already known chosen is never rewritten; the commit index moves only
        forward and only over slots the log now holds. A leader learns nothing here (its commit
        index moves only with its quorum tracker).
        """
        self.asked_at = -1.0
        node = self.node
        if node.role == LEADER:
            return
        first = msg.first_slot
        skip = node.commit_index + 1 - first
        if skip < 0 or skip >= len(msg.batches):
            return  # not contiguous with what we know, or nothing new
        run = msg.batches[skip:]
        start = first + skip
        if start != node.commit_index + 1:
            raise ProtocolError(f"node {node.id}: a Catchup would rewrite chosen slot {start}")
        log = node.log
        for i, batch in enumerate(run):
            log[start + i] = (BALLOT_CHOSEN, batch)
        last = start + len(run) - 1
        if last > node.max_slot:
            node.max_slot = last
        node._out.persist.append(ChosenRecord(start, run))
        node._set_commit(last)
        if msg.commit_index > node.commit_index:
            self.ask(msg.sender)

    def send_snapshot_chunk(self, msg: CatchupRequest) -> None:
        """The learner is behind our oldest retained slot: send it the snapshot, one chunk per
        request, so catch-up takes one chunk per round trip and never floods the link.

        Promises: a learner that asks about another snapshot than ours starts ours from 0.
        """
        node = self.node
        if self.blob_index != node.snapshot_index:
            self.blob, self.blob_index = encode_image(node.snapshot_image), node.snapshot_index
        blob = self.blob
        offset = msg.snapshot_offset if msg.snapshot_index == node.snapshot_index else 0
        if offset > len(blob):
            offset = 0
        data = blob[offset:offset + node.config.snapshot_chunk_bytes]
        node._out.send.append(
            (msg.sender, SnapshotChunk(node.id, node.snapshot_index, offset, len(blob), data)))

    def on_snapshot_chunk(self, msg: SnapshotChunk) -> None:
        """Take the next chunk of the snapshot being received; once it is whole, install it
        and ask for the slots after it.

        Promises: chunks are taken only in order, only from the member the snapshot comes
        from (unless it went quiet), and only for a snapshot beyond the commit index; a
        snapshot is installed whole or not at all.
        """
        node = self.node
        if node.role == LEADER or msg.index <= node.commit_index:
            return
        incoming = self.incoming
        if incoming is None or incoming.index != msg.index or incoming.total != msg.total:
            # Only the start of a snapshot begins one, and only from the member we are fetching
            # from (it took a newer one) unless that member has gone quiet.
            if msg.offset != 0 or (
                    incoming is not None and msg.sender != incoming.sender
                    and node.now - incoming.last_chunk < 2 * node.config.election_timeout[1]):
                return  # the next (rate-limited) ask mends it
            incoming = self.incoming = IncomingSnapshot(msg.index, msg.total, bytearray(),
                                                        msg.sender, node.now)
        buf = incoming.buf
        if msg.offset != len(buf):
            # A duplicate, or one that overtook another. Asking again here would start a
            # second stream of chunks; the next rate-limited ask mends it instead.
            return
        self.asked_at = -1.0  # the answer to our last ask: ask for the next one now
        incoming.last_chunk = node.now
        buf += msg.data
        if len(buf) < msg.total:
            self.ask(msg.sender)
            return
        self.incoming = None
        try:
            image = decode_image(bytes(buf))
        except ValueError:
            return  # the sender is not one of ours or is broken; validated input never lands here
        self.install_snapshot(msg.index, image, bytes(buf))
        self.ask(msg.sender)

    def install_snapshot(self, index: int, image, blob: bytes) -> None:
        """Slots up to ``index`` are chosen and their effect is ``image``: take it as ours.

        Promises: the commit index only moves forward; nothing at or below ``index`` stays in
        the log; the Snapshot handed out to persist rebuilds the acceptor state above it.
        """
        node = self.node
        if index <= node.commit_index:
            raise ProtocolError(f"node {node.id}: a snapshot at {index} would take the commit "
                                f"index back from {node.commit_index}")
        node.kv = KVStore.from_image(image, node.config.max_sessions)
        node.applied_index = node.commit_index = node.snapshot_index = index
        node.snapshot_image = image
        self.blob, self.blob_index = blob, index
        node._configs_from_store()
        log = node.log
        for slot in [s for s in log if s <= index]:
            del log[slot]
        node.log_start = index + 1
        if index > node.max_slot:
            node.max_slot = index
        node._out.persist.append(Snapshot(index, image, node.acceptor.checkpoint(index)))
