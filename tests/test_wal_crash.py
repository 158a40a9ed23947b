"""daemon.runtime.storage under a power-loss model: every crash point, every fate of what was not synced.

A recorder stands in for the ``os`` module daemon.runtime.storage calls and logs, in order, every write,
pwrite, truncate, fsync, rename and directory fsync of the data directory's files while a
workload drives the real WAL on real files. The workload logs, in the same sequence, the records
it hands to each append and the checkpoint of each rotation. The model (``Disk``) replays a
prefix of that log, a crash just before operation k, keeping each file's content as the OS saw it
and as its last fsync left it, and each directory entry as it was and as the last directory fsync
left it. A crash image combines the durable state with one fate of what was not synced:

- cut: the file keeps its synced prefix and any prefix of what was written after it (a SIGKILL
  during one large write, or a power cut);
- pages: any subset of the 4 KiB pages holding unsynced bytes has those bytes zeroed or garbled
  (the size reached the disk, the data did not), synced bytes in the same page intact;
- the synced-length marker as last fsynced, or as last written.

Each image is written to a directory and opened with ``WAL.open``. The properties:

1. no image that lost only unsynced bytes refuses to start, and recovery returns exactly a
   prefix of the records written to that log file that includes every record an fsync covered;
2. damage to a synced group that a later group follows on disk is reported: CorruptLog naming
   the file and an offset at or before the damage;
3. the defects of the crash-point review: a client value holding bytes shaped like a WAL entry
   (defect 1), damaged unsynced pages before a valid unsynced group (defect 2), damage to the last
   synced group after its sync returned, a lost last page and a log cut to zero records
   (defect 3) are each handled: started from, or refused with CorruptLog.

The default run strides through cut offsets and samples bit flips and page subsets so that it
takes seconds; ``PAXOSD_WAL_CRASH_EXHAUSTIVE=1`` (or ``python -m tests.test_wal_crash``) tries
every cut offset (every 5th in the ~2 MiB, 48-slot Accept of the review's defect 1), every bit,
and more page subsets. ``python -m
tests.test_wal_crash bench [ROUNDS] [OTHER_STORAGE.py]`` measures WAL append+sync throughput
(against another version of daemon/runtime/storage.py, in alternate rounds, if given).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import pytest

from daemon.codec.records import HEADER_BYTES, encode_record
from daemon.runtime import storage
from daemon.core.messages import OP_PUT, AcceptRecord, CommitRecord, PromiseRecord
from daemon.runtime.storage import WAL, CorruptLog, StorageError, save_incarnation

EXHAUSTIVE = os.environ.get("PAXOSD_WAL_CRASH_EXHAUSTIVE", "") not in ("", "0")
PAGE = 4096
MODELLED = ("wal.log", "wal.log.tmp", "wal.synced")  # the LOCK file carries no state


# ---------------------------------------------------------------------------------------------
# Recording what the storage does.


class RecordingOS:
    """``os`` for daemon.runtime.storage, logging each state-changing call on a modelled file."""

    def __init__(self, ops: list):
        self._ops = ops
        self._names: dict[int, str] = {}  # fd -> file name, for modelled files
        self._append: set[int] = set()

    def __getattr__(self, name):
        return getattr(os, name)

    def open(self, path, flags, mode=0o777, *, dir_fd=None):
        name = Path(path).name
        existed = os.path.exists(path)
        fd = os.open(path, flags, mode)
        if name in MODELLED:
            self._names[fd] = name
            if flags & os.O_APPEND:
                self._append.add(fd)
            if flags & os.O_TRUNC or not existed:
                self._ops.append(("create", name))
        return fd

    def close(self, fd):
        self._names.pop(fd, None)
        self._append.discard(fd)
        os.close(fd)

    def write(self, fd, data):
        at = os.fstat(fd).st_size if fd in self._append else os.lseek(fd, 0, os.SEEK_CUR)
        n = os.write(fd, data)
        if fd in self._names:
            self._ops.append(("write", self._names[fd], at, bytes(data[:n])))
        return n

    def pwrite(self, fd, data, offset):
        n = os.pwrite(fd, data, offset)
        if fd in self._names:
            self._ops.append(("write", self._names[fd], offset, bytes(data[:n])))
        return n

    def ftruncate(self, fd, length):
        os.ftruncate(fd, length)
        if fd in self._names:
            self._ops.append(("truncate", self._names[fd], length))

    def fdatasync(self, fd):
        self._synced(fd)
        os.fdatasync(fd)

    def fsync(self, fd):
        self._synced(fd)
        os.fsync(fd)

    def _synced(self, fd):
        self._ops.append(("fsync", self._names[fd]) if fd in self._names else ("dirsync",))

    def rename(self, src, dst):
        os.rename(src, dst)
        self._ops.append(("rename", Path(src).name, Path(dst).name))


# ---------------------------------------------------------------------------------------------
# The file-system model.


@dataclass(eq=False)
class File:
    """One inode: its content as the OS sees it and as its last fsync left it, and the records
    the workload handed to appends into it (its lineage)."""

    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""
    records: list = field(default_factory=list)
    synced_records: int = 0  # how many of ``records`` an fsync of this file covered


class Disk:
    """Replays recorded operations; ``images()`` lists the crash images of the current state."""

    def __init__(self):
        self.names: dict[str, File] = {}  # directory entries as the OS sees them
        self.durable_names: dict[str, File] = {}  # as the last directory fsync left them
        self.checkpoint: list | None = None  # a rotation's records, for the next new log file

    def apply(self, op: tuple) -> None:
        kind = op[0]
        if kind == "create":
            f = File()
            if op[1] == "wal.log.tmp" and self.checkpoint is not None:
                f.records, self.checkpoint = list(self.checkpoint), None
            self.names[op[1]] = f
        elif kind == "write":
            _, name, at, data = op
            f = self.names[name]
            if len(f.data) < at:
                f.data.extend(bytes(at - len(f.data)))
            f.data[at:at + len(data)] = data
        elif kind == "truncate":
            f = self.names[op[1]]
            del f.data[op[2]:]
        elif kind == "fsync":
            f = self.names[op[1]]
            f.durable = bytes(f.data)
            f.synced_records = len(f.records)
        elif kind == "rename":
            self.names[op[2]] = self.names.pop(op[1])
        elif kind == "dirsync":
            self.durable_names = dict(self.names)
        elif kind == "append":  # the workload's note: these records go to the current log
            self.names["wal.log"].records.extend(op[1])
        elif kind == "rotate":
            self.checkpoint = op[1]
        # Any other note of the workload's marks a point in the sequence and changes nothing.

    def marker_versions(self) -> list[bytes | None]:
        """The marker file as last fsynced and as last written (None: there is none)."""
        f = self.names.get("wal.synced")
        return [None] if f is None else list(dict.fromkeys([f.durable, bytes(f.data)]))

    def listings(self) -> list[dict[str, File]]:
        """The directory entries a crash may leave: as last fsynced, or (if it differs, a
        rename or creation the directory fsync has not covered yet) as the OS saw them."""
        out = [self.durable_names]
        if self.names != self.durable_names:
            out.append(self.names)
        return out


def unsynced_fates(f: File, rng: random.Random, *, stride: int):
    """Yield (description, content) for what a crash may leave of ``f``: each cut of its
    unsynced tail (every ``stride`` bytes, and both ends), and each subset of its unsynced
    pages zeroed or garbled (sampled when there are many pages)."""
    data, durable = bytes(f.data), f.durable
    if data == durable:
        yield "synced", data
        return
    if not data.startswith(durable):  # rewritten in place (the marker): old or new, whole
        yield "as synced", durable
        yield "as written", data
        return
    base = len(durable)
    for cut in sorted(set(range(base, len(data), stride)) | {base, len(data)}):
        yield f"cut at {cut}", data[:cut]
    pages = list(range(base // PAGE, (len(data) - 1) // PAGE + 1))
    for subset in page_subsets(pages, rng):
        for how in ("zeroed", "garbled"):
            image = bytearray(data)
            for p in subset:
                lo, hi = max(base, p * PAGE), min(len(data), (p + 1) * PAGE)
                image[lo:hi] = bytes(hi - lo) if how == "zeroed" else rng.randbytes(hi - lo)
            yield f"pages {subset} {how}", bytes(image)


def page_subsets(pages: list[int], rng: random.Random) -> list[tuple[int, ...]]:
    """Every non-empty subset of ``pages`` while there are few (up to 2**6 of them, 2**10 in
    the exhaustive mode); else each page alone, each pair of neighbours, and random subsets."""
    limit = 10 if EXHAUSTIVE else 6
    if len(pages) <= limit:
        return [s for n in range(1, len(pages) + 1) for s in combinations(pages, n)]
    out = [(p,) for p in pages] + list(zip(pages, pages[1:]))
    for _ in range(1000 if EXHAUSTIVE else 32):
        out.append(tuple(sorted(rng.sample(pages, rng.randint(1, len(pages))))))
    return out


# ---------------------------------------------------------------------------------------------
# Workloads and checks.


@pytest.fixture
def image_dir(tmp_path):
    """Where crash images are opened: in memory (/dev/shm) where there is one, because each
    image is written, truncated and fsynced by the open, thousands of times per test."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        (tmp_path / "image").mkdir()
        yield tmp_path / "image"
        return
    directory = Path(tempfile.mkdtemp(prefix="paxosd-wal-crash-", dir=shm))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def record_workload(workload, tmp: Path) -> list:
    """Run ``workload(wal, note)`` on a real log in ``tmp`` under the recorder; the ops."""
    ops: list = []
    real = storage.os
    storage.os = RecordingOS(ops)
    try:
        wal, found = WAL.open(tmp / "node")
        assert found == []
        workload(wal, ops.append)
    finally:
        storage.os = real
    return ops


def append(wal: WAL, note, records: list) -> None:
    note(("append", list(records)))
    wal.append(records)


def crash(wal: WAL) -> None:
    """Stop using the log as a killed process would: no sync, no seal (the private hook marks
    it failed, so that close only releases the files; it exists in every version)."""
    wal._fail("crash")
    wal.close()


def idle(wal: WAL) -> None:
    """What the server's WAL writer does when it has nothing more to write: seal the log (a
    log without ``seal``, the version-1 format, has nothing to do then)."""
    getattr(wal, "seal", lambda: None)()


def open_image(directory: Path, files: dict[str, bytes | None]) -> list:
    """Write a crash image to ``directory`` and open it; the records (or the error raised)."""
    for name in MODELLED:
        path = directory / name
        if files.get(name) is not None:
            path.write_bytes(files[name])
        elif path.exists():
            path.unlink()
    wal, records = WAL.open(directory, fsync=False, log=lambda message: None)
    wal.close()
    return records


def images(disk: Disk, rng: random.Random, stride: int):
    """(description, {name: content}, the log file's model or None) for each crash image."""
    for listing in disk.listings():
        log = listing.get("wal.log")
        marker = listing.get("wal.synced")
        marker_fates = list(unsynced_fates(marker, rng, stride=1 << 30)) if marker \
            else [("", None)]
        log_fates = unsynced_fates(log, rng, stride=stride) if log else [("no log", None)]
        for log_how, log_data in log_fates:
            for marker_how, marker_data in marker_fates:
                files = {}
                if log_data is not None:
                    files["wal.log"] = log_data
                if marker_data is not None:
                    files["wal.synced"] = marker_data
                yield f"log {log_how}; marker {marker_how}", files, log


def check_every_crash_point(ops: list, directory: Path, *, stride: int, seed: int = 1) -> int:
    """Property 1 at every crash point of ``ops`` under every unsynced fate; images tried."""
    rng = random.Random(seed)
    disk = Disk()
    tried = 0
    directory.mkdir(parents=True, exist_ok=True)
    for k in range(len(ops) + 1):
        if k:
            disk.apply(ops[k - 1])
        for how, files, log in images(disk, rng, stride):
            where = f"crash before op {k} ({ops[k][0] if k < len(ops) else 'end'}): {how}"
            try:
                records = open_image(directory, files)
            except StorageError as exc:
                raise AssertionError(f"{where}: refused to start: {exc}") from None
            tried += 1
            expected = log.records if log is not None else []
            must = log.synced_records if log is not None else 0
            assert records == expected[:len(records)], f"{where}: not a prefix of what was written"
            assert len(records) >= must, (f"{where}: lost synced records: {len(records)} of the "
                                          f"{must} an fsync covered")
    return tried


def final_state(ops: list) -> Disk:
    disk = Disk()
    for op in ops:
        disk.apply(op)
    return disk


def expect_corrupt(directory: Path, files: dict[str, bytes], damaged_at: int, what: str) -> None:
    """The image must be refused with CorruptLog naming the log and an offset at or before
    the damage."""
    try:
        records = open_image(directory, files)
    except CorruptLog as exc:
        assert exc.path == directory / "wal.log", (what, str(exc))
        assert exc.offset is not None and exc.offset <= damaged_at, (what, str(exc))
        assert f"{directory / 'wal.log'}: offset {exc.offset}" in str(exc), (what, str(exc))
        return
    raise AssertionError(f"{what}: not reported; the log opened with {len(records)} records")


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def batch(values: list[bytes]) -> tuple:
    return tuple((7, i, OP_PUT, b"key%d" % i, v, None) for i, v in enumerate(values))


BALLOT = (3 << 16) | 2


def forged_entry() -> bytes:
    """Bytes shaped like a version-1 WAL entry holding a promise: an 8-byte header (length,
    crc32) and the CBOR ``[1, ballot]``, which a client may put in any value."""
    payload = encode_record(PromiseRecord(BALLOT))
    return len(payload).to_bytes(4, "big") + zlib.crc32(payload).to_bytes(4, "big") + payload


def forging_value(size: int, every: int = 1024) -> bytes:
    """A client value of ``size`` bytes with a forged WAL entry every ``every`` bytes."""
    chunk = forged_entry() + b"x" * (every - len(forged_entry()))
    return (chunk * (size // every + 1))[:size]


# ---------------------------------------------------------------------------------------------
# Property 1 over ordinary workloads.


def test_group_commits_commit_only_writes_and_a_rotation_survive_every_crash(tmp_path,
                                                                           image_dir):
    """Many small groups, some synced and some not (a commit index that rides on the next
    fsync), a promise, a compaction, and appends after it: every crash image opens, with a
    prefix of its log file's records that includes every synced one."""
    def workload(wal, note):
        append(wal, note, [PromiseRecord(BALLOT)])
        wal.sync()
        for i in range(6):
            append(wal, note, [AcceptRecord(BALLOT, i, (batch([b"v%d" % i]),))])
            append(wal, note, [CommitRecord(i)])  # not synced on its own
            if i % 2:
                wal.sync()
        idle(wal)
        checkpoint = [PromiseRecord(BALLOT), CommitRecord(5)]
        note(("rotate", checkpoint))
        wal.rotate(checkpoint)
        for i in range(6, 9):
            append(wal, note, [AcceptRecord(BALLOT, i, (batch([b"w" * 3000]),)), CommitRecord(i)])
            wal.sync()
        append(wal, note, [CommitRecord(9)])
        crash(wal)

    ops = record_workload(workload, tmp_path)
    assert check_every_crash_point(ops, image_dir, stride=1 if EXHAUSTIVE else 7) > 500


# ---------------------------------------------------------------------------------------------
# Defect 1: client data must never forge log structure.


def test_a_value_holding_forged_wal_entries_torn_anywhere_is_a_torn_tail(tmp_path, image_dir):
    """A large Accept whose values hold bytes shaped like WAL entries, killed at any point of
    its one write (no power cut needed): the node starts, without it, every time. (With the
    version-1 format the resync found the forged entry inside the value and refused.)"""
    # Exhaustive: the review's shape, 48 slots in one Accept, at ~2 MiB in all (what the
    # review's kill had written), every 5th cut offset; by default 6 slots of 24 KiB.
    slots, value = (48, 40 << 10) if EXHAUSTIVE else (6, 24 << 10)

    def workload(wal, note):
        append(wal, note, [PromiseRecord(BALLOT), CommitRecord(0)])
        wal.sync()
        batches = tuple(batch([forging_value(value, every=997 + s)]) for s in range(slots))
        append(wal, note, [AcceptRecord(BALLOT, 1, batches)])
        crash(wal)

    ops = record_workload(workload, tmp_path)
    stride = 5 if EXHAUSTIVE else 53
    assert check_every_crash_point(ops, image_dir, stride=stride) > 1000


def test_a_synced_value_holding_forged_entries_then_a_torn_one(tmp_path, image_dir):
    """Forged entries in synced groups too, then a torn group: the forged bytes before the
    tear are never taken for structure either."""
    def workload(wal, note):
        for i in range(3):
            append(wal, note, [AcceptRecord(BALLOT, i, (batch([forging_value(5000, 300)]),))])
            wal.sync()
        append(wal, note, [AcceptRecord(BALLOT, 3, (batch([forging_value(9000, 301)]),))])
        crash(wal)

    ops = record_workload(workload, tmp_path)
    assert check_every_crash_point(ops, image_dir, stride=1 if EXHAUSTIVE else 11) > 500


# ---------------------------------------------------------------------------------------------
# Defect 2: damaged unsynced pages before a valid unsynced group.


def test_damaged_unsynced_pages_before_a_valid_unsynced_group_are_a_torn_tail(tmp_path, image_dir):
    """Several group commits appended after the last fsync, spanning seven pages; any subset
    of those pages zeroed or garbled, the rest intact (so a valid unsynced group may follow
    a damaged one): the node starts with every synced record, every time."""
    def workload(wal, note):
        append(wal, note, [PromiseRecord(BALLOT)])
        wal.sync()
        append(wal, note, [AcceptRecord(BALLOT, 0, (batch([b"s" * 2500]),))])
        wal.sync()
        for i in range(1, 8):
            append(wal, note, [AcceptRecord(BALLOT, i, (batch([b"u%d" % i * 1800]),)),
                               CommitRecord(i)])
        crash(wal)

    ops = record_workload(workload, tmp_path)
    disk = final_state(ops)
    log = disk.names["wal.log"]
    unsynced = len(log.data) - len(log.durable)
    assert unsynced > 6 * PAGE, unsynced
    rng = random.Random(2)
    directory = image_dir
    pages = list(range(len(log.durable) // PAGE, (len(log.data) - 1) // PAGE + 1))
    tried = 0
    for n in range(1, len(pages) + 1):
        for subset in combinations(pages, n):
            for how in ("zeroed", "garbled"):
                image = bytearray(log.data)
                for p in subset:
                    lo, hi = max(len(log.durable), p * PAGE), min(len(log.data), (p + 1) * PAGE)
                    image[lo:hi] = bytes(hi - lo) if how == "zeroed" else rng.randbytes(hi - lo)
                for marker in disk.marker_versions():
                    what = f"pages {subset} {how}"
                    try:
                        records = open_image(directory, {"wal.log": bytes(image),
                                                         "wal.synced": marker})
                    except StorageError as exc:
                        raise AssertionError(f"{what}: refused to start: {exc}") from None
                    assert records == log.records[:len(records)], what
                    assert len(records) >= log.synced_records, what
                    tried += 1
    assert tried >= 2 * (2 ** len(pages) - 1)
    # And at every earlier crash point, with every fate (sampled subsets) of the unsynced bytes.
    check_every_crash_point(ops, image_dir / "every", stride=1 if EXHAUSTIVE else 97)


# ---------------------------------------------------------------------------------------------
# Property 2 and defect 3: damage to synced groups.


def synced_groups_workload(wal, note, *, goes_idle: bool = True) -> None:
    """Group commits of one or two groups (a commit index rides on the next fsync, as the
    server's WAL writer does it), of different sizes, the last ones small (several to a page);
    then, if ``goes_idle``, the writer goes idle (it seals)."""
    append(wal, note, [PromiseRecord(BALLOT)])
    wal.sync()
    for i in range(5):
        append(wal, note, [AcceptRecord(BALLOT, i, (batch([b"a" * (40 + 900 * i)]),))])
        wal.sync()
        append(wal, note, [CommitRecord(i)])
    for i in range(6):
        append(wal, note, [CommitRecord(10 + i)])
        if i % 2:
            wal.sync()
    if goes_idle:
        idle(wal)


def test_any_flipped_bit_in_a_synced_group_followed_by_another_is_reported(tmp_path, image_dir):
    """Property 2: a bit flipped anywhere in a synced group that a later group commit follows
    on disk (file header included) is refused, naming the file and an offset at or before it,
    whatever the marker says. (The groups of the final group commit are vouched for by the
    marker only: see the tests below.)"""
    ops = record_workload(lambda wal, note: synced_groups_workload(wal, note, goes_idle=False),
                          tmp_path)
    disk = final_state(ops)
    data = bytes(disk.names["wal.log"].data)
    # Where the final group commit starts: the length the fsync before the last one covered.
    lengths, replay = [], Disk()
    for op in ops:
        replay.apply(op)
        if op[:2] == ("fsync", "wal.log"):
            lengths.append(len(replay.names["wal.log"].durable))
    before_last = sorted(set(lengths))[-2]
    rng = random.Random(3)
    bits = range(before_last * 8)
    if not EXHAUSTIVE:
        bits = sorted(rng.sample(bits, 400) + list(range(0, 24 * 8, 7)))
    directory = image_dir
    for bit in bits:
        for marker_data in disk.marker_versions():
            files = {"wal.log": flip(data, bit), "wal.synced": marker_data}
            if bit < 24 * 8:
                with pytest.raises(StorageError):  # the header: bad magic, version or checksum
                    open_image(directory, files)
                continue
            expect_corrupt(directory, files, bit // 8, f"bit {bit} flipped")


def test_a_flipped_bit_in_the_last_synced_group_a_promise_is_reported(tmp_path, image_dir):
    """Defect 3: a promise fsynced (so the Promise may have been sent) is the last group; a
    flipped bit in it, at any crash point after its sync returned and whatever became of the
    marker's unsynced writes, is refused, never cut as a torn tail (which would let the node
    accept under a lower ballot than it promised)."""
    def workload(wal, note):
        synced_groups_workload(wal, note, goes_idle=False)
        note(("promise at", wal.written_bytes))
        append(wal, note, [PromiseRecord(BALLOT + (1 << 16))])
        wal.sync()
        note(("promise synced",))
        crash(wal)

    ops = record_workload(workload, tmp_path)
    at = next(i for i, op in enumerate(ops) if op[0] == "promise synced")
    start = next(op[1] for op in ops if op[0] == "promise at")
    disk = Disk()
    for op in ops[:at]:
        disk.apply(op)
    directory = image_dir
    flips = 0
    for k in range(at, len(ops) + 1):
        if k > at:
            disk.apply(ops[k - 1])
        log = disk.names["wal.log"]
        data = bytes(log.data)
        assert log.durable == data  # the promise is synced
        for bit in range(start * 8, len(data) * 8):
            for marker_data in disk.marker_versions():
                files = {"wal.log": flip(data, bit), "wal.synced": marker_data}
                expect_corrupt(directory, files, bit // 8, f"crash before op {k}, bit {bit}")
                flips += 1
    assert flips >= 2 * 8 * 40


@pytest.mark.parametrize("loss", ["zeroed", "cut off"])
def test_a_lost_last_page_of_synced_groups_is_reported(tmp_path, image_dir, loss):
    """Defect 3: the last page of a log whose writer went idle after syncing (the server seals
    the marker then) is lost, zeroed or cut off: refused, not cut as a torn tail."""
    ops = record_workload(synced_groups_workload, tmp_path)
    disk = final_state(ops)
    data = bytes(disk.names["wal.log"].data)
    assert len(data) > PAGE
    page = (len(data) - 1) // PAGE * PAGE
    damaged = data[:page] + bytes(len(data) - page) if loss == "zeroed" else data[:page]
    directory = image_dir
    for marker_data in disk.marker_versions():
        expect_corrupt(directory, {"wal.log": damaged, "wal.synced": marker_data}, page,
                       f"last page {loss}")


def test_a_log_cut_to_zero_records_after_a_sync_is_refused(tmp_path, image_dir):
    """Defect 3: a log cut to its file header once records were synced is a lost disk, not a
    new node: refused (so the node cannot vote again under its old incarnation having forgotten
    its promises), at every crash point after the first sync returned, whatever became of the
    marker's unsynced writes. The same when wal.log is missing altogether."""
    def workload(wal, note):
        append(wal, note, [PromiseRecord(BALLOT)])
        wal.sync()
        note(("first sync returned",))
        synced_groups_workload(wal, note, goes_idle=False)
        wal.close()

    ops = record_workload(workload, tmp_path)
    at = next(i for i, op in enumerate(ops) if op[0] == "first sync returned")
    disk = Disk()
    for op in ops[:at]:
        disk.apply(op)
    directory = image_dir
    for k in range(at, len(ops) + 1):
        if k > at:
            disk.apply(ops[k - 1])
        header = bytes(disk.names["wal.log"].durable[:HEADER_BYTES])
        for marker_data in disk.marker_versions():
            expect_corrupt(directory, {"wal.log": header, "wal.synced": marker_data},
                           HEADER_BYTES, f"crash before op {k}: cut to zero records")
            with pytest.raises(CorruptLog, match="missing"):
                open_image(directory, {"wal.synced": marker_data})


def test_the_zero_records_refusal_tells_the_operator_what_to_do(tmp_path):
    wal, _ = WAL.open(tmp_path)
    wal.append([PromiseRecord(BALLOT)])
    wal.sync()
    wal.close()
    os.truncate(tmp_path / "wal.log", HEADER_BYTES)
    with pytest.raises(CorruptLog) as info:
        WAL.open(tmp_path)
    message = str(info.value)
    assert f"{tmp_path / 'wal.log'}: offset {HEADER_BYTES}" in message
    assert "no records at all" in message and "rejoins under a new incarnation" in message
    assert "incarnation" in message


def test_a_log_that_never_synced_a_record_is_a_new_one(tmp_path):
    """What is not a lost disk: a log created, or written to but never synced, then cut to
    its header by a crash, opens empty (the node never acknowledged anything from it)."""
    wal, _ = WAL.open(tmp_path)
    wal.append([PromiseRecord(BALLOT)])
    wal.fail("crash")
    wal.close()
    os.truncate(tmp_path / "wal.log", HEADER_BYTES)
    assert open_image(tmp_path, {"wal.log": (tmp_path / "wal.log").read_bytes(),
                                 "wal.synced": (tmp_path / "wal.synced").read_bytes()}) == []


# ---------------------------------------------------------------------------------------------
# The synced-length marker.


def fsyncs(ops: list) -> list[str]:
    return [op[1] for op in ops if op[0] == "fsync"]


def test_the_marker_is_fsynced_only_when_it_must_be(tmp_path, monkeypatch):
    """On the hot path a sync costs one fsync of the log; the marker is fsynced besides only
    for the first records of a log file, for a promise, when the writer goes idle, and (not
    exercised here) at most once per MARKER_SEAL_INTERVAL under load."""
    monkeypatch.setattr(storage, "MARKER_SEAL_INTERVAL", float("inf"))
    def workload(wal, note):
        note(("mark",))
        append(wal, note, [AcceptRecord(BALLOT, 0, ())])
        wal.sync()  # the first records of this log file
        note(("mark",))
        for i in range(1, 20):
            append(wal, note, [AcceptRecord(BALLOT, i, ()), CommitRecord(i)])
            wal.sync()
        note(("mark",))
        append(wal, note, [PromiseRecord(BALLOT + 1)])
        wal.sync()
        note(("mark",))
        wal.seal()
        wal.seal()  # nothing new: no fsync
        note(("mark",))
        wal.close()

    ops = record_workload(workload, tmp_path)
    marks = [i for i, op in enumerate(ops) if op[0] == "mark"]
    spans = [fsyncs(ops[a:b]) for a, b in zip(marks, marks[1:])]
    assert spans[0] == ["wal.log", "wal.synced"]
    assert spans[1] == ["wal.log"] * 19
    assert spans[2] == ["wal.log", "wal.synced"]
    assert spans[3] == []  # the promise's sync sealed it already


def test_under_load_the_marker_is_fsynced_at_least_once_per_interval(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "MARKER_SEAL_INTERVAL", 0.0)

    def workload(wal, note):
        for i in range(5):
            append(wal, note, [CommitRecord(i)])
            wal.sync()

    ops = record_workload(workload, tmp_path)
    assert fsyncs(ops)[-10:] == ["wal.log", "wal.synced"] * 5


def test_a_failed_fsync_is_never_retried(tmp_path, monkeypatch):
    """After a failed fsync of the log nothing more is written or synced through it, close
    included, and the error says why the node stops."""
    wal, _ = WAL.open(tmp_path)
    wal.append([PromiseRecord(BALLOT)])
    wal.sync()
    wal.append([CommitRecord(1)])
    calls = []

    def broken(fd):
        calls.append(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(storage, "_fsync", broken)
    with pytest.raises(StorageError) as info:
        wal.sync()
    assert "not retried" in str(info.value) and str(tmp_path / "wal.log") in str(info.value)
    for step in (wal.sync, wal.seal, lambda: wal.append([CommitRecord(2)])):
        with pytest.raises(StorageError, match="failed earlier"):
            step()
    wal.close()
    assert len(calls) == 1


# A node whose first fsync after start fails (the promise of its own election): the wrapper
# counts the failed calls on stderr, one line each.
_FAILING_FSYNC_NODE = """
import errno, sys
from daemon.runtime import server
from daemon.runtime import storage
armed, real_fsync, real_append = [], storage._fsync, storage.WAL.append

def append(self, records):
    armed.append(True)
    return real_append(self, records)

def fsync(fd):
    if armed:
        print("FAILED-FSYNC", file=sys.stderr, flush=True)
        raise OSError(errno.EIO, "Input/output error")
    real_fsync(fd)

storage.WAL.append, storage._fsync = append, fsync
sys.exit(server.main(sys.argv[1:]))
"""


def test_a_node_whose_fsync_fails_exits_at_once_with_a_clear_error(tmp_path):
    """The daemon as a real process: the first fsync after start fails; the node exits with
    status 1 and an error naming the log, having tried that fsync once and nothing after."""
    from tests.ports import free_ports

    peer, client = free_ports(2)
    config = tmp_path / "one.yaml"
    config.write_text(
        "cluster: fsync-test\n"
        f"members:\n  1: {{peer: 127.0.0.1:{peer}, client: 127.0.0.1:{client}}}\n"
        f"data_dir: {tmp_path / 'data'}\n"
        "timing: {heartbeat_ms: 20, election_timeout_ms: [40, 80]}\n"
        "storage: {fsync: true}\n")
    # A member that has started before (its incarnation decided): the first fsync after this
    # start is its WAL's.
    (tmp_path / "data" / "node-1").mkdir(parents=True)
    save_incarnation(tmp_path / "data" / "node-1", 0)
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", _FAILING_FSYNC_NODE, "--config", str(config),
                             "--node-id", "1"], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    wal_path = tmp_path / "data" / "node-1" / "wal.log"
    assert proc.returncode == 1, err
    assert err.count("FAILED-FSYNC") == 1, err  # never retried, not even by the shutdown
    assert f"{wal_path}: cannot fsync the log (a failed fsync is not retried" in err, err
    assert "Input/output error" in err and "Traceback" not in err, err


def test_a_marker_with_a_torn_slot_falls_back_to_the_other(tmp_path):
    wal, _ = WAL.open(tmp_path)
    for i in range(4):
        wal.append([AcceptRecord(BALLOT, i, (batch([b"z" * 500]),))])
        wal.sync()
    wal.close()
    marker = bytearray((tmp_path / "wal.synced").read_bytes())
    newest = max((0, 512), key=lambda at: int.from_bytes(marker[at + 16:at + 24], "big"))
    marker[newest + 3] ^= 0xFF
    (tmp_path / "wal.synced").write_bytes(bytes(marker))
    assert len(open_image(tmp_path, {"wal.log": (tmp_path / "wal.log").read_bytes(),
                                     "wal.synced": bytes(marker)})) == 4


# ---------------------------------------------------------------------------------------------
# The benchmark: python -m tests.test_wal_crash bench [ROUNDS] [OTHER_STORAGE.py]


def bench(rounds: int = 5, other: str | None = None) -> None:
    """Groups per second of WAL.append + WAL.sync for typical groups (an Accept of one batch and
    a commit index, as the WAL writer writes them), median of ``rounds``; with ``other`` (the
    path of another version of daemon/runtime/storage.py, e.g. ``git show d6f0e62:daemon/runtime/storage.py``)
    the two run in alternate rounds, so a noisy disk affects both alike."""
    import importlib.util
    import statistics

    versions = {"this": storage}
    if other:
        spec = importlib.util.spec_from_file_location("other_storage", other)
        versions["other"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(versions["other"])

    def rate(module, fsync: bool, group: list, seconds: float) -> float:
        with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as d:
            wal, _ = module.WAL.open(d, fsync=fsync)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                for _ in range(20):
                    wal.append(group)
                    wal.sync()
                    n += 1
            result = n / (time.perf_counter() - t0)
            wal.close()
        return result

    for fsync, seconds in ((True, 1.0), (False, 0.5)):
        for n_cmds, vbytes in ((1, 100), (64, 100), (1024, 1000)):
            group = [AcceptRecord(BALLOT, 0, (batch([b"v" * vbytes] * n_cmds),)), CommitRecord(0)]
            rates: dict[str, list[float]] = {name: [] for name in versions}
            for _ in range(rounds):
                for name, module in versions.items():
                    rates[name].append(rate(module, fsync, group, seconds))
            line = "  ".join(f"{name} {statistics.median(r):9.0f}/s" for name, r in rates.items())
            if other:
                ratio = statistics.median(rates["this"]) / statistics.median(rates["other"])
                line += f"  ({(ratio - 1) * 100:+.1f}%)"
            print(f"fsync={fsync!s:5} {n_cmds:5} commands x {vbytes:4} B: {line}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["bench"]:
        bench(int(sys.argv[2]) if len(sys.argv) > 2 else 5, sys.argv[3] if len(sys.argv) > 3
              else None)
    else:
        os.environ["PAXOSD_WAL_CRASH_EXHAUSTIVE"] = "1"
        sys.exit(pytest.main(["-q", __file__] + sys.argv[1:]))
