"""Making a data directory for a new cluster: from a backup (``paxosd snapshot restore``), or
from one surviving member's own data when a majority is lost for good (``paxosd recover``).

Both write what a node reads at start (daemon.runtime.storage): a snapshot file, the
``incarnation`` file and a WAL. The state machine image in the snapshot carries the new
membership as the membership key (daemon.core.membership) with ``effective`` one slot after
the snapshot, so the node proposes from its first slot in the new configuration and never in
the old one; nothing else marks the directory, and the node is started with a plain
``paxosd serve``.

Restore (``restore_data_dir``): the members are the initial members of the new file, each
under an incarnation derived from the backup's SHA-256, the cluster name and its id (so every
member restored from the same file agrees on them, and no member of the old cluster, always
incarnation 0 or a random one, has its votes counted). The state, revisions and leases are
the saved ones; the snapshot sits at the saved applied slot, so slots, revisions and the
membership's own command numbers only go up. What must not carry over:

- client sessions: each one kept in the image now remembers its last command's outcome as
  SESSION_EXPIRED (with the revision as the horizon), so a retry of any command the old
  cluster applied is refused instead of answered as if this cluster had applied it: the last
  one per session gets SESSION_EXPIRED, older ones STALE, and those of sessions evicted
  before the backup SESSION_EXPIRED by the eviction horizon (daemon.core.kv), which stays.
  The horizon is not raised to the revision: a new client's first seq (1) would then be
  refused too, and the client library, having perhaps sent it to a follower first, could
  only call it "outcome unknown";
- the lease epoch: 0, so the new cluster's first leader proposes its own and starts every
  lease's deadline afresh (daemon.core.expiry);
- the membership's session (client 0, whose seq is the slot of its command) says the slot of
  the snapshot, so the new cluster's own membership changes apply.

Recover (``recover_data_dir``): the member keeps everything it knows chosen (applied into the
snapshot, at its commit index) and everything it accepted above it, at the ballot it
accepted it, so the one-member cluster's first Phase 1 finds those values and proposes them
again, like any new leader: an acknowledged write this member accepted is kept. Two things
change: the configuration becomes this member alone, under a NEW incarnation (the lost
members, should they ever come back with their old data, never count its votes, so they can
never finish a Phase 1 or a Phase 2 with it in their old configuration), and membership
commands among the accepted values are replaced by no-ops (they would bring back the lost
members). The promise is raised to the lease epoch, so this node's next ballot is above it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

from fastpath import BALLOT_CHOSEN, KeyRecord

from daemon.codec.backup import Backup
from daemon.core.acceptor import Acceptor
from daemon.core.kv import KVStore, encode_image
from daemon.core.membership import (CONFIG_CLIENT, MEMBERS_KEY, Configuration, Member,
                                    config_of_batch, decode_configuration, encode_configuration)
from daemon.core.messages import NOOP, OK, SESSION_EXPIRED
from daemon.core.node import DurableState
from daemon.runtime.server import load_snapshot
from daemon.runtime.storage import (MAX_INCARNATION, WAL, WAL_FILE, StorageError,
                                    new_incarnation, save_incarnation, write_snapshot)

__all__ = ["restore_data_dir", "recover_data_dir"]


def _with_members(image: list, members: list, slot: int) -> list:
    """``image`` with the membership key saying ``members`` from slot ``slot + 1`` on, as the
    command of slot ``slot`` (client 0's session too)."""
    cfg = Configuration(slot + 1, tuple(members), slot)
    value = encode_configuration(slot, slot + 1, members, cfg)
    data = dict(image[0])
    old = data.get(MEMBERS_KEY)
    data[MEMBERS_KEY] = (KeyRecord(value, 0, 0, 1, 0) if old is None else
                         KeyRecord(value, old.create_revision, old.mod_revision, old.version, 0))
    sessions = dict(image[1])
    sessions[CONFIG_CLIENT] = (slot, OK, None, image[2])
    return [data, sessions, *image[2:]]


def _restored_incarnation(digest: str, cluster: str, member_id: int) -> int:
    """The incarnation every restore of the backup ``digest`` gives member ``member_id``."""
    h = hashlib.sha256(f"paxosd restore {digest} {cluster} {member_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") & MAX_INCARNATION or 1


def _refuse_used(directory: Path) -> None:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise StorageError(f"{directory}: the data directory is not empty; restore only into "
                           f"an empty or missing directory (move this one aside first)",
                           path=directory)


def restore_data_dir(backup: Backup, digest: str, config, directory: os.PathLike | str, *,
                     fsync: bool = True) -> dict:
    """Write member ``config.node_id``'s data directory for a new cluster holding ``backup``
    (see the module docstring). StorageError naming the directory if it is not empty;
    ValueError if the node is not an initial member of ``config``. Returns what it did."""
    directory = Path(directory)
    node_id = config.node_id
    initial = config.initial_members
    if node_id not in [m.id for m in initial]:
        raise ValueError(f"{config.path}: node {node_id} is not an initial member of cluster "
                         f"{config.cluster!r} (members: "
                         f"{', '.join(str(m.id) for m in initial)})")
    _refuse_used(directory)
    members = [Member(m.id, str(m.peer), str(m.client), True,
                      _restored_incarnation(digest, config.cluster, m.id)) for m in initial]
    image = list(backup.image)
    revision = image[2]
    image[1] = {client: (session[0], SESSION_EXPIRED, revision, revision)
                for client, session in image[1].items()}
    image[6] = 0  # the lease epoch
    image = _with_members(image, members, backup.index)
    wal, _records = WAL.open(directory, fsync=fsync)
    try:
        write_snapshot(directory, backup.index, encode_image(image), fsync=fsync)
        incarnation = next(m.incarnation for m in members if m.id == node_id)
        save_incarnation(directory, incarnation, fsync=fsync)
    finally:
        wal.close()
    return {"node_id": node_id, "directory": str(directory), "cluster": config.cluster,
            "members": [m.id for m in members], "incarnation": incarnation,
            "index": backup.index, "revision": revision, "keys": backup.keys,
            "leases": backup.leases}


def _durable_state(directory: Path, records: list) -> DurableState:
    """The acceptor state the node would start from: its snapshot and its log (as the server
    loads them)."""
    return DurableState.from_records(records, load_snapshot(directory))


def _own_addresses(kv: KVStore, node_id: int, config) -> tuple[str, str]:
    """This member's (peer, client) addresses: from the membership in its log, else from the
    YAML file; ValueError if neither knows them."""
    value = kv.get(MEMBERS_KEY)
    if value is not None:
        member = decode_configuration(value)[0].get(node_id)
        if member is None:
            raise ValueError(f"node {node_id} is not a member of the configuration in its own "
                             f"log: it was removed, and its data is not the cluster's")
        if member.peer is not None and member.client is not None:
            return member.peer, member.client
    if config is None:
        raise ValueError(f"the log does not name node {node_id}'s addresses: give --config FILE")
    try:
        m = config.member(node_id)
    except KeyError as exc:
        raise ValueError(f"{config.path}: {exc.args[0]}") from None
    return str(m.peer), str(m.client)


def recover_data_dir(directory: os.PathLike | str, node_id: int, config=None, *,
                     fsync: bool = True) -> dict:
    """Turn member ``node_id``'s data directory into that of a one-member cluster (see the
    module docstring). DataDirInUse if its node runs; StorageError or ValueError naming what
    is wrong otherwise. Returns what it did; run it again if it was interrupted."""
    directory = Path(directory)
    if not (directory / WAL_FILE).is_file():
        raise StorageError(f"{directory}: no {WAL_FILE} here: not a paxosd data directory",
                           path=directory)
    wal, records = WAL.open(directory, fsync=fsync)  # the lock: refused while the node runs
    try:
        durable = _durable_state(directory, records)
        commit = durable.commit_index
        if commit == 0:
            raise ValueError(f"{directory}: this member knows no slot chosen: there is "
                             f"nothing to recover; start a new cluster instead")
        snapshot = durable.snapshot
        kv = KVStore.from_image(snapshot.state) if snapshot is not None else KVStore()
        for slot in range((snapshot.index if snapshot is not None else 0) + 1, commit + 1):
            kv.apply_batch(durable.log[slot][1])
        peer, client = _own_addresses(kv, node_id, config)
        incarnation = new_incarnation()
        image = _with_members(kv.image(), [Member(node_id, peer, client, True, incarnation)],
                              commit)
        log = {s: e for s, e in durable.log.items() if s > commit}
        dropped = [s for s, (_b, batch) in log.items() if config_of_batch(batch) is not None]
        for s in dropped:
            log[s] = (log[s][0], NOOP)
        promised = max(durable.promised, image[6])
        state = SimpleNamespace(log=log, max_slot=max(log, default=commit), promised=promised,
                                commit_index=commit)
        checkpoint = Acceptor(state).checkpoint(commit)
        write_snapshot(directory, commit, encode_image(image), fsync=fsync)
        save_incarnation(directory, incarnation, fsync=fsync)
        wal.rotate(list(checkpoint))
    finally:
        wal.close()
    return {"node_id": node_id, "directory": str(directory), "incarnation": incarnation,
            "commit_index": commit, "revision": image[2], "keys": len(image[0]) - 1,
            "accepted": sorted(s for s, e in log.items() if e[0] != BALLOT_CHOSEN),
            "dropped_membership_changes": dropped, "peer": peer, "client": client}
