"""``paxosd lease ...`` and ``paxosd lock ...``: leases and locks from the command line, in
etcdctl's shape.

    paxosd lease grant TTL                 lease ID granted with TTL(10s)
    paxosd lease keepalive ID [--once]     keeps it alive until Ctrl-C (or once)
    paxosd lease revoke ID                 ends it; its keys are deleted
    paxosd lease ttl ID [--keys]           TTL, seconds left, keys attached
    paxosd lock NAME [-- COMMAND ...]      holds the lock NAME while COMMAND runs (or until
                                           Ctrl-C), with its fencing token in the environment

Every one takes ``--json``. The handlers use daemon.tools.cli's client plumbing (imported
where they run: cli imports this module to register the commands).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

__all__ = ["add_commands"]


def add_commands(commands, client: argparse.ArgumentParser) -> None:
    """Register ``lease`` (grant, keepalive, revoke, ttl) and ``lock``."""
    from daemon.tools.cli import _positive_int

    p = commands.add_parser("lease", help="grant, keep alive, revoke or inspect a lease")
    sub = p.add_subparsers(dest="lease_command", metavar="ACTION", required=True)
    q = sub.add_parser("grant", parents=[client], help="grant a lease of TTL seconds and print "
                       "its id (a shorter TTL than the cluster's minimum is raised to it)")
    q.add_argument("ttl", metavar="TTL", type=_positive_int)
    q.add_argument("--json", action="store_true", help="print {id, ttl} as JSON")
    q.set_defaults(func=cmd_lease_grant)
    q = sub.add_parser("keepalive", parents=[client], help="keep lease ID alive until Ctrl-C "
                       "(exit 1 once it is gone)")
    q.add_argument("lease_id", metavar="ID", type=_positive_int)
    q.add_argument("--once", action="store_true", help="one keepalive, then exit")
    q.add_argument("--json", action="store_true", help="print each renewal as JSON")
    q.set_defaults(func=cmd_lease_keepalive)
    q = sub.add_parser("revoke", parents=[client], help="end lease ID: its keys are deleted")
    q.add_argument("lease_id", metavar="ID", type=_positive_int)
    q.add_argument("--json", action="store_true", help="print {id, revoked} as JSON")
    q.set_defaults(func=cmd_lease_revoke)
    q = sub.add_parser("ttl", parents=[client], help="lease ID's TTL and the seconds left")
    q.add_argument("lease_id", metavar="ID", type=_positive_int)
    q.add_argument("--keys", action="store_true", help="also the keys attached to it")
    q.add_argument("--json", action="store_true", help="print {id, ttl, left, keys} as JSON")
    q.set_defaults(func=cmd_lease_ttl)

    p = commands.add_parser(
        "lock", parents=[client], help="acquire the lock NAME and hold it while COMMAND runs "
        "(or until Ctrl-C or SIGTERM)",
        description="Waits in line for the lock NAME, prints its key and fencing token, then "
                    "runs COMMAND (after --) with PAXOSD_LOCK_KEY and PAXOSD_LOCK_REVISION in "
                    "its environment and releases the lock when it exits (exit status: "
                    "COMMAND's). Should the lock be lost meanwhile (the cluster unreachable "
                    "for longer than the TTL), COMMAND gets SIGTERM and the exit status is 1. "
                    "Writes fenced with the token (put --fence-key KEY --fence-revision REV) "
                    "are refused once the lock has moved on.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--ttl", type=_positive_int, default=10, metavar="SECONDS",
                   help="the lock's lease: how long a holder that died keeps it (default 10)")
    p.add_argument("--json", action="store_true", help="print {key, revision} as JSON")
    p.add_argument("run", nargs="*", metavar="-- COMMAND ...", help="the command to run "
                   "holding the lock (everything after --)")
    p.set_defaults(func=cmd_lock)


def _print_json(doc) -> None:
    from daemon.tools.cli import _json_default
    print(json.dumps(doc, default=_json_default), flush=True)


def cmd_lease_grant(args: argparse.Namespace) -> int:
    from daemon.tools.cli import EXIT_OK, _run_client
    lease = _run_client(args, lambda c: c.lease_grant(args.ttl))
    if args.json:
        _print_json({"id": lease.id, "ttl": lease.ttl})
    else:
        print(f"lease {lease.id} granted with TTL({lease.ttl}s)")
    return EXIT_OK


def cmd_lease_revoke(args: argparse.Namespace) -> int:
    from daemon.tools.cli import EXIT_FAILED, EXIT_OK, _run_client
    revoked = _run_client(args, lambda c: c.lease_revoke(args.lease_id))
    if args.json:
        _print_json({"id": args.lease_id, "revoked": revoked})
    elif revoked:
        print(f"lease {args.lease_id} revoked")
    else:
        print(f"lease {args.lease_id} not found (revoked or expired)", file=sys.stderr)
    return EXIT_OK if revoked else EXIT_FAILED


def cmd_lease_ttl(args: argparse.Namespace) -> int:
    from daemon.tools.cli import EXIT_OK, _run_client
    status = _run_client(args, lambda c: c.lease_ttl(args.lease_id))
    if args.json:
        _print_json({"id": status.id, "ttl": status.ttl, "left": status.left,
                     "keys": status.keys if args.keys else None})
        return EXIT_OK
    line = f"lease {status.id} granted with TTL({status.ttl}s), remaining({status.left}s)"
    if args.keys:
        line += ", attached keys[" + ", ".join(
            k.decode("utf-8", "backslashreplace") for k in status.keys) + "]"
    print(line)
    return EXIT_OK


def cmd_lease_keepalive(args: argparse.Namespace) -> int:
    from daemon.tools.cli import EXIT_OK, _run_client

    async def renew(client) -> None:
        import trio
        while True:
            ttl = await client.lease_keepalive(args.lease_id)
            if args.json:
                _print_json({"id": args.lease_id, "ttl": ttl})
            else:
                print(f"lease {args.lease_id} keepalived with TTL({ttl})", flush=True)
            if args.once:
                return
            await trio.sleep(ttl / 3)

    _run_client(args, renew)  # LeaseNotFound (exit 1) once it is gone; Ctrl-C: 130
    return EXIT_OK


def cmd_lock(args: argparse.Namespace) -> int:
    from daemon.tools.cli import EXIT_FAILED, _arg_bytes, _run_client, stop_signals
    command = args.run

    async def locked(client) -> int:
        import trio
        async with client.lock(_arg_bytes(args.name), ttl=args.ttl) as held:
            key = held.key.decode("utf-8", "backslashreplace")
            # Without a command, SIGINT/SIGTERM release the lock: handled from before the key
            # is printed, so a signal sent as soon as it is seen does not kill the process.
            with contextlib.nullcontext() if command else stop_signals() as signals:
                if args.json:
                    _print_json({"key": key, "revision": held.revision})
                else:
                    print(key, flush=True)
                async with trio.open_nursery() as nursery:
                    outcome = []
                    nursery.start_soon(_until_lost, held, nursery.cancel_scope, outcome)
                    if command:
                        env = dict(os.environ, PAXOSD_LOCK_KEY=key,
                                   PAXOSD_LOCK_REVISION=str(held.revision))
                        done = await trio.run_process(command, check=False, env=env)
                        outcome.append(done.returncode)
                    else:
                        async for _ in signals:
                            break
                        outcome.append(0)
                    nursery.cancel_scope.cancel()
        if outcome and outcome[0] == "lost":
            print(f"paxosd lock: lock {key} lost (its lease expired)", file=sys.stderr)
            return EXIT_FAILED
        return outcome[0] if outcome else EXIT_FAILED

    return _run_client(args, locked)


async def _until_lost(held, scope, outcome: list) -> None:
    """Cancel ``scope`` (and with it COMMAND, which trio.run_process then terminates) once the
    lock is lost."""
    await held.lost.wait()
    outcome.insert(0, "lost")
    scope.cancel()
