"""The roles a node plays, and the error it raises rather than break an invariant.

Defined apart from daemon.core.node so that the parts of the core split out of ``Node``
(election, configs, transfer, reads, catch-up, the Accept pipeline, the acceptor) can use
them without importing the node; daemon.core.node re-exports all four.
"""

from __future__ import annotations

__all__ = ["CANDIDATE", "FOLLOWER", "LEADER", "ProtocolError"]

FOLLOWER = "follower"
CANDIDATE = "candidate"
LEADER = "leader"


class ProtocolError(AssertionError):
    """An invariant of the protocol was about to break: stop rather than continue wrong."""
