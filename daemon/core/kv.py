"""The replicated state machine: a key-value store with client sessions.

Every replica applies the same chosen batches in the same slot order, so everything here must
depend only on the commands and their order: no clock, no randomness, no iteration over a set.

Client sessions give at-most-once application. Each command carries (client_id, seq); a session
remembers the last seq applied for its client and that command's outcome. A retry of the last
seq gets the remembered outcome instead of being applied again; an older seq is STALE (the
client has moved on, so nobody waits for it). A client keeps one command outstanding per
session; a client that pipelines uses one session per outstanding command.
Sessions beyond ``max_sessions`` are evicted least recently used first, in apply order, which
is the same on every replica.

Eviction must not let an old retry in again. The store keeps ``evicted_at``: the count of
applied commands when it last evicted a session. A command of a client with no session is
applied only if its seq is above ``evicted_at``; otherwise it is refused (SESSION_EXPIRED, with
``evicted_at`` as the result) and not applied. Why that is enough: a session's first seq is
1, or one above the horizon it was refused at, so it is at most the applied count at which
that command is applied; each later command of the session is applied after the one before
(one command in flight per session), so its seq stays at most its applied count too. A
command applied and then evicted therefore has a seq at or below every later ``evicted_at``,
and no retry of it is applied again. A client told SESSION_EXPIRED for a command it never sent
before starts the session again at ``evicted_at + 1``; for one it may have sent, the outcome
is unknown.
"""

from __future__ import annotations

from fastpath import apply_commands, dumps, loads

from daemon.core.messages import OK, OP_CAS, OP_DELETE, OP_PUT, SESSION_EXPIRED, STALE


def encode_image(image) -> bytes:
    """A state machine image (KVStore.image) as canonical CBOR."""
    return dumps(image)


def decode_image(blob: bytes) -> list:
    """The image ``encode_image`` wrote; raises ValueError if it is not one."""
    image = loads(blob)
    if (type(image) is not list or len(image) not in (3, 4) or type(image[0]) is not dict
            or type(image[1]) is not dict or any(type(n) is not int for n in image[2:])):
        raise ValueError("not a key-value state machine image")
    return image


class KVStore:
    """Keys and values are bytes. ``apply(cmd)`` returns ``(status, result)``."""

    __slots__ = ("data", "sessions", "max_sessions", "applied_commands", "evicted_at")

    def __init__(self, max_sessions: int = 100_000) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.data: dict[bytes, bytes] = {}
        # client_id -> (last seq, status, result); insertion order = least recently used first.
        self.sessions: dict[int, tuple[int, str, object]] = {}
        self.max_sessions = max_sessions
        self.applied_commands = 0
        self.evicted_at = 0  # applied_commands when a session was last evicted

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def apply(self, cmd: tuple) -> tuple[str, object]:
        client_id, seq, op, key, arg1, arg2 = cmd
        sessions = self.sessions
        session = sessions.get(client_id)
        if session is not None:
            last_seq = session[0]
            if seq == last_seq:
                return session[1], session[2]
            if seq < last_seq:
                return STALE, None
            del sessions[client_id]  # re-inserted below, at the most recent end
        elif seq <= self.evicted_at:
            return SESSION_EXPIRED, self.evicted_at
        data = self.data
        if op == OP_PUT:
            data[key] = arg1
            result = None
        elif op == OP_CAS:
            current = data.get(key)
            result = current == arg1
            if result:
                data[key] = arg2
        elif op == OP_DELETE:
            result = data.pop(key, None) is not None
        else:
            raise ValueError(f"command {cmd!r}: unknown op {op!r}")
        self.applied_commands += 1
        sessions[client_id] = (seq, OK, result)
        if len(sessions) > self.max_sessions:
            del sessions[next(iter(sessions))]
            self.evicted_at = self.applied_commands
        return OK, result

    def apply_batch(self, batch, results: list | None = None) -> None:
        """``apply`` each command of ``batch`` in order, in one C loop (fastpath); with
        ``results``, append each command's ``(status, result)`` to that list."""
        apply_commands(self, batch, results, OP_PUT, OP_DELETE, OP_CAS, OK, STALE, SESSION_EXPIRED)

    def image(self) -> list:
        """A copy of the whole state (dict copies: C-speed); ``encode_image`` turns it into
        bytes, which can happen elsewhere while this store goes on applying commands."""
        return [dict(self.data), dict(self.sessions), self.applied_commands, self.evicted_at]

    @classmethod
    def from_image(cls, image, max_sessions: int = 100_000) -> "KVStore":
        kv = cls(max_sessions)
        data, sessions, applied = image[:3]
        kv.data = dict(data)
        kv.sessions = {c: tuple(s) for c, s in sessions.items()}
        kv.applied_commands = applied
        # An image from before the horizon was kept: take every seq applied so far as expired.
        kv.evicted_at = image[3] if len(image) > 3 else applied
        return kv

    def state(self) -> tuple:
        """A comparable image of the replica's state (for the simulator's checks)."""
        return (tuple(sorted(self.data.items())), tuple(self.sessions.items()), self.evicted_at)
