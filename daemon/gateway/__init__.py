"""The HTTP/JSON API: paxosd for any language and any tool (curl, a Go service, a Kubernetes
probe), beside the CBOR protocol that stays the fast path.

The layer after daemon.client and before daemon.tools. It runs inside each daemon process, in
the same trio run as the node's Server (``paxosd serve`` composes them: the runtime knows
nothing of HTTP), and serves a small starlette ASGI app with hypercorn's trio worker on the
node's ``http`` address (and /metrics, /livez, /readyz alone on its ``metrics`` address).

It reaches the cluster the way any client does: through a daemon.client Client connected to
every member's client port, its own node's first. So a request to any node works:

- A follower forwards a write to the leader (the Client follows ``not_leader``), rather than
  answering 307 with the leader's URL: any HTTP client works (many do not follow a redirect of
  a PUT with its body, or not to another host), a load balancer in front of every node needs
  no knowledge of who leads, and the answer comes in one round trip for the caller.
- Retries keep their session, so a write is applied at most once; with an ``Idempotency-Key``
  header a retried request (to this node or another) is answered from the session its first
  copy made (daemon.gateway.kv).
- Reads are linearizable: the Client reads through the leader.

Modules, one concern each: ``gateway`` (the Gateway object the routes reach), ``app`` (the
starlette app: the routes of every module below), ``problems`` (RFC 9457 errors and the map
from the client library's exceptions to status codes), ``inputs`` (keys in the path, query
values, bodies under the limit), ``encoding`` (bytes in JSON), ``serve`` (hypercorn: binding,
TLS, limits, graceful stop), and the routes: ``status``, ``kv``, ``txn``, ``probes`` (/livez,
/readyz, /metrics), ``openapi``, ``watch``, ``leases``.
"""
