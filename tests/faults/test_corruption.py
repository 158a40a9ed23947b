"""Damaged data directories: the node finds the damage by checksum and says where.

One real cluster writes the data (module fixture); each test copies it, damages one node's
files and starts that node as a real process. Damage before the end of the log (a flipped bit
in a payload, a length or a checksum; a bad header; a damaged snapshot) stops the node with a
non-zero exit and a message naming the file and the offset: it never serves from it. A torn
tail (the end of the last record missing, or junk after it) is cut and logged with its offset,
and the node then catches up from its peers without losing an acknowledged write.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import pytest
import trio

from daemon import storage
from daemon.client import Client
from daemon.storage import ENTRY_HEADER, HEADER_BYTES, WAL, CorruptLog
from tests.faults.cluster import ProcessCluster

TEST_TIMEOUT = 60
WRITES = 80
SNAPSHOT_EVERY = 50
VICTIM = 2
HAS_SNAPSHOTS = hasattr(storage, "read_snapshot")


def wal_entries(path: Path) -> list[tuple[int, int]]:
    """(offset, total bytes) of each entry of a valid log."""
    data = path.read_bytes()
    out, offset = [], HEADER_BYTES
    while offset < len(data):
        length, _ = ENTRY_HEADER.unpack_from(data, offset)
        out.append((offset, ENTRY_HEADER.size + length))
        offset += ENTRY_HEADER.size + length
    assert offset == len(data)
    return out


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


def middle_entry(node_dir: Path) -> tuple[int, int]:
    entries = wal_entries(node_dir / "wal.log")
    assert len(entries) >= 4, entries
    return entries[len(entries) // 2]


@pytest.mark.parametrize("where", ["payload", "length", "checksum"])
def test_a_flipped_bit_inside_the_log_stops_the_node_naming_file_and_offset(tmp_path, written,
                                                                           where):
    damaged = {}

    def damage(node_dir: Path) -> None:
        offset, size = middle_entry(node_dir)
        at = {"payload": offset + ENTRY_HEADER.size + (size - ENTRY_HEADER.size) // 2,
              "length": offset,  # the high byte: an impossible length
              "checksum": offset + 5}[where]
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


@pytest.mark.parametrize("tail", ["cut inside the last record", "junk after the last record"])
def test_a_torn_tail_is_cut_and_logged_and_the_node_catches_up(tmp_path, written, tail):
    cut = {}

    def damage(node_dir: Path) -> None:
        wal = node_dir / "wal.log"
        data = wal.read_bytes()
        offset, size = wal_entries(wal)[-1]
        if tail == "cut inside the last record":
            wal.write_bytes(data[:offset + size // 2])
            cut["offset"] = offset
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


def test_any_flipped_bit_is_caught_and_located(tmp_path, written):
    """Every single-bit flip (sampled positions) in a node's log: either corruption reported
    at the damaged entry's offset (header: offset 0), or, in the last entry only, that entry
    cut as a torn tail and every earlier record returned intact."""
    source = written[0] / f"node-{VICTIM}" / "wal.log"
    original = source.read_bytes()
    entries = wal_entries(source)
    rng = random.Random(7)
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    intact = _records(node_dir, original)
    positions = [rng.randrange(len(original)) for _ in range(150)] + [0, len(original) - 1]
    for at in positions:
        damaged = bytearray(original)
        damaged[at] ^= 1 << rng.randrange(8)
        entry = next(((o, s) for o, s in entries if o <= at < o + s), None)
        warnings = []
        try:
            wal, records = WAL.open(_copy(node_dir, bytes(damaged)), log=warnings.append)
        except CorruptLog as exc:
            assert entry != entries[-1], (at, str(exc))
            assert exc.offset == (0 if entry is None else entry[0]), (at, str(exc))
            assert f"offset {exc.offset}" in str(exc) and str(node_dir / "wal.log") in str(exc)
            continue
        except storage.StorageError as exc:  # the format version field
            assert at < HEADER_BYTES, (at, str(exc))
            continue
        wal.close()
        assert entry == entries[-1], (at, "damage inside the log went unnoticed")
        assert records == intact[:-1]
        assert len(warnings) == 1 and f"torn tail at offset {entry[0]}" in warnings[0]


def _copy(node_dir: Path, data: bytes) -> Path:
    (node_dir / "wal.log").write_bytes(data)
    return node_dir


def _records(node_dir: Path, data: bytes) -> list:
    wal, records = WAL.open(_copy(node_dir, data))
    wal.close()
    return records


def test_the_power_loss_marker_follows_every_sync(tmp_path, monkeypatch):
    """The hook the power-cut model relies on: after each sync (and at open) the marker holds
    the log's inode and durable length; appended bytes beyond it are what a cut removes."""
    from daemon.messages import CommitRecord

    marker = tmp_path / "marker"
    monkeypatch.setattr(storage, "_SYNCED_MARKER", str(marker))
    node_dir = tmp_path / "node"

    def read() -> tuple[int, int]:
        inode, length = marker.read_text().split()
        return int(inode), int(length)

    wal, _ = WAL.open(node_dir)
    ino = (node_dir / "wal.log").stat().st_ino
    assert read() == (ino, HEADER_BYTES)
    wal.append([CommitRecord(1)])
    assert read() == (ino, HEADER_BYTES)  # appended, not synced
    wal.sync()
    assert read() == (ino, wal.written_bytes)
    wal.append([CommitRecord(2)])
    assert read()[1] < wal.written_bytes
    wal.close()
    assert read() == (ino, wal.written_bytes)
    assert len(marker.read_bytes()) == 42  # one fixed-width line, rewritten in place
