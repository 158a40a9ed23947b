"""Damaged data directories: the node finds the damage by checksum and says where.

One real cluster writes the data (module fixture); each test copies it, damages one node's
files and starts that node as a real process. Damage to what was synced (a flipped bit in a
payload, a length or a checksum, in any group, the last one included once the node has
stopped; a bad header; a log cut to zero records; a damaged snapshot) stops the node with a
non-zero exit and a message naming the file and the offset: it never serves from it. A torn
tail (a group written after the last sync, cut short, or junk after the last group) is cut and
logged with its offset, and the node then catches up from its peers without losing an
acknowledged write. A log of an older format version is refused, naming the file and version.
"""

from __future__ import annotations

import random
import shutil
import time
import zlib
from pathlib import Path

import pytest
import trio

from daemon.codec import records as wal_codec
from daemon.runtime import storage
from daemon.client.client import Client
from daemon.core.messages import CommitRecord
from daemon.codec.records import GROUP_HEAD, GROUP_HEADER_BYTES, HEADER_BYTES
from daemon.runtime.storage import WAL, CorruptLog
from tests.faults.cluster import ProcessCluster

TEST_TIMEOUT = 60
WRITES = 80
SNAPSHOT_EVERY = 50
VICTIM = 2
HAS_SNAPSHOTS = hasattr(storage, "read_snapshot")


def wal_groups(path: Path) -> list[tuple[int, int]]:
    """(offset, total bytes) of each group of a valid log."""
    data = path.read_bytes()
    out, offset = [], HEADER_BYTES
    while offset < len(data):
        length = GROUP_HEAD.unpack_from(data, offset)[3]
        out.append((offset, GROUP_HEADER_BYTES + length))
        offset += GROUP_HEADER_BYTES + length
    assert offset == len(data)
    return out


def unsynced_group(data: bytes, records: list) -> bytes:
    """A group of ``records`` as the log would append it after ``data`` (a valid log whose
    every byte is synced): what a crash can leave torn."""
    salt = data[12:20]
    parts, length, crc, _ = wal_codec.encode_body(records)
    return wal_codec.encode_group(salt, len(data), len(data), parts, length, crc)


def flip(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A stopped cluster's data directory holding WRITES acknowledged writes (a snapshot too,
    where the daemon takes them), and the values written."""
    directory = tmp_path_factory.mktemp("corruption-seed")
    cluster = ProcessCluster(directory, 3, proxy=False, snapshot_every_slots=SNAPSHOT_EVERY)
    expected = {b"k%d" % (i % 10): b"v%d" % i for i in range(WRITES)}

    async def write():
        with trio.fail_after(TEST_TIMEOUT):
            cluster.start_all()
            assert await cluster.wait_for_leader() is not None
            async with Client(cluster.endpoints, timeout=10) as client:
                for i in range(WRITES):
                    await client.put(b"k%d" % (i % 10), b"v%d" % i)
            assert await cluster.wait_caught_up()

    try:
        trio.run(write)
        for i in cluster.ids:
            assert cluster.terminate(i) == 0
    finally:
        cluster.close()
    return directory / "data", expected


def run_damaged(tmp_path: Path, written, damage) -> tuple[int | None, str, ProcessCluster]:
    """Copy the data, ``damage(node_dir)``, start node VICTIM alone: (exit code, or None if it
    came up and was stopped; its log; the cluster, stopped)."""
    cluster = ProcessCluster(tmp_path, 3, proxy=False, snapshot_every_slots=SNAPSHOT_EVERY)
    shutil.copytree(written[0], tmp_path / "data")
    damage(cluster.node_dir(VICTIM))
    code = None
    try:
        cluster.start(VICTIM)
        deadline = time.monotonic() + TEST_TIMEOUT
        while time.monotonic() < deadline:
            code = cluster.procs[VICTIM].poll()
            if code is not None or "listening:" in cluster.log_text(VICTIM):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the node neither exited nor came up in time")
    finally:
        cluster.close()
    return code, cluster.log_text(VICTIM), cluster


def middle_group(node_dir: Path) -> tuple[int, int]:
    groups = wal_groups(node_dir / "wal.log")
    assert len(groups) >= 4, groups
    return groups[len(groups) // 2]


@pytest.mark.parametrize("where", ["payload", "length", "checksum"])
def test_a_flipped_bit_inside_the_log_stops_the_node_naming_file_and_offset(tmp_path, written,
                                                                           where):
    damaged = {}

    def damage(node_dir: Path) -> None:
        offset, size = middle_group(node_dir)
        at = {"payload": offset + GROUP_HEADER_BYTES + (size - GROUP_HEADER_BYTES) // 2,
              "length": offset + 24,  # the high byte: an impossible length
              "checksum": offset + 33}[where]
        flip(node_dir / "wal.log", at, 7 if where == "length" else 3)
        damaged["offset"] = offset
        damaged["path"] = node_dir / "wal.log"

    code, log, _ = run_damaged(tmp_path, written, damage)
    assert code == 1, log
    assert f"{damaged['path']}: offset {damaged['offset']}" in log, log
    assert "refusing to serve" in log
    assert "listening:" not in log


@pytest.mark.parametrize("damage_kind", ["bad magic", "shorter than the header"])
def test_a_damaged_log_header_stops_the_node_at_offset_0(tmp_path, written, damage_kind):
    def damage(node_dir: Path) -> None:
        wal = node_dir / "wal.log"
        if damage_kind == "bad magic":
            flip(wal, 2)
        else:
            wal.write_bytes(wal.read_bytes()[:7])

    code, log, cluster = run_damaged(tmp_path, written, damage)
    assert code == 1, log
    assert f"{cluster.wal_path(VICTIM)}: offset 0" in log, log


@pytest.mark.parametrize("tail", ["an unsynced group cut short", "junk after the last group"])
def test_a_torn_tail_is_cut_and_logged_and_the_node_catches_up(tmp_path, written, tail):
    cut = {}

    def damage(node_dir: Path) -> None:
        wal = node_dir / "wal.log"
        data = wal.read_bytes()
        if tail == "an unsynced group cut short":
            group = unsynced_group(data, [CommitRecord(10 ** 6)])
            wal.write_bytes(data + group[:len(group) - 3])
        else:
            wal.write_bytes(data + b"\x00\x00\x00\x20" + random.Random(1).randbytes(9))
        cut["offset"] = len(data)

    code, log, cluster = run_damaged(tmp_path, written, damage)
    assert code is None, log
    assert f"{cluster.wal_path(VICTIM)}: cut a torn tail at offset {cut['offset']}" in log, log

    # With its peers back, the node serves again and every acknowledged write is there.
    expected = written[1]

    async def read_back():
        with trio.fail_after(TEST_TIMEOUT):
            cluster.start_all()
            assert await cluster.wait_for_leader() is not None
            async with Client(cluster.endpoints, timeout=10) as client:
                for key, value in expected.items():
                    assert await client.get(key) == value
            assert await cluster.wait_caught_up()

    try:
        trio.run(read_back)
    finally:
        cluster.close()
    assert "Traceback" not in cluster.log_text(VICTIM)


@pytest.mark.skipif(not HAS_SNAPSHOTS, reason="this daemon takes no snapshots")
@pytest.mark.parametrize("damage_kind", ["flipped bit", "truncated"])
def test_a_damaged_snapshot_stops_the_node_naming_file_and_offset(tmp_path, written, damage_kind):
    def damage(node_dir: Path) -> None:
        snap = node_dir / storage.SNAPSHOT_FILE
        assert snap.exists(), "the seed cluster took no snapshot"
        data = snap.read_bytes()
        if damage_kind == "flipped bit":
            flip(snap, len(data) - 3, 1)
        else:
            snap.write_bytes(data[:len(data) // 2])

    code, log, cluster = run_damaged(tmp_path, written, damage)
    assert code == 1, log
    snap = cluster.node_dir(VICTIM) / storage.SNAPSHOT_FILE
    assert f"{snap}: " in log and "offset" in log, log
    assert "listening:" not in log


@pytest.mark.parametrize("marker", ["kept", "lost"])
def test_any_flipped_bit_is_caught_and_located(tmp_path, written, marker):
    """Every single-bit flip (sampled positions) in a stopped node's log is corruption
    reported at the damaged group's offset (header: offset 0), as the synced-length marker
    covers every group. Only if the marker is lost too may a flip in the groups at the end that
    no later group header vouches for be cut as a torn tail, exactly at that group, keeping
    every record before it."""
    source = written[0] / f"node-{VICTIM}"
    original = (source / "wal.log").read_bytes()
    groups = wal_groups(source / "wal.log")
    rng = random.Random(7)
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    if marker == "kept":
        shutil.copy(source / storage.SYNCED_FILE, node_dir / storage.SYNCED_FILE)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    intact = _records(scratch, original)
    counts = [len(_records(scratch, original[:o])) for o, _ in groups]  # records before each
    positions = [rng.randrange(len(original)) for _ in range(150)] + [0, len(original) - 1]
    for at in positions:
        damaged = bytearray(original)
        damaged[at] ^= 1 << rng.randrange(8)
        index = next((i for i, (o, s) in enumerate(groups) if o <= at < o + s), None)
        offset = 0 if index is None else groups[index][0]
        warnings = []
        try:
            wal, records = WAL.open(_copy(node_dir, bytes(damaged)), fsync=False,
                                    log=warnings.append)
        except CorruptLog as exc:
            assert exc.offset == offset, (at, str(exc))
            assert f"offset {exc.offset}" in str(exc) and str(node_dir / "wal.log") in str(exc)
            continue
        except storage.StorageError as exc:  # the format version field
            assert at < HEADER_BYTES, (at, str(exc))
            continue
        wal.close()
        assert marker == "lost" and index is not None, (at, "damage went unnoticed")
        assert records == intact[:counts[index]], at
        assert len(warnings) == 1 and f"torn tail at offset {offset}" in warnings[0]


def _copy(node_dir: Path, data: bytes) -> Path:
    (node_dir / "wal.log").write_bytes(data)
    return node_dir


def _records(node_dir: Path, data: bytes) -> list:
    """The records of a log file, opened without a marker (fsync off writes none)."""
    wal, records = WAL.open(_copy(node_dir, data), fsync=False)
    wal.close()
    return records


def test_a_log_cut_to_zero_records_stops_the_node_telling_what_to_do(tmp_path, written):
    """A log that lost every record (a lost disk, in effect) must not start as the same member
    with its old incarnation, its promises forgotten."""
    def damage(node_dir: Path) -> None:
        wal = node_dir / "wal.log"
        wal.write_bytes(wal.read_bytes()[:HEADER_BYTES])

    code, log, cluster = run_damaged(tmp_path, written, damage)
    assert code == 1, log
    assert f"{cluster.wal_path(VICTIM)}: offset {HEADER_BYTES}" in log, log
    assert "no records at all" in log and "rejoins under a new incarnation" in log
    assert "listening:" not in log


def test_a_log_of_the_previous_format_version_is_refused_naming_file_and_version(tmp_path,
                                                                               written):
    def damage(node_dir: Path) -> None:
        record = wal_codec.encode_record(CommitRecord(1))
        (node_dir / "wal.log").write_bytes(
            b"PAXOSWAL\x00\x00\x00\x01" + len(record).to_bytes(4, "big")
            + zlib.crc32(record).to_bytes(4, "big") + record)

    code, log, cluster = run_damaged(tmp_path, written, damage)
    assert code == 1, log
    assert f"{cluster.wal_path(VICTIM)}: WAL format version 1; this paxosd reads only " \
           f"version 2 and does not migrate older logs" in log, log
    assert "listening:" not in log


def test_the_power_loss_marker_follows_every_sync(tmp_path, monkeypatch):
    """The hook the power-cut model relies on: after each sync and write (and at open) the
    marker holds the log's inode, durable length and written length (the file runs on in
    allocated zeros); the bytes written beyond the durable length are what a cut removes."""
    from daemon.core.messages import CommitRecord

    marker = tmp_path / "marker"
    monkeypatch.setattr(storage, "_SYNCED_MARKER", str(marker))
    node_dir = tmp_path / "node"

    def read() -> tuple[int, int, int]:
        inode, synced, written = marker.read_text().split()
        return int(inode), int(synced), int(written)

    wal, _ = WAL.open(node_dir)
    ino = (node_dir / "wal.log").stat().st_ino
    assert read() == (ino, HEADER_BYTES, HEADER_BYTES)
    wal.append([CommitRecord(1)])
    assert read() == (ino, HEADER_BYTES, wal.written_bytes)  # appended, not synced
    wal.sync()
    assert read() == (ino, wal.written_bytes, wal.written_bytes)
    wal.append([CommitRecord(2)])
    assert read()[1] < read()[2] == wal.written_bytes
    wal.close()
    assert read() == (ino, wal.written_bytes, wal.written_bytes)
    assert len(marker.read_bytes()) == 63  # one fixed-width line, rewritten in place
