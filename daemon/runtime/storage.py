"""The write-ahead log of acceptor and learner records (daemon.core.messages.RECORDS): its
files, lock and fsyncs; and the snapshot and incarnation files beside it (the snapshot's bytes
are daemon.codec.snapshot's).

One file per node, ``<node dir>/wal.log`` (format version 2): a file header, then one group per
``append`` (one write; a group commit's unit), each a salted header (its own offset, the length
of the log already synced when it was written, the body's length and crc32) and a body of
records. The bytes are daemon.codec.records' (the layout is in its docstring). Groups are
written one after another, never over one another, into space allocated ahead of them
(``PREALLOCATE_BYTES`` at a time, posix_fallocate): an fdatasync that does not change the file's
size need not also commit the file system's journal (100 B + fdatasync here: 130 us appending,
88 us in place). So the file ends in zeros beyond the last group while the log is open; a clean
close trims them, and open cuts them (silently: they are allocated space, not a torn write;
anything else after the last valid group is cut as a torn tail, with a warning). Every byte the
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
  writer has idled 10 ms, on open, rotation and close. It only ever records lengths an fsync
  of the log already covered. A log whose valid groups end below the marker's length lost
  synced bytes: ``CorruptLog``. This catches damage to the final synced group (no later header can
  vouch for it), a lost last page, and a log cut to zero records (indistinguishable from a lost
  disk: the node must not vote under its old incarnation having forgotten its promises).

What it still cannot tell: damage to a group synced after the marker's last seal, when no
later group header survives, looks like a torn tail and is cut. That is an Accept group
acknowledged in the moments before a crash, with the writer busy (or idle under that
moment), and only if the crash damaged bytes an fsync had already covered, which a disk that
honours fsync and writes sectors atomically does not do. Sealing on every sync would close it
at the price of a second fsync per group commit.

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

from daemon.codec.records import (CRC, FILE_HEAD, FORMAT_VERSION, HEADER_BYTES, MAGIC, OK,
                                  SALT_BYTES, SYNCED_SLOT, SYNCED_SLOT_OFFSETS, UNDECODABLE,
                                  VERSION_END, decode_synced_slots, encode_body, encode_group,
                                  encode_synced_slot, file_header, group_at, synced_claim_after)
from daemon.codec.snapshot import DamagedSnapshot, decode_snapshot, encode_snapshot

__all__ = [
    "CorruptLog",
    "DataDirInUse",
    "INCARNATION_FILE",
    "SNAPSHOT_FILE",
    "SYNCED_FILE",
    "StorageError",
    "WAL",
    "WAL_FILE",
    "load_incarnation",
    "new_incarnation",
    "read_snapshot",
    "save_incarnation",
    "write_file_whole",
    "write_snapshot",
]

WAL_FILE = "wal.log"
# The synced-length marker (its slots: daemon.codec.records).
SYNCED_FILE = "wal.synced"
# Under load, the marker is fsynced at least this often (seconds); an idle writer seals it.
MARKER_SEAL_INTERVAL = 1.0
# The log file is extended this far ahead of its last group (see the module docstring).
PREALLOCATE_BYTES = 8 << 20
# Bytes read at a time when telling zeros allocated ahead from a torn tail on open.
_ZERO_SCAN_CHUNK = 1 << 16

SNAPSHOT_FILE = "snapshot"
LOCK_FILE = "LOCK"
INCARNATION_FILE = "incarnation"
MAX_INCARNATION = (1 << 63) - 1

_log = logging.getLogger("paxosd.storage")

# Test hook, off unless set: the power-loss tests (tests/faults/cluster.py) need to know how
# much of wal.log a real fsync covered, and where its groups end (the file runs on in zeros
# allocated ahead), to cut the rest after kill -9 as a power cut would.
_SYNCED_MARKER = os.environ.get("PAXOSD_TEST_SYNCED_MARKER")


def _note_synced(fd: int, synced: int, written: int) -> None:
    """Record "<inode> <durable length> <written length>" of the log in the marker file: one
    fixed-width pwrite, after the fsync (or write) and before anything that depends on it is
    sent."""
    line = f"{os.fstat(fd).st_ino:020d} {synced:020d} {written:020d}\n".encode()
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
        self._allocated = size  # the file's size: groups end at _written, zeros after it
        self._preallocating = True  # until posix_fallocate fails once (then: plain appends)
        self._warn = _warner(None)
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
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise _os_error("cannot open the log", path, exc) from exc
            found = _scan(fd, path)
            marker.refuse_lost_synced_bytes(path, found)
            _settle(fd, path, found, fsync, warn)
            if _SYNCED_MARKER:  # first: the test's cut must never go below the real marker
                _note_synced(fd, found.end, found.end)
            try:
                marker.reset(found.salt, found.end)
            except OSError as exc:
                raise _os_error("cannot write the synced-length marker", marker.path,
                                exc) from exc
            wal = cls(directory, fd, lock_fd, found.end, found.salt, marker, fsync)
            wal._warn = warn
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
        data = file_header(salt)
        if records:
            data += encode_group(salt, HEADER_BYTES, HEADER_BYTES, *encode_body(records)[:3])
        with self._append_lock:
            self._check_usable()
            try:
                _replace_file(self.directory, WAL_FILE, data, self.fsync_enabled)
                new_fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                self._fail(f"cannot rotate the log: {exc}")
                raise _os_error("cannot rotate the log", self.path, exc) from exc
            os.close(self._fd)
            self._fd = new_fd
            self.salt = salt
            self._written = self._synced = self._allocated = len(data)
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
        parts, length, crc, promise = encode_body(records)  # raises before anything is written
        with self._append_lock:
            self._check_usable()
            data = encode_group(self.salt, self._written, self._synced, parts, length, crc)
            if self._written + len(data) > self._allocated and self._preallocating:
                self._preallocate(self._written + len(data))
            view = memoryview(data)
            done = 0
            try:
                while done < len(data):
                    n = os.pwrite(self._fd, view[done:], self._written + done)
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
                        self._allocated = self._written
                    except OSError:
                        pass
                raise _os_error(
                    f"cannot append {len(records)} records at offset {self._written + done}",
                    self.path,
                    exc,
                ) from exc
            self._written += done
            self._allocated = max(self._allocated, self._written)
            if promise:
                self._promise_end = self._written
            if _SYNCED_MARKER:
                _note_synced(self._fd, self._synced, self._written)
        return done

    def _preallocate(self, end: int) -> None:
        """Allocate the file up to ``end`` + PREALLOCATE_BYTES (zeros). If the file system
        refuses (full, or no fallocate), say so once and go on appending without it: the write
        itself may still fit, and if it does not, it fails as any write does."""
        want = end + PREALLOCATE_BYTES
        try:
            os.posix_fallocate(self._fd, self._allocated, want - self._allocated)
        except OSError as exc:
            self._preallocating = False
            self._warn(f"{self.path}: cannot allocate space ahead of the log ({exc}); writing "
                       f"without: each fsync then also commits the file's new size")
            return
        self._allocated = want

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
            _note_synced(self._fd, self._synced, self._written)
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
        reported instead of cut as a torn tail. The WAL writer calls it once idle a moment."""
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
                if self._allocated > self._written:
                    try:  # tidy only: open cuts the zeros anyway
                        os.ftruncate(self._fd, self._written)
                    except OSError:
                        pass
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
        slots = decode_synced_slots(data)
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
        os.pwrite(self._fd, encode_synced_slot(self._salt, synced, self._seq),
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
    try:
        _replace_file(directory, WAL_FILE, file_header(_new_salt()), fsync)
    except OSError as exc:
        raise _os_error("cannot create the log", directory / WAL_FILE, exc) from exc


def _settle(fd: int, path: Path, found: _Found, fsync: bool, warn: Callable[[str], Any]) -> None:
    """Make the log on ``fd`` end durably where its valid groups end: cut a torn tail (and say
    so), or fsync what the last process may have left only in the page cache."""
    if found.end < found.size:
        try:
            os.ftruncate(fd, found.end)
            _fsync(fd)
        except OSError as exc:
            raise _os_error("cannot cut the torn tail of the log", path, exc) from exc
        if found.garbage:  # only zeros: space allocated ahead of the log, nothing torn
            zeros = found.size - found.end - found.garbage
            warn(
                f"{path}: cut a torn tail at offset {found.end}: {found.size - found.end} "
                f"bytes ({found.reason}{f'; the last {zeros} of them zeros' if zeros else ''}); "
                f"the {len(found.records)} records before it are intact"
            )
    elif fsync:
        # What the last process wrote may still be only in the page cache; what we
        # return must be durable before anything is built on it.
        try:
            _fsync(fd)
        except OSError as exc:
            raise _os_error("cannot fsync the log", path, exc) from exc


class _Found(NamedTuple):
    """What a scan of the log found."""

    salt: bytes
    records: list
    end: int  # the end of the last valid group: what the log keeps
    size: int
    reason: str  # why the bytes from ``end`` on are not a valid group ("" if there are none)
    garbage: int = 0  # of the bytes from ``end`` on, those up to the last non-zero one


def _scan(fd: int, path: Path) -> _Found:
    """Validate the log: its valid groups in order, and where and why they end.

    CorruptLog if the first damaged group lies below what a later valid group header records
    as synced, or if a group's checksum matches but its records do not decode.
    """
    try:
        size = os.fstat(fd).st_size
    except OSError as exc:
        raise _os_error("cannot stat the log", path, exc) from exc
    if size < VERSION_END:
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
            status, value, end = group_at(mm, offset, size, salt)
            if status is OK:
                records.extend(value)
                offset = end
                continue
            if status is UNDECODABLE:
                raise CorruptLog(
                    f"{path}: offset {offset}: the group's checksum matches but its records do "
                    f"not decode ({value}); written by an incompatible version, or a bug. "
                    f"Refusing to cut it",
                    path=path,
                    offset=offset,
                )
            claim, where = synced_claim_after(mm, offset + 1, size, salt)
            if claim > offset:
                raise CorruptLog(
                    f"{path}: offset {offset}: corrupt group ({value}) below offset {claim}, "
                    f"which the valid group header at offset {where} records as synced: the "
                    f"log is damaged before its end; refusing to serve from it. Restore this "
                    f"node's data directory or rebuild it from the other members",
                    path=path,
                    offset=offset,
                )
            return _Found(salt, records, offset, size, value,
                          _nonzero_length(mm, offset, size))
        return _Found(salt, records, offset, size, "")
    finally:
        mm.close()


def _nonzero_length(mm: mmap.mmap, start: int, end: int) -> int:
    """The length of ``mm[start:end]`` up to its last non-zero byte (0: all zeros), read from
    the end a chunk at a time: the tail may be megabytes allocated ahead, not to be copied
    whole."""
    while end > start:
        lo = max(start, end - _ZERO_SCAN_CHUNK)
        kept = len(mm[lo:end].rstrip(b"\0"))
        if kept:
            return lo + kept - start
        end = lo
    return 0


def _file_salt(mm: mmap.mmap, size: int, path: Path) -> bytes:
    """The salt of a valid version-2 file header; refuses anything else, naming the file."""
    if mm[:len(MAGIC)] != MAGIC:
        raise CorruptLog(
            f"{path}: offset 0: bad magic {mm[:len(MAGIC)]!r}, expected {MAGIC!r}; not a "
            f"paxosd WAL",
            path=path,
            offset=0,
        )
    (version,) = struct.unpack(">I", mm[len(MAGIC):VERSION_END])
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


# ---------------------------------------------------------------------------------------------
# Snapshots: the state machine as of a slot, in one file replaced atomically.


def write_snapshot(directory: os.PathLike | str, index: int, blob: bytes, *, fsync: bool = True) -> int:
    """Write the snapshot taken at slot ``index`` (``blob``: the encoded state machine image):
    temporary file, fsync, rename over the old snapshot, fsync the directory. Returns its size."""
    directory = Path(directory)
    path = directory / SNAPSHOT_FILE
    data = encode_snapshot(index, blob)
    try:
        _replace_file(directory, SNAPSHOT_FILE, data, fsync)
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
    try:
        return decode_snapshot(data)
    except DamagedSnapshot as exc:
        raise CorruptLog(f"{path}: {exc}", path=path, offset=exc.offset) from None


def write_file_whole(path: os.PathLike | str, data: bytes, *, fsync: bool = True) -> None:
    """Make ``path`` hold ``data``, whole or not at all across a crash (``path.tmp``, fsync,
    rename, fsync of the directory); StorageError naming the path if that fails."""
    path = Path(path)
    try:
        _replace_file(path.parent, path.name, data, fsync)
    except OSError as exc:
        raise _os_error("cannot write the file", path, exc) from exc


def _replace_file(directory: Path, name: str, data: bytes, fsync: bool) -> None:
    """Make ``directory/name`` hold ``data``, whole or not at all, across a crash: write a
    temporary file, fsync it, rename it over ``name``, fsync the directory (the fsyncs only
    with ``fsync``). OSError for the caller to name what failed."""
    tmp = directory / (name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        _write_all(fd, data)
        if fsync:
            _fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, directory / name)
    if fsync:
        _fsync_dir(directory)


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
    try:
        _replace_file(directory, INCARNATION_FILE, f"{incarnation}\n".encode(), fsync)
    except OSError as exc:
        raise _os_error("cannot write the incarnation", path, exc) from exc
