"""Fetching a consistent snapshot of the cluster (``paxosd snapshot save``): the client side of
the "snapshot" request (daemon.codec.wire's docstring has its shape).

The first request finds the leader like any call and makes it take the snapshot at a
linearizable point; the chunks follow from the node that took it, by offset, one request
each. Should that node lose the snapshot meanwhile (a restart), the whole fetch starts again,
at most ``MAX_STARTS`` times.
"""

from __future__ import annotations

from daemon.client.client import OperationFailed
from daemon.codec.wire import WireError, decode_snapshot_chunk

__all__ = ["fetch_snapshot"]

MAX_STARTS = 3


async def fetch_snapshot(client, *, timeout: float | None = None) -> tuple[bytes, int]:
    """``(payload, revision)``: the snapshot the leader took (daemon.codec.backup's payload)
    and the revision it is at. Each request has ``timeout`` (default the client's)."""
    # Taking and encoding a big store may take longer than one attempt usually waits: let
    # each request wait its whole timeout rather than ask another node for a new snapshot
    # (per call: the client's other calls keep its attempt_timeout).
    wait = max(client.attempt_timeout, client.timeout if timeout is None else timeout)
    for start in range(MAX_STARTS):
        try:
            return await _fetch(client, timeout, wait)
        except OperationFailed as exc:
            if "is not kept" not in str(exc) or start == MAX_STARTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _fetch(client, timeout: float | None, wait: float) -> tuple[bytes, int]:
    reply, node = await client._call("snapshot", b"", None, None, 0, 0, timeout, False,
                                     attempt_timeout=wait)
    snapshot_id, total, data = _chunk(reply.result, 0)
    parts, got = [data], len(data)
    while got < total:
        reply, _ = await client._call("snapshot", b"", snapshot_id, None, 0, got, timeout,
                                      False, node, attempt_timeout=wait)
        _id, size, data = _chunk(reply.result, got)
        if _id != snapshot_id or size != total:
            raise OperationFailed(f"snapshot: {node} answered offset {got} with another "
                                  f"snapshot ({_id.hex()}, {size} bytes)")
        parts.append(data)
        got += len(data)
    return b"".join(parts), reply.revision


def _chunk(result, offset: int) -> tuple[bytes, int, bytes]:
    try:
        return decode_snapshot_chunk(result, offset)
    except WireError as exc:
        raise OperationFailed(f"snapshot: a bad reply: {exc}") from None
