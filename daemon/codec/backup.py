"""The backup file's bytes (``paxosd snapshot save``), and the payload a leader streams for it.

The payload is what the leader sends (the client request "snapshot", daemon.codec.wire): the
canonical CBOR map ``{"format": 1, "cluster": name, "index": slot, "image": bytes,
"members": [[id, peer, client, voter, incarnation], ...]}``, ``image`` the state machine as
of applied slot ``index`` (daemon.core.kv.encode_image: keys with their revisions, leases,
sessions, the membership key) and ``members`` the configuration the leader was in.

The file (format version 1)::

    b"PAXOSBAK" + version (4 bytes BE) + header length (4 bytes BE) + header
    + payload length (8 bytes BE) + payload + SHA-256 of the payload (32 bytes)

``header`` is a canonical CBOR map: ``revision``, ``keys`` (the client keys, not the
membership key), ``index``, ``members`` (ids), ``cluster``, ``created`` (Unix seconds, when
it was saved). It repeats what the payload holds so that ``snapshot status`` can say it at a
glance; ``decode_backup`` checks both agree, so a damaged header is refused like a damaged
payload. Anything that is not a whole, intact file raises ``DamagedBackup`` naming what is
wrong and where.
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple

from fastpath import dumps, loads

from daemon.core.kv import decode_image
from daemon.core.membership import MEMBERS_KEY

__all__ = ["BACKUP_MAGIC", "Backup", "DamagedBackup", "decode_backup", "decode_payload",
           "encode_backup", "encode_payload"]

BACKUP_MAGIC = b"PAXOSBAK"
BACKUP_FORMAT_VERSION = 1
PAYLOAD_FORMAT = 1
_HEAD = struct.Struct(">8sII")  # magic, version, header length
_LENGTH = struct.Struct(">Q")  # the payload's length
DIGEST_BYTES = 32
MAX_HEADER_BYTES = 1 << 20


class DamagedBackup(ValueError):
    """Bytes that are not a whole, intact backup file: the message says what is wrong."""


class Backup(NamedTuple):
    """A decoded payload: the state machine ``image`` (as decode_image gives it) after slot
    ``index``, the ``cluster`` it came from and its ``members`` (member lists)."""

    cluster: str
    index: int
    image: list
    members: list

    @property
    def revision(self) -> int:
        return self.image[2]

    @property
    def keys(self) -> int:
        """The client keys (the membership key is the cluster's own)."""
        return len(self.image[0]) - (MEMBERS_KEY in self.image[0])

    @property
    def leases(self) -> int:
        """The leases the image holds."""
        return len(self.image[5])


def encode_payload(cluster: str, index: int, image_blob: bytes, members: list) -> bytes:
    """The payload a leader streams: its state machine ``image_blob`` (encoded) after ``index``."""
    return dumps({"format": PAYLOAD_FORMAT, "cluster": cluster, "index": index,
                  "image": image_blob, "members": members})


def decode_payload(payload: bytes) -> Backup:
    """The Backup ``payload`` holds; DamagedBackup naming the field if it is not one."""
    try:
        doc = loads(payload)
    except ValueError as exc:
        raise DamagedBackup(f"the payload is not CBOR: {exc}") from None
    if type(doc) is not dict or set(doc) != {"format", "cluster", "index", "image", "members"}:
        raise DamagedBackup("the payload is not a snapshot map {format, cluster, index, image, "
                            "members}")
    if doc["format"] != PAYLOAD_FORMAT:
        raise DamagedBackup(f"payload format {doc['format']!r}; this paxosd reads format "
                            f"{PAYLOAD_FORMAT}")
    index, cluster, members = doc["index"], doc["cluster"], doc["members"]
    if type(index) is not int or index < 1:
        raise DamagedBackup(f"payload index: expected a slot >= 1, got {index!r:.40}")
    if type(cluster) is not str or type(members) is not list or type(doc["image"]) is not bytes:
        raise DamagedBackup("payload cluster, members or image of the wrong type")
    try:
        image = decode_image(doc["image"])
    except ValueError as exc:
        raise DamagedBackup(f"payload image: {exc}") from None
    return Backup(cluster, index, image, members)


def header_of(backup: Backup, created: float) -> dict:
    """The header a file of ``backup`` carries (see the module docstring)."""
    return {"revision": backup.revision, "keys": backup.keys, "index": backup.index,
            "members": [m[0] for m in backup.members], "cluster": backup.cluster,
            "created": int(created)}


def encode_backup(payload: bytes, created: float) -> bytes:
    """The whole file for ``payload`` (which must decode: DamagedBackup if not), saved at Unix
    time ``created``."""
    header = dumps(header_of(decode_payload(payload), created))
    return b"".join((_HEAD.pack(BACKUP_MAGIC, BACKUP_FORMAT_VERSION, len(header)), header,
                     _LENGTH.pack(len(payload)), payload, hashlib.sha256(payload).digest()))


def decode_backup(data: bytes) -> tuple[dict, Backup, str]:
    """``(header, backup, sha256 hex of the payload)`` of a whole file's bytes; DamagedBackup
    naming what is wrong (magic, version, truncation, hash, header) if it is not one."""
    if len(data) < _HEAD.size:
        raise DamagedBackup(f"truncated: {len(data)} bytes, shorter than the "
                            f"{_HEAD.size}-byte file head")
    magic, version, header_len = _HEAD.unpack_from(data)
    if magic != BACKUP_MAGIC:
        raise DamagedBackup(f"not a paxosd snapshot file (bad magic {magic!r} at offset 0)")
    if version != BACKUP_FORMAT_VERSION:
        raise DamagedBackup(f"snapshot file format version {version}; this paxosd reads "
                            f"version {BACKUP_FORMAT_VERSION}")
    at = _HEAD.size
    if header_len > MAX_HEADER_BYTES or at + header_len + _LENGTH.size > len(data):
        raise DamagedBackup(f"truncated or damaged: the header of {header_len} bytes at offset "
                            f"{at} runs past the end of the file ({len(data)} bytes)")
    header_bytes = data[at:at + header_len]
    at += header_len
    (length,) = _LENGTH.unpack_from(data, at)
    at += _LENGTH.size
    end = at + length + DIGEST_BYTES
    if end != len(data):
        what = "truncated" if end > len(data) else "has trailing bytes"
        raise DamagedBackup(f"{what}: the header says {length} payload bytes at offset {at} "
                            f"and a {DIGEST_BYTES}-byte SHA-256 after them ({end} bytes in all), "
                            f"the file has {len(data)}")
    payload = data[at:at + length]
    digest = hashlib.sha256(payload).digest()
    if digest != data[at + length:]:
        raise DamagedBackup(f"SHA-256 mismatch: the payload at offset {at} hashes to "
                            f"{digest.hex()}, the file records {data[at + length:].hex()}")
    backup = decode_payload(payload)
    try:
        header = loads(header_bytes)
    except ValueError as exc:
        raise DamagedBackup(f"the header at offset {_HEAD.size} is not CBOR: {exc}") from None
    expected = header_of(backup, header.get("created", 0) if type(header) is dict else 0)
    if type(header) is not dict or header != expected:
        raise DamagedBackup(f"the header at offset {_HEAD.size} does not match the payload: "
                            f"{header!r:.200}")
    return header, backup, digest.hex()
