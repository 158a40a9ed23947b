"""The ``paxosd`` command: run a node or a whole loopback cluster, and talk to a cluster.

    paxosd serve --config F [--node-id N] [--join | --new-cluster]   run one node
    paxosd cluster --config F                  run every member of F as a child process
    paxosd check-config --config F             validate F and print the effective settings
    paxosd put K V [--lease ID] | get K [--prefix] | del K [--prefix] | cas K OLD NEW
    paxosd lease grant TTL | keepalive ID | revoke ID | ttl ID      leases (keys that expire)
    paxosd lock NAME [-- COMMAND ...]          hold a lock (while COMMAND runs)
    paxosd txn [--json] < FILE                 compares, then and else ops, as etcdctl's txn
    paxosd watch KEY [--prefix] [--rev R] [--prev-kv] [--json]   changes, one a line, until ^C
    paxosd status                              one row per member, like etcdctl endpoint status
    paxosd member add ID PEER CLIENT | member remove ID | member list   membership, via the log
    paxosd transfer-leader ID                  hand leadership over (for maintenance)
    paxosd snapshot save FILE | status FILE | restore FILE --config F --node-id N   backups
    paxosd recover --data-dir D [--config F]   a survivor of a lost majority: a one-member cluster
    paxosd load [--count N] [--clients C] [--value-size B]   measured commits/s and latency
    paxosd demo --config F [load options]      cluster + load + stop, in one command
    paxosd bench [options]                     the benchmark of daemon.tools.bench

Client commands find the cluster from ``--endpoints host:port,...`` (client addresses) or from
the configuration file: ``--config``, else $PAXOSD_CONFIG, else /etc/paxosd/paxosd.yaml. They
speak TLS when given ``--cacert`` (the CA the servers' certificates chain to), ``--cert`` and
``--key`` (a client certificate, when the servers require one), or when the file has a
``client_tls`` section (then without --cacert the system's trusted CAs verify the servers).

Exit status: 0 success; 1 the operation failed, including "no leader" and "outcome unknown"
(a ``get`` of a missing key and a ``cas`` that did not swap also exit 1); 2 a usage or
configuration error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from daemon.runtime.config import Config, ConfigError, describe, load_config, parse_address
from daemon.tools import cli_backup, cli_leases
from daemon.tools.stats import percentile

DEFAULT_CONFIG = "/etc/paxosd/paxosd.yaml"
CONFIG_ENV = "PAXOSD_CONFIG"
# How long ``cluster`` waits for its children to stop after SIGTERM before it kills them.
STOP_GRACE_S = 10.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A command line that cannot be acted on (exit 2)."""


# ---------------------------------------------------------------------------------------------
# Arguments.


def build_parser() -> argparse.ArgumentParser:
    """The ``paxosd`` command line: every subcommand, its options and its handler (``func``)."""
    parser = argparse.ArgumentParser(
        prog="paxosd",
        description="A Multi-Paxos consensus daemon: a replicated, linearizable key-value log.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_server_commands(commands)
    client = _client_options()
    _add_key_commands(commands, client)
    cli_leases.add_commands(commands, client)
    _add_watch_command(commands, client)
    _add_cluster_commands(commands, client)
    cli_backup.add_commands(commands, client)
    _add_load_commands(commands, client)
    return parser


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"the cluster's YAML file (default: ${CONFIG_ENV}, then {DEFAULT_CONFIG})")


def _add_server_commands(commands) -> None:
    """serve, cluster, check-config."""
    p = commands.add_parser("serve", help="run one node of the cluster")
    _config_option(p)
    p.add_argument("--node-id", type=int, metavar="N", help="this node's member id "
                   "(overrides node_id in the file)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--join", action="store_true", help="join a running cluster: with an "
                       "empty data directory, start under a new incarnation (a new member, or "
                       "a member whose data directory was lost); ignored when it holds state")
    start.add_argument("--new-cluster", action="store_true", help="only when creating a "
                       "cluster whose other members cannot all start now: with an empty data "
                       "directory, take incarnation 0 without asking them; never for a member "
                       "that may have lost its data (without either flag an empty directory "
                       "asks the other members whether the cluster is new)")
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser("cluster", help="run every member of the file as a child process "
                            "(a development cluster); Ctrl-C or SIGTERM stops them all and "
                            "exits 0; a node that exits is reported, the others keep running")
    _config_option(p)
    p.set_defaults(func=cmd_cluster)

    p = commands.add_parser("check-config", help="validate a file and print the effective "
                            "settings")
    _config_option(p)
    p.add_argument("--node-id", type=int, metavar="N", help="check as seen by this member")
    p.set_defaults(func=cmd_check_config)


def _client_options() -> argparse.ArgumentParser:
    """The options every client command shares (a parent parser): where the cluster is, the
    deadline, TLS."""
    client = argparse.ArgumentParser(add_help=False)
    group = client.add_argument_group("cluster")
    group.add_argument("-c", "--config", metavar="FILE",
                       help=f"find the members' client addresses in this file (default: "
                            f"${CONFIG_ENV}, then {DEFAULT_CONFIG})")
    group.add_argument("--endpoints", metavar="HOST:PORT,...",
                       help="client addresses of the members (instead of --config)")
    group.add_argument("--timeout", type=_positive_float, default=5.0, metavar="SECONDS",
                       help="deadline of each operation, retries included (default: 5)")
    group = client.add_argument_group("TLS (client_tls on the servers)")
    # dest: tls_*, since "key" is also the KEY argument of put, get, ...
    group.add_argument("--cacert", metavar="FILE", dest="tls_cacert",
                       help="speak TLS; verify the servers' certificates against this CA "
                            "(PEM; default with client_tls in the file: the system's CAs)")
    group.add_argument("--cert", metavar="FILE", dest="tls_cert",
                       help="present this client certificate (PEM; servers with client_tls.ca "
                            "require one)")
    group.add_argument("--key", metavar="FILE", dest="tls_key",
                       help="the private key of --cert (PEM; default: inside the --cert file)")
    return client


def _add_key_commands(commands, client: argparse.ArgumentParser) -> None:
    """put, get, delete, cas."""
    p = commands.add_parser("put", parents=[client], help="set KEY to VALUE")
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE")
    p.add_argument("--lease", type=_positive_int, default=0, metavar="ID",
                   help="attach KEY to lease ID: it is deleted when the lease ends")
    _fence_options(p)
    p.set_defaults(func=cmd_put)

    p = commands.add_parser(
        "get", parents=[client],
        help="print the value of KEY (exit 1 if it is absent); with a range option, each key "
             "of the range and its value, one a line, in key order",
        description="Linearizable reads. Plain `get KEY` prints the value alone (exit 1 if "
                    "absent). With --prefix, --limit, --keys-only, --count-only or --json it "
                    "reads a range, as etcdctl does: KEY alone, or with --prefix every key that "
                    "starts with KEY, printed as key and value lines (keys only: keys; count "
                    "only: the count); --json prints {header: {revision}, kvs: [{key, value, "
                    "create_revision, mod_revision, version, lease}], count, more}, bytes as "
                    "UTF-8 text (undecodable bytes as \\x escapes).")
    p.add_argument("key", metavar="KEY")
    p.add_argument("--prefix", action="store_true", help="every key that starts with KEY")
    p.add_argument("--limit", type=_non_negative_int, default=0, metavar="N",
                   help="at most N keys (default 0: all, fetched in as many replies as needed)")
    p.add_argument("--keys-only", action="store_true", help="the keys without their values")
    p.add_argument("--count-only", action="store_true", help="only how many keys there are")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_get)

    p = commands.add_parser("delete", aliases=["del"], parents=[client],
                            help="remove KEY (with --prefix, every key that starts with KEY)")
    p.add_argument("key", metavar="KEY")
    p.add_argument("--prefix", action="store_true", help="every key that starts with KEY, as "
                   "one write; prints how many were removed")
    _fence_options(p)
    p.set_defaults(func=cmd_delete)

    p = commands.add_parser("cas", parents=[client], help="set KEY to NEW if its value is OLD "
                            "('-': if KEY is absent); exit 1 if it was not swapped")
    p.add_argument("key", metavar="KEY")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    p.set_defaults(func=cmd_cas)


    p = commands.add_parser(
        "txn", parents=[client], help="a transaction read from stdin, as etcdctl's",
        description="Reads the compares one a line (value(\"KEY\") = \"V\"; also version, "
                    "create, mod, lease; = != < >), a blank line, the ops to run if all hold "
                    "(put KEY VALUE, del KEY [END], get KEY [END], with --prefix, --limit N, "
                    "--keys-only, --count-only), a blank line, the ops to run otherwise; applies "
                    "them as one command and prints SUCCESS or FAILURE and each op's result "
                    "(--json: {header: {revision}, succeeded, responses}).")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_txn)


def _add_cluster_commands(commands, client: argparse.ArgumentParser) -> None:
    """transfer-leader, member add|remove|list, status."""
    p = commands.add_parser("transfer-leader", parents=[client], help="hand leadership to "
                            "node ID (for maintenance of the current leader) and wait until it "
                            "leads")
    p.add_argument("node_id", metavar="ID", type=_positive_int)
    p.set_defaults(func=cmd_transfer_leader)

    p = commands.add_parser("member", help="change or show the membership (it lives in the "
                            "log; the YAML file names the initial members)")
    member = p.add_subparsers(dest="member_command", metavar="add|remove|list", required=True)
    q = member.add_parser("add", parents=[client], help="add node ID: a learner until it has "
                          "caught up, then a voter (start it with serve --join)")
    q.add_argument("node_id", metavar="ID", type=_positive_int)
    q.add_argument("peer", metavar="PEER", help="host:port where peers reach it")
    q.add_argument("client_address", metavar="CLIENT", help="host:port where clients reach it")
    q.set_defaults(func=cmd_member_add)
    q = member.add_parser("remove", parents=[client], help="remove member ID (the leader "
                          "hands leadership over first if it is the one removed)")
    q.add_argument("node_id", metavar="ID", type=_positive_int)
    q.set_defaults(func=cmd_member_remove)
    q = member.add_parser("list", parents=[client], help="the members in the log, and the "
                          "initial members of the YAML file when they differ")
    q.add_argument("--json", action="store_true", help="print the membership as JSON")
    q.set_defaults(func=cmd_member_list)

    p = commands.add_parser("status", parents=[client], help="one row per member: role, "
                            "ballot, commit and applied index, lag (exit 1 if any is unreachable)")
    p.add_argument("--json", action="store_true", help="print the status maps as JSON")
    p.set_defaults(func=cmd_status)


def _add_load_commands(commands, client: argparse.ArgumentParser) -> None:
    """load, bench, demo."""
    load = argparse.ArgumentParser(add_help=False)
    group = load.add_argument_group("load")
    group.add_argument("--count", type=_positive_int, default=10000, metavar="N",
                       help="commands to write (default: 10000)")
    group.add_argument("--clients", type=_positive_int, default=16, metavar="C",
                       help="concurrent sessions, one write in flight each (default: 16)")
    group.add_argument("--value-size", type=_non_negative_int, default=100, metavar="BYTES",
                       help="bytes per value (default: 100)")

    p = commands.add_parser("load", parents=[client, load], help="write COUNT commands "
                            "through CLIENTS concurrent sessions; print commits/s and latency")
    p.set_defaults(func=cmd_load)

    # The benchmark's options are its own (daemon.tools.bench.add_arguments); they are parsed when
    # it runs, so the other commands do not import it.
    p = commands.add_parser("bench", add_help=False, help="measure commit throughput and "
                            "latency from separate client processes (paxosd bench --help)")
    p.set_defaults(func=cmd_bench)

    p = commands.add_parser("demo", parents=[load], help="start every member of the file "
                            "(as cluster does), run load against them, print, stop them")
    _config_option(p)
    p.add_argument("--timeout", type=_positive_float, default=10.0, metavar="SECONDS",
                   help="deadline of each write, retries included; the first also waits for "
                        "the nodes to start and elect a leader (default: 10)")
    p.set_defaults(func=cmd_demo)


def _fence_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fence-key", metavar="KEY", help="only while the lock held with this key "
                   "(printed by `paxosd lock`) has not moved on")
    p.add_argument("--fence-revision", type=_positive_int, metavar="REV",
                   help="the lock's fencing token (PAXOSD_LOCK_REVISION)")


def _fence(args: argparse.Namespace) -> tuple | None:
    if (args.fence_key is None) != (args.fence_revision is None):
        raise UsageError("--fence-key and --fence-revision go together")
    return None if args.fence_key is None else (_arg_bytes(args.fence_key), args.fence_revision)


def _number(convert, accept, expected: str, not_a_number: str):
    """An argparse type: ``convert(text)`` when ``accept`` takes the value; else an error
    saying what was expected (``not_a_number`` when ``convert`` refuses the text)."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {not_a_number}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer", "a positive integer")
_non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0", "an integer >= 0")
_positive_float = _number(float, lambda v: v > 0 and not math.isinf(v),
                          "a positive number of seconds", "a number of seconds")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = None
    if argv[:1] == ["lock"] and "--" in argv:  # `lock NAME [options] -- COMMAND ...`
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1:]
    args, extra = parser.parse_known_args(argv)
    if command is not None:
        args.run = command
    if args.command == "bench":
        args.bench_argv = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from daemon.client.client import PaxosdError

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"paxosd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"paxosd {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PaxosdError as exc:  # its message starts with the operation
        print(f"paxosd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------------------------------------
# Configuration.


def _config_path(args: argparse.Namespace) -> tuple[str, bool]:
    """The file to read, and whether the operator named it (flag or environment)."""
    if args.config:
        return args.config, True
    if os.environ.get(CONFIG_ENV):
        return os.environ[CONFIG_ENV], True
    return DEFAULT_CONFIG, False


def _load(args: argparse.Namespace, node_id: int | None = None) -> Config:
    path, named = _config_path(args)
    try:
        return load_config(path, node_id=node_id)
    except ConfigError as exc:
        if not named and exc.key is None:
            raise ConfigError(
                exc.file, None, exc.problem + f" (give --config FILE or set ${CONFIG_ENV}"
                + (", or --endpoints" if hasattr(args, "endpoints") else "") + ")"
            ) from None
        raise


def _endpoints(args: argparse.Namespace) -> tuple[list[str], Config | None]:
    """The client addresses to use, and the configuration they came from (if any)."""
    from daemon.client.client import format_address, parse_endpoint

    if args.endpoints:
        endpoints = []
        for item in args.endpoints.split(","):
            if not item.strip():
                continue
            try:
                endpoints.append(format_address(*parse_endpoint(item)))
            except ValueError as exc:
                raise UsageError(f"--endpoints: {exc}") from None
        if not endpoints:
            raise UsageError("--endpoints: expected host:port,... (at least one)")
        return endpoints, None
    config = _load(args)
    return [str(m.client) for m in config.members], config


# ---------------------------------------------------------------------------------------------
# Server commands.


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args, node_id=args.node_id)
    if config.node_id is None:
        raise ConfigError(str(config.path), "node_id",
                          "not set: give node_id in the file or --node-id N")
    # The server's imports are not needed by client commands.
    from daemon.gateway.serve import serve_gateway
    from daemon.runtime.server import run

    code = run(config, join=args.join, new_cluster=args.new_cluster, services=[serve_gateway])
    return EXIT_OK if code is None else int(code)


def cmd_bench(args: argparse.Namespace) -> int:
    from daemon.tools import bench

    parser = argparse.ArgumentParser(prog="paxosd bench", description=bench.__doc__.split("\n")[0])
    bench.add_arguments(parser)
    code = bench.run(parser.parse_args(args.bench_argv))
    return EXIT_OK if code is None else int(code)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args, node_id=args.node_id)
    from daemon.runtime.security import check_files

    warnings = check_files(config)  # the secret, certificates and keys exist and load
    sys.stdout.write(describe(config))
    for warning in warnings:
        print(f"paxosd check-config: warning: {config.path}: {warning}", file=sys.stderr)
    return EXIT_OK


class _Stop(Exception):
    def __init__(self, signum: int):
        self.signum = signum


def _die_with_parent() -> None:
    """In a child, before exec: ask Linux for SIGTERM when the parent dies (best effort)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # not Linux: the parent still stops its children on SIGINT/SIGTERM
        pass


def _start_members(config: Config, children: dict[int, tuple[int, subprocess.Popen]]) -> None:
    """Start ``serve`` for every member as a child process, recording each in ``children``
    (pid -> (member id, process)) as soon as it exists, and say where each listens."""
    path = str(config.path)
    print(f"paxosd cluster {config.cluster!r} from {path}: {len(config.members)} members "
          f"(quorum {config.quorum}), data in {config.data_dir}, "
          f"fsync {'on' if config.storage.fsync else 'OFF'}", flush=True)
    # Every data directory empty: the cluster is new (or all of its data is gone, which comes
    # to the same), so a member that fails to start does not hold the others back.
    new = all(not config.node_dir(m.id).exists() or not any(config.node_dir(m.id).iterdir())
              for m in config.members)
    for m in config.members:
        # A session of its own: a terminal's Ctrl-C reaches only this process, which then
        # stops every child by pid.
        process = subprocess.Popen(
            [sys.executable, "-m", "daemon.tools.cli", "serve", "--config", path,
             "--node-id", str(m.id)] + (["--new-cluster"] if new and not m.join else []),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        children[process.pid] = (m.id, process)
        print(f"  node {m.id}: pid {process.pid}, clients {m.client}, peers {m.peer}, "
              f"data {config.node_dir(m.id)}", flush=True)


class _SignalsStop:
    """While active, SIGINT and SIGTERM raise _Stop; on exit they are ignored until the
    children are stopped (a second Ctrl-C must not orphan a node), then restored."""

    def __enter__(self) -> _SignalsStop:
        def on_signal(signum, frame):
            raise _Stop(signum)

        self.previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def quiet(self) -> None:
        for s in self.previous:
            signal.signal(s, signal.SIG_IGN)

    def __exit__(self, *exc_info) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _run_members(config: Config, body, on_stop) -> int:
    """Start every member of ``config`` as a child process and return ``body(children)``; a
    SIGINT or SIGTERM meanwhile returns ``on_stop(signal name, children)`` instead. Either way
    every child is stopped before this returns, further signals ignored until then."""
    children: dict[int, tuple[int, subprocess.Popen]] = {}
    with _SignalsStop() as signals:
        try:
            _start_members(config, children)
            return body(children)
        except _Stop as stop:
            return on_stop(signal.Signals(stop.signum).name, children)
        finally:
            signals.quiet()
            _stop_children([process for _, process in children.values()])


def cmd_cluster(args: argparse.Namespace) -> int:
    config = _load(args)

    def serve(children: dict[int, tuple[int, subprocess.Popen]]) -> int:
        endpoints = ",".join(str(m.client) for m in config.members)
        scheme = "https" if config.client_tls is not None else "http"
        urls = [f"{scheme}://{config.http_address(m.id)}" for m in config.members
                if config.http_address(m.id) is not None]
        print(f"endpoints: {endpoints}\n"
              + (f"HTTP API: {' '.join(urls)} (try: curl {urls[0]}/v1/status)\n" if urls else "")
              + f"try: paxosd status --config {config.path}\n"
              f"Ctrl-C or SIGTERM stops every node.", flush=True)
        # A node that exits (or is killed to try the cluster's fault tolerance) is reported;
        # the others keep serving, as a real cluster would.
        while children:
            pid, wait_status = os.waitpid(-1, 0)
            if pid not in children:
                continue
            member_id, process = children.pop(pid)
            process.returncode = os.waitstatus_to_exitcode(wait_status)
            alive = ", ".join(str(m) for m, _ in sorted(children.values())) or "none"
            print(f"paxosd cluster: node {member_id} (pid {pid}) exited with status "
                  f"{_describe_exit(process.returncode)}; still running: {alive}",
                  file=sys.stderr, flush=True)
        return EXIT_FAILED

    def stopped(name: str, children: dict) -> int:
        print(f"paxosd cluster: {name}: stopping {len(children)} node(s)", file=sys.stderr,
              flush=True)
        return EXIT_OK

    return _run_members(config, serve, stopped)


def cmd_demo(args: argparse.Namespace) -> int:
    """``cluster`` and ``load`` in one: start every member, write, report, stop them all."""
    config = _load(args)

    def load(children: dict[int, tuple[int, subprocess.Popen]]) -> int:
        try:
            return cmd_load(args, config)
        finally:
            for member_id, process in children.values():
                if process.poll() is not None:
                    print(f"paxosd demo: node {member_id} (pid {process.pid}) exited "
                          f"early with status {_describe_exit(process.returncode)}",
                          file=sys.stderr, flush=True)

    def stopped(name: str, children: dict) -> int:
        print(f"paxosd demo: {name}: stopping", file=sys.stderr, flush=True)
        return EXIT_FAILED

    return _run_members(config, load, stopped)


def _stop_children(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"paxosd cluster: pid {process.pid} did not stop within {STOP_GRACE_S:g} s "
                  f"of SIGTERM; killing it", file=sys.stderr, flush=True)
            process.kill()
            process.wait()


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return str(code)


# ---------------------------------------------------------------------------------------------
# Client commands.


def _run_client(args: argparse.Namespace, work, endpoints: list[str] | None = None,
                config: Config | None = None) -> Any:
    """Run ``await work(client)`` with a client of the cluster the arguments name."""
    import trio

    from daemon.client.client import Client

    if endpoints is None:
        endpoints, config = _endpoints(args)
    ssl_context = _client_tls(args, config)

    async def session():
        async with Client(endpoints, timeout=args.timeout, ssl_context=ssl_context) as client:
            return await work(client)

    return trio.run(session)


def _client_tls(args: argparse.Namespace, config: Config | None):
    """The TLS context the options ask for (--cacert/--cert/--key, or client_tls in the
    file), or None for plain TCP."""
    files = {flag: getattr(args, "tls_" + flag.lstrip("-"), None)
             for flag in ("--cacert", "--cert", "--key")}
    if not any(files.values()) and (config is None or config.client_tls is None):
        return None
    import ssl

    from daemon.runtime.security import client_context

    for flag, path in files.items():
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"{flag} {path}: no such file")
    try:
        return client_context(files["--cacert"], files["--cert"], files["--key"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except (OSError, ssl.SSLError) as exc:
        given = ", ".join(f"{flag} {path}" for flag, path in files.items() if path)
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise UsageError(f"cannot use {given}: {reason}") from None


def _arg_bytes(text: str) -> bytes:
    # The bytes the operator typed, even where they are not valid UTF-8.
    return os.fsencode(text)


def cmd_put(args: argparse.Namespace) -> int:
    fence = _fence(args)
    _run_client(args, lambda c: c.put(_arg_bytes(args.key), _arg_bytes(args.value),
                                      lease=args.lease, fence=fence))
    print("OK")
    return EXIT_OK


def cmd_get(args: argparse.Namespace) -> int:
    if args.prefix or args.limit or args.keys_only or args.count_only or args.json:
        return _get_range(args)
    value = _run_client(args, lambda c: c.get(_arg_bytes(args.key)))
    if value is None:
        print("(not found)", file=sys.stderr)
        return EXIT_FAILED
    out = sys.stdout.buffer
    out.write(value + b"\n")
    out.flush()
    return EXIT_OK


async def read_range(client, key: bytes, *, prefix: bool, limit: int, keys_only: bool,
                     count_only: bool) -> dict:
    """The range ``get`` asks for, reply after reply until ``limit`` keys (0: all) or the
    range's end: ``{"revision", "kvs", "count", "more"}`` with revision and count those of the
    first reply. Each reply is linearizable on its own; a walk over several is not one
    snapshot (each key is as of its own reply's revision)."""
    first = await client.range(key, prefix=prefix, limit=limit, keys_only=keys_only,
                               count_only=count_only)
    kvs, more, end = list(first.kvs), first.more, None
    if prefix:
        from daemon.core.kv import prefix_end

        end = prefix_end(key)
    while more and kvs and end is not None and (not limit or len(kvs) < limit):
        page = await client.range(kvs[-1].key + b"\x00", end,
                                  limit=limit - len(kvs) if limit else 0, keys_only=keys_only)
        kvs += page.kvs
        more = page.more
    if limit and len(kvs) >= limit:
        more = first.count > len(kvs)
    return {"revision": first.revision, "kvs": kvs, "count": first.count, "more": more}


def _get_range(args: argparse.Namespace) -> int:
    found = _run_client(args, lambda c: read_range(
        c, _arg_bytes(args.key), prefix=args.prefix, limit=args.limit,
        keys_only=args.keys_only, count_only=args.count_only))
    if args.json:
        from daemon.tools.txn_text import kv_json

        doc = {"header": {"revision": found["revision"]}, "count": found["count"],
               "more": found["more"], "kvs": list(map(kv_json, found["kvs"]))}
        print(json.dumps(doc, indent=2, default=_json_default))
        return EXIT_OK
    if args.count_only:
        print(found["count"])
        return EXIT_OK
    from daemon.tools.txn_text import kv_lines

    out = sys.stdout.buffer
    out.writelines(line + b"\n" for line in kv_lines(found["kvs"]))
    out.flush()
    return EXIT_OK


def _add_watch_command(commands, client: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "watch", parents=[client], help="print each change of KEY (or of the keys with the "
        "prefix KEY) as it happens, one a line, until Ctrl-C",
        description="Follows the changes of KEY as etcdctl watch does, from the node it is "
                    "connected to, going on at another node from the last revision seen if "
                    "that one goes away. Each change is a line: PUT KEY VALUE or DELETE KEY "
                    "(with --prev-kv, the previous value follows); --json prints one JSON "
                    "object a line: {type, revision, kv: {key, value, create_revision, "
                    "mod_revision, version, lease}, prev_kv}. Exits 0 on Ctrl-C, 1 when the "
                    "watch cannot go on (compacted: list again, then watch from that "
                    "revision + 1).")
    p.add_argument("key", metavar="KEY")
    p.add_argument("--prefix", action="store_true", help="every key that starts with KEY")
    p.add_argument("--rev", type=_non_negative_int, default=0, metavar="R",
                   help="the changes from revision R on (default 0: from the next one)")
    p.add_argument("--prev-kv", action="store_true", help="with each change, the key's "
                   "previous value")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(func=cmd_watch)


def cmd_watch(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    show = _event_json if args.json else _event_text

    async def follow(client) -> None:
        async with client.watch(_arg_bytes(args.key), prefix=args.prefix,
                                start_revision=args.rev, prev_kv=args.prev_kv) as events:
            async for event in events:
                out.write(show(event) + b"\n")
                out.flush()

    _run_client(args, lambda client: _until_signal(follow(client)))
    return EXIT_OK


async def _until_signal(work) -> None:
    """Await ``work`` until it returns or SIGINT/SIGTERM arrives; a signal cancels it, so the
    client's connections close at once (a KeyboardInterrupt raised wherever the loop happened
    to be could leave a close waiting on the client's timeout). The signals are handled from
    before ``work`` starts."""
    import trio

    with stop_signals() as signals:
        async with trio.open_nursery() as nursery:
            async def stop_on_signal() -> None:
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            await work
            nursery.cancel_scope.cancel()


def stop_signals():
    """A receiver of SIGINT and SIGTERM (Ctrl-C, systemd's stop), handled while it is open."""
    import trio

    return trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)


def _event_text(event) -> bytes:
    """PUT KEY VALUE or DELETE KEY, the previous value after them when the event has it."""
    words = [event.type.upper().encode(), event.key]
    if event.value is not None:
        words.append(event.value)
    if event.prev is not None:
        words.append(event.prev.value)
    return b" ".join(words)


def _event_json(event) -> bytes:
    from daemon.client.client import KeyValue
    from daemon.tools.txn_text import kv_json

    kv = KeyValue(event.key, event.value, event.create_revision, event.mod_revision,
                  event.version, event.lease)
    doc = {"type": event.type.upper(), "revision": event.revision,
           "kv": kv_json(kv) if event.type == "put" else {"key": event.key},
           "prev_kv": None if event.prev is None else kv_json(event.prev)}
    return json.dumps(doc, default=_json_default).encode()


def cmd_delete(args: argparse.Namespace) -> int:
    fence = _fence(args)
    if fence is not None and args.prefix:
        raise UsageError("--prefix does not take a fence")
    if args.prefix:
        count = _run_client(args, lambda c: c.delete_range(_arg_bytes(args.key), prefix=True))
        print(count)  # as etcdctl's del --prefix
        return EXIT_OK
    existed = _run_client(args, lambda c: c.delete(_arg_bytes(args.key), fence=fence))
    print("deleted" if existed else "not found (nothing deleted)")
    return EXIT_OK


def cmd_cas(args: argparse.Namespace) -> int:
    old = None if args.old == "-" else _arg_bytes(args.old)
    swapped = _run_client(args, lambda c: c.cas(_arg_bytes(args.key), old, _arg_bytes(args.new)))
    if swapped:
        print("swapped")
        return EXIT_OK
    expected = "absent" if old is None else f"{args.old!r}"
    print(f"not swapped: the value of {args.key!r} was not {expected}", file=sys.stderr)
    return EXIT_FAILED


def cmd_txn(args: argparse.Namespace) -> int:
    from daemon.tools.txn_text import TxnTextError, parse_txn_text, result_json, result_lines

    try:
        compares, success, failure = parse_txn_text(sys.stdin.read())
    except TxnTextError as exc:
        raise UsageError(f"stdin {exc}") from None
    try:
        response = _run_client(args, lambda c: c.txn(compares, success, failure))
    except ValueError as exc:  # the client's checks: a field or the size
        raise UsageError(str(exc)) from None
    ops = success if response.succeeded else failure
    if args.json:
        print(json.dumps(result_json(response, ops), indent=2, default=_json_default))
        return EXIT_OK
    out = sys.stdout.buffer
    out.write(b"".join(line + b"\n" for line in result_lines(response, ops)))
    out.flush()
    return EXIT_OK


def cmd_transfer_leader(args: argparse.Namespace) -> int:
    _run_client(args, lambda c: c.transfer_leader(args.node_id))
    print(f"node {args.node_id} leads")
    return EXIT_OK


def cmd_member_add(args: argparse.Namespace) -> int:
    for what, text in (("PEER", args.peer), ("CLIENT", args.client_address)):
        parse_address(text, f"member add {what}")  # ConfigError (exit 2) naming the bad one
    from daemon.client.client import OperationFailed

    async def add(c):
        known = {m["id"]: m for m in (await c.members())["members"]}
        if args.node_id in known:
            m = known[args.node_id]
            raise OperationFailed(f"member add: node {args.node_id} is already a member (peer {m['peer']}, client "
                           f"{m['client']}, {'voter' if m['voter'] else 'learner'})")
        await c.member_add(args.node_id, args.peer, args.client_address)

    _run_client(args, add)
    print(f"node {args.node_id} added as a learner (peers: {args.peer}, clients: "
          f"{args.client_address}); it becomes a voter once it has caught up. Start it with: "
          f"paxosd serve --node-id {args.node_id} --join")
    return EXIT_OK


def cmd_member_remove(args: argparse.Namespace) -> int:
    from daemon.client.client import OperationFailed

    async def remove(c):
        known = [m["id"] for m in (await c.members())["members"]]
        if args.node_id not in known:
            raise OperationFailed(f"member remove: node {args.node_id} is not a member (members: "
                           f"{', '.join(map(str, known))})")
        await c.member_remove(args.node_id)

    _run_client(args, remove)
    print(f"node {args.node_id} removed")
    return EXIT_OK


def cmd_member_list(args: argparse.Namespace) -> int:
    _, config = _endpoints(args)
    info = _run_client(args, lambda c: c.members())
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return EXIT_OK
    rows = [(str(m["id"]), "voter" if m["voter"] else "learner", m["peer"] or "",
             m["client"] or "", str(m["incarnation"])) for m in info["members"]]
    sys.stdout.write(format_table(("ID", "ROLE", "PEER", "CLIENT", "INCARNATION"), rows))
    note = membership_note(info, config)
    if note:
        print(note)
    return EXIT_OK


def membership_note(info: dict, config: Config | None) -> str | None:
    """A line saying how the log's membership differs from the YAML file's initial members
    (None when they are the same)."""
    in_log = sorted(m["id"] for m in info["members"])
    yaml_ids = sorted(m.id for m in config.initial_members) if config is not None \
        else sorted(info.get("yaml_members") or [])
    if in_log == yaml_ids:
        return None
    return (f"membership differs from the YAML file: the log has {','.join(map(str, in_log))} "
            f"(from slot {info['effective']}), the file's initial members are "
            f"{','.join(map(str, yaml_ids))}")


# ---------------------------------------------------------------------------------------------
# status


COLUMNS = ("ID", "ADDRESS", "ROLE", "LEADER?", "BALLOT", "COMMIT", "APPLIED", "LAG",
           "REACHABLE", "ERROR")


def status_rows(statuses: list[dict],
                member_ids: Sequence[int | None] | None = None) -> list[tuple]:
    """The status table, one row per endpoint (see COLUMNS).

    ``statuses`` are Client.cluster_status() entries; ``member_ids`` the configured id of each
    endpoint, when known, for the rows of nodes that did not answer.
    """
    from daemon.codec.wire import format_ballot

    leaders = [s for s in statuses if "error" not in s and s.get("role") == "leader"]
    # With two self-declared leaders (an old one not yet stepped down), the higher ballot leads.
    leader = max(leaders, key=lambda s: s.get("ballot") or 0) if leaders else None
    leader_commit = leader.get("commit_index") if leader else None
    rows = []
    for i, s in enumerate(statuses):
        known_id = member_ids[i] if member_ids else None
        if "error" in s:
            error = s["error"].removeprefix("status: ").removeprefix(f"{s['endpoint']}: ")
            rows.append((_cell(known_id), s["endpoint"], "-", "-", "-", "-", "-", "-", "no",
                         error))
            continue
        ballot = s.get("ballot")
        ballot_text = format_ballot(ballot) if isinstance(ballot, int) else _cell(ballot)
        applied = s.get("applied_index")
        lag = (leader_commit - applied
               if isinstance(leader_commit, int) and isinstance(applied, int) else None)
        problems = []
        if s.get("leader") is None and s.get("role") != "leader":
            problems.append("no leader known")
        peers = s.get("peers")
        if isinstance(peers, dict):
            down = sorted(str(p) for p, up in peers.items() if not up)
            if down:
                problems.append("cannot reach peer " + ", ".join(down))
        rows.append((
            _cell(s.get("id", known_id)),
            s["endpoint"],
            _cell(s.get("role")),
            "yes" if s is leader else "no",
            ballot_text,
            _cell(s.get("commit_index")),
            _cell(applied),
            _cell(lag),
            "yes",
            "; ".join(problems),
        ))
    return rows


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines) + "\n"


def cmd_status(args: argparse.Namespace) -> int:
    endpoints, config = _endpoints(args)
    member_ids = [m.id for m in config.members] if config is not None else None
    statuses = _run_client(args, lambda c: c.cluster_status())
    if args.json:
        print(json.dumps(statuses, indent=2, sort_keys=True, default=_json_default))
    else:
        sys.stdout.write(format_table(COLUMNS, status_rows(statuses, member_ids)))
        known = [s for s in statuses if "members" in s]
        if known:
            latest = max(known, key=lambda s: s.get("members_effective") or 0)
            note = membership_note({"members": [{"id": m[0]} for m in latest["members"]],
                                    "effective": latest.get("members_effective")}, config)
            if note:
                print(note)
    return EXIT_FAILED if any("error" in s for s in statuses) else EXIT_OK


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(f"cannot show {type(value).__name__} as JSON")


# ---------------------------------------------------------------------------------------------
# load


async def run_load(client, count: int, clients: int, value_size: int) -> dict:
    """Write ``count`` puts through ``clients`` concurrent tasks (one session each); measure.

    The leader is found before the clock starts. Returns the counts, the elapsed time and the
    sorted latencies (seconds) of the writes that succeeded.
    """
    import trio

    from daemon.client.client import PaxosdError

    run_id = os.urandom(4).hex()
    await client.get(f"load/{run_id}/warm-up")  # leader discovery, outside the measurement
    value = (run_id.encode() * (value_size // 8 + 1))[:value_size]
    indices = iter(range(count))
    latencies: list[float] = []
    errors: Counter = Counter()
    first_error: list[str] = []

    async def worker() -> None:
        for i in indices:
            started = trio.current_time()
            try:
                await client.put(f"load/{run_id}/{i}", value)
            except PaxosdError as exc:
                errors[type(exc).__name__] += 1
                if not first_error:
                    first_error.append(str(exc))
                continue
            latencies.append(trio.current_time() - started)

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(min(clients, count)):
            nursery.start_soon(worker)
    elapsed = trio.current_time() - started
    latencies.sort()
    return {"ok": len(latencies), "errors": errors, "first_error": first_error[:1],
            "elapsed": elapsed, "latencies": latencies}


def cmd_load(args: argparse.Namespace, config: Config | None = None) -> int:
    if config is None:
        endpoints, config = _endpoints(args)
    else:
        endpoints = [str(m.client) for m in config.members]
    result = _run_client(
        args, lambda c: run_load(c, args.count, args.clients, args.value_size), endpoints, config)
    ok, elapsed, latencies = result["ok"], result["elapsed"], result["latencies"]
    fsync = ("on" if config.storage.fsync else "OFF") if config is not None else "as configured"
    rate = ok / elapsed if elapsed > 0 else math.nan
    print(f"load: {ok} of {args.count} writes committed in {elapsed:.3f} s through "
          f"{args.clients} concurrent sessions, {args.value_size}-byte values, "
          f"{len(endpoints)} members, fsync {fsync}")
    if ok:
        print(f"throughput: {rate:.0f} commits/s")
        print(f"latency: p50 {percentile(latencies, 0.50) * 1000:.2f} ms, "
              f"p99 {percentile(latencies, 0.99) * 1000:.2f} ms, "
              f"max {latencies[-1] * 1000:.2f} ms")
    if result["errors"]:
        summary = ", ".join(f"{n} {name}" for name, n in sorted(result["errors"].items()))
        print(f"paxosd load: failed writes: {summary}; first: {result['first_error'][0]}",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
