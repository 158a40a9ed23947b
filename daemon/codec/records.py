"""The write-ahead log's bytes: records, groups, the file header and the synced-length marker.

This module is the format of ``wal.log`` (version 2) and ``wal.synced``; the files, locks and
fsyncs around them are daemon.runtime.storage's. Layout of ``wal.log``::

    file header   b"PAXOSWAL" + version (4 bytes BE) + salt (8 random bytes) + crc32 (4 bytes BE)
    group*        group header + body, one per append (one write; a group commit's unit)
    group header  salt (8) + this group's file offset (8) + synced (8: the length of the log
                  already durable when the group was written) + body length (8) + crc32 of
                  the body (4) + crc32 of the 36 header bytes before it (4)
    body          record* : payload length (4 bytes BE) + payload

A payload is the CBOR array ``[tag, fields...]`` of one record (``TAG_*`` below; the records are
daemon.core.messages.RECORDS); batches are arrays of command arrays. ``wal.synced`` holds two
slots, at ``SYNCED_SLOT_OFFSETS`` (separate 512-byte sectors, so one torn write cannot damage
both), each ``salt (8) + synced length (8) + sequence number (8) + crc32 (4)``; the valid slot
with the highest sequence number counts.

Encoding checks what would make a record unreadable (ballots and slots are unsigned 64-bit
integers, a payload is at most ``MAX_RECORD_BYTES``) before anything is written; decoding
raises ``Undecodable`` (a ValueError) naming what is wrong. Reading a log file, and what to
make of damage in it, is daemon.runtime.storage's (``group_at`` and ``synced_claim_after`` only
say what the bytes at an offset are).
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from fastpath import dumps as _dumps, loads as _loads  # canonical CBOR, same bytes as cbor2

from daemon.core.messages import AcceptRecord, ChosenRecord, CommitRecord, PromiseRecord

__all__ = [
    "BAD",
    "CRC",
    "FILE_HEAD",
    "FORMAT_VERSION",
    "GROUP_HEAD",
    "GROUP_HEADER_BYTES",
    "HEADER_BYTES",
    "MAGIC",
    "MAX_RECORD_BYTES",
    "OK",
    "RECORD_LENGTH",
    "SALT_BYTES",
    "SYNCED_SLOT",
    "SYNCED_SLOT_OFFSETS",
    "TAG_ACCEPT",
    "TAG_CHOSEN",
    "TAG_COMMIT",
    "TAG_PROMISE",
    "UNDECODABLE",
    "Undecodable",
    "VERSION_END",
    "decode_body",
    "decode_record",
    "decode_synced_slots",
    "encode_body",
    "encode_entries",
    "encode_group",
    "encode_record",
    "encode_synced_slot",
    "file_header",
    "group_at",
    "synced_claim_after",
]

MAGIC = b"PAXOSWAL"
FORMAT_VERSION = 2
SALT_BYTES = 8
FILE_HEAD = struct.Struct(">8sI8s")  # magic, format version, salt
CRC = struct.Struct(">I")
HEADER_BYTES = FILE_HEAD.size + CRC.size  # the file header, with its crc32
VERSION_END = len(MAGIC) + 4  # every format version so far starts with magic + version
GROUP_HEAD = struct.Struct(">8sQQQI")  # salt, offset, synced, body length, crc32 of the body
GROUP_HEADER_BYTES = GROUP_HEAD.size + CRC.size  # the group header, with its crc32
RECORD_LENGTH = struct.Struct(">I")  # before each payload in a group's body
# The largest payload one record may have, checked when it is encoded. A record carries at most
# one peer frame's worth of batches (config caps frames at 256 MiB). On read no length field is
# trusted beyond the bytes there: a group must fit in the file and a record in its group.
MAX_RECORD_BYTES = 256 * 1024 * 1024

# The synced-length marker's slots: salt, synced length, sequence number (then a crc32).
SYNCED_SLOT = struct.Struct(">8sQQ")
SYNCED_SLOT_OFFSETS = (0, 512)

TAG_PROMISE = 1
TAG_ACCEPT = 2
TAG_CHOSEN = 3
TAG_COMMIT = 4


class Undecodable(ValueError):
    """Bytes that passed their checksum but do not decode as records."""


# ---------------------------------------------------------------------------------------------
# Records.


def encode_record(record: Any) -> bytes:
    """The CBOR payload of one record.

    Slot numbers and ballots are checked here (a record that could not be read back would stop
    the node at its next start); commands are trusted to be well-typed, as the wire codec
    validated them on the way in.
    """
    t = type(record)
    if t is AcceptRecord:
        _check_uint(record, record.ballot, record.first_slot)
        return _dumps([TAG_ACCEPT, record.ballot, record.first_slot, record.batches])
    if t is CommitRecord:
        _check_uint(record, record.commit_index)
        return _dumps([TAG_COMMIT, record.commit_index])
    if t is ChosenRecord:
        _check_uint(record, record.first_slot)
        return _dumps([TAG_CHOSEN, record.first_slot, record.batches])
    if t is PromiseRecord:
        _check_uint(record, record.ballot)
        return _dumps([TAG_PROMISE, record.ballot])
    raise TypeError(f"not a WAL record: {record!r:.200}")


def _check_uint(record: Any, *values: Any) -> None:
    for v in values:
        if type(v) is not int or not 0 <= v < 1 << 64:
            raise ValueError(f"{record!r:.200}: ballots and slots are unsigned 64-bit integers")


def decode_record(payload: bytes) -> Any:
    """The record a payload encodes; Undecodable (a ValueError) if it is not one."""
    try:
        item = _loads(payload)
    except Exception as exc:  # the decoder's own error types vary
        raise Undecodable(f"not CBOR: {exc}") from None
    if not isinstance(item, (list, tuple)) or not item:
        raise Undecodable(f"expected a [tag, fields...] array, got {type(item).__name__}")
    tag = item[0]
    n = len(item)
    if tag == TAG_ACCEPT and n == 4:
        _uint(item[1], "ballot")
        _uint(item[2], "first_slot")
        return AcceptRecord(item[1], item[2], _batches(item[3]))
    if tag == TAG_COMMIT and n == 2:
        return CommitRecord(_uint(item[1], "commit_index"))
    if tag == TAG_CHOSEN and n == 3:
        _uint(item[1], "first_slot")
        return ChosenRecord(item[1], _batches(item[2]))
    if tag == TAG_PROMISE and n == 2:
        return PromiseRecord(_uint(item[1], "ballot"))
    raise Undecodable(f"unknown record tag {tag!r} with {n - 1} fields")


def _uint(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise Undecodable(f"{what}: expected an unsigned integer, got {value!r}")
    return value


def _batches(value: Any) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise Undecodable(f"batches: expected an array, got {type(value).__name__}")
    return tuple(_batch(b) for b in value)


def _batch(value: Any) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise Undecodable(f"batch: expected an array, got {type(value).__name__}")
    out = []
    for c in value:
        if (
            not isinstance(c, (list, tuple))
            or len(c) != 6
            or type(c[0]) is not int
            or type(c[1]) is not int
            or type(c[2]) is not int
            or type(c[3]) is not bytes
            or (c[4] is not None and type(c[4]) is not bytes)
            or (c[5] is not None and type(c[5]) is not bytes)
        ):
            raise Undecodable(
                "command: expected (int, int, int, bytes, bytes|None, bytes|None), "
                f"got {c!r:.100}"
            )
        out.append(tuple(c))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Group bodies.


def encode_entries(records: list) -> bytes:
    """The body of a group holding ``records``: each payload after its 4-byte length."""
    return b"".join(encode_body(records)[0])


def encode_body(records: list) -> tuple[list, int, int, bool]:
    """(parts of the body, its length, its crc32, whether it holds a PromiseRecord); raises
    ValueError or TypeError before anything is written if a record cannot be logged."""
    parts = []
    length = crc = 0
    promise = False
    for record in records:
        payload = encode_record(record)
        n = len(payload)
        if n > MAX_RECORD_BYTES:
            raise ValueError(
                f"WAL record of {n} bytes exceeds the limit of {MAX_RECORD_BYTES} "
                f"bytes: {type(record).__name__}"
            )
        head = RECORD_LENGTH.pack(n)
        crc = zlib.crc32(payload, zlib.crc32(head, crc))
        parts.append(head)
        parts.append(payload)
        length += 4 + n
        promise = promise or type(record) is PromiseRecord
    return parts, length, crc, promise


def decode_body(body: bytes) -> list:
    """The records of a group body whose checksum matched; Undecodable if they do not decode."""
    out = []
    pos, n = 0, len(body)
    while pos < n:
        if pos + RECORD_LENGTH.size > n:
            raise Undecodable(f"a record length cut short at body offset {pos}")
        (length,) = RECORD_LENGTH.unpack_from(body, pos)
        start = pos + RECORD_LENGTH.size
        end = start + length
        if length == 0 or end > n:
            raise Undecodable(f"record length {length} at body offset {pos} overruns the group")
        out.append(decode_record(body[start:end]))
        pos = end
    return out


# ---------------------------------------------------------------------------------------------
# The file header and group headers.


def file_header(salt: bytes) -> bytes:
    """The header of a log file whose groups carry ``salt``, with its crc32."""
    head = FILE_HEAD.pack(MAGIC, FORMAT_VERSION, salt)
    return head + CRC.pack(zlib.crc32(head))


def encode_group(salt: bytes, offset: int, synced: int, parts: list, length: int,
                 crc: int) -> bytes:
    """One group: its header (for ``offset``, vouching that ``synced`` bytes are durable)
    and the body ``parts`` (``length`` bytes with crc32 ``crc``), joined in one copy."""
    head = GROUP_HEAD.pack(salt, offset, synced, length, crc)
    return b"".join([head, CRC.pack(zlib.crc32(head)), *parts])


OK, BAD, UNDECODABLE = "ok", "bad", "undecodable"


def group_at(buf, offset: int, size: int, salt: bytes) -> tuple[str, Any, int]:
    """What lies at ``offset`` of the log ``buf`` (``size`` bytes, groups salted ``salt``):
    (OK, records, end) | (BAD, why, 0) | (UNDECODABLE, why, end)."""
    if offset + GROUP_HEADER_BYTES > size:
        return BAD, f"group header cut short: {size - offset} of {GROUP_HEADER_BYTES} bytes", 0
    head = buf[offset:offset + GROUP_HEAD.size]
    found_salt, at, synced, length, body_crc = GROUP_HEAD.unpack(head)
    if found_salt != salt:
        return BAD, "no group header (zeros, garbage or a torn write)", 0
    if CRC.unpack_from(buf, offset + GROUP_HEAD.size)[0] != zlib.crc32(head):
        return BAD, "group header checksum mismatch", 0
    if at != offset or not HEADER_BYTES <= synced <= offset:
        return BAD, f"a group header written for offset {at}", 0
    start = offset + GROUP_HEADER_BYTES
    end = start + length
    if end > size:
        return BAD, f"group cut short: {size - start} of {length} bytes", 0
    body = buf[start:end]
    if zlib.crc32(body) != body_crc:
        return BAD, "group checksum mismatch", 0
    try:
        return OK, decode_body(body), end
    except Undecodable as exc:
        return UNDECODABLE, str(exc), end


def synced_claim_after(buf, start: int, size: int, salt: bytes) -> tuple[int, int]:
    """(the largest synced length a valid group header at or after ``start`` records, that
    header's offset), or (0, -1). Only salted headers count, so client data cannot vouch."""
    best, where = 0, -1
    at = buf.find(salt, start)
    while at != -1 and at + GROUP_HEADER_BYTES <= size:
        head = buf[at:at + GROUP_HEAD.size]
        _, offset, synced, _, _ = GROUP_HEAD.unpack(head)
        if (offset == at and best < synced <= at and synced >= HEADER_BYTES
                and CRC.unpack_from(buf, at + GROUP_HEAD.size)[0] == zlib.crc32(head)):
            best, where = synced, at
        at = buf.find(salt, at + 1)
    return best, where


# ---------------------------------------------------------------------------------------------
# The synced-length marker's slots.


def encode_synced_slot(salt: bytes, synced: int, seq: int) -> bytes:
    """One slot of ``wal.synced``: ``synced`` bytes of the log with ``salt`` are durable, as of
    sequence number ``seq``; with its crc32."""
    body = SYNCED_SLOT.pack(salt, synced, seq)
    return body + CRC.pack(zlib.crc32(body))


def decode_synced_slots(data: bytes | None) -> list[tuple[bytes, int, int]]:
    """The valid (salt, synced, sequence) slots of the marker file's bytes (None: no file)."""
    slots = []
    for at in SYNCED_SLOT_OFFSETS:
        body = data[at:at + SYNCED_SLOT.size] if data else b""
        if len(body) == SYNCED_SLOT.size and data[at + len(body):at + len(body) + CRC.size] \
                == CRC.pack(zlib.crc32(body)):
            slots.append(SYNCED_SLOT.unpack(body))
    return slots
