"""The snapshot file's bytes: the state machine as of a slot, whole or not at all.

Layout (format version 1, unchanged by WAL format 2)::

    b"PAXOSSNP" + version (4 bytes BE) + payload length (4 bytes BE) + crc32 of the payload
    (4 bytes BE) + payload, the CBOR array [index, image]

``image`` is the encoded state machine (daemon.core.kv.encode_image) after slot ``index``.
Writing the file atomically and naming it in errors is daemon.runtime.storage's; a file is
written whole, so ``decode_snapshot`` takes any damage for corruption and says where it is.
"""

from __future__ import annotations

import struct
import zlib

from fastpath import dumps as _dumps, loads as _loads  # canonical CBOR, same bytes as cbor2

__all__ = ["DamagedSnapshot", "decode_snapshot", "encode_snapshot"]

SNAPSHOT_MAGIC = b"PAXOSSNP"
SNAPSHOT_FORMAT_VERSION = 1
SNAPSHOT_HEADER = SNAPSHOT_MAGIC + struct.pack(">I", SNAPSHOT_FORMAT_VERSION)
ENTRY_HEADER = struct.Struct(">II")  # the payload's length and crc32
ENTRY_HEADER_BYTES = ENTRY_HEADER.size


class DamagedSnapshot(ValueError):
    """Bytes that are not a whole snapshot file: the message says what is wrong, ``offset``
    where."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


def encode_snapshot(index: int, image: bytes) -> bytes:
    """The snapshot file holding ``image`` as of slot ``index``."""
    payload = _dumps([index, image])
    return SNAPSHOT_HEADER + ENTRY_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode_snapshot(data: bytes) -> tuple[int, bytes]:
    """(index, image) of a snapshot file's bytes; DamagedSnapshot if they are not one."""
    head = len(SNAPSHOT_HEADER)
    if data[:len(SNAPSHOT_MAGIC)] != SNAPSHOT_MAGIC:
        raise DamagedSnapshot("not a paxosd snapshot (bad magic at offset 0)", 0)
    if data[:head] != SNAPSHOT_HEADER:
        raise DamagedSnapshot(f"unsupported snapshot format version at offset "
                              f"{len(SNAPSHOT_MAGIC)}", len(SNAPSHOT_MAGIC))
    if len(data) < head + ENTRY_HEADER_BYTES:
        raise DamagedSnapshot(f"truncated at offset {len(data)}", len(data))
    length, crc = ENTRY_HEADER.unpack_from(data, head)
    at = head + ENTRY_HEADER_BYTES
    payload = data[at:]
    if len(payload) != length:
        raise DamagedSnapshot(f"truncated or overlong: {len(payload)} payload bytes at offset "
                              f"{at}, header says {length}", at)
    if zlib.crc32(payload) != crc:
        raise DamagedSnapshot(f"checksum mismatch in the payload at offset {at}", at)
    try:
        index, image = _loads(payload)
        if type(index) is not int or index < 1 or type(image) is not bytes:
            raise ValueError("not [index, image]")
    except ValueError as exc:
        raise DamagedSnapshot(f"undecodable snapshot at offset {at}: {exc}", at) from None
    return index, image
