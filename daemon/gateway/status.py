"""``GET /v1/status`` (this node, as it sees itself) and ``GET /v1/members`` (the membership,
as the leader knows it).

Both name each member's HTTP API URL where the configuration file gives one (the log's
membership carries peer and client addresses only): ``leader_url`` in the status, ``url`` per
member, so a caller can find the leader's API or any other node's.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.routing import Route

from daemon.gateway.spec import json_response, operation, problems

__all__ = ["OPENAPI", "member_url", "routes"]

OPENAPI = {
    "/v1/status": {"get": operation("This node's status as it sees itself (role, leader, "
                                    "leader_url, ballot, commit index, revision, members...)",
                                    {"200": json_response("The status map")})},
    "/v1/members": {"get": operation("The membership as the leader knows it, with each "
                                     "member's API URL where the file gives one", {
        "200": json_response("members, effective, answered_by"), **problems(503)})},
}


def member_url(gateway, member_id: int | None) -> str | None:
    """The HTTP API base URL of member ``member_id`` by the configuration file, or None."""
    config = gateway.config
    if member_id is None or member_id not in config.member_ids:
        return None
    address = config.http_address(member_id)
    if address is None:
        return None
    scheme = "https" if config.client_tls is not None else "http"
    return f"{scheme}://{address}"


def routes(gateway) -> list:
    async def get_status(request) -> JSONResponse:
        """This node's own status (no call into the cluster: it answers while there is no
        leader too)."""
        status = gateway.status()
        status["leader_url"] = member_url(gateway, status.get("leader"))
        return JSONResponse(status)

    async def get_members(request) -> JSONResponse:
        """The membership as the leader (or, without one, any node) knows it."""
        found = await gateway.client.members(timeout=gateway.timeout)
        members = [{**m, "url": member_url(gateway, m["id"])} for m in found["members"]]
        return JSONResponse({"members": members, "effective": found["effective"],
                             "answered_by": found["endpoint"]})

    return [Route("/v1/status", get_status, methods=["GET"]),
            Route("/v1/members", get_members, methods=["GET"])]
