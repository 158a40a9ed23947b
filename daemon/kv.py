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
"""

from __future__ import annotations

from fastpath import apply_commands, dumps, loads

from daemon.messages import OK, OP_CAS, OP_DELETE, OP_PUT, STALE


def encode_image(image) -> bytes:
    """A state machine image (KVStore.image) as canonical CBOR."""
    return dumps(image)


def decode_image(blob: bytes) -> list:
    """The image ``encode_image`` wrote; raises ValueError if it is not one."""
    image = loads(blob)
    if (type(image) is not list or len(image) != 3 or type(image[0]) is not dict
            or type(image[1]) is not dict or type(image[2]) is not int):
        raise ValueError("not a key-value state machine image")
    return image


class KVStore:
    """Keys and values are bytes. ``apply(cmd)`` returns ``(status, result)``."""

    __slots__ = ("data", "sessions", "max_sessions", "applied_commands")

    def __init__(self, max_sessions: int = 100_000) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.data: dict[bytes, bytes] = {}
        # client_id -> (last seq, status, result); insertion order = least recently used first.
        self.sessions: dict[int, tuple[int, str, object]] = {}
        self.max_sessions = max_sessions
        self.applied_commands = 0

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
        return OK, result

    def apply_batch(self, batch, results: list | None = None) -> None:
        """``apply`` each command of ``batch`` in order, in one C loop (fastpath); with
        ``results``, append each command's ``(status, result)`` to that list."""
        apply_commands(self, batch, results, OP_PUT, OP_DELETE, OP_CAS, OK, STALE)

    def image(self) -> list:
        """A copy of the whole state (dict copies: C-speed); ``encode_image`` turns it into
        bytes, which can happen elsewhere while this store goes on applying commands."""
        return [dict(self.data), dict(self.sessions), self.applied_commands]

    @classmethod
    def from_image(cls, image, max_sessions: int = 100_000) -> "KVStore":
        kv = cls(max_sessions)
        data, sessions, applied = image
        kv.data = dict(data)
        kv.sessions = {c: tuple(s) for c, s in sessions.items()}
        kv.applied_commands = applied
        return kv

    def state(self) -> tuple:
        """A comparable image of the replica's state (for the simulator's checks)."""
        return (tuple(sorted(self.data.items())), tuple(self.sessions.items()))
