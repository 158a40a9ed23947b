"""The HTTP API behind TLS: the ``client_tls`` files of the client port, a client certificate
required when ``client_tls.ca`` is set (in-process nodes, httpx over trio)."""

from __future__ import annotations

import ssl
from functools import partial

import httpx
import pytest
import trio
import trustme

from daemon.gateway.serve import serve_gateway
from daemon.runtime.config import load_config
from daemon.runtime.server import serve
from tests.ports import free_ports
from tests.test_server import TEST_TIMEOUT


def write_tls_config(tmp_path, ca: trustme.CA) -> tuple:
    """A 3-node file with client_tls (one CA for nodes and clients) and http addresses."""
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "node.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "node-key.pem"))
    ports = free_ports(9)
    lines = ["cluster: tls", "members:"]
    for i in (1, 2, 3):
        lines.append(f"  {i}: {{peer: 127.0.0.1:{ports[i - 1]}, client: 127.0.0.1:{ports[i + 2]}, "
                     f"http: 127.0.0.1:{ports[i + 5]}}}")
    lines += [f"data_dir: {tmp_path / 'data'}", "storage: {fsync: false}",
              "timing: {heartbeat_ms: 20, election_timeout_ms: [100, 200]}",
              f"client_tls: {{ca: {tmp_path / 'ca.pem'}, cert: {tmp_path / 'node.pem'}, "
              f"key: {tmp_path / 'node-key.pem'}}}"]
    path = tmp_path / "cluster.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path, [f"https://127.0.0.1:{ports[i + 5]}" for i in (1, 2, 3)]


async def test_the_api_is_served_over_tls_to_clients_with_a_certificate(tmp_path):
    ca = trustme.CA()
    path, urls = write_tls_config(tmp_path, ca)
    with_cert = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    ca.issue_cert("operator@example.org").configure_cert(with_cert)
    without_cert = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for i in (1, 2, 3):
                await nursery.start(partial(serve, services=[serve_gateway]),
                                    load_config(path, node_id=i))
            async with httpx.AsyncClient(verify=with_cert, timeout=10) as web:
                while (await web.get(urls[0] + "/readyz")).status_code != 200:
                    await trio.sleep(0.05)
                put = await web.put(urls[1] + "/v1/kv/secure", content=b"over TLS")
                assert put.status_code == 200
                got = await web.get(urls[2] + "/v1/kv/secure")
                assert got.content == b"over TLS"
            async with httpx.AsyncClient(verify=without_cert, timeout=10) as web:
                with pytest.raises(httpx.HTTPError):
                    await web.get(urls[0] + "/v1/status")
            async with httpx.AsyncClient(timeout=10) as web:  # plain HTTP to a TLS port
                with pytest.raises(httpx.HTTPError):
                    await web.get(urls[0].replace("https", "http") + "/v1/status")
            nursery.cancel_scope.cancel()
