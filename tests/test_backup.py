"""Backups and recovery, piece by piece: the snapshot stream from a real leader (in chunks
within the frame limit), the backup file (a damaged or partial one is refused, naming what is
wrong), ``snapshot restore``'s refusals, and ``recover`` on a data directory whose member
accepted values it did not know chosen (its one-member cluster keeps them)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from fastpath import ballot_next

from daemon.client.backup import fetch_snapshot
from daemon.client.client import Client
from daemon.codec.backup import DamagedBackup, decode_backup, decode_payload, encode_backup
from daemon.core.kv import KVStore, encode_image
from daemon.core.membership import MEMBERS_KEY, Member, config_batch, initial_configuration
from daemon.core.messages import NOOP, OK, OP_PUT, AcceptRecord, CommitRecord
from daemon.core.node import CoreConfig, Node
from daemon.runtime.backup import SnapshotService
from daemon.runtime.config import load_config
from daemon.runtime.recovery import _durable_state, recover_data_dir
from daemon.runtime.storage import WAL, DataDirInUse, StorageError
from tests.test_cli import paxosd, write_config
from tests.test_server import TEST_TIMEOUT, running_cluster

BIG_VALUE = 200 * 1024
MAX_FRAME = 4 * 1024 * 1024  # test_server.write_config's limit: chunks of 1 MiB


async def test_a_snapshot_streams_from_the_leader_in_chunks_that_fit_a_frame(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            await cluster.wait_for_leader()
            endpoints = [str(cluster.client_address(i)) for i in (1, 2, 3)]
            async with Client(endpoints, timeout=10, max_frame=MAX_FRAME) as client:
                for i in range(12):
                    revision = await client.put(b"big/%02d" % i, bytes([i]) * BIG_VALUE)
                payload, at = await fetch_snapshot(client)
            backup = decode_payload(payload)
            assert len(payload) > 2 * MAX_FRAME // 4  # three chunks at least
            assert at == backup.revision >= revision and backup.cluster == "test"
            assert backup.image[0][b"big/11"].value == bytes([11]) * BIG_VALUE
            assert [m[0] for m in backup.members] == [1, 2, 3]

            raw = await cluster.client(1)
            gone = await raw.call("snapshot", 0, 0, b"", b"\x01" * 16)
            assert gone.status == "error" and "is not kept on this node" in gone.result
            bad = await raw.call("snapshot", 0, 5, b"", None)
            assert bad.status == "error" and "offset 0 for a new snapshot" in bad.result
            await raw.aclose()


async def test_a_snapshot_fetch_leaves_the_shared_clients_attempt_timeout_to_its_other_calls(
        tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            await cluster.wait_for_leader()
            endpoints = [str(cluster.client_address(i)) for i in (1, 2, 3)]
            async with Client(endpoints, timeout=10, attempt_timeout=0.5,
                              max_frame=MAX_FRAME) as client:
                for i in range(6):
                    await client.put(b"big/%02d" % i, bytes([i]) * BIG_VALUE)
                seen, done = set(), trio.Event()

                async def look() -> None:  # what another call would start with meanwhile
                    while not done.is_set():
                        seen.add(client.attempt_timeout)
                        await trio.sleep(0)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(look)
                    await fetch_snapshot(client)
                    done.set()
            assert seen == {0.5}


class _Conn:
    closed = False

    def __init__(self):
        self.replies = []
        self.replied = trio.Event()

    def push(self, reply):
        self.replies.append(reply)
        self.replied.set()

    push_alone = push


async def test_the_service_encodes_off_the_loop_cuts_chunks_and_forgets_the_oldest():
    def take():
        return 3, [{b"k": _record(b"v" * 5000)}, {}, 7, 0, 3, {}, 0], [[1, None, None, True, 0]]

    service = SnapshotService("c", take, max_frame_bytes=8192)
    conn = _Conn()
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        service.taken(conn, 1, None)
        with trio.fail_after(5):
            await conn.replied.wait()
        nursery.cancel_scope.cancel()
    req_id, status, (snapshot_id, total, offset, data), _leader, revision = conn.replies[0]
    assert (req_id, status, offset, revision, len(data)) == (1, OK, 0, 7, 2048) and total > 2048
    assert decode_payload(b"".join(service.chunk(2, snapshot_id, at, None)[2][3]
                                   for at in range(0, total, 2048))).image[0][b"k"].version == 1
    service.keep(3, b"x", 7, None)
    service.keep(4, b"y", 7, None)  # at most two are kept
    assert service.chunk(5, snapshot_id, 0, None)[1] == "error"


def _record(value: bytes):
    from fastpath import KeyRecord
    return KeyRecord(value, 1, 1, 1, 0)


def _payload() -> bytes:
    from daemon.codec.backup import encode_payload
    kv = KVStore()
    kv.apply((5, 1, OP_PUT, b"a", b"1", None))
    return encode_payload("c", 3, encode_image(kv.image()), [[1, "h:1", "h:2", True, 0]])


@pytest.mark.parametrize("damage, words", [
    (lambda d: d[:-1], "truncated"),
    (lambda d: d[:40], "truncated"),
    (lambda d: d + b"x", "trailing bytes"),
    (lambda d: b"NOTPAXOS" + d[8:], "bad magic"),
    (lambda d: d[:-40] + bytes([d[-40] ^ 1]) + d[-39:], "SHA-256 mismatch"),
])
def test_a_damaged_or_partial_file_is_refused_naming_what_is_wrong(damage, words):
    data = encode_backup(_payload(), 1.0)
    header, backup, _digest = decode_backup(data)
    assert (header["revision"], header["keys"], backup.index) == (1, 1, 3)
    with pytest.raises(DamagedBackup, match=words):
        decode_backup(damage(data))


def test_status_and_restore_refuse_a_bad_file_a_used_directory_and_a_stranger(tmp_path):
    good = tmp_path / "good.snap"
    good.write_bytes(encode_backup(_payload(), 1.0))
    partial = tmp_path / "partial.snap"
    partial.write_bytes(good.read_bytes()[:-10])
    status = paxosd("snapshot", "status", str(good), "--json")
    assert status.returncode == 0 and '"revision": 1' in status.stdout
    status = paxosd("snapshot", "status", str(partial))
    assert status.returncode == 1 and "partial.snap: damaged or partial" in status.stderr
    config = str(write_config(tmp_path))
    restore = paxosd("snapshot", "restore", str(partial), "-c", config, "--node-id", "1")
    assert restore.returncode == 1 and "truncated" in restore.stderr
    used = tmp_path / "used"
    used.mkdir()
    (used / "wal.log").write_bytes(b"x")
    restore = paxosd("snapshot", "restore", str(good), "-c", config, "--node-id", "1",
                     "--data-dir", str(used))
    assert restore.returncode == 1 and f"{used}: the data directory is not empty" in restore.stderr
    restore = paxosd("snapshot", "restore", str(good), "-c", config, "--node-id", "9")
    assert restore.returncode == 2 and "9" in restore.stderr
    restore = paxosd("snapshot", "restore", str(good), "-c", config, "--node-id", "2")
    assert restore.returncode == 0, restore.stderr
    assert (tmp_path / "data" / "node-2" / "snapshot").is_file()


# ------------------------------------------------------------------------------ recover

B1 = ballot_next(0, 2)  # node 2 led the old cluster


def _old_member_dir(directory: Path) -> None:
    """Node 1 of a 3-member cluster: slots 1-2 known chosen, slot 3 (a write) accepted only,
    slot 4 (adding a member) accepted only."""
    members = initial_configuration({1: ("h:1", "h:2"), 2: ("h:3", "h:4"), 3: ("h:5", "h:6")})
    add = config_batch(4, 68, members.with_member(Member(4, "h:7", "h:8", False, 0)), members)
    batches = tuple(((9, s, OP_PUT, b"k%d" % s, b"v%d" % s, None),) for s in (1, 2, 3))
    wal, _ = WAL.open(directory)
    wal.append([AcceptRecord(B1, 1, batches + (add,)), CommitRecord(2)])
    wal.sync()
    wal.close()


def _run_alone(directory: Path) -> Node:
    """The recovered node, started from its directory and run alone until it leads and has
    applied what its first Phase 1 proposed."""
    wal, records = WAL.open(directory)
    durable = _durable_state(directory, records)
    wal.close()
    incarnation = int((directory / "incarnation").read_text())
    node = Node(1, {1: ("h:1", "h:2")}, CoreConfig(), random.Random(1), 0.0, durable,
                incarnation)
    now = 0.0
    for _ in range(200):
        now += 0.01
        node.tick(now)
        for _ in range(20):
            ready = node.ready()
            for dest, msg in ready.send + ready.send_after_persist:
                if dest == 1:
                    node.receive(msg, now)
        if node.role == "leader" and node.commit_index >= 4:
            return node
    raise AssertionError(f"node 1 did not lead alone: {node.status()}")


def test_recover_keeps_chosen_and_accepted_values_and_drops_a_membership_change(tmp_path):
    directory = tmp_path / "node-1"
    _old_member_dir(directory)
    config = load_config(write_config(tmp_path))
    done = recover_data_dir(directory, 1, config)
    assert (done["peer"], done["client"]) == (str(config.member(1).peer),
                                              str(config.member(1).client))
    assert (done["commit_index"], done["accepted"], done["dropped_membership_changes"]) == \
        (2, [3, 4], [4])
    node = _run_alone(directory)
    assert node.kv.get(b"k3") == b"v3"  # accepted, maybe acknowledged: kept
    assert node.log[4][1] == NOOP or node.snapshot_index >= 4
    assert [m.id for m in node.configuration.members] == [1]
    assert node.configuration.votes(1, done["incarnation"]) and done["incarnation"] != 0


def test_recover_refuses_a_running_node_an_empty_directory_and_nothing_chosen(tmp_path):
    directory = tmp_path / "node-1"
    _old_member_dir(directory)
    wal, _ = WAL.open(directory)  # as a running node holds it
    try:
        with pytest.raises(DataDirInUse, match="in use by another paxosd process"):
            recover_data_dir(directory, 1)
    finally:
        wal.close()
    with pytest.raises(StorageError, match="not a paxosd data directory"):
        recover_data_dir(tmp_path / "missing", 1)
    fresh = tmp_path / "fresh"
    WAL.open(fresh)[0].close()
    with pytest.raises(ValueError, match="knows no slot chosen"):
        recover_data_dir(fresh, 1)
    assert MEMBERS_KEY  # the membership key is the one the recovered image rewrites
