"""Socket helpers shared by the node's ports (peers: daemon.runtime.transport; clients:
daemon.runtime.clients; the HTTP API and metrics bind their own in daemon.gateway.serve):
binding a listener with an error that names the port, naming the remote end of a connection
for the log, and telling why TLS refused a connection."""

from __future__ import annotations

import ssl

import trio

__all__ = ["NET_ERRORS", "listen", "remote_address", "tls_failure"]

# What a connection that broke or closed under us raises.
NET_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


async def listen(address, what: str, hint: str = "") -> list[trio.SocketListener]:
    """Listeners bound to ``address`` (a config.Address); OSError saying what could not listen
    where (``what``: "peers", "clients"), with ``hint`` after the reason."""
    try:
        return await trio.open_tcp_listeners(address.port, host=address.host)
    except OSError as exc:
        raise OSError(f"cannot listen for {what} on {address}: {exc.strerror or exc}"
                      f"{hint}") from None


def remote_address(stream) -> str:
    """"host:port" ("[host]:port" for IPv6) of the other end of ``stream`` (through TLS to
    the socket), or "?" when the socket cannot say."""
    stream = getattr(stream, "transport_stream", stream)
    try:
        host, port = stream.socket.getpeername()[:2]
    except (OSError, AttributeError, ValueError):
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tls_failure(exc: BaseException) -> str | None:
    """Why TLS refused the connection, if it did (trio wraps the ssl error in
    BrokenResourceError); None for other errors and for an end of stream mid-handshake."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return None
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {exc.verify_message}"
        if isinstance(exc, ssl.SSLError):
            return (exc.reason or str(exc)).lower().replace("_", " ")
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None
