"""Serving the HTTP API in the node's process: a taken port is named, and the metrics address
answers probes but is no second door to the API (in-process nodes)."""

from __future__ import annotations

import socket
from functools import partial

import httpx
import pytest
import trio

from daemon.gateway.serve import serve_gateway
from daemon.runtime.config import load_config
from daemon.runtime.server import serve
from tests.ports import free_ports
from tests.test_server import TEST_TIMEOUT


def write_one_node(tmp_path, http_port: int, metrics_port: int):
    ports = free_ports(2)
    path = tmp_path / "one.yaml"
    path.write_text(f"cluster: one\nmembers:\n  1: {{peer: 127.0.0.1:{ports[0]}, client: "
                    f"127.0.0.1:{ports[1]}, http: 127.0.0.1:{http_port}, metrics: "
                    f"127.0.0.1:{metrics_port}}}\ndata_dir: {tmp_path / 'data'}\n"
                    f"storage: {{fsync: false}}\n")
    return load_config(path, node_id=1)


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in leaves(e)]
    return [exc]


async def test_a_taken_http_port_stops_the_node_naming_the_address(tmp_path):
    http_port, metrics_port = free_ports(2)
    config = write_one_node(tmp_path, http_port, metrics_port)
    with socket.socket() as taken, trio.fail_after(TEST_TIMEOUT):
        taken.bind(("127.0.0.1", http_port))
        taken.listen()
        with pytest.raises(BaseException) as info:
            await serve(config, new_cluster=True, services=[serve_gateway])
    messages = [str(e) for e in leaves(info.value)]
    assert any(f"cannot listen for http on 127.0.0.1:{http_port}" in m for m in messages), messages


async def test_the_metrics_address_serves_probes_and_metrics_only(tmp_path):
    http_port, metrics_port = free_ports(2)
    config = write_one_node(tmp_path, http_port, metrics_port)
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve, new_cluster=True, services=[serve_gateway]),
                                config)
            metrics = f"http://127.0.0.1:{metrics_port}"
            async with httpx.AsyncClient(timeout=10) as web:
                api = f"http://127.0.0.1:{http_port}"
                while (await web.get(api + "/v1/status")).json()["leader"] != 1:
                    await trio.sleep(0.05)
                assert (await web.get(metrics + "/livez")).status_code == 200
                assert (await web.get(metrics + "/readyz")).status_code in (200, 503)
                assert "paxosd_server_is_leader 1" in (await web.get(metrics + "/metrics")).text
                refused = await web.put(metrics + "/v1/kv/k", content=b"v")
                assert refused.status_code == 404 and refused.json()["code"] == "not-found"
                assert (await web.put(api + "/v1/kv/k", content=b"v")).status_code == 200
            nursery.cancel_scope.cancel()
