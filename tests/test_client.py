"""daemon.client.client: leader discovery, at-most-once retries, pipelining, and honest errors.

The first part runs the client against ``FakeNode``, a small trio server in this file that
speaks the client protocol over real loopback TCP with a real ``KVStore`` behind it, and can be
told to redirect, be busy, drop a connection after applying, or never answer. The second part
runs it against an in-process three-node cluster of ``daemon.runtime.server.serve``.
"""

from __future__ import annotations

import functools
import random
import secrets
import threading

import pytest
import trio

from daemon.client.client import (
    Client,
    NoLeader,
    OperationFailed,
    OutcomeUnknown,
    PaxosdError,
    SyncClient,
    Unavailable,
    parse_endpoint,
)
from daemon.core.kv import KVStore
from daemon.core.messages import OP_CAS, OP_DELETE, OP_PUT
from fastpath import FrameReader, dumps, encode_frame, loads
from tests.ports import free_ports

OPS = {"put": OP_PUT, "delete": OP_DELETE, "cas": OP_CAS}


def closed_port() -> int:
    """A loopback port nobody listens on."""
    return free_ports(1)[0]


class FakeNode:
    """A one-node stand-in for a paxosd server, with switches for the failure cases.

    ``leader``: None = this node leads; a "host:port" string or "unknown" = it does not.
    """

    def __init__(self, node_id: int = 1) -> None:
        self.id = node_id
        self.kv = KVStore()
        self.leader: str | None = None
        self.busy = 0  # answer this many writes with "busy"
        self.drop_after_apply = 0  # apply this many writes, then close without replying
        self.evict_after_apply = 0  # after this many writes, a write of another client follows
        self.silent = False  # never answer writes
        self.reply_delay = 0.0  # answer each request after up to this many seconds
        self.garbage = False  # answer with a frame that is not a reply array
        self.bad_leader = False  # answer "ok" with a leader that is not an address (an int)
        self.requests: list[list] = []  # every request received, in order
        self.frames: list[int] = []  # requests per client frame received
        self.in_flight: dict[int, int] = {}  # client_id -> writes received, not yet answered
        self.overlap = False  # a session had two writes in flight at once
        self.address = ""
        self.connections = 0

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        host, port = listeners[0].socket.getsockname()[:2]
        self.address = f"{host}:{port}"
        task_status.started(self.address)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        reader = FrameReader()
        send_lock = trio.Lock()

        async def send(replies: list) -> None:
            async with send_lock:
                await stream.send_all(encode_frame(dumps(replies)))

        try:
            async with trio.open_nursery() as nursery:
                async for data in stream:
                    for payload in reader.feed(data):
                        batch = loads(payload)
                        self.frames.append(len(batch))
                        replies = []
                        for req in batch:
                            self.requests.append(req)
                            reply = self._answer(req)
                            if reply == "drop":
                                await stream.aclose()
                                return
                            if reply is None:
                                continue
                            if self.reply_delay:
                                nursery.start_soon(self._later, send, reply, req)
                            else:
                                replies.append(reply)
                        if self.garbage:
                            await send({"not": "a list"})
                        elif replies:
                            random.shuffle(replies)  # replies may come in any order
                            await send(replies)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _later(self, send, reply, req) -> None:
        await trio.sleep(random.uniform(0, self.reply_delay))
        if req[1] in OPS:
            self.in_flight[req[2]] -= 1
        await send([reply])

    def _answer(self, req: list):
        req_id, op, client_id, seq, key, arg1, arg2 = req
        if op == "status":
            return [req_id, "ok", {"id": self.id, "role": "leader" if self.leader is None
                                   else "follower", "leader": self.leader, "ballot": (3 << 16) | 1,
                                   "commit_index": 7, "applied_index": 7, "pending": 0,
                                   "in_flight": 0, "peers": {}, "cluster": "fake"}, None]
        if self.leader is not None:
            hint = None if self.leader == "unknown" else self.leader
            return [req_id, "not_leader", None, hint]
        if op == "get":
            return [req_id, "ok", self.kv.get(key), 7 if self.bad_leader else None]
        if op not in OPS:
            return [req_id, "error", f"unknown op {op!r}", None]
        if self.busy:
            self.busy -= 1
            return [req_id, "busy", None, None]
        if self.silent:
            return None
        status, result, _ = self.kv.apply((client_id, seq, OPS[op], key, arg1, arg2))
        if self.evict_after_apply:  # another client's write pushes this session out
            self.evict_after_apply -= 1
            self.kv.apply((client_id + 1, 1, OPS["put"], b"other", b"x", None))
        if self.drop_after_apply:
            self.drop_after_apply -= 1
            return "drop"
        if self.reply_delay:
            self.in_flight[client_id] = self.in_flight.get(client_id, 0) + 1
            if self.in_flight[client_id] > 1:
                self.overlap = True
        return [req_id, status, result, None]

    def writes(self) -> list[tuple[int, int]]:
        """The (client_id, seq) of every write request received, retries included."""
        return [(r[2], r[3]) for r in self.requests if r[1] in OPS]


async def start(nursery: trio.Nursery, count: int = 1) -> list[FakeNode]:
    nodes = [FakeNode(i + 1) for i in range(count)]
    for node in nodes:
        await nursery.start(node.serve)
    return nodes


# ---------------------------------------------------------------------------------------------
# Against the fake node.


async def test_put_get_cas_delete_round_trip_with_str_and_bytes():
    async with trio.open_nursery() as nursery:
        (node,) = await start(nursery)
        async with Client.connect([node.address], timeout=2) as client:
            assert await client.get("k") is None
            assert await client.put("k", "v1") is None
            assert await client.get(b"k") == b"v1"
            assert await client.cas("k", "wrong", "v2") is False
            assert await client.cas("k", b"v1", b"v2") is True
            assert await client.cas("absent", None, "x") is True
            assert await client.cas("absent", None, "y") is False
            assert await client.delete("k") is True
            assert await client.delete("k") is False
            assert await client.get("k") is None
            assert await client.get("absent") == b"x"
        nursery.cancel_scope.cancel()


async def test_awaited_connect_without_async_with_and_aclose():
    async with trio.open_nursery() as nursery:
        (node,) = await start(nursery)
        client = await Client.connect([node.address], timeout=2)
        await client.put("a", "b")
        assert await client.get("a") == b"b"
        await client.aclose()
        with pytest.raises(PaxosdError, match="closed"):
            await client.get("a")
        nursery.cancel_scope.cancel()


async def test_closing_the_client_under_a_sent_write_says_outcome_unknown():
    async with trio.open_nursery() as nursery:
        (node,) = await start(nursery)
        node.silent = True
        client = await Client.connect([node.address], timeout=2)
        outcome = []

        async def write() -> None:
            try:
                await client.put("k", "v")
            except PaxosdError as exc:
                outcome.append(exc)

        async with trio.open_nursery() as writers:
            writers.start_soon(write)
            with trio.fail_after(2):
                while not node.requests:  # the write reached the node
                    await trio.sleep(0.01)
            await client.aclose()
        assert isinstance(outcome[0], OutcomeUnknown), outcome
        nursery.cancel_scope.cancel()


async def test_follows_the_redirect_to_the_leader():
    async with trio.open_nursery() as nursery:
        follower, leader = await start(nursery, 2)
        follower.leader = leader.address
        async with Client.connect([follower.address], timeout=2) as client:
            await client.put("k", "v")
            assert client.leader == leader.address
            assert await client.get("k") == b"v"
        assert leader.kv.get(b"k") == b"v"
        assert follower.kv.get(b"k") is None
        assert len(follower.writes()) == 1  # asked once, then straight to the leader
        nursery.cancel_scope.cancel()


async def test_tries_the_next_endpoint_when_one_is_down_or_knows_no_leader():
    async with trio.open_nursery() as nursery:
        lost, leader = await start(nursery, 2)
        lost.leader = "unknown"
        dead = f"127.0.0.1:{closed_port()}"
        async with Client.connect([dead, lost.address, leader.address], timeout=2) as client:
            await client.put("k", "v")
            assert client.leader == leader.address
        nursery.cancel_scope.cancel()


async def test_a_write_retried_after_busy_keeps_its_session_and_applies_once():
    async with trio.open_nursery() as nursery:
        (node,) = await start(nursery)
        node.busy = 3
        async with Client.connect([node.address], timeout=2) as client:
            assert await client.cas("k", None, "v") is True
        writes = node.writes()
        assert len(writes) == 4 and len(set(writes)) == 1
        assert node.kv.applied_commands == 1
        nursery.cancel_scope.cancel()


async def test_a_write_whose_reply_was_lost_is_retried_and_answered_from_the_session():
    async with trio.open_nursery() as nursery:
        (node,) = await start(nursery)
        node.drop_after_apply = 1  # applied, then the connection dies before the reply
        async with Client.connect([node.address], timeout=2) as client:
            # A cas applied twice would answer False the second time; the remembered answer
            # of the first application is True.
            assert await client.cas("k", None, "v") is True
            assert await client.delete("k") is True
        assert node.kv.applied_commands == 2
        assert node.connections == 2  # reconnected
        first, retry, second = node.writes()
        assert first == retry and second == (first[0], first[1] + 1)
        nursery.cancel_scope.cancel()


async def start_evicting(nursery: trio.Nursery) -> FakeNode:
    """A fake node keeping one session, where another client's write follows the next write."""
    (node,) = await start(nursery)
    node.kv = KVStore(max_sessions=1)
    node.evict_after_apply = 1
    return node


async def test_a_write_on_an_evicted_session_starts_it_again_and_applies_once():
    async with trio.open_nursery() as nursery:
        node = await start_evicting(nursery)
        async with Client.connect([node.address], timeout=2) as client:
            await client.put("k", "1")  # applied; then another client's write evicts us
            await client.put("k", "2")  # refused as expired, then sent again above the horizon
        (cid, s1), (_, s2), (_, s3) = node.writes()
        # Applied: ours (1), the other client's (2, evicting ours at 2); then seq 3 = 2 + 1.
        assert (s1, s2, s3) == (1, 2, 3)
        assert node.kv.get(b"k") == b"2" and node.kv.applied_commands == 3
        nursery.cancel_scope.cancel()


async def test_a_retried_write_whose_session_expired_meanwhile_is_outcome_unknown():
    async with trio.open_nursery() as nursery:
        node = await start_evicting(nursery)
        node.drop_after_apply = 1  # applied, evicted, and the reply never comes
        async with Client.connect([node.address], timeout=2) as client:
            with pytest.raises(OutcomeUnknown, match="expired"):
                await client.put("k", "v")
        assert node.kv.applied_commands == 2  # the write and the other client's: not again
        nursery.cancel_scope.cancel()


async def test_low_level_submit_with_the_same_session_twice_gets_the_remembered_result():
    async with trio.open_nursery() as nursery:
        (node,) = await start(nursery)
        async with Client.connect([node.address], timeout=2) as client:
            kw = {"client_id": 12345, "seq": 1}
            assert await client.submit("cas", "k", None, "v1", **kw) is True
            assert await client.submit("cas", "k", None, "v1", **kw) is True  # remembered
            assert await client.get("k") == b"v1"
            with pytest.raises(OperationFailed, match="stale"):
                await client.submit("put", "k", "old", client_id=12345, seq=0)
        assert node.kv.applied_commands == 1
        nursery.cancel_scope.cancel()


async def test_concurrent_writes_are_pipelined_coalesced_and_one_per_session():
    async with trio.open_nursery() as nursery:
        (node,) = await start(nursery)
        node.reply_delay = 0.02  # replies come late and out of order
        async with Client.connect([node.address], timeout=5) as client:
            results = {}

            async def write(i: int) -> None:
                await client.put(f"k{i}", f"v{i}")
                results[i] = await client.get(f"k{i}")

            async with trio.open_nursery() as writers:
                for i in range(100):
                    writers.start_soon(write, i)
        assert results == {i: f"v{i}".encode() for i in range(100)}
        assert node.kv.applied_commands == 100
        assert not node.overlap, "a session had two writes in flight"
        assert node.connections == 1
        # The 100 puts were started together: they left in a few frames, not one each.
        assert max(node.frames) >= 50, f"nothing coalesced: {node.frames}"
        sessions = {cid for cid, _ in node.writes()}
        assert 1 < len(sessions) <= 100
        nursery.cancel_scope.cancel()


async def test_sessions_are_reused_with_increasing_seq():
    async with trio.open_nursery() as nursery:
        (node,) = await start(nursery)
        async with Client.connect([node.address], timeout=2) as client:
            for i in range(5):
                await client.put("k", str(i))
        writes = node.writes()
        assert {cid for cid, _ in writes} == {writes[0][0]}
        assert [seq for _, seq in writes] == [1, 2, 3, 4, 5]
        assert 0 < writes[0][0] < 2**63
        nursery.cancel_scope.cancel()


async def test_a_write_without_an_answer_is_outcome_unknown_not_failed():
    async with trio.open_nursery() as nursery:
        (node,) = await start(nursery)
        node.silent = True
        async with Client.connect([node.address], timeout=2, attempt_timeout=0.1) as client:
            with trio.fail_after(2):
                with pytest.raises(OutcomeUnknown, match="may or may not have been applied"):
                    await client.put("k", "v", timeout=0.4)
        nursery.cancel_scope.cancel()


async def test_a_paused_node_is_given_up_after_attempt_timeout_and_another_one_asked():
    async with trio.open_nursery() as nursery:
        paused, leader = await start(nursery, 2)
        paused.silent = True  # takes writes, answers nothing: a SIGSTOPped leader
        async with Client.connect([paused.address, leader.address], timeout=3,
                                  attempt_timeout=0.2) as client:
            with trio.fail_after(2):
                assert await client.cas("k", None, "v") is True
            assert client.leader == leader.address
        # Both attempts carried the same session, so in a real cluster the write applies at
        # most once, whichever copy is chosen.
        assert paused.writes() == leader.writes()
        nursery.cancel_scope.cancel()


async def test_a_write_that_reached_only_followers_is_still_outcome_unknown():
    # A not_leader answer may come from a leader that stepped down with the write already in
    # flight, so the client cannot tell the write was dropped.
    async with trio.open_nursery() as nursery:
        (node,) = await start(nursery)
        node.leader = "unknown"
        async with Client.connect([node.address], timeout=2) as client:
            with pytest.raises(OutcomeUnknown):
                await client.put("k", "v", timeout=0.3)
            with pytest.raises(NoLeader, match="no leader"):
                await client.get("k", timeout=0.3)
        nursery.cancel_scope.cancel()


async def test_no_reachable_endpoint_is_unavailable_and_names_the_endpoints():
    dead = [f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"]
    with trio.fail_after(3):
        with pytest.raises(Unavailable) as info:
            await Client.connect(dead, timeout=0.3)
    assert dead[0] in str(info.value) and "cannot connect" in str(info.value)
    async with Client(dead, timeout=0.3) as client:
        with pytest.raises(Unavailable) as info:
            await client.put("k", "v")  # never sent: not outcome unknown
        assert not isinstance(info.value, (OutcomeUnknown, NoLeader))


async def test_an_error_reply_is_operation_failed():
    async with trio.open_nursery() as nursery:
        (node,) = await start(nursery)
        async with Client.connect([node.address], timeout=2) as client:
            with pytest.raises(OperationFailed, match="unknown op"):
                await client.submit("frobnicate", "k", client_id=1, seq=1)
        nursery.cancel_scope.cancel()


async def test_a_garbled_reply_drops_the_connection_and_the_call_ends_by_its_deadline():
    async with trio.open_nursery() as nursery:
        (node,) = await start(nursery)
        node.garbage = True
        async with Client.connect([node.address], timeout=2) as client:
            with trio.fail_after(2):
                with pytest.raises(Unavailable, match="protocol error"):
                    await client.get("k", timeout=0.3)
        assert node.connections >= 2
        nursery.cancel_scope.cancel()


async def test_a_reply_the_wire_codec_refuses_is_a_protocol_error_naming_the_field():
    # The client decodes replies with daemon.codec.wire.decode_reply: an "ok" whose leader is
    # not an address is refused there, not taken as the answer.
    async with trio.open_nursery() as nursery:
        (node,) = await start(nursery)
        node.bad_leader = True
        async with Client.connect([node.address], timeout=2) as client:
            with trio.fail_after(2):
                with pytest.raises(Unavailable, match=r"protocol error .*reply\.leader"):
                    await client.get("k", timeout=0.3)
        nursery.cancel_scope.cancel()


async def test_cluster_status_marks_unreachable_endpoints_with_the_error():
    async with trio.open_nursery() as nursery:
        (node,) = await start(nursery)
        dead = f"127.0.0.1:{closed_port()}"
        async with Client([node.address, dead], timeout=1) as client:
            with trio.fail_after(3):
                one = await client.status(node.address)
                statuses = await client.cluster_status()
        assert one["id"] == 1 and one["endpoint"] == node.address
        assert statuses[0]["role"] == "leader" and statuses[0]["endpoint"] == node.address
        assert statuses[1]["endpoint"] == dead and "cannot connect" in statuses[1]["error"]
        nursery.cancel_scope.cancel()


async def test_the_body_exception_of_async_with_is_not_wrapped():
    async with trio.open_nursery() as nursery:
        (node,) = await start(nursery)
        with pytest.raises(KeyError):
            async with Client.connect([node.address]):
                raise KeyError("mine")
        nursery.cancel_scope.cancel()


def test_endpoints_parse_and_bad_ones_are_refused():
    assert parse_endpoint("127.0.0.1:7001") == ("127.0.0.1", 7001)
    assert parse_endpoint("[::1]:7001") == ("::1", 7001)
    assert parse_endpoint(("h", 1)) == ("h", 1)
    for bad in ["nohost", ":7001", "h:0", "h:99999", "h:x", ("h",), 7]:
        with pytest.raises(ValueError):
            parse_endpoint(bad)
    with pytest.raises(ValueError):
        Client([])


def test_sync_client_against_a_fake_node_in_another_thread():
    ready = threading.Event()
    box: dict = {}

    async def server() -> None:
        async with trio.open_nursery() as nursery:
            (node,) = await start(nursery)
            box["node"], box["token"], box["cancel"] = (
                node, trio.lowlevel.current_trio_token(), nursery.cancel_scope)
            ready.set()

    thread = threading.Thread(target=trio.run, args=(server,), daemon=True)
    thread.start()
    try:
        assert ready.wait(5)
        with SyncClient([box["node"].address], timeout=2) as client:
            client.put("k", "v")
            assert client.get("k") == b"v"
            assert client.cas("k", "v", "w") is True
            assert client.delete("k") is True
            assert client.status()["role"] == "leader"
            # Several threads at once share the one loop.
            errors = []

            def writer(i: int) -> None:
                try:
                    client.put(f"t{i}", str(i))
                except Exception as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(5)
            assert not errors
            assert client.get("t7") == b"7"
        with pytest.raises(PaxosdError, match="closed"):
            client.get("k")
        with pytest.raises(Unavailable):
            SyncClient([f"127.0.0.1:{closed_port()}"], timeout=0.2)
    finally:
        if "token" in box:
            trio.from_thread.run_sync(box["cancel"].cancel, trio_token=box["token"])
        thread.join(5)


# ---------------------------------------------------------------------------------------------
# Against an in-process three-node cluster of daemon.runtime.server.serve.


class InProcessCluster:
    """Three ``daemon.runtime.server.serve`` tasks on free loopback ports, in one nursery."""

    def __init__(self, tmp_path, nursery: trio.Nursery) -> None:
        from daemon.runtime.config import parse_config

        ports = free_ports(6)
        lines = ["cluster: clienttest", "members:"]
        for i in range(3):
            lines.append(f"  {i + 1}: {{peer: 127.0.0.1:{ports[2 * i]}, "
                         f"client: 127.0.0.1:{ports[2 * i + 1]}}}")
        lines += [f"data_dir: {tmp_path / 'data'}", "storage: {fsync: false}"]
        self.config = parse_config("\n".join(lines) + "\n", tmp_path / "cluster.yaml")
        self.nursery = nursery
        self.servers: dict[int, object] = {}

    @property
    def endpoints(self) -> list[str]:
        return [str(m.client) for m in self.config.members]

    def address(self, node_id: int) -> str:
        return str(self.config.member(node_id).client)

    def node_at(self, address: str) -> int:
        return next(m.id for m in self.config.members if str(m.client) == address)

    async def start(self) -> None:
        from daemon.runtime.server import serve

        for m in self.config.members:
            self.servers[m.id] = await self.nursery.start(
                functools.partial(serve, self.config.with_node_id(m.id)))

    def stop(self, node_id: int) -> None:
        self.servers.pop(node_id).stop()


@pytest.fixture
async def cluster(tmp_path, nursery):
    c = InProcessCluster(tmp_path, nursery)
    with trio.fail_after(10):
        await c.start()
    yield c
    for node_id in list(c.servers):
        c.stop(node_id)


async def test_cluster_put_get_cas_delete(cluster):
    async with Client.connect(cluster.endpoints, timeout=10) as client:
        with trio.fail_after(15):
            await client.put("k", "v1")
            assert await client.get("k") == b"v1"
            assert await client.cas("k", "nope", "v2") is False
            assert await client.cas("k", "v1", "v2") is True
            assert await client.cas("fresh", None, "x") is True
            assert await client.get("k") == b"v2"
            assert await client.delete("k") is True
            assert await client.delete("k") is False
            assert await client.get("k") is None
            assert client.leader in cluster.endpoints


async def test_cluster_a_client_of_one_follower_is_redirected_to_the_leader(cluster):
    async with Client.connect(cluster.endpoints, timeout=10) as client:
        with trio.fail_after(15):
            await client.put("warm", "up")
        leader = client.leader
    follower = next(a for a in cluster.endpoints if a != leader)
    async with Client.connect([follower], timeout=10) as client:
        with trio.fail_after(15):
            await client.put("k", "v")
            assert client.leader == leader
            assert await client.get("k") == b"v"


async def test_cluster_100_concurrent_writes_all_succeed(cluster):
    async with Client.connect(cluster.endpoints, timeout=10) as client:
        with trio.fail_after(30):
            async with trio.open_nursery() as writers:
                for i in range(100):
                    writers.start_soon(client.put, f"k{i}", f"v{i}")
            for i in range(100):
                assert await client.get(f"k{i}") == f"v{i}".encode()
        assert 1 < len(client._sessions) <= 100


async def test_cluster_a_retried_write_applies_once_and_gets_the_remembered_result(cluster):
    async with Client.connect(cluster.endpoints, timeout=10) as client:
        with trio.fail_after(15):
            session = {"client_id": secrets.randbelow(2**63 - 1) + 1}
            # Applied twice, the second cas would find the key present and answer False.
            assert await client.submit("cas", "once", None, "v", seq=1, **session) is True
            assert await client.submit("cas", "once", None, "v", seq=1, **session) is True
            # Applied twice, the second delete would answer False.
            assert await client.submit("delete", "once", seq=2, **session) is True
            assert await client.submit("delete", "once", seq=2, **session) is True
            assert await client.get("once") is None
            with pytest.raises(OperationFailed, match="stale"):
                await client.submit("put", "once", "late", seq=1, **session)
            assert await client.get("once") is None


async def test_cluster_writes_continue_after_the_leader_stops(cluster):
    async with Client.connect(cluster.endpoints, timeout=10) as client:
        with trio.fail_after(20):
            await client.put("before", "1")
            old_leader = client.leader
            cluster.stop(cluster.node_at(old_leader))
            await client.put("after", "2")
            assert client.leader != old_leader
            assert await client.get("before") == b"1"
            assert await client.get("after") == b"2"


async def test_cluster_without_quorum_a_write_is_outcome_unknown(cluster):
    async with Client.connect(cluster.endpoints, timeout=10) as client:
        with trio.fail_after(15):
            await client.put("k", "v")
        leader = cluster.node_at(client.leader)
        for node_id in [n for n in (1, 2, 3) if n != leader]:
            cluster.stop(node_id)
        with trio.fail_after(5):
            with pytest.raises(OutcomeUnknown, match="may or may not have been applied"):
                await client.put("k", "w", timeout=0.5)
            with pytest.raises(Unavailable):
                await client.get("k", timeout=0.5)
            statuses = await client.cluster_status(timeout=0.5)
        assert [("error" in s) for s in statuses] == [n != leader for n in (1, 2, 3)]


async def test_cluster_status_has_one_leader_and_every_field(cluster):
    async with Client.connect(cluster.endpoints, timeout=10) as client:
        with trio.fail_after(15):
            await client.put("k", "v")
            statuses = await client.cluster_status()
    assert [s["endpoint"] for s in statuses] == cluster.endpoints
    assert [s["id"] for s in statuses] == [1, 2, 3]
    assert [s["role"] for s in statuses].count("leader") == 1
    for s in statuses:
        for field in ("role", "leader", "ballot", "commit_index", "applied_index", "pending",
                      "in_flight", "peers", "cluster"):
            assert field in s, (field, s)
        assert s["cluster"] == "clienttest"
