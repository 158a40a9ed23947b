"""A node's role in the protocol, and the error the core stops with when an invariant is about
to break. Shared by the node (daemon.core.node) and the parts it is made of (reads, catch-up,
the Accept pipeline, the acceptor), so that none of them imports the node for these."""

from __future__ import annotations

FOLLOWER = "follower"
CANDIDATE = "candidate"
LEADER = "leader"


class ProtocolError(AssertionError):
    """An invariant of the protocol was about to break: stop rather than continue wrong."""
