"""``Idempotency-Key``: a retried write applied at most once, like the CBOR sessions.

A write that carries the header is sent under a session derived from it: client id a 63-bit
hash of the header's value (nonzero, below 2**63: ids from 2**63 on are the leader's own,
daemon.core.leases), and ``SEQ``, a constant far above any count of applied commands. The store
(daemon.core.kv ``KVStore.apply``, and fastpath's ``apply_commands`` that follows it step for
step) then:

- applies the first copy that arrives: the client id has no session, and ``SEQ`` is above the
  eviction horizon (the applied count when a session was last evicted);
- answers any later copy from the session (the same seq as the last applied: its result and
  revision, not applied again), whichever node it was sent to, whatever its body.

The guarantee: a retry is answered from the session while that session is among the store's
``max_sessions`` most recently used (100 000 by default; the first copy uses it, retries
answered from it do not). Once evicted, a copy that arrives later is applied again (``SEQ`` is
above every horizon), so retry within minutes, not days. Reusing a key for a different request
gets the first one's outcome: use a fresh key (a UUID) per logical write.
"""

from __future__ import annotations

import hashlib

from daemon.gateway.problems import Problem

__all__ = ["HEADER", "SEQ", "MAX_KEY_LENGTH", "session"]

HEADER = "idempotency-key"
SEQ = 2**62
MAX_KEY_LENGTH = 255
_LABEL = b"paxosd idempotency-key v1\0"


def session(request) -> tuple[int, int] | None:
    """The ``(client_id, seq)`` the request's Idempotency-Key names, or None without one; 400
    ``bad-header`` for an empty or overlong key."""
    value = request.headers.get(HEADER)
    if value is None:
        return None
    raw = value.strip().encode("latin-1")
    if not raw or len(raw) > MAX_KEY_LENGTH:
        raise Problem(400, "bad-header", f"header Idempotency-Key: expected 1 to "
                      f"{MAX_KEY_LENGTH} characters, got {len(raw)}")
    digest = hashlib.sha256(_LABEL + raw).digest()
    client_id = int.from_bytes(digest[:8], "big") & (2**63 - 1)
    return (client_id or 1), SEQ
