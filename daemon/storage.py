"""The write-ahead log of acceptor and learner records (daemon.messages.RECORDS).

One file per node, ``<node dir>/wal.log``::

    header   b"PAXOSWAL" + format version (4 bytes, big-endian)
    entry*   payload length (4 bytes BE) + zlib.crc32 of the payload (4 bytes BE) + payload

A payload is the CBOR array ``[tag, fields...]`` of one record (``TAG_*`` below); batches are
arrays of command arrays. The file is only ever appended to (``O_APPEND``), and every byte the
log returns on open has passed its checksum.

Durability contract: ``append`` hands bytes to the OS and ``sync`` makes everything appended
before it durable (fdatasync). Callers group-commit: many appends, one sync, and nothing that
depends on a record is sent before the sync that covers it returns. After any failed write or
sync the log refuses further use (after a failed fsync the kernel may have dropped the dirty
pages, so what is on disk is unknown); the node must restart and recover from the file.

Recovery on open: a bad entry (cut short at end of file, bad checksum, impossible length) that
no valid entry follows is a torn tail of the last unsynced write: it is cut off, with one
warning. A bad entry that a valid entry follows is corruption inside the log: ``CorruptLog``,
because cutting there would forget records that were acknowledged.

The blocking methods (``open``, ``sync``, ``close``) are meant to run in a worker thread;
``append`` may run concurrently with ``sync`` (one appender at a time).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import re
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable

from fastpath import dumps as _dumps, loads as _loads  # canonical CBOR, same bytes as cbor2

from daemon.messages import AcceptRecord, ChosenRecord, CommitRecord, PromiseRecord

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
FORMAT_VERSION = 1
HEADER = MAGIC + struct.pack(">I", FORMAT_VERSION)
HEADER_BYTES = len(HEADER)
ENTRY_HEADER = struct.Struct(">II")  # payload length, crc32 of the payload
ENTRY_HEADER_BYTES = ENTRY_HEADER.size
# The largest payload one record may have; checked before anything is allocated on read. A
# record carries at most one peer frame's worth of batches (config caps frames at 256 MiB).
MAX_RECORD_BYTES = 256 * 1024 * 1024

WAL_FILE = "wal.log"
SNAPSHOT_FILE = "snapshot"
SNAPSHOT_MAGIC = b"PAXOSSNP"
SNAPSHOT_HEADER = SNAPSHOT_MAGIC + struct.pack(">I", FORMAT_VERSION)
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
    """The log entries (length, checksum, payload) of ``records``, concatenated."""
    parts = []
    for record in records:
        payload = encode_record(record)
        if len(payload) > MAX_RECORD_BYTES:
            raise ValueError(
                f"WAL record of {len(payload)} bytes exceeds the limit of {MAX_RECORD_BYTES} "
                f"bytes: {type(record).__name__}"
            )
        parts.append(ENTRY_HEADER.pack(len(payload), zlib.crc32(payload)))
        parts.append(payload)
    return b"".join(parts)


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

    def __init__(self, directory: Path, fd: int, lock_fd: int, size: int, fsync: bool):
        self.directory = directory
        self.path = directory / WAL_FILE
        self.fsync_enabled = fsync
        self._fd = fd
        self._lock_fd = lock_fd
        self._written = size
        self._synced = size
        self._failed: str | None = None
        self._closed = False
        self._append_lock = threading.Lock()
        if _SYNCED_MARKER:
            _note_synced(fd, size)

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
        entry, cuts a torn tail (logging one warning), and makes what it returns durable.
        """
        directory = Path(directory)
        warn = _warner(log)
        _make_dirs(directory, fsync)
        lock_fd = _lock(directory)
        fd = -1
        try:
            path = directory / WAL_FILE
            if not os.path.lexists(path):
                _create(directory, fsync)
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            except OSError as exc:
                raise _os_error("cannot open the log", path, exc) from exc
            records, good_end, size, reason = _scan(fd, path)
            if good_end < size:
                try:
                    os.ftruncate(fd, good_end)
                    _fsync(fd)
                except OSError as exc:
                    raise _os_error("cannot cut the torn tail of the log", path, exc) from exc
                warn(
                    f"{path}: cut a torn tail at offset {good_end}: {size - good_end} bytes "
                    f"({reason}); the {len(records)} records before it are intact"
                )
            elif fsync:
                # What the last process wrote may still be only in the page cache; what we
                # return must be durable before anything is built on it.
                try:
                    _fsync(fd)
                except OSError as exc:
                    raise _os_error("cannot fsync the log", path, exc) from exc
            wal = cls(directory, fd, lock_fd, good_end, fsync)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            os.close(lock_fd)
            raise
        return wal, records

    # -- compaction ----------------------------------------------------------------------------

    def rotate(self, records: list) -> None:
        """Replace the log by one holding only ``records`` (a snapshot's checkpoint).

        Call it once the snapshot those records build on is durable (``write_snapshot``): the
        new log is written and synced under a temporary name and renamed over the old one, so
        a crash leaves either the old log or the new one, each complete.
        """
        data = HEADER + encode_entries(records)
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
            self._written = self._synced = len(data)

    # -- writing -------------------------------------------------------------------------------

    def append(self, records: list) -> int:
        """Write ``records`` after the existing ones, in one write; return the bytes written.

        Not durable until a later ``sync`` returns. Raises StorageError if the write fails, after
        which the log refuses all further appends and syncs.
        """
        if not records:
            return 0
        data = encode_entries(records)  # raises before anything is written
        with self._append_lock:
            self._check_usable()
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
                    # Take back the partial entries so the file ends on a record boundary; if
                    # this fails too, recovery on open cuts them as a torn tail.
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
        return done

    def sync(self) -> float:
        """Make everything appended so far durable; return the seconds the fsync took.

        With fsync disabled this only marks the bytes as synced (and takes no time).
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
            raise _os_error("cannot fsync the log", self.path, exc) from exc
        self._synced = max(self._synced, target)
        if _SYNCED_MARKER:
            _note_synced(self._fd, self._synced)
        return time.perf_counter() - start

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
        """Sync (unless the log failed), close the file and release the directory lock."""
        if self._closed:
            return
        try:
            if self._failed is None:
                self.sync()
        finally:
            self._closed = True
            os.close(self._fd)
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

    def _fail(self, why: str) -> None:
        self._failed = why


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
            os.write(fd, HEADER)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        if fsync:
            _fsync_dir(directory)
    except OSError as exc:
        raise _os_error("cannot create the log", path, exc) from exc


# A record payload starts with the CBOR array head and tag of one of the records: [1, ballot],
# [4, commit_index] (at most 11 bytes), [3, first_slot, batches], [2, ballot, first_slot,
# batches]. Resync scans look for these before paying for a checksum.
_PAYLOAD_START = re.compile(rb"\x82[\x01\x04]|\x83\x03|\x84\x02")
_SHORT_RECORD_BYTES = 11


def _scan(fd: int, path: Path) -> tuple[list, int, int, str]:
    """Validate the log; return (records, end of the last good entry, file size, why cut)."""
    try:
        size = os.fstat(fd).st_size
    except OSError as exc:
        raise _os_error("cannot stat the log", path, exc) from exc
    if size < HEADER_BYTES:
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
        head = mm[:HEADER_BYTES]
        if head[:8] != MAGIC:
            raise CorruptLog(
                f"{path}: offset 0: bad magic {head[:8]!r}, expected {MAGIC!r}; not a paxosd WAL",
                path=path,
                offset=0,
            )
        (version,) = struct.unpack(">I", head[8:])
        if version != FORMAT_VERSION:
            raise StorageError(
                f"{path}: WAL format version {version}; this paxosd reads version {FORMAT_VERSION}",
                path=path,
            )
        records = []
        offset = HEADER_BYTES
        while offset < size:
            status, value, end = _entry_at(mm, offset, size)
            if status == "ok":
                records.append(value)
                offset = end
                continue
            if status == "undecodable":
                raise CorruptLog(
                    f"{path}: offset {offset}: the record's checksum matches but it does not "
                    f"decode ({value}); written by an incompatible version, or a bug. Refusing "
                    f"to cut it",
                    path=path,
                    offset=offset,
                )
            later = _next_valid_entry(mm, offset + 1, size)
            if later is not None:
                raise CorruptLog(
                    f"{path}: offset {offset}: corrupt record ({value}) followed by a valid "
                    f"record at offset {later}: the log is damaged before its end; refusing to "
                    f"serve from it. Restore this node's data directory or rebuild it from the "
                    f"other members",
                    path=path,
                    offset=offset,
                )
            return records, offset, size, value
        return records, offset, size, ""
    finally:
        mm.close()


def _entry_at(mm: mmap.mmap, offset: int, size: int) -> tuple[str, Any, int]:
    """("ok", record, end) | ("bad", why, 0) | ("undecodable", why, end) for the entry at offset."""
    if offset + ENTRY_HEADER_BYTES > size:
        return "bad", f"entry header cut short: {size - offset} of {ENTRY_HEADER_BYTES} bytes", 0
    length, crc = ENTRY_HEADER.unpack_from(mm, offset)
    if length == 0:
        return "bad", "zero length", 0
    if length > MAX_RECORD_BYTES:
        return "bad", f"length {length} exceeds the limit of {MAX_RECORD_BYTES}", 0
    start = offset + ENTRY_HEADER_BYTES
    end = start + length
    if end > size:
        return "bad", f"payload cut short: {size - start} of {length} bytes", 0
    payload = mm[start:end]
    if zlib.crc32(payload) != crc:
        return "bad", "checksum mismatch", 0
    try:
        return "ok", decode_record(payload), end
    except _Undecodable as exc:
        return "undecodable", str(exc), end


def _next_valid_entry(mm: mmap.mmap, start: int, size: int) -> int | None:
    """The offset of the first valid entry at or after ``start``, if any.

    Looking beyond the declared length of the bad entry catches a corrupt length field too.
    """
    for match in _PAYLOAD_START.finditer(mm, start + ENTRY_HEADER_BYTES):
        offset = match.start() - ENTRY_HEADER_BYTES
        length = ENTRY_HEADER.unpack_from(mm, offset)[0]
        if length < 3 or offset + ENTRY_HEADER_BYTES + length > size:
            continue
        if mm[match.start()] == 0x82 and length > _SHORT_RECORD_BYTES:
            continue
        if _entry_at(mm, offset, size)[0] == "ok":
            return offset
    return None


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
# The incarnation: which life of this data directory the node runs (see daemon.membership).


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
    known yet. The protocol core then decides it (daemon.incarnation) and the server saves it
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
