"""Leadership transfer: a leader hands over to a voter it names, or to one it picks.

The leader stops taking new commands into slots, lets what is in flight be chosen, then sends
the target ``TimeoutNow``; the target, still following that leader at its ballot, stands at
once (without waiting for its election timeout), with a ballot above the leader's. The leader
steps down when it sees that ballot; until then it leads on, and if the target does not stand
in time it simply keeps leading. A leader asked to remove itself from the cluster uses the
same path first, so the cluster is never left waiting for an election timeout.

Only one handover is in progress at a time (``Transfer.handover``, a ``Handover`` or None).
"""

from __future__ import annotations

from typing import NamedTuple

from daemon.core.messages import ERROR, NOT_LEADER, OK, Reply, TimeoutNow
from daemon.core.roles import CANDIDATE, FOLLOWER, LEADER, ProtocolError

__all__ = ["Handover", "Transfer"]


class Handover(NamedTuple):
    """One handover in progress."""

    target: int  # the voter told to stand
    req: object  # the request to answer once the target is told; None once it has been
    deadline: float  # the target must be told by then, and stand by then once told
    status: str  # what ``req`` is answered then: OK, or NOT_LEADER for a leader leaving


class Transfer:
    """The handover in progress at ``node`` (None when there is none)."""

    def __init__(self, node) -> None:
        self.node = node
        self.handover: Handover | None = None

    def request(self, req, target: int) -> None:
        """Hand leadership to ``target``: answered OK when the target is told (``leader``
        names it), at once if it is this node, ERROR if it is not a voter in the
        configuration in use, a handover is already in progress, or it does not happen in
        time; NOT_LEADER from a node that does not lead.

        Promises: at most one handover is in progress."""
        node = self.node
        replies = node._out.replies
        if node.role != LEADER:
            replies.append(Reply(req, NOT_LEADER, leader=node.leader_id))
        elif target == node.id:
            replies.append(Reply(req, OK, leader=node.id))
        elif target not in node.index:
            replies.append(Reply(req, ERROR, f"node {target} is not a voting member"))
        elif self.handover is not None:
            replies.append(Reply(req, ERROR, f"already handing over to node {self.handover.target}"))
        else:
            self._begin(target, req, OK)

    def leave(self, req) -> None:
        """The leader is asked to remove itself: hand over to the voter heard from most
        recently first, answering ``req`` NOT_LEADER naming it; ERROR if there is none or a
        handover is already in progress."""
        node = self.node
        target = self.successor(exclude=node.id)
        if target is None:
            node._out.replies.append(Reply(req, ERROR, "no other voting member is in contact to take over"))
        elif self.handover is not None:
            node._out.replies.append(
                Reply(req, ERROR, f"already handing over to node {self.handover.target}"))
        else:
            self._begin(target, req, NOT_LEADER)

    def _begin(self, target: int, req, status: str) -> None:
        node = self.node
        self.handover = Handover(target, req, node.now + 2 * node.config.election_timeout[1], status)

    def successor(self, exclude: int) -> int | None:
        """The voter (other than ``exclude``) heard from most recently, if lately."""
        node = self.node
        since = node.now - 2 * node.config.heartbeat_interval
        heard = [(node.contact.get(m, -1e9), m) for m in node.configuration.voters
                 if m != exclude and m in node.index]
        heard = [h for h in heard if h[0] >= since]
        return max(heard)[1] if heard else None

    def hand_over(self) -> None:
        """(The leader, before filling its window.) Tell the target to stand once nothing is
        in flight or queued and the target was heard from lately; give up with ERROR past the
        deadline.

        Promises: TimeoutNow is sent at most once per handover, only with the window empty,
        so every slot this leader proposed is chosen before the target stands."""
        node = self.node
        target, req, deadline, status = self.handover
        if req is None:
            return  # told already; waiting to see the target's higher ballot
        if node.now > deadline:
            self.handover = None
            node._out.replies.append(Reply(req, ERROR, f"node {target} did not catch up in time"))
            return
        if node.window.in_flight or node.queued_batches:
            return
        if node.now - node.contact.get(target, -1e9) > 2 * node.config.heartbeat_interval:
            return  # not hearing from it lately: it could not win now
        node._out.send.append((target, TimeoutNow(node.id, node.ballot)))
        node._out.replies.append(Reply(req, status, leader=target))
        self.handover = self.handover._replace(req=None)

    def expire(self, now: float) -> None:
        """(The leader's tick.) A target told to stand that has not by the deadline is
        forgotten: the leader leads on and may hand over again."""
        handover = self.handover
        if handover is not None and handover.req is None and now > handover.deadline:
            self.handover = None  # the target never stood: lead on

    def abandon(self, replies: list, leader: int | None) -> None:
        """This node stops leading: a request not yet answered is answered NOT_LEADER (naming
        ``leader`` if known) and the handover is forgotten."""
        handover = self.handover
        if handover is not None:
            if handover.req is not None:
                replies.append(Reply(handover.req, NOT_LEADER, leader=leader))
            self.handover = None

    def on_timeout_now(self, msg: TimeoutNow) -> None:
        """The leader this node follows, at the ballot it promised, tells it to stand: it does
        at once if it may stand at all.

        Promises: if it stands, it is a candidate with a ballot above the sender's."""
        node = self.node
        if (node.role == FOLLOWER and msg.ballot == node.promised and msg.sender == node.leader_id
                and node.election.may_stand()):
            node.election.start()
            if node.role != CANDIDATE or not node.ballot > msg.ballot:
                raise ProtocolError(f"node {node.id} told to stand at ballot {msg.ballot:#x} "
                                    f"is {node.role} at {node.ballot:#x}")
