"""The ``paxosd`` command line, run as a real process: configuration errors exit 2 naming the
file and the key; client commands print what an operator expects and exit 0, 1 or 2; ``cluster``
runs a real three-node cluster that ``put``/``get``/``cas``/``delete``/``status``/``load`` use,
and stops every node on SIGTERM.

Every process is started with a time bound and ended by its pid in a ``finally``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from daemon.tools.cli import COLUMNS, format_table, main, percentile, status_rows
from tests.test_client import FakeNode
from tests.ports import free_ports

ROOT = Path(__file__).resolve().parent.parent
ETC = ROOT / "etc"


def paxosd(*args: str, timeout: float = 60, env: dict | None = None,
           stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m daemon.tools.cli ARGS`` to completion (bounded), capturing its output
    (``stdin``: the text it reads)."""
    environ = {k: v for k, v in os.environ.items() if k != "PAXOSD_CONFIG"}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "daemon.tools.cli", *args],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=timeout, input=stdin,
    )


def write_config(tmp_path: Path, name: str = "paxosd.yaml", members: int = 3,
                 fsync: bool = True) -> Path:
    ports = free_ports(2 * members)
    lines = ["cluster: clitest", "members:"]
    for i in range(members):
        lines.append(f"  {i + 1}: {{peer: 127.0.0.1:{ports[2 * i]}, "
                     f"client: 127.0.0.1:{ports[2 * i + 1]}}}")
    lines += [f"data_dir: {tmp_path / 'data'}",
              f"storage: {{fsync: {'true' if fsync else 'false'}}}"]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Configuration errors and check-config (no server needed).


def test_bad_yaml_exits_2_naming_the_file_and_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("cluster: demo\nmembers: {1: [unclosed\n")
    result = paxosd("check-config", "--config", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr and "YAML syntax error" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_key_exits_2_naming_the_file_and_the_key(tmp_path):
    path = write_config(tmp_path)
    path.write_text(path.read_text() + "timing: {heartbeat_msec: 50}\n")
    for command in (["check-config"], ["status"], ["put", "k", "v"], ["serve", "--node-id", "1"],
                    ["cluster"]):
        result = paxosd(*command, "--config", str(path))
        assert result.returncode == 2, (command, result)
        assert str(path) in result.stderr, (command, result.stderr)
        assert "timing.heartbeat_msec" in result.stderr and "heartbeat_ms" in result.stderr
        assert "Traceback" not in result.stderr


def test_missing_file_exits_2_naming_the_file(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    result = paxosd("get", "k", "--config", str(missing))
    assert result.returncode == 2
    assert str(missing) in result.stderr and "cannot read" in result.stderr


def test_the_config_comes_from_PAXOSD_CONFIG_when_not_given(tmp_path):
    missing = tmp_path / "from-env.yaml"
    result = paxosd("status", env={"PAXOSD_CONFIG": str(missing)})
    assert result.returncode == 2 and str(missing) in result.stderr


def test_serve_without_a_node_id_exits_2(tmp_path):
    path = write_config(tmp_path)
    result = paxosd("serve", "--config", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr and "node_id" in result.stderr
    result = paxosd("serve", "--config", str(path), "--node-id", "9")
    assert result.returncode == 2 and "node_id" in result.stderr and "1, 2, 3" in result.stderr


def test_check_config_prints_the_effective_settings():
    result = paxosd("check-config", "--config", str(ETC / "paxosd.yaml"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "cluster: demo" in out and "quorum: 2 of 3" in out
    assert "127.0.0.1:7001" in out and "127.0.0.1:7103" in out
    assert "fsync: true" in out and "heartbeat_ms: 50" in out and "window: 64" in out


def test_usage_errors_exit_2():
    assert paxosd().returncode == 2
    assert paxosd("frobnicate").returncode == 2
    assert paxosd("cas", "k", "only-one").returncode == 2
    assert paxosd("load", "--count", "0", "--endpoints", "127.0.0.1:1").returncode == 2
    result = paxosd("get", "k", "--endpoints", "not-an-endpoint")
    assert result.returncode == 2 and "--endpoints" in result.stderr
    result = paxosd("put", "--bogus", "k", "v")
    assert result.returncode == 2 and "unrecognized arguments: --bogus" in result.stderr


def test_bench_takes_its_options_from_daemon_bench():
    result = paxosd("bench", "--help")
    assert result.returncode == 0 and "paxosd bench" in result.stdout
    assert "--in-flight" in result.stdout
    assert paxosd("bench", "--no-such-option").returncode == 2


def test_an_unreachable_cluster_exits_1_with_the_reason():
    port = free_ports(1)[0]
    result = paxosd("get", "k", "--endpoints", f"127.0.0.1:{port}", "--timeout", "0.3")
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "cannot connect" in result.stderr
    result = paxosd("status", "--endpoints", f"127.0.0.1:{port}", "--timeout", "0.3")
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stdout and "cannot connect" in result.stdout


# ---------------------------------------------------------------------------------------------
# The status table.


def test_status_rows_show_ballot_as_round_dot_node_lag_and_errors():
    statuses = [
        {"endpoint": "h:1", "id": 1, "role": "leader", "leader": "h:1", "ballot": (5 << 16) | 1,
         "commit_index": 100, "applied_index": 100, "peers": {2: True, 3: False}},
        {"endpoint": "h:2", "id": 2, "role": "follower", "leader": "h:1",
         "ballot": (5 << 16) | 1, "commit_index": 90, "applied_index": 88, "peers": {}},
        {"endpoint": "h:3", "error": "h:3: cannot connect: Connection refused"},
    ]
    rows = status_rows(statuses, [1, 2, 3])
    assert rows[0][:9] == ("1", "h:1", "leader", "yes", "5.1", "100", "100", "0", "yes")
    assert "cannot reach peer 3" in rows[0][9]
    assert rows[1][:9] == ("2", "h:2", "follower", "no", "5.1", "90", "88", "12", "yes")
    assert rows[2][0] == "3" and rows[2][8] == "no" and "Connection refused" in rows[2][9]
    table = format_table(COLUMNS, rows)
    assert table.splitlines()[0].split() == list(COLUMNS)


def test_percentile_is_nearest_rank():
    values = sorted(range(1, 101))
    assert percentile(values, 0.5) == 50 and percentile(values, 0.99) == 99
    assert percentile([7], 0.99) == 7
    # 0.55 * 100 is 55.00000000000001 in floating point: still the 55th value, not the 56th.
    assert percentile(values, 0.55) == 55 and percentile(values, 0.07) == 7


# ---------------------------------------------------------------------------------------------
# Client commands against a fake node (the client protocol only).


@pytest.fixture
def fake_node():
    """A FakeNode served by a trio loop in a background thread; yields it."""
    ready = threading.Event()
    box: dict = {}

    async def serve() -> None:
        node = FakeNode()
        async with trio.open_nursery() as nursery:
            await nursery.start(node.serve)
            box.update(node=node, token=trio.lowlevel.current_trio_token(),
                       cancel=nursery.cancel_scope)
            ready.set()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    try:
        assert ready.wait(5)
        yield box["node"]
    finally:
        if "token" in box:
            trio.from_thread.run_sync(box["cancel"].cancel, trio_token=box["token"])
        thread.join(5)


def test_client_commands_print_and_exit_as_documented(fake_node):
    ep = ["--endpoints", fake_node.address, "--timeout", "2"]
    result = paxosd("put", "greeting", "hello world", *ep)
    assert (result.returncode, result.stdout) == (0, "OK\n"), result.stderr
    result = paxosd("get", "greeting", *ep)
    assert (result.returncode, result.stdout) == (0, "hello world\n")
    result = paxosd("get", "nothing", *ep)
    assert result.returncode == 1 and result.stdout == "" and "(not found)" in result.stderr
    result = paxosd("cas", "greeting", "wrong", "x", *ep)
    assert result.returncode == 1 and "not swapped" in result.stderr
    result = paxosd("cas", "greeting", "hello world", "bye", *ep)
    assert (result.returncode, result.stdout) == (0, "swapped\n")
    result = paxosd("cas", "fresh", "-", "new", *ep)
    assert (result.returncode, result.stdout) == (0, "swapped\n")
    result = paxosd("delete", "greeting", *ep)
    assert (result.returncode, result.stdout) == (0, "deleted\n")
    result = paxosd("delete", "greeting", *ep)
    assert result.returncode == 0 and "not found" in result.stdout
    result = paxosd("status", *ep)
    assert result.returncode == 0, result.stdout + result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == list(COLUMNS)
    assert row.split()[:9] == ["1", fake_node.address, "leader", "yes", "3.1", "7", "7", "0",
                               "yes"]


def test_a_write_without_an_answer_exits_1_saying_outcome_unknown(fake_node):
    fake_node.silent = True
    result = paxosd("put", "k", "v", "--endpoints", fake_node.address, "--timeout", "0.5")
    assert result.returncode == 1
    assert "outcome unknown: the write may or may not have been applied" in result.stderr


def test_load_reports_measured_commits_per_second(fake_node):
    result = paxosd("load", "--count", "300", "--clients", "8", "--value-size", "32",
                    "--endpoints", fake_node.address)
    assert result.returncode == 0, result.stderr
    assert re.search(r"300 of 300 writes committed", result.stdout), result.stdout
    assert re.search(r"throughput: \d+ commits/s", result.stdout)
    assert re.search(r"latency: p50 [\d.]+ ms, p99 [\d.]+ ms", result.stdout)
    assert fake_node.kv.applied_commands == 300


def test_main_returns_exit_codes_in_process(tmp_path, capsys):
    assert main(["check-config", "--config", str(ETC / "paxosd.yaml")]) == 0
    assert "cluster: demo" in capsys.readouterr().out
    assert main(["check-config", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# A real three-node cluster, started with ``paxosd cluster``.


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``paxosd cluster`` on a fresh config with free ports and fsync on; yields
    (config path, cluster process, output file). Stopped by pid at the end."""
    tmp = tmp_path_factory.mktemp("cluster")
    config = write_config(tmp)
    out_path = tmp / "cluster.out"
    environ = {k: v for k, v in os.environ.items() if k != "PAXOSD_CONFIG"}
    with open(out_path, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "daemon.tools.cli", "cluster", "--config", str(config)],
            cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        yield config, process, out_path
    finally:
        child_pids = [int(p) for p in re.findall(r"pid (\d+)", out_path.read_text())]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in child_pids:
            try:
                os.kill(pid, signal.SIGKILL)  # only if the cluster failed to stop it
            except ProcessLookupError:
                pass


def test_cli_commands_against_a_three_node_cluster(cluster):
    config, process, out_path = cluster
    cfg = ["--config", str(config), "--timeout", "15"]
    # The first command waits (within its timeout) for the nodes to start and elect a leader.
    result = paxosd("put", "greeting", "hello", *cfg)
    assert (result.returncode, result.stdout) == (0, "OK\n"), result.stderr + out_path.read_text()
    text = out_path.read_text()
    for member in (1, 2, 3):
        assert re.search(rf"node {member}: pid \d+, clients 127\.0\.0\.1:\d+", text), text

    result = paxosd("get", "greeting", *cfg)
    assert (result.returncode, result.stdout) == (0, "hello\n"), result.stderr
    result = paxosd("cas", "greeting", "nope", "x", *cfg)
    assert result.returncode == 1 and "not swapped" in result.stderr
    result = paxosd("cas", "greeting", "hello", "bye", *cfg)
    assert (result.returncode, result.stdout) == (0, "swapped\n"), result.stderr
    result = paxosd("cas", "brand-new", "-", "v", *cfg)
    assert (result.returncode, result.stdout) == (0, "swapped\n"), result.stderr
    result = paxosd("get", "greeting", *cfg)
    assert result.stdout == "bye\n"
    result = paxosd("delete", "greeting", *cfg)
    assert (result.returncode, result.stdout) == (0, "deleted\n"), result.stderr
    result = paxosd("get", "greeting", *cfg)
    assert result.returncode == 1 and "(not found)" in result.stderr

    result = paxosd("status", *cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == list(COLUMNS)
    assert len(rows) == 3
    cells = [row.split() for row in rows]
    assert sorted(c[0] for c in cells) == ["1", "2", "3"]
    assert [c[3] for c in cells].count("yes") == 1  # exactly one leader
    assert all(re.fullmatch(r"\d+\.\d+", c[4]) for c in cells)  # ballot as round.node
    assert all(c[8] == "yes" for c in cells)


def test_member_commands_change_and_show_the_membership(cluster):
    config, process, out_path = cluster
    cfg = ["--config", str(config), "--timeout", "15"]
    result = paxosd("member", "list", *cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "ROLE", "PEER", "CLIENT", "INCARNATION"]
    assert [r.split()[:2] for r in rows] == [["1", "voter"], ["2", "voter"], ["3", "voter"]]

    peer, client = free_ports(2)
    result = paxosd("member", "add", "9", f"127.0.0.1:{peer}", f"127.0.0.1:{client}", *cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "node 9 added as a learner" in result.stdout and "--join" in result.stdout
    result = paxosd("member", "list", *cfg)
    rows = result.stdout.splitlines()[1:]
    assert rows[3].split() == ["9", "learner", f"127.0.0.1:{peer}", f"127.0.0.1:{client}", "0"]
    assert "membership differs from the YAML file: the log has 1,2,3,9" in result.stdout
    result = paxosd("status", *cfg)
    assert "the log has 1,2,3,9" in result.stdout, result.stdout
    result = paxosd("member", "add", "9", f"127.0.0.1:{peer}", f"127.0.0.1:{client}", *cfg)
    assert result.returncode == 1 and "already a member" in result.stderr

    result = paxosd("member", "remove", "9", *cfg)
    assert (result.returncode, result.stdout) == (0, "node 9 removed\n"), result.stderr
    result = paxosd("member", "list", *cfg)
    assert len(result.stdout.splitlines()) == 4 and "differs" not in result.stdout
    result = paxosd("member", "remove", "9", *cfg)
    assert result.returncode == 1 and "not a member" in result.stderr
    result = paxosd("member", "add", "10", "nohost", "127.0.0.1:1", *cfg)
    assert result.returncode == 2 and "member add PEER" in result.stderr


def test_get_reads_ranges_in_etcdctls_shape(cluster):
    config, process, out_path = cluster
    cfg = ["--config", str(config), "--timeout", "15"]
    for key, value in (("app/b", "2"), ("app/a", "1"), ("apple", "x"), ("app/c", "3")):
        result = paxosd("put", key, value, *cfg)
        assert result.returncode == 0, result.stderr + out_path.read_text()
    result = paxosd("get", "app/", "--prefix", *cfg)
    assert (result.returncode, result.stdout) == (0, "app/a\n1\napp/b\n2\napp/c\n3\n"), \
        result.stderr
    result = paxosd("get", "app/", "--prefix", "--keys-only", "--limit", "2", *cfg)
    assert result.stdout == "app/a\napp/b\n", result.stderr
    result = paxosd("get", "app/", "--prefix", "--count-only", *cfg)
    assert result.stdout == "3\n", result.stderr
    result = paxosd("get", "app/", "--prefix", "--limit", "2", "--json", *cfg)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [kv["key"] for kv in doc["kvs"]] == ["app/a", "app/b"]
    assert doc["count"] == 3 and doc["more"] is True
    first = doc["kvs"][0]
    assert first["value"] == "1" and first["version"] == 1 and first["lease"] == 0
    assert first["create_revision"] == first["mod_revision"] <= doc["header"]["revision"]
    result = paxosd("get", "app/a", "--json", *cfg)  # one key, as JSON
    assert [kv["key"] for kv in json.loads(result.stdout)["kvs"]] == ["app/a"]
    result = paxosd("get", "app/", "--limit", "-1", *cfg)
    assert result.returncode == 2 and "--limit" in result.stderr


def test_txn_reads_etcdctls_text_from_stdin(cluster):
    config, process, out_path = cluster
    cfg = ["--config", str(config), "--timeout", "15"]
    result = paxosd("put", "txn/a", "1", *cfg)
    assert result.returncode == 0, result.stderr + out_path.read_text()
    text = ('value("txn/a") = "1"\nversion("txn/a") > 0\n\n'
            'put txn/b "two words"\nget txn/ --prefix\n\nget txn/a\n')
    result = paxosd("txn", *cfg, stdin=text)
    assert (result.returncode, result.stdout) == (
        0, "SUCCESS\n\nOK\ntxn/a\n1\ntxn/b\ntwo words\n"), result.stderr
    result = paxosd("txn", "--json", *cfg, stdin=text)  # txn/a is still 1: succeeds again
    doc = json.loads(result.stdout)
    assert doc["succeeded"] is True and doc["responses"][0] == {"put": {}}
    entries = doc["responses"][1]["range"]["kvs"]
    assert entries[1]["mod_revision"] == doc["header"]["revision"] and entries[1]["version"] == 2
    result = paxosd("txn", *cfg, stdin='mod("txn/a") < 1\n\ndel txn/a\n\ndel txn/ --prefix\n')
    assert (result.returncode, result.stdout) == (0, "FAILURE\n\n2\n"), result.stderr
    result = paxosd("txn", *cfg, stdin='size("txn/a") = 1\n\n\n')
    assert result.returncode == 2 and "line 1" in result.stderr and "target" in result.stderr
    result = paxosd("txn", *cfg, stdin='\nput only-a-key\n')
    assert result.returncode == 2 and "line 2: expected put KEY VALUE" in result.stderr


def test_lease_commands_and_put_with_a_lease_and_del_prefix(cluster):
    config, process, out_path = cluster
    cfg = ["--config", str(config), "--timeout", "15"]
    result = paxosd("lease", "grant", "60", "--json", *cfg)
    assert result.returncode == 0, result.stderr + out_path.read_text()
    lease = json.loads(result.stdout)
    assert lease["ttl"] == 60 and lease["id"] > 0
    lease_id = str(lease["id"])
    assert paxosd("put", "svc/a", "1", "--lease", lease_id, *cfg).returncode == 0
    assert paxosd("put", "svc/b", "2", *cfg).returncode == 0
    result = paxosd("lease", "keepalive", lease_id, "--once", *cfg)
    assert (result.returncode, result.stdout) == (
        0, f"lease {lease_id} keepalived with TTL(60)\n"), result.stderr
    result = paxosd("lease", "ttl", lease_id, "--keys", *cfg)
    assert re.fullmatch(rf"lease {lease_id} granted with TTL\(60s\), remaining\(\d+s\), "
                        r"attached keys\[svc/a\]\n", result.stdout), result.stdout + result.stderr
    result = paxosd("lease", "revoke", lease_id, *cfg)
    assert (result.returncode, result.stdout) == (0, f"lease {lease_id} revoked\n")
    assert paxosd("get", "svc/a", *cfg).returncode == 1  # gone with its lease
    result = paxosd("lease", "revoke", lease_id, *cfg)
    assert result.returncode == 1 and "not found" in result.stderr
    result = paxosd("lease", "ttl", lease_id, *cfg)
    assert result.returncode == 1 and f"lease {lease_id} not found" in result.stderr
    result = paxosd("put", "svc/c", "3", "--lease", lease_id, *cfg)
    assert result.returncode == 1 and f"lease {lease_id} not found" in result.stderr
    assert paxosd("put", "svc/d", "4", *cfg).returncode == 0
    result = paxosd("del", "svc/", "--prefix", *cfg)
    assert (result.returncode, result.stdout) == (0, "2\n"), result.stderr
    result = paxosd("lease", "grant", "zero", *cfg)
    assert result.returncode == 2 and "TTL" in result.stderr


def test_lock_runs_its_command_holding_the_lock_and_fences_writes(cluster):
    config, process, out_path = cluster
    cfg = ["--config", str(config), "--timeout", "15"]
    script = ("import os, sys; print(os.environ['PAXOSD_LOCK_KEY'], "
              "os.environ['PAXOSD_LOCK_REVISION']); sys.exit(3)")
    result = paxosd("lock", "cli/lock", *cfg, "--", sys.executable, "-c", script)
    assert result.returncode == 3, result.stderr + out_path.read_text()
    printed, seen = result.stdout.splitlines()
    key, revision = seen.split()
    assert printed == key and key.startswith("cli/lock/")
    # The lock was released when the command ended: its token no longer fences anything.
    result = paxosd("put", "cli/x", "1", "--fence-key", key, "--fence-revision", revision, *cfg)
    assert result.returncode == 1 and "fenced write refused" in result.stderr
    result = paxosd("put", "cli/x", "1", "--fence-key", key, *cfg)
    assert result.returncode == 2 and "go together" in result.stderr


def test_lock_without_a_command_holds_until_sigterm_then_releases(cluster):
    config, process, out_path = cluster
    cfg = ["--config", str(config), "--timeout", "15"]
    environ = {k: v for k, v in os.environ.items() if k != "PAXOSD_CONFIG"}
    holder = subprocess.Popen([sys.executable, "-m", "daemon.tools.cli", "lock", "cli/held",
                               "--json", *cfg], cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        line = holder.stdout.readline()  # bounded: the client's timeout ends the process
        assert line, holder.stderr.read().decode()
        held = json.loads(line)
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=30) == 0, holder.stderr.read().decode()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    result = paxosd("put", "cli/y", "1", "--fence-key", held["key"], "--fence-revision",
                    str(held["revision"]), *cfg)
    assert result.returncode == 1 and "fenced write refused" in result.stderr


def test_load_against_a_three_node_cluster_prints_commits_per_second(cluster):
    config, process, out_path = cluster
    result = paxosd("load", "--config", str(config), "--count", "2000", "--clients", "32",
                    "--timeout", "15", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2000 of 2000 writes committed" in result.stdout, result.stdout
    assert "fsync on" in result.stdout
    match = re.search(r"throughput: (\d+) commits/s", result.stdout)
    assert match and int(match.group(1)) > 0, result.stdout
    assert re.search(r"latency: p50 [\d.]+ ms, p99 [\d.]+ ms", result.stdout)
    print(result.stdout)


def test_cluster_stops_every_node_on_sigterm_and_exits_0(tmp_path):
    config = write_config(tmp_path, fsync=False)
    out_path = tmp_path / "cluster.out"
    with open(out_path, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "daemon.tools.cli", "cluster", "--config", str(config)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    child_pids: list[int] = []
    try:
        result = paxosd("put", "k", "v", "--config", str(config), "--timeout", "15")
        assert result.returncode == 0, result.stderr + out_path.read_text()
        child_pids = [int(p) for p in re.findall(r"pid (\d+)", out_path.read_text())]
        assert len(child_pids) == 3
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, out_path.read_text()
        for pid in child_pids:
            assert not _alive(pid), f"node pid {pid} still runs after the cluster stopped"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in child_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_cluster_reports_a_node_that_dies_and_the_others_keep_serving(tmp_path):
    config = write_config(tmp_path, fsync=False)
    from daemon.runtime.config import load_config

    taken = load_config(config).member(2).client
    squatter = socket.socket()  # node 2 cannot listen for clients: it exits at start
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind((taken.host, taken.port))
    squatter.listen()
    out_path = tmp_path / "cluster.out"
    with open(out_path, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "daemon.tools.cli", "cluster", "--config", str(config)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    child_pids: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while "exited with status 1" not in out_path.read_text():
            assert time.monotonic() < deadline and process.poll() is None, out_path.read_text()
            time.sleep(0.05)
        text = out_path.read_text()
        assert re.search(r"node 2 \(pid \d+\) exited with status 1; still running: 1, 3", text)
        # Two of three are a quorum: the cluster still takes writes.
        endpoints = ",".join(str(m.client) for m in load_config(config).members if m.id != 2)
        result = paxosd("put", "k", "v", "--endpoints", endpoints, "--timeout", "15")
        assert result.returncode == 0, result.stderr + out_path.read_text()
        child_pids = [int(p) for p in re.findall(r"pid (\d+)", out_path.read_text())]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, out_path.read_text()
        for pid in child_pids:
            assert not _alive(pid)
    finally:
        squatter.close()
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in child_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_demo_starts_the_cluster_runs_load_and_stops_it(tmp_path):
    config = write_config(tmp_path)
    result = paxosd("demo", "--config", str(config), "--count", "500", "--clients", "8",
                    timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "500 of 500 writes committed" in result.stdout and "fsync on" in result.stdout
    assert re.search(r"throughput: \d+ commits/s", result.stdout)
    for pid in [int(p) for p in re.findall(r"pid (\d+)", result.stdout)]:
        assert not _alive(pid)


def _alive(pid: int) -> bool:
    # The children were reaped by the cluster process; a pid that is gone raises.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.05)
    return True


def test_write_config_makes_a_valid_file(tmp_path):
    result = paxosd("check-config", "--config", str(write_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "cluster: clitest" in result.stdout
