"""The write-ahead log of acceptor and learner records (daemon.core.messages.RECORDS).

One file per node, ``<node dir>/wal.log`` (format version 2)::

    file header   b"PAXOSWAL" + version (4 bytes BE) + salt (8 random bytes) + crc32 (4 bytes BE)
    group*        group header + body, one per ``append`` (one write; a group commit's unit)
    group header  salt (8) + this group's file offset (8) + synced (8: the length of the log
                  already durable when the group was written) + body length (8) + crc32 of
                  the body (4) + crc32 of the 36 header bytes before it (4)
    body          record* : payload length (4 bytes BE) + payload

A payload is the CBOR array ``[tag, fields...]`` of one record (``TAG_*`` below); batches are
arrays of command arrays. The file is only ever appended to (``O_APPEND``), and every byte the
log returns on open has passed its group's checksum.

Why the salt: it is chosen at random when a log file is created and never leaves the node, so
no client value can contain a group header. Recovery finds group structure only by salted
headers and never looks for record structure inside a group, so client data cannot forge log
structure.

Durability contract: ``append`` hands bytes to the OS and ``sync`` makes everything appended
before it durable (fdatasync). Callers group-commit: many appends, one sync, and nothing that
depends on a record is sent before the sync that covers it returns. A failed write or sync is
never retried: the log refuses all further use (after a failed fsync the kernel may have
dropped the dirty pages, so what is on disk is unknown); the node must stop, restart and
recover from the file.

Recovery on open reads groups in order until the first one that is not whole and valid (cut
short, zeroed, garbled, bad checksum). Then it looks for evidence that the damaged bytes had
been synced:

- the ``synced`` field of any later valid salted group header: bytes below it were durable
  when that group was written, so damage there is corruption (``CorruptLog``, naming the file
  and the offset); damage above every later header's ``synced`` is the torn tail of writes no
  fsync covered, and is cut with one warning;
- ``wal.synced``, the synced-length marker, a separate small file: "salt, synced length" in
  one of two fixed slots (alternately, each with a checksum), written and fsynced (``seal``)
  only at these points, off the hot path: before the first sync of a log file returns, before
  a sync that covers a PromiseRecord returns, at most once a second under load, when the WAL
  writer goes idle, on open, rotation and close. It only ever records lengths an fsync of the
  log already covered. A log whose valid groups end below the marker's length lost synced
  bytes: ``CorruptLog``. This catches damage to the final synced group (no later header can
  vouch for it), a lost last page, and a log cut to zero records (indistinguishable from a lost
  disk: the node must not vote under its old incarnation having forgotten its promises).

What it still cannot tell: damage to a group synced after the marker's last seal, when no
later group header survives, looks like a torn tail and is cut. That is an Accept group
acknowledged in the moments before a crash, with the writer busy, and only if the crash
damaged bytes an fsync had already covered, which a disk that honours fsync and writes
sectors atomically does not do. Sealing on every sync would close it at the price of a second
fsync per group commit.

The blocking methods (``open``, ``sync``, ``seal``, ``rotate``, ``close``) are meant to run in a
worker thread; ``append`` may run concurrently with ``sync`` (one appender at a time).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable, NamedTuple

from fastpath import dumps as _dumps, loads as _loads  # canonical CBOR, same bytes as cbor2

from daemon.core.messages import AcceptRecord, ChosenRecord, CommitRecord, PromiseRecord

__all__ = [
    "CorruptLog",
    "DataDirInUse",
    "MAX_RECORD_BYTES",
    "StorageError",
    "WAL",
    "decode_record",
    "encode_entries",
    "encode_record",
    "load_incarnation",
    "new_incarnation",
    "save_incarnation",
]

MAGIC = b"PAXOSWAL"
FORMAT_VERSION = 2
SALT_BYTES = 8
FILE_HEAD = struct.Struct(">8sI8s")  # magic, format version, salt
CRC = struct.Struct(">I")
HEADER_BYTES = FILE_HEAD.size + CRC.size  # the file header, with its crc32
_VERSION_END = len(MAGIC) + 4  # every format version so far starts with magic + version
GROUP_HEAD = struct.Struct(">8sQQQI")  # salt, offset, synced, body length, crc32 of the body
GROUP_HEADER_BYTES = GROUP_HEAD.size + CRC.size  # the group header, with its crc32
RECORD_LENGTH = struct.Struct(">I")  # before each payload in a group's body
# The largest payload one record may have; checked before anything is allocated on read. A
# record carries at most one peer frame's worth of batches (config caps frames at 256 MiB).
MAX_RECORD_BYTES = 256 * 1024 * 1024

WAL_FILE = "wal.log"
# The synced-length marker: two slots (in separate 512-byte sectors, so one torn write cannot
# damage both) of salt, synced length, sequence number and crc32; the newest valid one counts.
SYNCED_FILE = "wal.synced"
SYNCED_SLOT = struct.Struct(">8sQQ")
SYNCED_SLOT_OFFSETS = (0, 512)
# Under load, the marker is fsynced at least this often (seconds); an idle writer seals it.
MARKER_SEAL_INTERVAL = 1.0

SNAPSHOT_FILE = "snapshot"
SNAPSHOT_MAGIC = b"PAXOSSNP"
SNAPSHOT_FORMAT_VERSION = 1  # the snapshot file's format is unchanged by WAL format 2
SNAPSHOT_HEADER = SNAPSHOT_MAGIC + struct.pack(">I", SNAPSHOT_FORMAT_VERSION)
ENTRY_HEADER = struct.Struct(">II")  # the snapshot's payload length and crc32
ENTRY_HEADER_BYTES = ENTRY_HEADER.size
LOCK_FILE = "LOCK"
INCARNATION_FILE = "incarnation"
MAX_INCARNATION = (1 << 63) - 1

TAG_PROMISE = 1
TAG_ACCEPT = 2
TAG_CHOSEN = 3
TAG_COMMIT = 4

_log = logging.getLogger("paxosd.storage")

# Test hook, off unless set: the power-loss tests (tests/faults/cluster.py) need to know how
# much of wal.log a real fsync covered, to cut the rest after kill -9 as a power cut would.
_SYNCED_MARKER = os.environ.get("PAXOSD_TEST_SYNCED_MARKER")


def _note_synced(fd: int, synced: int) -> None:
    """Record "<inode> <durable length>" of the log in the marker file: one fixed-width pwrite,
    after the fsync and before anything that depends on it is sent."""
    line = f"{os.fstat(fd).st_ino:020d} {synced:020d}\n".encode()
    marker = os.open(_SYNCED_MARKER, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        os.pwrite(marker, line, 0)
    finally:
        os.close(marker)


class StorageError(Exception):
    """The data directory cannot be used; the message names the path (and offset, if any)."""

    def __init__(
        self, message: str, *, path: os.PathLike | str | None = None, offset: int | None = None
    ):
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.offset = offset


class CorruptLog(StorageError):
    """The log holds a damaged record before valid ones: the node must not serve from it."""


class DataDirInUse(StorageError):
    """Another process holds the data directory's lock."""


# ---------------------------------------------------------------------------------------------
# Record encoding.


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


def encode_entries(records: list) -> bytes:
    """The body of a group holding ``records``: each payload after its 4-byte length."""
    return b"".join(_encode_body(records)[0])


def _encode_body(records: list) -> tuple[list, int, int, bool]:
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


class _Undecodable(ValueError):
    pass


def decode_record(payload: bytes) -> Any:
    """The record a payload encodes; ValueError if it is not one."""
    try:
        item = _loads(payload)
    except Exception as exc:  # the decoder's own error types vary
        raise _Undecodable(f"not CBOR: {exc}") from None
    if not isinstance(item, (list, tuple)) or not item:
        raise _Undecodable(f"expected a [tag, fields...] array, got {type(item).__name__}")
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
    raise _Undecodable(f"unknown record tag {tag!r} with {n - 1} fields")


def _uint(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise _Undecodable(f"{what}: expected an unsigned integer, got {value!r}")
    return value


def _batches(value: Any) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise _Undecodable(f"batches: expected an array, got {type(value).__name__}")
    return tuple(_batch(b) for b in value)


def _batch(value: Any) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise _Undecodable(f"batch: expected an array, got {type(value).__name__}")
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
            raise _Undecodable(
                "command: expected (int, int, int, bytes, bytes|None, bytes|None), "
                f"got {c!r:.100}"
            )
        out.append(tuple(c))
    return tuple(out)



# ---------------------------------------------------------------------------------------------
# The log.


class WAL:
    """An open, locked, validated write-ahead log. Create it with ``WAL.open``."""

    def __init__(self, directory: Path, fd: int, lock_fd: int, size: int, salt: bytes,
                 marker: _SyncedMarker, fsync: bool):
        self.directory = directory
        self.path = directory / WAL_FILE
        self.fsync_enabled = fsync
        self.salt = salt
        self._fd = fd
        self._lock_fd = lock_fd
        self._marker = marker
        self._written = size
        self._synced = size
        self._promise_end = 0  # end of the last group holding a PromiseRecord
        self._failed: str | None = None
        self._closed = False
        self._append_lock = threading.Lock()

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: os.PathLike | str,
        *,
        fsync: bool = True,
        log: logging.Logger | Callable[[str], Any] | None = None,
    ) -> tuple[WAL, list]:
        """Open (creating if needed) the log in ``directory`` and return it with its records.

        Takes the directory's lock (DataDirInUse if another process holds it), validates every
        group, cuts a torn tail (logging one warning), and makes what it returns durable.
        CorruptLog if bytes that were synced are damaged or missing.
        """
        directory = Path(directory)
        warn = _warner(log)
        _make_dirs(directory, fsync)
        lock_fd = _lock(directory)
        fd = -1
        marker = None
        try:
            path = directory / WAL_FILE
            marker = _SyncedMarker.open(directory, fsync)
            if not os.path.lexists(path):
                marker.refuse_missing_log(path)
                _create(directory, fsync)
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            except OSError as exc:
                raise _os_error("cannot open the log", path, exc) from exc
            found = _scan(fd, path)
            marker.refuse_lost_synced_bytes(path, found)
            if found.end < found.size:
                try:
                    os.ftruncate(fd, found.end)
                    _fsync(fd)
                except OSError as exc:
                    raise _os_error("cannot cut the torn tail of the log", path, exc) from exc
                warn(
                    f"{path}: cut a torn tail at offset {found.end}: {found.size - found.end} "
                    f"bytes ({found.reason}); the {len(found.records)} records before it are "
                    f"intact"
                )
            elif fsync:
                # What the last process wrote may still be only in the page cache; what we
                # return must be durable before anything is built on it.
                try:
                    _fsync(fd)
                except OSError as exc:
                    raise _os_error("cannot fsync the log", path, exc) from exc
            if _SYNCED_MARKER:  # first: the test's cut must never go below the real marker
                _note_synced(fd, found.end)
            try:
                marker.reset(found.salt, found.end)
            except OSError as exc:
                raise _os_error("cannot write the synced-length marker", marker.path,
                                exc) from exc
            wal = cls(directory, fd, lock_fd, found.end, found.salt, marker, fsync)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            if marker is not None:
                marker.close()
            os.close(lock_fd)
            raise
        return wal, found.records

    # -- compaction ----------------------------------------------------------------------------

    def rotate(self, records: list) -> None:
        """Replace the log by one holding only ``records`` (a snapshot's checkpoint).

        Call it once the snapshot those records build on is durable (``write_snapshot``): the
        new log (with a new salt) is written and synced under a temporary name and renamed over
        the old one, so a crash leaves either the old log or the new one, each complete.
        """
        salt = _new_salt()
        data = _file_header(salt)
        if records:
            data += _group(salt, HEADER_BYTES, HEADER_BYTES, *_encode_body(records)[:3])
        with self._append_lock:
            self._check_usable()
            tmp = self.directory / (WAL_FILE + ".tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
                try:
                    _write_all(fd, data)
                    if self.fsync_enabled:
                        _fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, self.path)
                if self.fsync_enabled:
                    _fsync_dir(self.directory)
                new_fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            except OSError as exc:
                self._fail(f"cannot rotate the log: {exc}")
                raise _os_error("cannot rotate the log", self.path, exc) from exc
            os.close(self._fd)
            self._fd = new_fd
            self.salt = salt
            self._written = self._synced = len(data)
            self._promise_end = 0
            self._guard(self._marker.path, "cannot write the synced-length marker",
                        self._marker.reset, salt, len(data))

    # -- writing -------------------------------------------------------------------------------

    def append(self, records: list) -> int:
        """Write ``records`` after the existing ones as one group, in one write; return the
        bytes written.

        Not durable until a later ``sync`` returns. Raises StorageError if the write fails, after
        which the log refuses all further appends and syncs.
        """
        if not records:
            return 0
        parts, length, crc, promise = _encode_body(records)  # raises before anything is written
        with self._append_lock:
            self._check_usable()
            data = _group(self.salt, self._written, self._synced, parts, length, crc)
            view = memoryview(data)
            done = 0
            try:
                while done < len(data):
                    n = os.write(self._fd, view[done:])
                    if n <= 0:  # pragma: no cover - regular files do not do this
                        raise OSError(errno.EIO, "write returned 0")
                    done += n
            except OSError as exc:
                self._fail(f"write of {len(data)} bytes at offset {self._written + done} failed")
                if done:
                    # Take back the partial group so the file ends on a group boundary; if
                    # this fails too, recovery on open cuts it as a torn tail.
                    try:
                        os.ftruncate(self._fd, self._written)
                    except OSError:
                        pass
                raise _os_error(
                    f"cannot append {len(records)} records at offset {self._written + done}",
                    self.path,
                    exc,
                ) from exc
            self._written += done
            if promise:
                self._promise_end = self._written
        return done

    def sync(self) -> float:
        """Make everything appended so far durable; return the seconds the fsync took.

        With fsync disabled this only marks the bytes as synced (and takes no time). A failed
        fsync is not retried: the log refuses all further use and the node must stop.
        """
        self._check_usable()
        target = self._written
        if target <= self._synced:
            return 0.0
        if not self.fsync_enabled:
            self._synced = target
            return 0.0
        start = time.perf_counter()
        try:
            _fsync(self._fd)
        except OSError as exc:
            self._fail("fsync failed")
            raise _os_error("cannot fsync the log (a failed fsync is not retried: what the "
                            "disk holds is unknown; stop the node and restart it to recover "
                            "from the file)", self.path, exc) from exc
        self._synced = max(self._synced, target)
        if _SYNCED_MARKER:
            _note_synced(self._fd, self._synced)
        marker = self._marker
        marker.note(self._synced)
        # The marker must be durable before this sync returns when no later group could
        # vouch for what it covers in time: the first records of a log file (else a log cut
        # to zero records looks new) and a promise (else a damaged one is cut as torn).
        if (marker.durable <= HEADER_BYTES or marker.durable < self._promise_end <= target
                or time.monotonic() - marker.sealed_at >= MARKER_SEAL_INTERVAL):
            self._guard(marker.path, "cannot fsync the synced-length marker", marker.seal)
        return time.perf_counter() - start

    def seal(self) -> None:
        """Make the synced-length marker durable up to everything synced (one fsync of the
        small marker file, and only if it lags), so that damage to the last synced group is
        reported instead of cut as a torn tail. The WAL writer calls it when it goes idle."""
        self._check_usable()
        self._guard(self._marker.path, "cannot fsync the synced-length marker",
                    self._marker.seal)

    def fail(self, why: str) -> None:
        """Refuse all further use: the caller hit a storage error elsewhere in this data
        directory (a failed snapshot write, say), after which nothing more is written."""
        if self._failed is None:
            self._fail(why)

    @property
    def written_bytes(self) -> int:
        """Size of the log file including everything appended (header included)."""
        return self._written

    @property
    def synced_bytes(self) -> int:
        """Length of the log prefix known durable (after fsync; with fsync off: after sync)."""
        return self._synced

    @property
    def failed(self) -> bool:
        return self._failed is not None

    def close(self) -> None:
        """Sync and seal (unless the log failed), close the files and release the lock."""
        if self._closed:
            return
        try:
            if self._failed is None:
                self.sync()
                self.seal()
        finally:
            self._closed = True
            os.close(self._fd)
            self._marker.close()
            os.close(self._lock_fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> WAL:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("failed" if self._failed else "open")
        return f"<WAL {self.path} {state} written={self._written} synced={self._synced}>"

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError(f"{self.path}: the log is closed", path=self.path)
        if self._failed is not None:
            raise StorageError(
                f"{self.path}: the log failed earlier ({self._failed}) and accepts no more "
                f"writes; restart the node to recover from what is on disk",
                path=self.path,
            )

    def _guard(self, path: Path, what: str, step: Callable, *args: Any) -> None:
        """Run a marker step; an OSError fails the log like a failed fsync of the log."""
        try:
            step(*args)
        except OSError as exc:
            self._fail(what)
            raise _os_error(what, path, exc) from exc

    def _fail(self, why: str) -> None:
        self._failed = why


def _new_salt() -> bytes:
    """Eight random bytes, not all equal (so no fill pattern of a disk can match them)."""
    while True:
        salt = os.urandom(SALT_BYTES)
        if len(set(salt)) > 1:
            return salt


def _file_header(salt: bytes) -> bytes:
    head = FILE_HEAD.pack(MAGIC, FORMAT_VERSION, salt)
    return head + CRC.pack(zlib.crc32(head))


def _group(salt: bytes, offset: int, synced: int, parts: list, length: int, crc: int) -> bytes:
    """One group: its header (for ``offset``, vouching that ``synced`` bytes are durable)
    and the body ``parts``, joined in one copy."""
    head = GROUP_HEAD.pack(salt, offset, synced, length, crc)
    return b"".join([head, CRC.pack(zlib.crc32(head)), *parts])


# ---------------------------------------------------------------------------------------------
# The synced-length marker.


class _SyncedMarker:
    """``wal.synced``: the longest prefix of the current log known synced, outside the log.

    ``note`` records (in memory) what an fsync of the log made durable; ``seal`` writes it to
    the file (one pwrite of a slot) and fsyncs it. Only lengths already synced are written, so
    whatever version of the file a crash leaves never claims more than was synced. With fsync
    off it is read (an earlier run's claims still hold) but never written.
    """

    def __init__(self, path: Path, fd: int, slots: list[tuple[bytes, int, int]]):
        self.path = path
        self._fd = fd  # -1: read only
        self._slots = slots  # the valid (salt, synced, sequence) slots found at open
        self._seq = max((s[2] for s in slots), default=0)
        self._salt = b""
        self.synced = 0  # the length of the current log an fsync made durable
        self.durable = 0  # the length this file holds durably for the current log
        self.sealed_at = time.monotonic()

    @classmethod
    def open(cls, directory: Path, writable: bool) -> _SyncedMarker:
        path = directory / SYNCED_FILE
        try:
            with open(path, "rb") as f:
                data = f.read(SYNCED_SLOT_OFFSETS[-1] + SYNCED_SLOT.size + CRC.size)
        except FileNotFoundError:
            data = None
        except OSError as exc:
            raise _os_error("cannot read the synced-length marker", path, exc) from exc
        slots = []
        for at in SYNCED_SLOT_OFFSETS:
            body = data[at:at + SYNCED_SLOT.size] if data else b""
            if len(body) == SYNCED_SLOT.size and data[at + len(body):at + len(body) + CRC.size] \
                    == CRC.pack(zlib.crc32(body)):
                slots.append(SYNCED_SLOT.unpack(body))
        fd = -1
        if writable:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
                if data is None:
                    _fsync_dir(directory)  # its name must be durable before its content counts
            except OSError as exc:
                if fd >= 0:
                    os.close(fd)
                raise _os_error("cannot create the synced-length marker", path, exc) from exc
        return cls(path, fd, slots)

    def claim(self, salt: bytes | None) -> int:
        """The synced length recorded for the log with ``salt`` (any log, if None), or 0."""
        return max((s[1] for s in self._slots if salt is None or s[0] == salt), default=0)

    def refuse_missing_log(self, log_path: Path) -> None:
        claimed = self.claim(None)
        if claimed > HEADER_BYTES:
            raise CorruptLog(
                f"{log_path}: offset 0: the log is missing, but {self.path} records that "
                f"{claimed} bytes of it were synced. {_LOST_STATE}",
                path=log_path,
                offset=0,
            )

    def refuse_lost_synced_bytes(self, log_path: Path, found: _Found) -> None:
        claimed = self.claim(found.salt)
        if claimed <= found.end:
            return
        why = f" ({found.reason})" if found.reason else ""
        empty = (" The log holds no records at all, as after a lost disk."
                 if found.end == HEADER_BYTES else "")
        raise CorruptLog(
            f"{log_path}: offset {found.end}: the log's valid groups end here{why}, but "
            f"{self.path} records that {claimed} bytes of this log were synced: records the "
            f"node acknowledged are damaged or missing; refusing to serve from it.{empty} "
            f"{_LOST_STATE}",
            path=log_path,
            offset=found.end,
        )

    def reset(self, salt: bytes, synced: int) -> None:
        """Start recording for the log with ``salt``, ``synced`` bytes long and all durable."""
        self._salt = salt
        self.synced = synced
        self.durable = 0
        self.seal()

    def note(self, synced: int) -> None:
        """An fsync of the log made ``synced`` bytes durable (nothing written yet)."""
        self.synced = synced

    def seal(self) -> None:
        """Make the file hold what ``note`` recorded, durably (if it lags): one pwrite into the
        older slot, then fsync."""
        if self._fd < 0 or self.durable >= self.synced:
            return
        synced = self.synced
        self._seq += 1
        body = SYNCED_SLOT.pack(self._salt, synced, self._seq)
        os.pwrite(self._fd, body + CRC.pack(zlib.crc32(body)),
                  SYNCED_SLOT_OFFSETS[self._seq % len(SYNCED_SLOT_OFFSETS)])
        _fsync(self._fd)
        self.durable = synced
        self.sealed_at = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_LOST_STATE = (
    "The node must not vote again under its old incarnation having forgotten what it "
    "promised and accepted. Restore the data directory from a backup, or move it aside and "
    "restart the node: on an empty data directory it rejoins under a new incarnation and "
    "catches up from the others"
)


# ---------------------------------------------------------------------------------------------
# Helpers: files, lock, validation.


def _warner(log: Any) -> Callable[[str], None]:
    if log is None:
        return _log.warning
    if hasattr(log, "warning"):
        return log.warning
    return log


def _os_error(what: str, path: Path, exc: OSError) -> StorageError:
    reason = exc.strerror or str(exc)
    name = errno.errorcode.get(exc.errno, "") if exc.errno else ""
    detail = f"{reason} ({name})" if name else reason
    return StorageError(f"{path}: {what}: {detail}", path=path)


def _fsync(fd: int) -> None:
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - macOS
        os.fsync(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(directory: Path, fsync: bool) -> None:
    """Create ``directory`` and missing parents; fsync each parent that gained an entry."""
    missing = []
    d = directory.absolute()
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o750)
        except FileExistsError:
            pass
        except OSError as exc:
            raise _os_error("cannot create the data directory", d, exc) from exc
        if fsync:
            try:
                _fsync_dir(d.parent)
            except OSError as exc:
                raise _os_error("cannot fsync the directory", d.parent, exc) from exc
    if not directory.is_dir():
        raise StorageError(f"{directory}: the data directory is not a directory", path=directory)


def _lock(directory: Path) -> int:
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise _os_error("cannot open the lock file", path, exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        try:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
        except OSError:
            holder = "unknown"
        finally:
            os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise DataDirInUse(
                f"{directory}: the data directory is in use by another paxosd process "
                f"(pid {holder}, holding {path}); stop it first or use another directory",
                path=directory,
            ) from None
        raise _os_error("cannot lock the data directory", path, exc) from exc
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise _os_error("cannot write the lock file", path, exc) from exc
    return fd


def _create(directory: Path, fsync: bool) -> None:
    """Create an empty log atomically: a complete header, or no file at all."""
    path = directory / WAL_FILE
    tmp = directory / (WAL_FILE + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            _write_all(fd, _file_header(_new_salt()))
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        if fsync:
            _fsync_dir(directory)
    except OSError as exc:
        raise _os_error("cannot create the log", path, exc) from exc


class _Found(NamedTuple):
    """What a scan of the log found."""

    salt: bytes
    records: list
    end: int  # the end of the last valid group: what the log keeps
    size: int
    reason: str  # why the bytes from ``end`` on are not a valid group ("" if there are none)


_OK, _BAD, _UNDECODABLE = "ok", "bad", "undecodable"


def _scan(fd: int, path: Path) -> _Found:
    """Validate the log: its valid groups in order, and where and why they end.

    CorruptLog if the first damaged group lies below what a later valid group header records
    as synced, or if a group's checksum matches but its records do not decode.
    """
    try:
        size = os.fstat(fd).st_size
    except OSError as exc:
        raise _os_error("cannot stat the log", path, exc) from exc
    if size < _VERSION_END:
        raise CorruptLog(
            f"{path}: offset 0: the file is {size} bytes, shorter than the {HEADER_BYTES}-byte "
            f"header; it is not a paxosd WAL (logs are created whole)",
            path=path,
            offset=0,
        )
    try:
        mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise _os_error("cannot read the log", path, exc) from exc
    try:
        salt = _file_salt(mm, size, path)
        records: list = []
        offset = HEADER_BYTES
        while offset < size:
            status, value, end = _group_at(mm, offset, size, salt)
            if status is _OK:
                records.extend(value)
                offset = end
                continue
            if status is _UNDECODABLE:
                raise CorruptLog(
                    f"{path}: offset {offset}: the group's checksum matches but its records do "
                    f"not decode ({value}); written by an incompatible version, or a bug. "
                    f"Refusing to cut it",
                    path=path,
                    offset=offset,
                )
            claim, where = _synced_claim_after(mm, offset + 1, size, salt)
            if claim > offset:
                raise CorruptLog(
                    f"{path}: offset {offset}: corrupt group ({value}) below offset {claim}, "
                    f"which the valid group header at offset {where} records as synced: the "
                    f"log is damaged before its end; refusing to serve from it. Restore this "
                    f"node's data directory or rebuild it from the other members",
                    path=path,
                    offset=offset,
                )
            return _Found(salt, records, offset, size, value)
        return _Found(salt, records, offset, size, "")
    finally:
        mm.close()


def _file_salt(mm: mmap.mmap, size: int, path: Path) -> bytes:
    """The salt of a valid version-2 file header; refuses anything else, naming the file."""
    if mm[:len(MAGIC)] != MAGIC:
        raise CorruptLog(
            f"{path}: offset 0: bad magic {mm[:len(MAGIC)]!r}, expected {MAGIC!r}; not a "
            f"paxosd WAL",
            path=path,
            offset=0,
        )
    (version,) = struct.unpack(">I", mm[len(MAGIC):_VERSION_END])
    if version != FORMAT_VERSION:
        raise StorageError(
            f"{path}: WAL format version {version}; this paxosd reads only version "
            f"{FORMAT_VERSION} and does not migrate older logs. Run the paxosd that wrote it, "
            f"or move the data directory aside and start this member again: on an empty data "
            f"directory it rejoins under a new incarnation and catches up from the others",
            path=path,
        )
    if size < HEADER_BYTES:
        raise CorruptLog(
            f"{path}: offset 0: the file is {size} bytes, shorter than the {HEADER_BYTES}-byte "
            f"header; it is not a paxosd WAL (logs are created whole)",
            path=path,
            offset=0,
        )
    head = mm[:FILE_HEAD.size]
    if CRC.unpack_from(mm, FILE_HEAD.size)[0] != zlib.crc32(head):
        raise CorruptLog(f"{path}: offset 0: file header checksum mismatch", path=path, offset=0)
    return FILE_HEAD.unpack(head)[2]


def _group_at(mm: mmap.mmap, offset: int, size: int, salt: bytes) -> tuple[str, Any, int]:
    """(_OK, records, end) | (_BAD, why, 0) | (_UNDECODABLE, why, end) for the group at offset."""
    if offset + GROUP_HEADER_BYTES > size:
        return _BAD, f"group header cut short: {size - offset} of {GROUP_HEADER_BYTES} bytes", 0
    head = mm[offset:offset + GROUP_HEAD.size]
    found_salt, at, synced, length, body_crc = GROUP_HEAD.unpack(head)
    if found_salt != salt:
        return _BAD, "no group header (zeros, garbage or a torn write)", 0
    if CRC.unpack_from(mm, offset + GROUP_HEAD.size)[0] != zlib.crc32(head):
        return _BAD, "group header checksum mismatch", 0
    if at != offset or not HEADER_BYTES <= synced <= offset:
        return _BAD, f"a group header written for offset {at}", 0
    start = offset + GROUP_HEADER_BYTES
    end = start + length
    if end > size:
        return _BAD, f"group cut short: {size - start} of {length} bytes", 0
    body = mm[start:end]
    if zlib.crc32(body) != body_crc:
        return _BAD, "group checksum mismatch", 0
    try:
        return _OK, _decode_body(body), end
    except _Undecodable as exc:
        return _UNDECODABLE, str(exc), end


def _decode_body(body: bytes) -> list:
    """The records of a group body whose checksum matched."""
    out = []
    pos, n = 0, len(body)
    while pos < n:
        if pos + RECORD_LENGTH.size > n:
            raise _Undecodable(f"a record length cut short at body offset {pos}")
        (length,) = RECORD_LENGTH.unpack_from(body, pos)
        start = pos + RECORD_LENGTH.size
        end = start + length
        if length == 0 or end > n:
            raise _Undecodable(f"record length {length} at body offset {pos} overruns the group")
        out.append(decode_record(body[start:end]))
        pos = end
    return out


def _synced_claim_after(mm: mmap.mmap, start: int, size: int, salt: bytes) -> tuple[int, int]:
    """(the largest synced length a valid group header at or after ``start`` records, that
    header's offset), or (0, -1). Only salted headers count, so client data cannot vouch."""
    best, where = 0, -1
    at = mm.find(salt, start)
    while at != -1 and at + GROUP_HEADER_BYTES <= size:
        head = mm[at:at + GROUP_HEAD.size]
        _, offset, synced, _, _ = GROUP_HEAD.unpack(head)
        if (offset == at and best < synced <= at and synced >= HEADER_BYTES
                and CRC.unpack_from(mm, at + GROUP_HEAD.size)[0] == zlib.crc32(head)):
            best, where = synced, at
        at = mm.find(salt, at + 1)
    return best, where


# ---------------------------------------------------------------------------------------------
# Snapshots: the state machine as of a slot, in one file replaced atomically.


def write_snapshot(directory: os.PathLike | str, index: int, blob: bytes, *, fsync: bool = True) -> int:
    """Write the snapshot taken at slot ``index`` (``blob``: the encoded state machine image):
    temporary file, fsync, rename over the old snapshot, fsync the directory. Returns its size."""
    directory = Path(directory)
    path = directory / SNAPSHOT_FILE
    payload = _dumps([index, blob])
    data = SNAPSHOT_HEADER + ENTRY_HEADER.pack(len(payload), zlib.crc32(payload)) + payload
    tmp = directory / (SNAPSHOT_FILE + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            _write_all(fd, data)
            if fsync:
                _fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        if fsync:
            _fsync_dir(directory)
    except OSError as exc:
        raise _os_error("cannot write the snapshot", path, exc) from exc
    return len(data)


def read_snapshot(directory: os.PathLike | str) -> tuple[int, bytes] | None:
    """The snapshot in ``directory`` as (index, blob), or None if there is none.

    A snapshot is written whole or not at all, so any damage is corruption: CorruptLog names
    the file and the offset, and the node does not start on it.
    """
    path = Path(directory) / SNAPSHOT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _os_error("cannot read the snapshot", path, exc) from exc
    head = len(SNAPSHOT_HEADER)
    if data[:len(SNAPSHOT_MAGIC)] != SNAPSHOT_MAGIC:
        raise CorruptLog(f"{path}: not a paxosd snapshot (bad magic at offset 0)", path=path, offset=0)
    if data[:head] != SNAPSHOT_HEADER:
        raise CorruptLog(f"{path}: unsupported snapshot format version at offset {len(SNAPSHOT_MAGIC)}",
                         path=path, offset=len(SNAPSHOT_MAGIC))
    if len(data) < head + ENTRY_HEADER_BYTES:
        raise CorruptLog(f"{path}: truncated at offset {len(data)}", path=path, offset=len(data))
    length, crc = ENTRY_HEADER.unpack_from(data, head)
    payload = data[head + ENTRY_HEADER_BYTES:]
    if len(payload) != length:
        raise CorruptLog(f"{path}: truncated or overlong: {len(payload)} payload bytes at offset "
                         f"{head + ENTRY_HEADER_BYTES}, header says {length}",
                         path=path, offset=head + ENTRY_HEADER_BYTES)
    if zlib.crc32(payload) != crc:
        raise CorruptLog(f"{path}: checksum mismatch in the payload at offset {head + ENTRY_HEADER_BYTES}",
                         path=path, offset=head + ENTRY_HEADER_BYTES)
    try:
        index, blob = _loads(payload)
        if type(index) is not int or index < 1 or type(blob) is not bytes:
            raise ValueError("not [index, image]")
    except ValueError as exc:
        raise CorruptLog(f"{path}: undecodable snapshot at offset {head + ENTRY_HEADER_BYTES}: {exc}",
                         path=path, offset=head + ENTRY_HEADER_BYTES) from None
    return index, blob


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    done = 0
    while done < len(data):
        n = os.write(fd, view[done:])
        if n <= 0:  # pragma: no cover - regular files do not do this
            raise OSError(errno.EIO, "write returned 0")
        done += n


# ---------------------------------------------------------------------------------------------
# The incarnation: which life of this data directory the node runs (see daemon.core.membership).


def new_incarnation() -> int:
    """A random non-zero incarnation, never the initial members' 0."""
    return int.from_bytes(os.urandom(8), "big") & MAX_INCARNATION or 1


def load_incarnation(directory: os.PathLike | str, *, empty: bool, join: bool,
                     new_cluster: bool = False, fsync: bool = True) -> tuple[int | None, str]:
    """This data directory's incarnation, and how it was found (for the log).

    The ``incarnation`` file holds it once chosen. Without one: a directory that holds state
    (``empty`` false) predates the file and is incarnation 0, the initial members'. An empty
    one gets a random non-zero number with ``join`` (a node joining a running cluster), 0 with
    ``new_cluster`` (the operator says this is a brand-new cluster), and otherwise None: not
    known yet. The protocol core then decides it (daemon.core.incarnation) and the server saves it
    with ``save_incarnation``; a node that lost its data must not take 0 on its own word.
    A new file is written before the node says anything to anyone.
    """
    directory = Path(directory)
    path = directory / INCARNATION_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = None
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageError(f"{path}: cannot read the incarnation: {exc}") from exc
    if text is not None:
        value = text.strip()
        if not value.isdigit() or not 0 <= int(value) <= MAX_INCARNATION:
            raise CorruptLog(f"{path}: not an incarnation number: {value[:40]!r}", path=path,
                             offset=0)
        return int(value), "from the data directory"
    if not empty:
        incarnation, how = 0, "0: the data directory predates incarnations"
    elif join:
        incarnation = new_incarnation()
        how = "new: joining a running cluster with an empty data directory"
    elif new_cluster:
        incarnation, how = 0, "0: --new-cluster, an initial member of a brand-new cluster"
    else:
        return None, ("not known yet: an empty data directory (a first start, or lost data); "
                      "asking the other initial members whether the cluster is new")
    save_incarnation(directory, incarnation, fsync=fsync)
    return incarnation, how


def save_incarnation(directory: os.PathLike | str, incarnation: int, *,
                     fsync: bool = True) -> None:
    """Write the ``incarnation`` file atomically (temporary file, fsync, rename, fsync of the
    directory): once this returns it survives a crash."""
    if not 0 <= incarnation <= MAX_INCARNATION:
        raise ValueError(f"incarnation {incarnation} is not in 0..{MAX_INCARNATION}")
    directory = Path(directory)
    path = directory / INCARNATION_FILE
    tmp = directory / (INCARNATION_FILE + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            _write_all(fd, f"{incarnation}\n".encode())
            if fsync:
                _fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        if fsync:
            _fsync_dir(directory)
    except OSError as exc:
        raise _os_error("cannot write the incarnation", path, exc) from exc
