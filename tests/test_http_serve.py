"""Serving the HTTP API in the node's process: a taken port is named, and the metrics address
answers probes but is no second door to the API (in-process nodes); the client library's
errors and the app's own bugs as problem details (the app alone)."""

from __future__ import annotations

import socket
from functools import partial
from types import SimpleNamespace

import httpx
import pytest
import trio

from daemon.client.client import NoLeader, OperationFailed, OutcomeUnknown, Unavailable
from daemon.client.leases import LeaseNotFound
from daemon.gateway.app import build_app
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
                assert (await web.get(metrics + "/readyz")).status_code == 200
                assert "paxosd_server_is_leader 1" in (await web.get(metrics + "/metrics")).text
                refused = await web.put(metrics + "/v1/kv/k", content=b"v")
                assert refused.status_code == 404 and refused.json()["code"] == "not-found"
                assert (await web.put(api + "/v1/kv/k", content=b"v")).status_code == 200
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# The error map, on the app alone (httpx's ASGI transport; no cluster).


class FailingClient:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def members(self, **kwargs):
        raise self.error


async def get_failing_with(error: BaseException, path: str) -> httpx.Response:
    """GET ``path`` from an app whose Client raises ``error`` and whose status() fails."""
    gateway = SimpleNamespace(client=FailingClient(error), metrics_sockets=set(), timeout=1.0,
                              status=lambda: 1 / 0)
    transport = httpx.ASGITransport(app=build_app(gateway), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as web:
        return await web.get(path)


@pytest.mark.parametrize("error, status, code", [
    (NoLeader("no leader answered"), 503, "no-leader"),
    (Unavailable("no endpoint answered"), 503, "unavailable"),
    (OutcomeUnknown("outcome unknown"), 504, "outcome-unknown"),
    (LeaseNotFound(7), 404, "lease-not-found"),
    (OperationFailed("refused"), 400, "rejected"),
])
async def test_the_client_librarys_errors_map_to_statuses_and_stable_codes(error, status, code):
    reply = await get_failing_with(error, "/v1/members")
    assert reply.status_code == status
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.json()["code"] == code and reply.json()["detail"] == str(error)
    assert ("retry-after" in reply.headers) == (status == 503)


async def test_a_bug_below_a_route_is_a_500_problem_and_is_logged(caplog):
    reply = await get_failing_with(NoLeader("unused"), "/v1/status")  # status() divides by 0
    assert reply.status_code == 500 and reply.json()["code"] == "internal-error"
    assert any("ZeroDivisionError" in r.getMessage() for r in caplog.records)
