"""Peer authentication and TLS on loopback: a cluster with mutual TLS and a cluster secret
elects and commits; a connection without a certificate, with a certificate of another CA, with
a client certificate, without the secret or with a wrong one is refused before any protocol
frame is read, logged once, and the cluster keeps serving. The client port's TLS works with the
client library and the command line.

Certificates come from trustme, made fresh in each test. Every port is free, on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import ssl
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme

from fastpath import FrameReader, dumps, encode_frame, encode_frames, loads

from daemon.codec import wire
from daemon.tools.cli import main as cli_main
from daemon.client.client import Client, Unavailable
from daemon.runtime.config import load_config
from daemon.core.messages import Prepare
from daemon.runtime.security import ROLE_DIALER, client_context, prove
from daemon.runtime.server import serve
from tests.test_server import TEST_TIMEOUT, Cluster, free_ports, read_until_closed

SECRET = b"the cluster secret, 32 bytes ok!"
OTHER_SECRET = b"not the cluster secret, but long"


@dataclass
class PKI:
    """The files of one test: the cluster's CA and node certificate, a client CA and client
    certificate, and a certificate of an unrelated CA."""

    ca: Path
    node: tuple[Path, Path]
    client_ca: Path
    client: tuple[Path, Path]
    stranger: tuple[Path, Path]
    ca_object: trustme.CA


def issue(ca: trustme.CA, directory: Path, name: str, *identities: str) -> tuple[Path, Path]:
    issued = ca.issue_cert(*identities)
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


@pytest.fixture
def pki(tmp_path) -> PKI:
    directory = tmp_path / "tls"
    directory.mkdir()
    ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    client_ca.cert_pem.write_to_path(str(directory / "client-ca.pem"))
    return PKI(
        ca=directory / "ca.pem",
        node=issue(ca, directory, "node", "127.0.0.1", "localhost"),
        client_ca=directory / "client-ca.pem",
        client=issue(client_ca, directory, "client", "operator@example.org"),
        stranger=issue(other_ca, directory, "stranger", "127.0.0.1"),
        ca_object=ca,
    )


def write_secret(path: Path, secret: bytes) -> Path:
    path.write_bytes(secret + b"\n")
    path.chmod(0o600)
    return path


def write_config(tmp_path: Path, pki: PKI | None = None, *, secret: bytes | None = SECRET,
                 client_tls: bool = False, name: str = "cluster.yaml",
                 ports: list[int] | None = None) -> Path:
    ports = ports or free_ports(6)
    lines = ["cluster: test", "members:"]
    for i in (1, 2, 3):
        lines.append(f"  {i}: {{peer: 127.0.0.1:{ports[i - 1]}, client: 127.0.0.1:{ports[i + 2]}}}")
    lines += [f"data_dir: {tmp_path / 'data'}",
              "timing: {heartbeat_ms: 20, election_timeout_ms: [100, 200]}",
              "storage: {fsync: false}"]
    if secret is not None:
        secret_file = write_secret(tmp_path / f"{name}.secret", secret)
        lines.append(f"auth: {{secret_file: {secret_file}}}")
    if pki is not None:
        lines.append(f"tls: {{ca: {pki.ca}, cert: {pki.node[0]}, key: {pki.node[1]}}}")
    if client_tls:
        lines.append(f"client_tls: {{ca: {pki.client_ca}, cert: {pki.node[0]}, "
                     f"key: {pki.node[1]}}}")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


@asynccontextmanager
async def running(cluster: Cluster, among=(1, 2, 3), new_cluster=False):
    """``new_cluster``: the nodes take incarnation 0 without asking the other members."""
    async with trio.open_nursery() as nursery:
        for i in among:
            cluster.servers[i] = await nursery.start(partial(serve, new_cluster=new_cluster),
                                                     cluster.configs[i])
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()


def refusals(caplog, node: int, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if getattr(r, "node", None) == node and "refused" in r.getMessage()
            and words in r.getMessage()]


async def wait_for(predicate, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def still_serving(cluster: Cluster, leader: int, ballot: int) -> None:
    """The leader commits, keeps its ballot and has every peer link up."""
    c = await cluster.client(leader)
    try:
        assert (await c.call("put", 77, 1, b"after", b"refusal")).status == "ok"
        status = (await c.call("status")).result
        assert status["role"] == "leader" and status["ballot"] == ballot
        assert all(status["peers"].values()), status["peers"]
    finally:
        await c.aclose()


# ---------------------------------------------------------------------------------------------
# A protected cluster works.


@pytest.mark.parametrize("protection", ["mutual TLS + cluster secret", "mutual TLS",
                                        "cluster secret"])
async def test_three_nodes_with_tls_a_secret_or_both_elect_a_leader_and_commit(
        tmp_path, pki, caplog, protection):
    caplog.set_level(logging.INFO, logger="paxosd")
    with trio.fail_after(TEST_TIMEOUT):
        cluster = Cluster(write_config(tmp_path, pki if "TLS" in protection else None,
                                       secret=SECRET if "secret" in protection else None))
        async with running(cluster):
            leader = await cluster.wait_for_leader()
            c = await cluster.client(leader)
            replies = await c.call_many(
                [["put", 10 + i, 1, b"k%d" % i, b"v%d" % i, None] for i in range(50)])
            assert [r.status for r in replies] == ["ok"] * 50
            assert (await c.call("get", key=b"k7")).result == b"v7"
            status = (await c.call("status")).result
            assert status["peers"] == {m: True for m in (1, 2, 3) if m != leader}
            await c.aclose()
            for server in cluster.servers.values():
                assert server.transport.auth_failures == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum(1 for m in messages if f"peer authentication {protection}," in m) == 3
    if "TLS" in protection:
        assert sum(1 for m in messages if "up (" in m and ", TLS)" in m) >= 6  # 3 links x 2


# ---------------------------------------------------------------------------------------------
# Refusals on the peer port, before any frame.


def tls_client(pki: PKI, case: str) -> ssl.SSLContext:
    cert = {"no certificate": None, "a certificate of another CA": pki.stranger,
            "a client certificate": pki.client}[case]
    context = client_context(pki.ca, *(cert or (None, None)))
    return context


@pytest.mark.parametrize("case", ["no certificate", "a certificate of another CA",
                                  "a client certificate"])
async def test_a_peer_connection_failing_tls_is_refused_logged_once_and_harmless(
        tmp_path, pki, case, caplog, monkeypatch):
    from daemon.runtime.transport import Transport

    handshakes = []  # remote addresses whose hello the acceptor started to read
    original = Transport._handshake_as_acceptor

    async def recording(self, stream):
        handshakes.append(stream.transport_stream.socket.getpeername()[1])
        return await original(self, stream)

    monkeypatch.setattr(Transport, "_handshake_as_acceptor", recording)
    with trio.fail_after(TEST_TIMEOUT):
        cluster = Cluster(write_config(tmp_path, pki))
        async with running(cluster):
            leader = await cluster.wait_for_leader()
            ballot = cluster.servers[leader].node.ballot
            transport = cluster.servers[leader].transport
            peer = cluster.peer_address(leader)
            raw = await trio.open_tcp_stream(peer.host, peer.port)
            port = raw.socket.getsockname()[1]
            stream = trio.SSLStream(raw, tls_client(pki, case), server_hostname="127.0.0.1")
            try:
                # TLS 1.3 lets the client finish its handshake before the server has checked
                # the client's certificate: the refusal then arrives on the first read.
                await stream.do_handshake()
                await stream.send_all(encode_frame(dumps(
                    wire.encode_hello("test", 1, os.urandom(32)))))
                answer = await read_until_closed(stream)
            except trio.BrokenResourceError:
                answer = b""
            assert answer == b""  # no hello came back
            await trio.aclose_forcefully(raw)
            await wait_for(lambda: transport.auth_failures == 1)
            assert port not in handshakes  # refused before the hello was read
            await still_serving(cluster, leader, ballot)
    lines = refusals(caplog, leader, f":{port} refused: TLS handshake failed")
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("case", ["wrong secret", "no secret"])
async def test_a_peer_without_the_secret_is_refused_before_any_frame_and_logged_once(
        tmp_path, case, caplog):
    with trio.fail_after(TEST_TIMEOUT):
        cluster = Cluster(write_config(tmp_path))
        async with running(cluster):
            leader = await cluster.wait_for_leader()
            ballots = {i: s.node.promised for i, s in cluster.servers.items()}
            target = 3
            peer = cluster.peer_address(target)
            stream = await trio.open_tcp_stream(peer.host, peer.port)
            port = stream.socket.getsockname()[1]
            nonce = os.urandom(32) if case == "wrong secret" else None
            await stream.send_all(encode_frame(dumps(wire.encode_hello("test", 1, nonce))))
            reader = FrameReader(4096)
            payloads = []
            with trio.fail_after(5):
                while len(payloads) < (2 if nonce else 1):
                    data = await stream.receive_some(4096)
                    assert data, "closed before answering the hello"
                    payloads += reader.feed(data)
            hello = loads(payloads[0])
            assert hello[:4] == ["paxosd", wire.PROTOCOL_VERSION, "test", target] and len(hello[4]) == 32
            if case == "wrong secret":
                assert wire.decode_auth_step(loads(payloads[1]))[0] == "proof"
                forged = prove(OTHER_SECRET, ROLE_DIALER, "test", 1, target, nonce, hello[4])
                # A forged proof and, right behind it, a Prepare of a huge ballot: were it read,
                # every node would raise its promise.
                prepare = wire.encode_peer(Prepare(1, (1 << 40) | 1, 1))
                await stream.send_all(encode_frames([wire.encode_proof(forged), prepare]))
                answer = FrameReader(4096).feed(await read_until_closed(stream))
                assert loads(answer[0])[0] == "refused"
                words = "node 1 failed authentication: its proof does not match"
            else:
                assert await read_until_closed(stream) == b""
                words = "node 1 sent no authentication challenge"
            await stream.aclose()
            transport = cluster.servers[target].transport
            await wait_for(lambda: transport.auth_failures == 1)
            await still_serving(cluster, leader, cluster.servers[leader].node.ballot)
            assert {i: s.node.promised for i, s in cluster.servers.items()} == ballots
    lines = refusals(caplog, target, f":{port} refused: {words}")
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]


async def test_a_member_with_another_secret_cannot_join_and_each_side_logs_it_once(
        tmp_path, caplog):
    ports = free_ports(6)
    cluster = Cluster(write_config(tmp_path, ports=ports))
    cluster.configs[3] = load_config(
        write_config(tmp_path, secret=OTHER_SECRET, name="other.yaml", ports=ports), node_id=3)
    with trio.fail_after(TEST_TIMEOUT):
        # Nodes 1 and 2 never hear from node 3: they are told the cluster is new.
        async with running(cluster, new_cluster=True):
            leader = await cluster.wait_for_leader(among=(1, 2))
            c = await cluster.client(leader)
            assert (await c.call("put", 1, 1, b"k", b"v")).status == "ok"
            await c.aclose()
            # Nodes 1 and 2 dial node 3 again and again (backoff); wait for a few rounds.
            transport = cluster.servers[3].transport
            await wait_for(lambda: transport.auth_failures >= 6, timeout=20)
            assert not any(transport.reachable().values())
    for dialer in (1, 2):
        # The dialer checks node 3's proof first, so it is the one that finds the mismatch.
        assert len(refusals(caplog, dialer, "connection to peer 3 at")) == 1
        assert len(refusals(caplog, 3, f"node {dialer} refused this node's proof")) == 1


# ---------------------------------------------------------------------------------------------
# TLS on the client port.


async def test_the_client_port_with_tls_serves_clients_with_a_certificate_only(
        tmp_path, pki, caplog):
    with trio.fail_after(TEST_TIMEOUT):
        cluster = Cluster(write_config(tmp_path, pki, secret=None, client_tls=True))
        endpoints = [str(cluster.client_address(i)) for i in (1, 2, 3)]
        async with running(cluster):
            good = client_context(pki.ca, *pki.client)
            async with Client(endpoints, timeout=10, ssl_context=good) as client:
                await client.put(b"k", b"over TLS")
                assert await client.get(b"k") == b"over TLS"
                statuses = await client.cluster_status()
                assert all("error" not in s for s in statuses), statuses

            for name, context in [("no certificate", client_context(pki.ca)),
                                  ("a certificate of another CA",
                                   client_context(pki.ca, *pki.stranger)),
                                  ("plain TCP", None)]:
                async with Client(endpoints[:1], timeout=1, attempt_timeout=0.5,
                                  ssl_context=context) as client:
                    with pytest.raises(Unavailable):
                        await client.get(b"k")

            # The command line: --cacert, --cert, --key.
            flags = ["--endpoints", ",".join(endpoints), "--cacert", str(pki.ca),
                     "--cert", str(pki.client[0]), "--key", str(pki.client[1])]
            assert await trio.to_thread.run_sync(cli_main, ["put", *flags, "cli", "yes"]) == 0
            assert await trio.to_thread.run_sync(cli_main, ["status", *flags]) == 0
            plain = ["--endpoints", endpoints[0], "--timeout", "1"]
            assert await trio.to_thread.run_sync(cli_main, ["get", *plain, "cli"]) == 1
            for server in cluster.servers.values():
                assert server.node.kv.get(b"cli") in (b"yes", None)
    refused = [r.getMessage() for r in caplog.records
               if "client connection from" in r.getMessage() and "TLS handshake failed" in r.getMessage()]
    assert refused, [r.getMessage() for r in caplog.records]


def test_the_command_line_names_a_missing_tls_file(capsys):
    assert cli_main(["get", "--endpoints", "127.0.0.1:1", "--cacert", "/nonexistent/ca.pem",
                     "k"]) == 2
    assert "--cacert /nonexistent/ca.pem: no such file" in capsys.readouterr().err
