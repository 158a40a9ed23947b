"""The trio daemon on loopback: real sockets, real WAL files, three nodes.

Most tests run three ``serve()`` in one trio nursery (in-process, fast); one runs three real
processes and kills the leader with SIGKILL. Every wait is bounded; every port is free (found
by binding 127.0.0.1:0) and on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from fastpath import FrameReader, dumps, encode_frame, loads

from daemon.codec import wire
from daemon.runtime.config import load_config
from daemon.runtime.server import sd_notify, serve
from tests.ports import free_ports

REPO = Path(__file__).resolve().parent.parent
TEST_TIMEOUT = 30


def write_config(tmp_path: Path, *, cluster: str = "test", fsync: bool = True,
                 members: int = 3) -> Path:
    ports = free_ports(2 * members)
    lines = [f"cluster: {cluster}", "members:"]
    for i in range(1, members + 1):
        lines.append(f"  {i}: {{peer: 127.0.0.1:{ports[i - 1]}, "
                     f"client: 127.0.0.1:{ports[members + i - 1]}}}")
    lines += [
        f"data_dir: {tmp_path / 'data'}",
        "timing: {heartbeat_ms: 20, election_timeout_ms: [100, 200]}",
        f"storage: {{fsync: {'true' if fsync else 'false'}}}",
        "batching: {max_batch_bytes: 262144}",
        "limits: {max_frame_bytes: 4194304}",
    ]
    path = tmp_path / "cluster.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class RawClient:
    """The client protocol spoken by hand: frames of requests out, frames of replies in."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.reader = FrameReader(1 << 24)
        self.replies: dict[int, wire.ClientReply] = {}
        self.next_id = 1

    @classmethod
    async def connect(cls, address) -> "RawClient":
        return cls(await trio.open_tcp_stream(address.host, address.port))

    async def send(self, requests: list) -> None:
        await self.stream.send_all(encode_frame(dumps(requests)))

    async def call_many(self, requests: list) -> list[wire.ClientReply]:
        """Send ``requests`` ([op, client_id, seq, key, arg1, arg2] each) in ONE frame."""
        ids = []
        frame = []
        for req in requests:
            ids.append(self.next_id)
            frame.append([self.next_id, *req])
            self.next_id += 1
        await self.send(frame)
        while not all(i in self.replies for i in ids):
            data = await self.stream.receive_some(1 << 16)
            assert data, "the server closed the connection"
            for payload in self.reader.feed(data):
                for obj in loads(payload):
                    reply = wire.decode_reply(obj)
                    self.replies[reply.req_id] = reply
        return [self.replies.pop(i) for i in ids]

    async def call(self, op, client_id=0, seq=0, key=b"", arg1=None, arg2=None) -> wire.ClientReply:
        return (await self.call_many([[op, client_id, seq, key, arg1, arg2]]))[0]

    async def aclose(self) -> None:
        await self.stream.aclose()


class Cluster:
    def __init__(self, path: Path, run=(1, 2, 3)):
        self.path = path
        self.configs = {i: load_config(path, node_id=i) for i in run}
        self.servers: dict = {}

    def client_address(self, node_id: int):
        return self.configs[node_id].member(node_id).client

    def peer_address(self, node_id: int):
        return self.configs[node_id].member(node_id).peer

    async def client(self, node_id: int) -> RawClient:
        return await RawClient.connect(self.client_address(node_id))

    async def wait_for_leader(self, among=(1, 2, 3), timeout: float = 10.0) -> int:
        """Poll "status" on every node until all of ``among`` name the same leader."""
        clients = {i: await self.client(i) for i in among}
        try:
            with trio.fail_after(timeout):
                while True:
                    leaders = set()
                    for c in clients.values():
                        status = (await c.call("status")).result
                        leaders.add(status["leader"])
                    if len(leaders) == 1 and None not in leaders:
                        leader = leaders.pop()
                        status = (await clients[leader].call("status")).result
                        if status["role"] == "leader":
                            return leader
                    await trio.sleep(0.02)
        finally:
            for c in clients.values():
                await c.aclose()


@asynccontextmanager
async def running_cluster(tmp_path: Path, run=(1, 2, 3), new_cluster=False, **kwargs):
    """``new_cluster``: the nodes take incarnation 0 without asking the members not in ``run``."""
    cluster = Cluster(write_config(tmp_path, **kwargs), run)
    async with trio.open_nursery() as nursery:
        for i, config in cluster.configs.items():
            cluster.servers[i] = await nursery.start(partial(serve, new_cluster=new_cluster),
                                                     config)
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()


async def read_until_closed(stream, timeout: float = 5.0) -> bytes:
    """Everything the other side sends until it closes the connection (bounded)."""
    data = b""
    with trio.fail_after(timeout):
        while True:
            try:
                chunk = await stream.receive_some(1 << 16)
            except trio.BrokenResourceError:  # closed with unread data: a reset
                return data
            if not chunk:
                return data
            data += chunk


# ------------------------------------------------------------------------------ in-process


async def test_three_nodes_elect_a_leader_and_serve_put_get_cas(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            leader = await cluster.wait_for_leader()
            c = await cluster.client(leader)
            address = str(cluster.client_address(leader))

            reply = await c.call("put", 1, 1, b"k", b"v1")
            assert (reply.status, reply.result, reply.leader) == ("ok", None, address)
            assert (await c.call("get", key=b"k")).result == b"v1"
            assert (await c.call("get", key=b"missing")).result is None
            assert (await c.call("cas", 1, 2, b"k", b"wrong", b"v2")).result is False
            assert (await c.call("cas", 1, 3, b"k", b"v1", b"v2")).result is True
            assert (await c.call("cas", 1, 4, b"new", None, b"n")).result is True
            assert (await c.call("get", key=b"k")).result == b"v2"
            assert (await c.call("delete", 1, 5, b"k")).result is True
            assert (await c.call("delete", 1, 6, b"k")).result is False
            assert (await c.call("get", key=b"k")).result is None
            # A retry of an applied command is answered, not applied again; an older seq is stale.
            assert (await c.call("put", 1, 6, b"k", b"retry")).result is False  # delete's answer
            assert (await c.call("get", key=b"k")).result is None
            assert (await c.call("put", 1, 3, b"k", b"old")).status == "stale"

            status = (await c.call("status")).result
            assert status["role"] == "leader" and status["id"] == leader
            assert status["cluster"] == "test"
            assert status["peers"] == {m: True for m in (1, 2, 3) if m != leader}
            assert status["commit_index"] == status["applied_index"] >= 7
            await c.aclose()


async def test_many_pipelined_requests_in_one_frame_are_all_answered(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            leader = await cluster.wait_for_leader()
            c = await cluster.client(leader)
            puts = [["put", 100 + i, 1, b"key%d" % i, b"value%d" % i, None] for i in range(500)]
            replies = await c.call_many(puts)
            assert [r.status for r in replies] == ["ok"] * 500
            gets = [["get", 0, 0, b"key%d" % i, None, None] for i in range(500)]
            replies = await c.call_many(gets)
            assert [r.result for r in replies] == [b"value%d" % i for i in range(500)]
            await c.aclose()


async def test_a_follower_answers_not_leader_with_the_leaders_client_address(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            leader = await cluster.wait_for_leader()
            follower = next(i for i in (1, 2, 3) if i != leader)
            c = await cluster.client(follower)
            expected = str(cluster.client_address(leader))
            for request in (("put", 1, 1, b"k", b"v"), ("get", 0, 0, b"k"),
                            ("cas", 1, 1, b"k", None, b"v"), ("delete", 1, 1, b"k")):
                reply = await c.call(*request)
                assert (reply.status, reply.leader) == ("not_leader", expected), request
            status = (await c.call("status")).result
            assert (status["role"], status["leader"]) == ("follower", leader)
            await c.aclose()


async def test_a_bad_request_gets_an_error_naming_the_field(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            leader = await cluster.wait_for_leader()
            c = await cluster.client(leader)
            bad, good = await c.call_many([["put", 1, 1, "text key", b"v", None],
                                           ["put", 1, 1, b"k", b"v", None]])
            assert bad.status == "error" and "request.key" in bad.result
            assert good.status == "ok"
            reply = await c.call("launch", 1, 2, b"k")
            assert reply.status == "error" and "request.op" in reply.result
            await c.aclose()


async def test_a_malformed_client_frame_closes_only_that_connection(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            leader = await cluster.wait_for_leader()
            other = await cluster.client(leader)
            for garbage in (encode_frame(b"\xff\xff"),  # not CBOR
                            encode_frame(dumps({"not": "an array"})),
                            encode_frame(dumps([["no req_id"]])),
                            b"\x7f\xff\xff\xff"):  # announces 2 GiB, over max_frame_bytes
                bad = await cluster.client(leader)
                await bad.stream.send_all(garbage)
                assert await read_until_closed(bad.stream) == b""
                await bad.aclose()
            assert (await other.call("put", 1, 1, b"k", b"v")).status == "ok"
            await other.aclose()


@pytest.mark.parametrize("case", ["malformed frame", "oversized length", "wrong cluster",
                                  "unknown node id", "no hello"])
async def test_bad_input_on_the_peer_port_closes_that_connection_only(tmp_path, case,
                                                                      monkeypatch):
    from daemon.runtime import transport

    monkeypatch.setattr(transport, "HELLO_TIMEOUT", 0.5)
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            leader = await cluster.wait_for_leader()
            peer = cluster.peer_address(leader)
            stream = await trio.open_tcp_stream(peer.host, peer.port)
            if case == "malformed frame":
                await stream.send_all(encode_frame(b"\xa1\x01"))  # a truncated CBOR map
            elif case == "oversized length":
                await stream.send_all(b"\x10\x00\x00\x00")  # 256 MiB > max_frame_bytes
            elif case == "wrong cluster":
                await stream.send_all(encode_frame(dumps(["paxosd", wire.PROTOCOL_VERSION, "other", 1])))
            elif case == "unknown node id":
                await stream.send_all(encode_frame(dumps(["paxosd", wire.PROTOCOL_VERSION, "test", 42])))
            # "no hello": say nothing; the hello timeout closes the connection.
            data = await read_until_closed(stream)
            if case in ("wrong cluster", "unknown node id"):
                # A well-formed hello is answered (so the other side can log why), then closed.
                payloads = FrameReader(4096).feed(data)
                hello = loads(payloads[0])
                assert hello == ["paxosd", wire.PROTOCOL_VERSION, "test", leader]
            else:
                assert data == b""
            await stream.aclose()

            # The cluster keeps serving, with every peer link still up.
            c = await cluster.client(leader)
            assert (await c.call("put", 1, 1, b"k", b"v")).status == "ok"
            status = (await c.call("status")).result
            assert all(status["peers"].values())
            assert status["role"] == "leader"
            await c.aclose()


def _core_state(server) -> tuple:
    node = server.node
    return (node.role, node.leader_id, node.promised, node.max_seen, node.commit_index,
            node.applied_index, sorted(node.log.items()))


async def test_a_rejected_peer_frame_changes_nothing(tmp_path):
    # Near-valid messages from a peer that passed the hello, each of which would move the node
    # (a higher ballot, new values, a commit index) if any part of it were acted on. Each is
    # refused as a whole: the connection closes and the node's state is as it was.
    big = (1 << 40) << 16  # a ballot round far above anything in use
    # Five members, three running: the frames claim to come from node 1, which is down, so no
    # real connection of node 1's is displaced by them. (Two members never start: the others
    # are told the cluster is new.)
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path, run=(3, 4, 5), members=5,
                                   new_cluster=True) as cluster:
            leader = await cluster.wait_for_leader(among=(3, 4, 5))
            c = await cluster.client(leader)
            assert (await c.call("put", 1, 1, b"k", b"v")).status == "ok"
            await trio.sleep(0.3)  # let the followers learn the commit
            target, me = 3, 1  # the lower id dials: node 3 accepts a hello from node 1
            bad = [
                [1, me, big | me, 1, 0],  # Prepare: one field too many
                [1, me, big | 2, 1],  # Prepare: a ballot of node 2, sent by node 1
                [4, me, big | me, 99, 1, [[[1, 1, 1, 1, b"k", b"v2", None]], "junk"], 0],
                [4, me, big | me, 99, 2, [[[1, 1, 1, 1, b"k", b"v2", None]]], -1],
                [9, 42, big | 42],  # TimeoutNow from a stranger
                [7, me, 2, [["not a batch"]], 50],  # Catchup with a malformed batch
                [8, me, 10**6, 0, 10, "not bytes"],  # SnapshotChunk with text for data
                {"type": "Prepare"},
            ]
            before = _core_state(cluster.servers[target])
            for obj in bad:
                peer = cluster.peer_address(target)
                stream = await trio.open_tcp_stream(peer.host, peer.port)
                await stream.send_all(encode_frame(dumps(
                    ["paxosd", wire.PROTOCOL_VERSION, "test", me])))
                reader = FrameReader(4096)
                answer = []
                while not answer:
                    chunk = await stream.receive_some(4096)
                    assert chunk, "the hello was not answered"
                    answer = reader.feed(chunk)
                assert loads(answer[0])[:4] == ["paxosd", wire.PROTOCOL_VERSION, "test", target]
                await stream.send_all(encode_frame(dumps(obj)))
                await read_until_closed(stream)  # (what node 3 had for node 1, then closed)
                await stream.aclose()
                assert _core_state(cluster.servers[target]) == before, obj
            # And the cluster goes on as before.
            assert (await c.call("put", 1, 2, b"k", b"v3")).status == "ok"
            status = (await c.call("status")).result
            assert status["leader"] == leader
            await c.aclose()


async def test_a_peer_of_another_cluster_is_refused_and_logged(tmp_path, caplog):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            leader = await cluster.wait_for_leader()
            peer = cluster.peer_address(leader)
            stream = await trio.open_tcp_stream(peer.host, peer.port)
            await stream.send_all(encode_frame(dumps(["paxosd", wire.PROTOCOL_VERSION, "other", 1])))
            await read_until_closed(stream)
            await stream.aclose()
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any("cluster 'other'" in m and "'test'" in m for m in refusals), refusals


async def test_acknowledged_writes_survive_a_restart_of_the_whole_cluster(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            leader = await cluster.wait_for_leader()
            c = await cluster.client(leader)
            replies = await c.call_many(
                [["put", 10 + i, 1, b"k%d" % i, b"v%d" % i, None] for i in range(50)])
            assert all(r.status == "ok" for r in replies)
            await c.aclose()
        cluster = Cluster(cluster.path)
        async with trio.open_nursery() as nursery:
            for i, config in cluster.configs.items():
                await nursery.start(serve, config)
            leader = await cluster.wait_for_leader()
            c = await cluster.client(leader)
            replies = await c.call_many([["get", 0, 0, b"k%d" % i, None, None] for i in range(50)])
            assert [r.result for r in replies] == [b"v%d" % i for i in range(50)]
            await c.aclose()
            nursery.cancel_scope.cancel()


async def test_a_stopped_follower_comes_back_and_catches_up(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_cluster(tmp_path) as cluster:
            leader = await cluster.wait_for_leader()
            follower = next(i for i in (1, 2, 3) if i != leader)
            cluster.servers[follower].stop()
            c = await cluster.client(leader)
            for i in range(20):  # a quorum of two still commits
                assert (await c.call("put", 1, i + 1, b"k", b"v%d" % i)).status == "ok"
            async with trio.open_nursery() as nursery:
                server = await nursery.start(serve, cluster.configs[follower])
                with trio.fail_after(10):
                    while server.status()["applied_index"] < (await c.call("status")).result[
                            "commit_index"]:
                        await trio.sleep(0.02)
                assert server.node.kv.get(b"k") == b"v19"
                nursery.cancel_scope.cancel()
            await c.aclose()


def test_sd_notify_sends_to_path_and_abstract_sockets(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    for address in (str(tmp_path / "notify"), f"@paxosd-test-{os.getpid()}"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(address.replace("@", "\0", 1) if address[0] == "@" else address)
            sock.settimeout(5)
            monkeypatch.setenv("NOTIFY_SOCKET", address)
            assert sd_notify("READY=1") is True
            assert sock.recv(64) == b"READY=1"


# ------------------------------------------------------------------------------ real processes


def sync_call(address, request: list, timeout: float = 2.0):
    """One request over a fresh blocking socket; the reply, or None if the node is away."""
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout) as sock:
            sock.sendall(encode_frame(dumps([[1, *request]])))
            reader = FrameReader(1 << 20)
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    return None
                for payload in reader.feed(data):
                    return wire.decode_reply(loads(payload)[0])
    except OSError:
        return None


def poll_leader(cluster: Cluster, among, deadline: float) -> int:
    while time.monotonic() < deadline:
        leaders = set()
        for i in among:
            reply = sync_call(cluster.client_address(i), ["status", 0, 0, b"", None, None])
            leaders.add(reply.result["leader"] if reply else None)
        if len(leaders) == 1 and leaders <= set(among):  # all agree on a live node
            return leaders.pop()
        time.sleep(0.05)
    raise AssertionError(f"no leader among {among} in time")


def test_real_processes_survive_kill_9_of_the_leader(tmp_path):
    cluster = Cluster(write_config(tmp_path))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(15)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    procs: dict[int, subprocess.Popen] = {}
    logs = {}
    try:
        for i in (1, 2, 3):
            logs[i] = open(tmp_path / f"node-{i}.log", "wb")
            procs[i] = subprocess.Popen(
                [sys.executable, "-m", "daemon.runtime.server", "--config", str(cluster.path),
                 "--node-id", str(i)],
                cwd=REPO, env=env, stdout=logs[i], stderr=subprocess.STDOUT)
        ready = [notify.recv(64) for _ in range(3)]  # every node is listening
        assert ready == [b"READY=1"] * 3
        deadline = time.monotonic() + 20
        leader = poll_leader(cluster, (1, 2, 3), deadline)

        reply = sync_call(cluster.client_address(leader), ["put", 7, 1, b"k", b"acked", None])
        assert reply is not None and reply.status == "ok"

        procs[leader].send_signal(signal.SIGKILL)
        procs[leader].wait(timeout=10)
        rest = tuple(i for i in (1, 2, 3) if i != leader)
        new_leader = poll_leader(cluster, rest, deadline)
        assert new_leader != leader
        reply = sync_call(cluster.client_address(new_leader), ["get", 0, 0, b"k", None, None])
        assert (reply.status, reply.result) == ("ok", b"acked")

        # SIGTERM is a clean stop: exit code 0, "STOPPING=1" said to systemd.
        procs[rest[0]].send_signal(signal.SIGTERM)
        assert procs[rest[0]].wait(timeout=10) == 0
        assert notify.recv(64) == b"STOPPING=1"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        for f in logs.values():
            f.close()
        notify.close()
    for i in (1, 2, 3):
        text = (tmp_path / f"node-{i}.log").read_text()
        assert "Traceback" not in text, text


def test_a_supervised_node_pings_the_watchdog_with_a_status_line(tmp_path):
    cluster = Cluster(write_config(tmp_path))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(15)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"}
    log = open(tmp_path / "node-1.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "daemon.runtime.server", "--config", str(cluster.path),
                             "--node-id", "1"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        seen = [notify.recv(256) for _ in range(4)]
        assert seen[0] == b"READY=1"
        pings = [m for m in seen[1:] if m.startswith(b"WATCHDOG=1\nSTATUS=")]
        assert len(pings) == 3, seen
        assert b"commit 0" in pings[0] and b"leader none" in pings[0]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        rest = []
        while True:  # pings may still be queued ahead of STOPPING
            msg = notify.recv(256)
            rest.append(msg)
            if not msg.startswith(b"WATCHDOG"):
                break
        assert rest[-1] == b"STOPPING=1"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        log.close()
        notify.close()
