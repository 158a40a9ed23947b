"""``paxosd snapshot ...`` and ``paxosd recover``: backups, restores and disaster recovery.

    paxosd snapshot save FILE              a consistent snapshot from the leader, to FILE
    paxosd snapshot status FILE [--json]   revision, keys, size, SHA-256 (checked)
    paxosd snapshot restore FILE --config F --node-id N [--data-dir D]
                                           one member's data directory of a new cluster
    paxosd recover --data-dir D [--config F] [--node-id N]
                                           a survivor of a lost majority -> a one-member cluster

The file format is daemon.codec.backup's; the data directories are daemon.runtime.recovery's;
the README's "Backup and restore" and "Disaster recovery" walk through them. The handlers use
daemon.tools.cli's client plumbing (imported where they run: cli imports this module).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

__all__ = ["add_commands"]


SAVE_TIMEOUT = 60.0  # seconds per request of a save (--timeout): a big store takes a while


class _Refused(Exception):
    """The operation cannot be done as asked; the text says why (exit 1)."""


def add_commands(commands, client: argparse.ArgumentParser) -> None:
    """Register ``snapshot`` (save, status, restore) and ``recover``."""
    from daemon.tools.cli import _config_option

    p = commands.add_parser("snapshot", help="save, inspect or restore a backup of the cluster")
    sub = p.add_subparsers(dest="snapshot_command", metavar="ACTION", required=True)
    q = sub.add_parser("save", parents=[client], help="save a consistent snapshot from the "
                       "leader (state, revisions, leases, membership) to FILE (--timeout: "
                       f"per request, default {SAVE_TIMEOUT:g} s here)")
    q.add_argument("file", metavar="FILE")
    q.add_argument("--json", action="store_true", help="print what was saved as JSON")
    q.set_defaults(func=_guarded(cmd_snapshot_save), timeout=SAVE_TIMEOUT)
    q = sub.add_parser("status", help="check FILE (its SHA-256) and print its revision, keys, "
                       "size and hash")
    q.add_argument("file", metavar="FILE")
    q.add_argument("--json", action="store_true", help="print it as JSON")
    q.set_defaults(func=_guarded(cmd_snapshot_status))
    q = sub.add_parser("restore", help="prepare one member's data directory of a NEW cluster "
                       "(the members of --config) holding FILE's data; restore every member "
                       "from the same FILE, then start them with paxosd serve")
    q.add_argument("file", metavar="FILE")
    _config_option(q)
    q.add_argument("--node-id", type=int, required=True, metavar="N",
                   help="the member whose data directory to prepare")
    q.add_argument("--data-dir", metavar="DIR", help="its data directory (default: the "
                   "file's data_dir/node-N, where paxosd serve looks); must be empty or missing")
    q.set_defaults(func=_guarded(cmd_snapshot_restore))

    p = commands.add_parser(
        "recover", help="when a majority of the members is lost for good: turn one "
        "survivor's data directory into a one-member cluster (its node must be stopped)",
        description="Keeps everything the member knows chosen and everything it accepted (its "
                    "first election proposes those values again), makes the membership this "
                    "member alone under a new incarnation, and says what it did. Then start it "
                    "with paxosd serve and grow it with paxosd member add. The lost members "
                    "must never come back with their old data: wipe it and add them as new "
                    "members (paxosd serve --join).")
    p.add_argument("--data-dir", required=True, metavar="DIR",
                   help="the survivor's data directory (the one holding wal.log)")
    _config_option(p)
    p.add_argument("--node-id", type=int, metavar="N", help="the survivor's id (default: from "
                   "a directory named node-N)")
    p.set_defaults(func=_guarded(cmd_recover))


def _guarded(handler):
    """``handler`` with _Refused, damaged files and storage errors reported as exit 1."""
    def run(args: argparse.Namespace) -> int:
        from daemon.codec.backup import DamagedBackup
        from daemon.runtime.storage import StorageError
        from daemon.tools.cli import EXIT_FAILED

        try:
            return handler(args)
        except (_Refused, DamagedBackup, StorageError) as exc:
            print(f"paxosd {args.command}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    return run


def _read_backup(name: str):
    """(header, backup, sha256 hex, size) of the backup file ``name``; _Refused naming the
    file and what is wrong with it."""
    from daemon.codec.backup import DamagedBackup, decode_backup

    try:
        data = Path(name).read_bytes()
    except OSError as exc:
        raise _Refused(f"{name}: cannot read it: {exc.strerror or exc}") from None
    try:
        header, backup, digest = decode_backup(data)
    except DamagedBackup as exc:
        raise _Refused(f"{name}: damaged or partial snapshot file: {exc}") from None
    return header, backup, digest, len(data)


def _summary(name: str, header: dict, backup, digest: str, size: int) -> dict:
    return {"file": name, "revision": header["revision"], "keys": header["keys"],
            "size": size, "sha256": digest, "index": header["index"],
            "members": header["members"], "cluster": header["cluster"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(header["created"])),
            "leases": backup.leases}


def _print_summary(doc: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    for key in ("file", "revision", "keys", "size", "sha256", "index", "members", "cluster",
                "created", "leases"):
        value = doc[key]
        if key == "members":
            value = ", ".join(map(str, value))
        elif key == "size":
            value = f"{value} bytes"
        print(f"{key}: {value}")


def cmd_snapshot_save(args: argparse.Namespace) -> int:
    from daemon.client.backup import fetch_snapshot
    from daemon.codec.backup import encode_backup
    from daemon.runtime.storage import write_file_whole
    from daemon.tools.cli import EXIT_OK, _run_client

    payload, _revision = _run_client(args, lambda c: fetch_snapshot(c))
    data = encode_backup(payload, time.time())
    write_file_whole(args.file, data)
    header, backup, digest, size = _read_backup(args.file)  # what is on disk, checked
    doc = _summary(args.file, header, backup, digest, size)
    if args.json:
        _print_summary(doc, True)
    else:
        print(f"snapshot saved to {args.file}: revision {doc['revision']}, {doc['keys']} keys, "
              f"{doc['leases']} leases, {size} bytes, sha256 {digest} (cluster "
              f"{doc['cluster']}, members {', '.join(map(str, doc['members']))}, slot "
              f"{doc['index']})")
    return EXIT_OK


def cmd_snapshot_status(args: argparse.Namespace) -> int:
    from daemon.tools.cli import EXIT_OK

    _print_summary(_summary(args.file, *_read_backup(args.file)), args.json)
    return EXIT_OK


def cmd_snapshot_restore(args: argparse.Namespace) -> int:
    from daemon.runtime.recovery import restore_data_dir
    from daemon.tools.cli import EXIT_OK, _load

    config = _load(args, node_id=args.node_id)
    header, backup, digest, _size = _read_backup(args.file)
    directory = Path(args.data_dir) if args.data_dir else config.node_dir()
    try:
        done = restore_data_dir(backup, digest, config, directory)
    except ValueError as exc:
        raise _Refused(str(exc)) from None
    print(f"restored {args.file} (revision {done['revision']}, {done['keys']} keys, "
          f"{done['leases']} leases, from cluster {header['cluster']}) into {directory}: node "
          f"{done['node_id']} of cluster {done['cluster']} (members "
          f"{', '.join(map(str, done['members']))}, incarnation {done['incarnation']}; old "
          f"client sessions end here: their retries are refused)")
    if directory.absolute() != config.node_dir().absolute():
        print(f"note: paxosd serve -c {config.path} --node-id {args.node_id} reads "
              f"{config.node_dir()}; move {directory} there before starting it")
    print(f"restore every member of {config.path} from this file, then start each with: "
          f"paxosd serve -c {config.path} --node-id N")
    return EXIT_OK


def _node_id(args: argparse.Namespace, directory: Path) -> int:
    if args.node_id is not None:
        return args.node_id
    match = re.fullmatch(r"node-(\d+)", directory.absolute().name)
    if match is None:
        from daemon.tools.cli import UsageError
        raise UsageError(f"--node-id: not given, and {directory} is not named node-N")
    return int(match.group(1))


def cmd_recover(args: argparse.Namespace) -> int:
    from daemon.runtime.recovery import recover_data_dir
    from daemon.tools.cli import EXIT_OK, _load

    directory = Path(args.data_dir)
    node_id = _node_id(args, directory)
    config = _load(args) if args.config else None
    try:
        done = recover_data_dir(directory, node_id, config)
    except ValueError as exc:
        raise _Refused(str(exc)) from None
    accepted = done["accepted"]
    again = (f"{len(accepted)} slots it accepted above it ({accepted[0]}..{accepted[-1]}), "
             f"which its first election proposes again" if accepted
             else "nothing accepted above it")
    print(f"recovered node {node_id} from {directory}: it is now a one-member cluster "
          f"(peers {done['peer']}, clients {done['client']}, new incarnation "
          f"{done['incarnation']}); kept every slot it knows chosen, up to "
          f"{done['commit_index']} (revision {done['revision']}, {done['keys']} keys), and "
          f"{again}")
    if done["dropped_membership_changes"]:
        print(f"dropped the membership changes in flight in slots "
              f"{', '.join(map(str, done['dropped_membership_changes']))} (no-ops now)")
    where = f"-c {config.path} " if config is not None else ""
    print(f"start it with: paxosd serve {where}--node-id {node_id}; then add members with "
          f"paxosd member add ID PEER CLIENT and start each on an EMPTY data directory with "
          f"paxosd serve --node-id ID --join. The lost members must never start again with "
          f"their old data: wipe their data directories first.")
    others = ([m.id for m in config.initial_members if m.id != node_id]
              if config is not None else [])
    if others:
        print(f"note: {config.path} still lists members {', '.join(map(str, others))} (not "
              f"marked join): remove the lost ones from the file, so that this node refuses "
              f"them if they come back with their old data (it accepts connections from every "
              f"member its file lists)")
    return EXIT_OK
