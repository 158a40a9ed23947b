"""daemon.runtime.storage: the WAL returns exactly what was appended and synced, cuts a torn tail, and
refuses (rather than serves) a log damaged before its end."""

from __future__ import annotations

import errno
import logging
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.codec import records as wal_codec
from daemon.runtime import storage
from daemon.core.messages import (
    NOOP,
    OP_CAS,
    OP_DELETE,
    OP_PUT,
    AcceptRecord,
    ChosenRecord,
    CommitRecord,
    PromiseRecord,
)
from daemon.codec.records import (
    HEADER_BYTES,
    MAX_RECORD_BYTES,
    decode_record,
    encode_entries,
    encode_record,
)
from daemon.runtime.storage import PREALLOCATE_BYTES, WAL, CorruptLog, DataDirInUse, StorageError

BALLOT_MAX = 2**64 - 1

BATCH = (
    (1, 1, OP_PUT, b"k1", b"v1", None),
    (1, 2, OP_DELETE, b"k1", None, None),
    (2, 7, OP_CAS, b"k2", b"", b"\x00\xff" * 100),
)

EVERY_RECORD = [
    PromiseRecord(ballot=(3 << 16) | 2),
    AcceptRecord(ballot=(3 << 16) | 2, first_slot=0, batches=(BATCH,)),
    AcceptRecord(ballot=(3 << 16) | 2, first_slot=1, batches=(NOOP, BATCH, NOOP)),
    AcceptRecord(ballot=(4 << 16) | 1, first_slot=9, batches=()),
    ChosenRecord(first_slot=0, batches=(BATCH, NOOP)),
    ChosenRecord(first_slot=5, batches=()),
    CommitRecord(commit_index=3),
    PromiseRecord(ballot=BALLOT_MAX),
    CommitRecord(commit_index=0),
]


def wal_file(directory: Path) -> Path:
    return directory / storage.WAL_FILE


def write_log(directory: Path, records: list, *, unsynced: int = 0,
              keep_zeros: bool = False) -> list[int]:
    """Append and sync each record as its own group, except that the last ``unsynced`` are
    appended without a sync before a crash; return the offset of each group. A crash leaves
    the zeros allocated ahead of the last group; unless ``keep_zeros``, they are cut here, so
    that the file ends where the groups do (the damage helpers below cut from its end)."""
    wal, existing = WAL.open(directory)
    assert existing == []
    offsets = []
    for i, record in enumerate(records):
        offsets.append(wal.written_bytes)
        wal.append([record])
        if i < len(records) - unsynced:
            wal.sync()
    if unsynced:
        end = wal.written_bytes
        crash(wal)
        if not keep_zeros:
            os.truncate(wal_file(directory), end)
    else:
        wal.close()
    return offsets


def crash(wal: WAL) -> None:
    """Drop the log as a killed process would: no sync, no seal; the lock is released."""
    wal.fail("simulated crash")
    wal.close()


def reopen(directory: Path, **kwargs) -> list:
    wal, records = WAL.open(directory, **kwargs)
    wal.close()
    return records


def commit_records(n: int) -> list:
    return [CommitRecord(i) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Encoding.


@pytest.mark.parametrize("record", EVERY_RECORD, ids=repr)
def test_every_record_type_round_trips_through_its_encoding(record):
    decoded = decode_record(encode_record(record))
    assert decoded == record
    assert type(decoded) is type(record)


def test_decoded_batches_and_commands_are_tuples():
    record = decode_record(encode_record(AcceptRecord(1, 0, (BATCH, NOOP))))
    assert isinstance(record.batches, tuple)
    assert all(isinstance(b, tuple) for b in record.batches)
    assert all(isinstance(c, tuple) for c in record.batches[0])


def test_the_payload_is_the_cbor_array_of_tag_and_fields():
    cbor2 = pytest.importorskip("cbor2")
    assert cbor2.loads(encode_record(PromiseRecord(7))) == [1, 7]
    assert cbor2.loads(encode_record(AcceptRecord(7, 3, (NOOP,)))) == [2, 7, 3, [[]]]
    assert cbor2.loads(encode_record(ChosenRecord(3, ()))) == [3, 3, []]
    assert cbor2.loads(encode_record(CommitRecord(9))) == [4, 9]


def test_non_records_are_refused_before_anything_is_written(tmp_path):
    wal, _ = WAL.open(tmp_path)
    with pytest.raises(TypeError):
        wal.append([CommitRecord(1), "not a record"])
    assert wal.written_bytes == HEADER_BYTES
    wal.append([CommitRecord(2)])  # still usable
    wal.close()
    assert reopen(tmp_path) == [CommitRecord(2)]


def test_an_oversized_record_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(wal_codec, "MAX_RECORD_BYTES", 64)
    with pytest.raises(ValueError, match="exceeds the limit of 64"):
        encode_entries([AcceptRecord(1, 0, ((1, 1, OP_PUT, b"k", b"x" * 100, None),))])


# ---------------------------------------------------------------------------------------------
# Append, sync, reopen.


def test_a_new_directory_gets_an_empty_log_with_a_header(tmp_path):
    directory = tmp_path / "a" / "b" / "node-1"
    wal, records = WAL.open(directory)
    assert records == []
    assert wal.written_bytes == wal.synced_bytes == HEADER_BYTES
    wal.close()
    header = wal_file(directory).read_bytes()
    assert header[:12] == b"PAXOSWAL" + struct.pack(">I", 2)
    assert len(header) == HEADER_BYTES == 24
    assert header[12:20] == wal.salt and len(set(wal.salt)) > 1
    assert header[20:] == struct.pack(">I", zlib.crc32(header[:20]))
    assert (directory / "LOCK").read_text().strip() == str(os.getpid())


def test_every_record_type_survives_a_reopen(tmp_path):
    wal, _ = WAL.open(tmp_path)
    written = wal.append(EVERY_RECORD)
    assert written == wal.written_bytes - HEADER_BYTES
    wal.sync()
    wal.close()
    assert reopen(tmp_path) == EVERY_RECORD


def test_an_empty_append_writes_nothing(tmp_path):
    wal, _ = WAL.open(tmp_path)
    assert wal.append([]) == 0
    assert wal.written_bytes == HEADER_BYTES
    assert wal.sync() == 0.0
    wal.close()
    assert reopen(tmp_path) == []


def test_many_appends_then_one_sync_are_all_found_again(tmp_path):
    wal, _ = WAL.open(tmp_path)
    expected = []
    for i in range(500):
        batch = tuple((i, j, OP_PUT, b"key%d" % j, b"value" * j, None) for j in range(i % 7))
        group = [AcceptRecord(1 << 16 | 1, i, (batch,)), CommitRecord(i)]
        wal.append(group)
        expected.extend(group)
    assert wal.synced_bytes == HEADER_BYTES < wal.written_bytes
    seconds = wal.sync()
    assert seconds >= 0.0
    assert wal.synced_bytes == wal.written_bytes <= wal_file(tmp_path).stat().st_size
    wal.close()  # trims the space allocated ahead
    assert wal_file(tmp_path).stat().st_size == wal.written_bytes
    assert reopen(tmp_path) == expected


def test_one_write_per_append(monkeypatch, tmp_path):
    wal, _ = WAL.open(tmp_path)
    calls = []
    real_pwrite = os.pwrite

    def counting_write(fd, data, offset):
        calls.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(storage.os, "pwrite", counting_write)
    wal.append(commit_records(100))
    monkeypatch.undo()
    assert len(calls) == 1
    wal.close()


def test_appends_after_reopen_follow_the_old_records(tmp_path):
    for round_ in range(3):
        wal, records = WAL.open(tmp_path)
        assert records == commit_records(10 * round_)
        wal.append([CommitRecord(i) for i in range(10 * round_, 10 * round_ + 10)])
        wal.close()  # close syncs
    assert reopen(tmp_path) == commit_records(30)


def test_fsync_disabled_still_writes_and_reads_back(monkeypatch, tmp_path):
    wal, _ = WAL.open(tmp_path, fsync=False)
    synced = []
    monkeypatch.setattr(storage, "_fsync", lambda fd: synced.append(fd))
    wal.append(EVERY_RECORD)
    assert wal.sync() == 0.0
    assert wal.synced_bytes == wal.written_bytes
    assert synced == []
    wal.close()
    monkeypatch.undo()
    assert reopen(tmp_path, fsync=False) == EVERY_RECORD


def test_sync_is_skipped_when_nothing_new_was_written(monkeypatch, tmp_path):
    wal, _ = WAL.open(tmp_path)
    wal.append([CommitRecord(1)])
    wal.sync()
    monkeypatch.setattr(storage, "_fsync", lambda fd: pytest.fail("needless fsync"))
    assert wal.sync() == 0.0
    monkeypatch.undo()
    wal.close()


def test_what_was_not_synced_may_be_lost_but_the_synced_prefix_survives(tmp_path):
    # The power-loss model: the file keeps at least its synced prefix.
    wal, _ = WAL.open(tmp_path)
    wal.append(commit_records(5))
    wal.sync()
    synced = wal.synced_bytes
    wal.append([CommitRecord(99), PromiseRecord(5)])
    crash(wal)
    os.truncate(wal_file(tmp_path), synced + 5)  # part of the unsynced write reached the disk
    assert reopen(tmp_path) == commit_records(5)


# ---------------------------------------------------------------------------------------------
# Torn tails are cut.


def torn(tmp_path: Path, damage) -> tuple[list, bytes, list[str]]:
    """Write 5 records, damage the file, reopen; return (records, file after, warnings)."""
    records = [PromiseRecord(1), AcceptRecord(1, 0, (BATCH,)), CommitRecord(0),
               AcceptRecord(1, 1, (NOOP, BATCH)), CommitRecord(2)]
    offsets = write_log(tmp_path, records, unsynced=1)
    path = wal_file(tmp_path)
    damage(path, offsets)
    warnings: list[str] = []
    wal, found = WAL.open(tmp_path, log=warnings.append)
    wal.append([CommitRecord(42)])  # appendable again
    wal.close()
    assert reopen(tmp_path) == found + [CommitRecord(42)]
    return found, records, warnings


def truncate_to(n_from_end: int):
    def damage(path, offsets):
        os.truncate(path, path.stat().st_size - n_from_end)
    return damage


@pytest.mark.parametrize(
    "description, damage",
    [
        ("truncated payload", truncate_to(1)),
        ("truncated payload to its first byte", lambda p, o: os.truncate(p, o[-1] + 9)),
        ("truncated header", lambda p, o: os.truncate(p, o[-1] + 3)),
        ("header only", lambda p, o: os.truncate(p, o[-1] + 8)),
    ],
)
def test_a_record_cut_short_at_the_end_is_cut_off(tmp_path, description, damage):
    found, records, warnings = torn(tmp_path, damage)
    assert found == records[:-1]
    assert len(warnings) == 1


def flip_byte(offset_in_last: int):
    def damage(path, offsets):
        with open(path, "r+b") as f:
            f.seek(offsets[-1] + offset_in_last)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x10]))
    return damage


@pytest.mark.parametrize("where", [4, 8, 20, 28, 36, 42, 45],
                         ids=["salt", "offset", "synced", "length", "header-checksum",
                              "record-length", "payload"])
def test_a_bad_checksum_in_the_last_unsynced_group_is_cut_off(tmp_path, where):
    found, records, warnings = torn(tmp_path, flip_byte(where))
    assert found == records[:-1]
    assert len(warnings) == 1


def test_trailing_zeros_are_cut_off_without_a_warning(tmp_path):
    """Zeros after the last group are space allocated ahead of the log, not a torn write."""
    def damage(path, offsets):
        with open(path, "ab") as f:
            f.write(b"\x00" * 4096)
    found, records, warnings = torn(tmp_path, damage)
    assert found == records
    assert warnings == []


def test_a_crash_leaves_unsynced_groups_and_the_allocated_zeros_after_them(tmp_path):
    records = commit_records(5)
    write_log(tmp_path, records, unsynced=2, keep_zeros=True)
    assert wal_file(tmp_path).stat().st_size >= PREALLOCATE_BYTES
    warnings: list[str] = []
    assert reopen(tmp_path, log=warnings.append) == records  # the unsynced writes survived
    assert warnings == []


def test_a_torn_group_before_the_allocated_zeros_is_cut_and_named(tmp_path):
    records = commit_records(3)
    offsets = write_log(tmp_path, records, unsynced=1, keep_zeros=True)
    with open(wal_file(tmp_path), "r+b") as f:  # the last group's header reached the disk,
        f.seek(offsets[-1] + 12)                 # the rest of it did not
        f.write(bytes(4))
    size = wal_file(tmp_path).stat().st_size
    warnings: list[str] = []
    assert reopen(tmp_path, log=warnings.append) == records[:2]
    [message] = warnings
    assert f"offset {offsets[-1]}: {size - offsets[-1]} bytes" in message
    assert "zeros" in message


def test_trailing_garbage_is_cut_off(tmp_path):
    def damage(path, offsets):
        with open(path, "ab") as f:
            f.write(os.urandom(10_000))
    found, records, _ = torn(tmp_path, damage)
    assert found == records


def test_a_length_beyond_the_limit_at_the_end_is_cut_off(tmp_path):
    def damage(path, offsets):
        with open(path, "ab") as f:
            f.write(struct.pack(">II", MAX_RECORD_BYTES + 1, 0) + b"\x84\x02")
    found, records, _ = torn(tmp_path, damage)
    assert found == records


def test_the_warning_names_the_file_the_offset_and_the_bytes_cut(tmp_path, caplog):
    offsets = write_log(tmp_path, commit_records(3), unsynced=1)
    size = wal_file(tmp_path).stat().st_size
    os.truncate(wal_file(tmp_path), size - 1)
    with caplog.at_level(logging.WARNING, logger="paxosd.storage"):
        assert reopen(tmp_path) == commit_records(2)
    [message] = [r.getMessage() for r in caplog.records]
    assert str(wal_file(tmp_path)) in message
    assert f"offset {offsets[-1]}" in message
    assert f"{size - 1 - offsets[-1]} bytes" in message
    assert wal_file(tmp_path).stat().st_size == offsets[-1]


def test_a_whole_unsynced_append_torn_midway_loses_only_its_own_records(tmp_path):
    wal, _ = WAL.open(tmp_path)
    wal.append(commit_records(3))
    wal.sync()
    start = wal.written_bytes
    wal.append([CommitRecord(10), CommitRecord(11), CommitRecord(12)])
    end = wal.written_bytes
    crash(wal)
    for cut in range(start, end):  # one append is one group: all of it or none of it
        os.truncate(wal_file(tmp_path), cut)
        assert reopen(tmp_path, log=lambda message: None) == commit_records(3)


# ---------------------------------------------------------------------------------------------
# Corruption before the end is refused.


@pytest.mark.parametrize("where", [0, 9, 17, 27, 33, 38, 41, 50],
                         ids=["salt", "offset", "synced", "length", "body-checksum",
                              "header-checksum", "record-length", "payload"])
def test_a_flipped_bit_in_a_middle_record_raises_corrupt_log_with_the_offset(tmp_path, where):
    records = [AcceptRecord(1, i, (BATCH,)) for i in range(5)]
    offsets = write_log(tmp_path, records)
    before = wal_file(tmp_path).read_bytes()
    with open(wal_file(tmp_path), "r+b") as f:
        f.seek(offsets[2] + where)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(CorruptLog) as info:
        WAL.open(tmp_path)
    message = str(info.value)
    assert f"offset {offsets[2]}" in message
    assert str(wal_file(tmp_path)) in message
    assert info.value.offset == offsets[2]
    # Nothing was cut, and the lock was released: the directory can be repaired and reopened.
    assert len(wal_file(tmp_path).read_bytes()) == len(before)
    with open(wal_file(tmp_path), "r+b") as f:
        f.write(before)
    assert reopen(tmp_path) == records


def test_zeros_in_the_middle_of_the_log_raise_corrupt_log(tmp_path):
    offsets = write_log(tmp_path, commit_records(5))
    with open(wal_file(tmp_path), "r+b") as f:
        f.seek(offsets[1])
        f.write(b"\x00" * (offsets[3] - offsets[1]))
    with pytest.raises(CorruptLog, match=f"offset {offsets[1]}"):
        WAL.open(tmp_path)


def test_a_record_with_a_good_checksum_that_does_not_decode_is_refused(tmp_path):
    write_log(tmp_path, commit_records(2))
    wal, _ = WAL.open(tmp_path)
    salt, offset = wal.salt, wal.written_bytes
    wal.close()
    for body in (b"\x00\x00\x00\x03\x82\x09\x01",  # [9, 1]: no such tag
                 b"\x00\x00\x00\x09\x82\x04\x01"):  # a record length beyond the group
        group = wal_codec.encode_group(salt, offset, offset, [body], len(body), zlib.crc32(body))
        wal_file(tmp_path).write_bytes(wal_file(tmp_path).read_bytes()[:offset] + group)
        with pytest.raises(CorruptLog, match="do not decode") as info:
            WAL.open(tmp_path)
        assert info.value.offset == offset


@pytest.mark.parametrize(
    "content, match",
    [(b"", "shorter than"), (b"PAXOS", "shorter than"), (b"NOTAWAL!\x00\x00\x00\x01", "bad magic")],
)
def test_a_file_that_is_not_a_wal_is_refused(tmp_path, content, match):
    wal_file(tmp_path).write_bytes(content)
    with pytest.raises(CorruptLog, match=match):
        WAL.open(tmp_path)
    assert wal_file(tmp_path).read_bytes() == content


@pytest.mark.parametrize("version", [1, 3])
def test_another_format_version_is_refused_naming_the_file_and_the_version(tmp_path, version):
    # A version-1 log (format before group headers) is refused whole, never migrated.
    old = b"PAXOSWAL" + struct.pack(">I", version) + encode_record(CommitRecord(1)) * 3
    wal_file(tmp_path).write_bytes(old)
    with pytest.raises(StorageError) as info:
        WAL.open(tmp_path)
    message = str(info.value)
    assert f"{wal_file(tmp_path)}: WAL format version {version}" in message
    assert "reads only version 2" in message and "does not migrate" in message
    assert wal_file(tmp_path).read_bytes() == old


# ---------------------------------------------------------------------------------------------
# The lock.


def test_a_second_open_of_the_same_directory_raises_data_dir_in_use(tmp_path):
    wal, _ = WAL.open(tmp_path)
    with pytest.raises(DataDirInUse) as info:
        WAL.open(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert f"pid {os.getpid()}" in str(info.value)
    wal.close()
    wal2, _ = WAL.open(tmp_path)  # released by close
    wal2.close()


def test_another_process_cannot_open_a_directory_in_use(tmp_path):
    wal, _ = WAL.open(tmp_path)
    code = (
        "import sys; from daemon.runtime.storage import WAL, DataDirInUse\n"
        "try:\n    WAL.open(sys.argv[1])\nexcept DataDirInUse as e:\n    print(e); sys.exit(3)\n"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=root, capture_output=True, text=True
    )
    wal.close()
    assert result.returncode == 3, result.stderr
    assert f"pid {os.getpid()}" in result.stdout


def test_a_process_that_dies_releases_the_lock(tmp_path):
    root = Path(__file__).resolve().parent.parent
    code = "import os, sys; from daemon.runtime.storage import WAL; WAL.open(sys.argv[1]); os._exit(0)"
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=root, check=True)
    wal, _ = WAL.open(tmp_path)
    wal.close()


# ---------------------------------------------------------------------------------------------
# Disk errors.


def test_a_failed_write_raises_storage_error_and_refuses_further_appends(monkeypatch, tmp_path):
    wal, _ = WAL.open(tmp_path)
    wal.append([CommitRecord(1)])
    wal.sync()

    def full_disk(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "pwrite", full_disk)
    with pytest.raises(StorageError) as info:
        wal.append([CommitRecord(2)])
    monkeypatch.undo()
    message = str(info.value)
    assert str(wal_file(tmp_path)) in message and "No space left on device" in message
    assert wal.failed
    with pytest.raises(StorageError, match="failed earlier"):
        wal.append([CommitRecord(3)])
    with pytest.raises(StorageError, match="failed earlier"):
        wal.sync()
    wal.close()  # releases the lock without syncing
    assert reopen(tmp_path) == [CommitRecord(1)]


def test_a_partial_write_is_taken_back(monkeypatch, tmp_path):
    wal, _ = WAL.open(tmp_path)
    wal.append([CommitRecord(1)])
    size = wal.written_bytes
    real_pwrite = os.pwrite
    calls = []

    def half_then_full(fd, data, offset):
        calls.append(len(data))
        if len(calls) == 1:
            return real_pwrite(fd, bytes(data[: len(data) // 2]), offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "pwrite", half_then_full)
    with pytest.raises(StorageError, match="No space left"):
        wal.append(commit_records(10))
    monkeypatch.undo()
    assert wal_file(tmp_path).stat().st_size == size
    wal.close()
    assert reopen(tmp_path) == [CommitRecord(1)]


def test_a_failed_fsync_marks_the_log_failed(monkeypatch, tmp_path):
    wal, _ = WAL.open(tmp_path)
    wal.append([CommitRecord(1)])

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(storage, "_fsync", broken)
    with pytest.raises(StorageError, match="Input/output error"):
        wal.sync()
    monkeypatch.undo()
    with pytest.raises(StorageError, match="failed earlier"):
        wal.append([CommitRecord(2)])
    wal.close()


def test_a_log_path_that_is_a_directory_gives_storage_error_naming_it(tmp_path):
    wal_file(tmp_path).mkdir()
    with pytest.raises(StorageError) as info:
        WAL.open(tmp_path)
    assert str(wal_file(tmp_path)) in str(info.value)
    # The lock was released on the way out.
    wal_file(tmp_path).rmdir()
    reopen(tmp_path)


def test_a_data_directory_under_a_file_gives_storage_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="cannot create the data directory"):
        WAL.open(tmp_path / "file" / "node-1")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_a_read_only_directory_gives_storage_error(tmp_path):
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(StorageError, match=str(directory)):
            WAL.open(directory)
    finally:
        directory.chmod(0o700)


def test_a_closed_log_refuses_appends(tmp_path):
    wal, _ = WAL.open(tmp_path)
    wal.close()
    wal.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        wal.append([CommitRecord(1)])


def test_the_log_is_a_context_manager(tmp_path):
    wal, _ = WAL.open(tmp_path)
    with wal:
        wal.append([CommitRecord(1)])
    assert reopen(tmp_path) == [CommitRecord(1)]


# ---------------------------------------------------------------------------------------------
# Properties.

uint64 = st.integers(min_value=0, max_value=2**64 - 1)
maybe_bytes = st.none() | st.binary(max_size=20)
commands = st.tuples(uint64, uint64, st.sampled_from([OP_PUT, OP_DELETE, OP_CAS]),
                     st.binary(max_size=20), maybe_bytes, maybe_bytes)
batches = st.lists(st.lists(commands, max_size=4).map(tuple), max_size=4).map(tuple)
records = st.one_of(
    st.builds(PromiseRecord, uint64),
    st.builds(AcceptRecord, uint64, uint64, batches),
    st.builds(ChosenRecord, uint64, batches),
    st.builds(CommitRecord, uint64),
)


@given(st.lists(records, max_size=20))
@settings(max_examples=200, deadline=None)
def test_any_records_round_trip(some):
    assert [decode_record(encode_record(r)) for r in some] == some


@given(st.lists(st.lists(records, min_size=1, max_size=5), min_size=1, max_size=5), st.data())
@settings(max_examples=40, deadline=None)
def test_cutting_the_file_anywhere_keeps_exactly_the_whole_records_before_the_cut(
    tmp_path_factory, groups, data
):
    directory = tmp_path_factory.mktemp("wal")
    wal, _ = WAL.open(directory, fsync=False)
    ends = [(wal.written_bytes, [])]
    so_far: list = []
    for group in groups:
        for record in group:
            wal.append([record])
            so_far.append(record)
            ends.append((wal.written_bytes, list(so_far)))
    wal.close()
    cut = data.draw(st.integers(min_value=HEADER_BYTES, max_value=wal.written_bytes))
    os.truncate(wal_file(directory), cut)
    expected = [recs for end, recs in ends if end <= cut][-1]
    assert reopen(directory, fsync=False, log=lambda message: None) == expected


@pytest.mark.parametrize("bad", [PromiseRecord(-1), CommitRecord(True), AcceptRecord(2**64, 0, ()),
                                 ChosenRecord("1", ())])
def test_records_that_could_not_be_read_back_are_refused(bad):
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        encode_record(bad)


def test_a_snapshot_round_trips_and_damage_is_named_with_its_offset(tmp_path):
    from daemon.runtime.storage import SNAPSHOT_FILE, read_snapshot, write_snapshot

    assert read_snapshot(tmp_path) is None
    write_snapshot(tmp_path, 42, b"image bytes" * 100)
    assert read_snapshot(tmp_path) == (42, b"image bytes" * 100)
    path = tmp_path / SNAPSHOT_FILE
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptLog, match=r"snapshot: checksum mismatch .* at offset \d+"):
        read_snapshot(tmp_path)
    path.write_bytes(bytes(data[:30]))
    with pytest.raises(CorruptLog, match="offset"):
        read_snapshot(tmp_path)


def test_rotating_the_log_keeps_only_the_checkpoint(tmp_path):
    wal, _ = WAL.open(tmp_path)
    wal.append([PromiseRecord(5)] + [CommitRecord(i) for i in range(1, 200)])
    wal.sync()
    big = wal.written_bytes
    checkpoint = [PromiseRecord(9), AcceptRecord(9, 200, ((),)), CommitRecord(199)]
    wal.rotate(checkpoint)
    assert wal.written_bytes < big
    wal.append([CommitRecord(200)])
    wal.close()
    again, records = WAL.open(tmp_path)
    again.close()
    assert records == checkpoint + [CommitRecord(200)]


def test_the_incarnation_is_chosen_once_and_kept(tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    # Without a flag an empty directory's incarnation is not known yet (the core decides it).
    assert storage.load_incarnation(fresh, empty=True, join=False)[0] is None
    assert not (fresh / "incarnation").exists()
    assert storage.load_incarnation(fresh, empty=True, join=False, new_cluster=True)[0] == 0
    assert storage.load_incarnation(fresh, empty=True, join=True) == (0, "from the data directory")
    decided = tmp_path / "decided"
    decided.mkdir()
    storage.save_incarnation(decided, 1234)
    assert storage.load_incarnation(decided, empty=True, join=False) == (1234, "from the data directory")
    joined = tmp_path / "joined"
    joined.mkdir()
    inc, how = storage.load_incarnation(joined, empty=True, join=True)
    assert inc != 0 and "joining" in how
    assert (joined / "incarnation").read_text() == f"{inc}\n"
    assert storage.load_incarnation(joined, empty=False, join=False)[0] == inc
    old = tmp_path / "old"
    old.mkdir()
    assert storage.load_incarnation(old, empty=False, join=True)[0] == 0  # it has state
    (old / "incarnation").write_text("twelve\n")
    with pytest.raises(storage.CorruptLog, match="incarnation"):
        storage.load_incarnation(old, empty=False, join=False)


def test_when_space_cannot_be_allocated_ahead_the_log_appends_as_before(monkeypatch, tmp_path):
    warnings: list[str] = []
    wal, _ = WAL.open(tmp_path, log=warnings.append)
    calls = []

    def refuse(fd, offset, length):
        calls.append(length)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "posix_fallocate", refuse)
    for i in range(3):
        wal.append([CommitRecord(i)])
        wal.sync()
    assert len(calls) == 1  # tried once, then not again
    assert wal_file(tmp_path).stat().st_size == wal.written_bytes  # plain appends
    [warning] = warnings
    assert str(wal_file(tmp_path)) in warning and "No space left on device" in warning
    wal.close()
    monkeypatch.undo()
    assert reopen(tmp_path) == commit_records(3)
