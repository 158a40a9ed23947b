"""The Gateway: what every route reaches.

``server``: the node's daemon.runtime.server Server, in the same trio run (its own view:
status, leadership, metrics; never written to from here); ``client``: the daemon.client Client
connected to every member's client port, its own node's first, through which every read and
write goes; ``timeout``: the deadline of one request's call into the cluster
(``http.timeout_ms``); ``max_body_bytes``: the request body limit.

Writes first ask the node's own view (``check_leader``): while it knows no leader (an election
is under way, or it is cut off from a majority) a write is refused at once with 503 and
nothing is sent. Sent anyway, a write that finds no leader before its deadline would end as
"outcome unknown" (504): the Client cannot tell a refusal from a copy that an old leader may
still get chosen.
"""

from __future__ import annotations

from daemon.gateway.problems import Problem

__all__ = ["Gateway"]


class Gateway:
    """One node's HTTP API state: its Server, its Client and its settings."""

    def __init__(self, server, client) -> None:
        self.server = server
        self.client = client
        self.config = server.config
        self.node_id = server.id
        self.timeout = self.config.http.timeout_ms / 1000.0
        self.max_body_bytes = self.config.http_max_body_bytes
        # The local (host, port) of every socket bound for the metrics address: requests that
        # come in there are answered on /metrics, /livez and /readyz only (daemon.gateway.app).
        self.metrics_sockets: set[tuple[str, int]] = set()

    def status(self) -> dict:
        """This node's own status map (as the client protocol's "status" gives it)."""
        return self.server.status()

    def leader_endpoint(self) -> str | None:
        """The client address of the leader this node knows of (its own view), or None."""
        node = self.server.node
        if node is None or node.leader_id is None:
            return None
        return self.server.client_address.get(node.leader_id)

    def check_leader(self) -> None:
        """503 ``no-leader`` (nothing sent) unless this node knows a leader."""
        if self.leader_endpoint() is None:
            raise Problem(503, "no-leader", f"node {self.node_id} knows no leader (an election "
                          f"is under way, or this node is cut off from a majority): nothing "
                          f"was applied; retry")
