"""Read-index tracking: the leader's linearizable reads (DESIGN.md, "Reads by read index").

A read is answered from the leader's state machine once both hold:

- a quorum of voters confirmed this leader's ballot in a *read round* that began after the
  read arrived (so a paused old leader that wakes up answers nothing from local state);
- the state machine has applied the read's *read index*: the commit index when it arrived,
  or the leader's read floor if higher (a new leader's re-proposed slots: only once they are
  chosen does its commit index cover all that a previous leader may have acknowledged).

Rounds are numbered by the leader. The first read after an Accept went out opens a new round;
the next Accept (a heartbeat, if nothing else is due: see Node.ready) carries its number, and
every voter's Accepted echoes the highest round it saw (``node.peer_read_round``, reset by the
node whenever it starts leading in a configuration). The only voter of a configuration is its
own quorum: it serves a read as soon as the read index is applied (no Accepted would come back
to carry the round: heartbeats go to the peers only).

A read is a key (the value, or None), a ``RangeQuery`` (a ``RangeResult``, cut to fit in
``max_message_bytes`` less RANGE_REPLY_MARGIN) or a ``LeaseQuery`` (a keepalive or a
time-to-live question, answered by the leader's lease clock once its lease epoch is applied:
daemon.core.expiry); every reply names the revision it was read at.
"""

from __future__ import annotations

from collections import deque

from daemon.core.expiry import LeaseQuery
from daemon.core.messages import NOT_LEADER, OK, Reply
from daemon.core.roles import LEADER

# Room a range reply leaves in the message limit for its envelope (req_id, status, count, more,
# leader address, revision): far more than they take.
RANGE_REPLY_MARGIN = 1024


class ReadIndex:
    """The reads waiting at one node, and the read round they wait for."""

    __slots__ = ("node", "round", "round_sent", "queue")

    def __init__(self, node) -> None:
        self.node = node
        self.round = 0  # the latest read round this leader opened
        self.round_sent = True  # whether an Accept carried ``round`` out since it opened
        self.queue: deque = deque()  # (req, key, read_index, round), in arrival order

    def read(self, req, key) -> None:
        """Queue a read (a key, or a ``RangeQuery``) at the leader (a follower answers NOT_LEADER naming the leader).

        Promises: the read waits for a round opened after it arrived, and for a read index
        no lower than the commit index and the read floor at arrival.
        """
        node = self.node
        if node.role != LEADER:
            node._out.replies.append(Reply(req, NOT_LEADER, leader=node.leader_id))
            return
        if self.round_sent:
            self.round += 1
            self.round_sent = False
        read_index = max(node.commit_index, node.read_floor)
        self.queue.append((req, key, read_index, self.round))
        if node.quorum == 1:
            # The only voter's own ballot is the quorum's confirmation, and no voter's
            # Accepted will come back to serve the read (heartbeats go to peers only).
            self.serve()

    def serve(self) -> None:
        """Answer, in arrival order, every read whose round a quorum of voters confirmed and
        whose read index the state machine has applied.

        Promises: a read is answered only at a leader, never before its read index is applied
        nor before a quorum confirmed a round no older than its own; reads are answered in the
        order they arrived.
        """
        node = self.node
        if node.role != LEADER:
            return
        quorum = node.quorum
        rounds = sorted((self.round if m == node.id else r) for m, r in node.peer_read_round.items())
        if len(rounds) < quorum:
            return
        confirmed = rounds[-quorum]
        reads = self.queue
        replies = node._out.replies
        applied = node.applied_index
        kv = node.kv
        revision = kv.revision
        while reads:
            req, key, read_index, round_ = reads[0]
            if round_ > confirmed or read_index > applied:
                break
            if type(key) is LeaseQuery and not node.lease_clock.ready():
                break  # until this leader's lease epoch is applied (daemon.core.expiry)
            reads.popleft()
            if type(key) is bytes:
                replies.append(Reply(req, OK, kv.get(key), None, revision))
            elif type(key) is LeaseQuery:
                replies.append(Reply(req, OK, node.lease_clock.answer(key, node.now), None,
                                     revision))
            else:
                budget = node.config.max_message_bytes - RANGE_REPLY_MARGIN
                replies.append(Reply(req, OK, kv.range(key, budget), None, revision))

    def refuse_all(self, leader: int | None) -> None:
        """This node stopped leading: every waiting read is told to retry at ``leader``.

        Promises: no read stays queued."""
        replies = self.node._out.replies
        for req, _key, _index, _round in self.queue:
            replies.append(Reply(req, NOT_LEADER, leader=leader))
        self.queue.clear()
