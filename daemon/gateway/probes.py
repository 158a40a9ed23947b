"""What operators' tools poll: ``GET /livez``, ``GET /readyz`` (Kubernetes-style probes, load
balancers) and ``GET /metrics`` (Prometheus). Served on the ``http`` address and alone on the
``metrics`` address.

``/livez``: 200 while the process and its trio loop run (the answer comes from the loop
itself, the one the node's core loop shares: a wedged loop answers nothing).

``/readyz``: 200 only when this node can serve a linearizable read now, judged by its own
view rather than by the gateway's Client (which could reach a leader around a cut that
isolates this node):

1. the node itself knows a leader (a node cut off from its peers forgets it once its election
   timeout passes, and stands for election instead), and has decided its incarnation; and
2. a linearizable read sent to that leader's client port, and to no other (no redirects),
   succeeds within READY_DEADLINE_S: the leader confirms its ballot with a quorum for it, so
   a deposed or isolated leader fails this too.

Otherwise 503 (with ``Retry-After``) whose ``code`` says which step failed: ``no-leader``,
``deciding`` or ``read-failed``.
"""

from __future__ import annotations

from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from daemon.client.client import PaxosdError
from daemon.gateway.problems import Problem
from daemon.gateway.spec import json_response, operation, problems
from daemon.runtime.metrics import exposition

__all__ = ["OPENAPI", "READY_DEADLINE_S", "READY_KEY", "routes"]

OPENAPI = {
    "/livez": {"get": operation("Liveness: the process and its loop run", {
        "200": {"description": "ok", "content": {"text/plain": {}}}})},
    "/readyz": {"get": operation("Readiness: a linearizable read through this node's leader "
                                 "succeeds now", {"200": json_response("Ready"),
                                                  **problems(503)})},
    "/metrics": {"get": operation("Prometheus metrics", {
        "200": {"description": "The exposition", "content": {"text/plain": {}}}})},
}

READY_DEADLINE_S = 1.0
READY_KEY = b"\x00paxosd/readyz"  # read, never written: any key would do


def routes(gateway) -> list:
    async def livez(request) -> Response:
        """The loop answered."""
        return PlainTextResponse("ok\n")

    async def readyz(request) -> Response:
        """See the module doc for the rule."""
        status = gateway.status()
        leader = gateway.leader_endpoint()
        if leader is None:
            raise Problem(503, "no-leader", f"node {gateway.node_id} knows no leader (an "
                          f"election is under way, or this node is cut off from a majority)")
        if status.get("incarnation", 0) is None:
            raise Problem(503, "deciding", f"node {gateway.node_id} is still deciding its "
                          f"incarnation (an empty data directory)")
        try:
            await gateway.client.get(READY_KEY, timeout=READY_DEADLINE_S, endpoint=leader)
        except PaxosdError as exc:
            raise Problem(503, "read-failed", f"a linearizable read through the leader "
                          f"(node {status['leader']}, {leader}) did not succeed within "
                          f"{READY_DEADLINE_S:g} s: {exc}") from None
        return JSONResponse({"ready": True, "node": gateway.node_id, "leader": status["leader"]})

    async def metrics(request) -> Response:
        """The node's metrics in the exposition format the scraper asks for."""
        body, content_type = exposition(gateway.server.metrics.registry,
                                        request.headers.get("accept"))
        return Response(body, media_type=content_type)

    return [Route("/livez", livez, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"])]
