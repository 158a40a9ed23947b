"""daemon.runtime.clients on its own: the client port over real loopback sockets, with the
server's side (the core's inbox, the status map, the leader's address) played by the test.

It answers "status" at once, hands commands, reads, transfers and membership changes on with
the connection's tag, answers a bad request with an error naming the field, refuses a
connection beyond limits.max_clients (and says so in the log), and names its port when it
cannot listen.
"""

from __future__ import annotations

import logging
import socket
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from fastpath import FrameReader, dumps, encode_frame, loads

from daemon.codec import wire
from daemon.core.messages import ERROR, OK, OP_PUT
from daemon.runtime.clients import ClientPort
from daemon.runtime.config import parse_config
from daemon.runtime.log import node_logger
from tests.ports import free_ports

TEST_TIMEOUT = 10
LEADER = "127.0.0.1:9"


def config(max_clients: int):
    peer, client = free_ports(2)
    return parse_config(f"cluster: t\nnode_id: 1\nmembers:\n"
                        f"  1: {{peer: 127.0.0.1:{peer}, client: 127.0.0.1:{client}}}\n"
                        f"limits: {{max_clients: {max_clients}}}\n")


class Inbox:
    """What the port hands on, in order, as (kind, payload)."""

    def __init__(self) -> None:
        self.items: list = []
        self.arrived = trio.Event()

    def callbacks(self) -> dict:
        async def put(kind, *payload):
            self.items.append((kind, payload))
            self.arrived.set()

        return dict(submit=lambda work: put("submit", work),
                    transfer=lambda tag, target: put("transfer", tag, target),
                    change_members=lambda tag, change: put("member", tag, change),
                    status=lambda: {"role": "leader"}, leader=lambda: LEADER)

    async def next(self):
        while not self.items:
            self.arrived = trio.Event()
            await self.arrived.wait()
        return self.items.pop(0)


@asynccontextmanager
async def running_port(max_clients: int):
    """A client port of one member, listening; yields (port, inbox, connect)."""
    cfg = config(max_clients)
    inbox = Inbox()
    port = ClientPort(cfg, 1, node_logger(1), **inbox.callbacks())
    address = cfg.member(1).client
    async with trio.open_nursery() as nursery:
        await nursery.start(port.run)
        yield port, inbox, partial(trio.open_tcp_stream, address.host, address.port)
        nursery.cancel_scope.cancel()


async def exchange(stream, reader: FrameReader, requests: list) -> list:
    """Send ``requests`` in one frame; the next frame of replies."""
    await stream.send_all(encode_frame(dumps(requests)))
    return await replies(stream, reader)


async def replies(stream, reader: FrameReader) -> list:
    """The next frame of replies."""
    while True:
        data = await stream.receive_some(1 << 16)
        assert data, "the port closed the connection"
        payloads = reader.feed(data)
        if payloads:
            return [wire.decode_reply(obj) for obj in loads(payloads[0])]


async def test_the_port_answers_status_and_hands_the_rest_on_with_the_connections_tag():
    with trio.fail_after(TEST_TIMEOUT):
        async with running_port(max_clients=4) as (port, inbox, connect):
            stream = await connect()
            reader = FrameReader(1 << 20)
            [status] = await exchange(stream, reader, [[1, "status", 0, 0, b"", None, None]])
            assert (status.req_id, status.status, status.result, status.leader) == \
                (1, OK, {"role": "leader"}, LEADER)

            await stream.send_all(encode_frame(dumps([
                [2, "put", 7, 1, b"k", b"v", None], [3, "get", 0, 0, b"k", None, None],
                [4, "transfer", 3, 0, b"", None, None],
                [5, "member_add", 4, 0, b"127.0.0.1:1", b"127.0.0.1:2", None],
                [6, "member_remove", 4, 0, b"", None, None]])))
            kind, (transfer_tag, target) = await inbox.next()
            assert (kind, transfer_tag[1], target) == ("transfer", 4, 3)
            conn = transfer_tag[0]
            assert await inbox.next() == ("member", ((conn, 5), ("add", 4, "127.0.0.1:1",
                                                                 "127.0.0.1:2")))
            assert await inbox.next() == ("member", ((conn, 6), ("remove", 4)))
            assert await inbox.next() == ("submit", ([
                (False, (conn, 2), (7, 1, OP_PUT, b"k", b"v", None)),
                (True, (conn, 3), b"k")],))
            assert port.count == 1

            # The server answers through the tag; the port writes it out.
            conn.push([2, OK, None, LEADER])
            [reply] = await replies(stream, reader)
            assert (reply.req_id, reply.status) == (2, OK)

            [bad] = await exchange(stream, reader, [[8, "put", 1, 1, "text key", b"v", None]])
            assert bad.status == ERROR and "request.key" in bad.result
            assert bad.leader == LEADER
            await stream.aclose()


async def test_a_connection_beyond_max_clients_is_refused_and_logged(caplog):
    with trio.fail_after(TEST_TIMEOUT):
        async with running_port(max_clients=1) as (_, _, connect):
            first = await connect()
            reader = FrameReader(1 << 20)
            await exchange(first, reader, [[1, "status", 0, 0, b"", None, None]])
            with caplog.at_level(logging.WARNING, logger="paxosd.server"):
                second = await connect()
                assert await second.receive_some(1024) == b""  # closed without a word
            [line] = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
            assert "client connection from 127.0.0.1:" in line
            assert line.endswith("refused: already 1 clients (limits.max_clients)")
            [status] = await exchange(first, reader, [[2, "status", 0, 0, b"", None, None]])
            assert status.status == OK  # the first is still served
            for stream in (first, second):
                await stream.aclose()


async def test_a_port_that_cannot_listen_names_itself():
    cfg = config(max_clients=1)
    address = cfg.member(1).client
    with socket.socket() as squatter:
        squatter.bind((address.host, address.port))
        squatter.listen()
        port = ClientPort(cfg, 1, node_logger(1), **Inbox().callbacks())
        with pytest.raises(OSError, match=f"cannot listen for clients on {address}: "):
            await port.run()
