"""Serving the API: hypercorn's trio worker, in the node's own trio run.

``serve_gateway(server)`` is a service of daemon.runtime.server (``paxosd serve`` passes it):
once the node listens it binds the node's ``http`` address (TLS with the ``client_tls``
files, like the client port: a certificate chaining to ``client_tls.ca`` is required when that
is set; the gateway's own Client dials the client ports with that certificate: see
``_client``) and its ``metrics`` address (plain HTTP, as scrapers expect; only /metrics, /livez
and /readyz answer there), and serves daemon.gateway.app on both from one hypercorn server.
With neither address configured it serves nothing.

Limits: a request's head is at most hypercorn's 16 KiB; its body at most
``http.max_body_bytes`` (413 before it is read: daemon.gateway.inputs); an idle keep-alive
connection is closed after KEEP_ALIVE_S; a request's call into the cluster has the deadline
``http.timeout_ms``. Stopping: when the node is told to stop (SIGTERM: ``server.stopping``)
hypercorn stops accepting, lets the requests in progress finish for up to GRACE_S, and
returns; then the node stops.
"""

from __future__ import annotations

import logging
import socket
import ssl

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from daemon.client.client import Client
from daemon.gateway.app import build_app
from daemon.gateway.gateway import Gateway
from daemon.runtime.security import client_context, server_context

__all__ = ["GRACE_S", "KEEP_ALIVE_S", "serve_gateway"]

GRACE_S = 2.0
KEEP_ALIVE_S = 30.0
BACKLOG = 128


class _Config(HypercornConfig):
    """hypercorn's settings, with the TLS context of daemon.runtime.security: the same checks
    and errors as the client port's, and client certificates checked against client_tls.ca
    alone (hypercorn's own context would trust the system's CAs for them too)."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        self._context = context

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self._context


class _Node(logging.Filter):
    """Puts the node id on hypercorn's records (it takes a Logger, not an adapter)."""

    def __init__(self, node_id: int) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node_id
        return True


def _logger(node_id: int) -> logging.Logger:
    """``paxosd.http.<id>``, whose lines name the node as the daemon's others do."""
    log = logging.getLogger(f"paxosd.http.{node_id}")
    if not log.filters:
        log.addFilter(_Node(node_id))
    return log


def _bind(address, what: str) -> socket.socket:
    """A listening-ready TCP socket bound to ``address`` (a config.Address); OSError naming
    what could not listen where."""
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise OSError(f"cannot listen for {what} on {address}: {exc.strerror or exc} (several "
                      f"members on one host need members.N.{what} addresses of their own)"
                      ) from None
    return sock


def hypercorn_config(gateway: Gateway, log) -> _Config:
    """hypercorn's settings for this node: its binds (sockets bound here, handed over as
    ``fd://``), TLS, limits and logging."""
    config = gateway.config
    tls = config.client_tls
    context = None
    if tls is not None and config.http_address() is not None:
        context = server_context(config, tls, "client_tls")
        context.set_alpn_protocols(["h2", "http/1.1"])
    hc = _Config(context)
    if context is not None:
        hc.certfile, hc.keyfile = str(tls.cert), str(tls.key)
        hc.ca_certs = None if tls.ca is None else str(tls.ca)
        hc.verify_mode = ssl.CERT_REQUIRED if tls.ca is not None else ssl.CERT_NONE
    secure, plain = [], []
    if config.http_address() is not None:
        sock = _bind(config.http_address(), "http")
        (secure if context is not None else plain).append(sock)
    if config.metrics_address() is not None:
        sock = _bind(config.metrics_address(), "metrics")
        gateway.metrics_sockets.add(sock.getsockname()[:2])
        plain.append(sock)
    # hypercorn takes the secure binds from ``bind`` and the plain ones from ``insecure_bind``
    # with TLS, every bind as plain without it.
    fds = lambda socks: [f"fd://{s.detach()}" for s in socks]  # noqa: E731 - hypercorn owns them
    if context is not None:
        hc.bind, hc.insecure_bind = fds(secure), fds(plain)
    else:
        hc.bind, hc.insecure_bind = fds(plain), []
    hc.backlog = BACKLOG
    hc.keep_alive_timeout = KEEP_ALIVE_S
    hc.graceful_timeout = GRACE_S
    hc.include_server_header = False
    hc.errorlog = log
    hc.accesslog = None
    return hc


def _client(server) -> Client:
    """The Client into the cluster: every member's client port, this node's first. With
    ``client_tls`` it dials them through TLS, presenting this node's own client_tls
    certificate (so with client_tls.ca set, that certificate must chain to it too), and checks
    theirs against client_tls.ca and the peers' tls.ca (the system's CAs when neither is set)."""
    config = server.config
    own = str(config.member(server.id).client)
    endpoints = [own] + [str(m.client) for m in config.members if m.id != server.id]
    tls = config.client_tls
    context = None
    if tls is not None:
        context = client_context(tls.ca or (config.tls.ca if config.tls else None), tls.cert,
                                 tls.key)
        if tls.ca is not None and config.tls is not None:
            context.load_verify_locations(cafile=str(config.tls.ca))
    return Client(endpoints, timeout=config.http.timeout_ms / 1000.0,
                  max_frame=config.limits.max_frame_bytes, ssl_context=context)


async def serve_gateway(server, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the HTTP API (and /metrics) of ``server``'s node until it stops: see the module
    doc. ``task_status.started(urls)`` once bound."""
    config = server.config
    if config.http_address() is None and config.metrics_address() is None:
        task_status.started([])
        return
    log = _logger(server.id)
    async with _client(server) as client:
        gateway = Gateway(server, client)
        hc = hypercorn_config(gateway, log)
        app = build_app(gateway)
        await hypercorn_serve(app, hc, shutdown_trigger=server.stopping.wait, mode="asgi",
                              task_status=task_status)
