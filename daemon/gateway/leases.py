"""``/v1/lease``: grant, keep alive, look at and revoke leases (daemon.client.leases).

- ``POST /v1/lease`` with ``{"ttl": N}`` (whole seconds): 201 ``{"id", "ttl", "granted_ttl",
  "raised"}``, ``Location: /v1/lease/ID``. ``ttl`` is the TTL asked for, ``granted_ttl`` the
  one in force: the server raises a TTL shorter than a failover to its minimum (``raised``
  true then), as the client library reports in ``Lease.ttl``.
- ``POST /v1/lease/{id}/keepalive``: renews the lease for its TTL: ``{"id", "ttl"}``.
- ``GET /v1/lease/{id}``: ``{"id", "ttl" (granted), "left" (seconds left on the leader's
  clock, rounded up)}``, and with ``?keys=true`` ``"keys"``: the keys attached, in key order,
  each ``{"key", "key_encoding"}`` (daemon.gateway.encoding).
- ``DELETE /v1/lease/{id}``: revokes it, deleting its keys through the log: ``{"id",
  "revoked": true, "revision"}``.

A lease that is not there (never granted, revoked, expired) is 404 ``lease-not-found``; a bad
TTL or id is 400 naming it. Attach a key with ``PUT /v1/kv/{key}?lease=ID``
(daemon.gateway.kv). Grant and revoke take ``Idempotency-Key`` (daemon.gateway.idempotency).
"""

from __future__ import annotations

import json

from starlette.responses import JSONResponse
from starlette.routing import Route

from daemon.client import leases
from daemon.client.leases import LeaseNotFound
from daemon.core.leases import MAX_TTL, MIN_TTL
from daemon.gateway import idempotency
from daemon.gateway.encoding import bytes_fields
from daemon.gateway.inputs import query_flag, read_body
from daemon.gateway.problems import Problem
from daemon.gateway.spec import json_response, operation, param, problems

__all__ = ["OPENAPI", "PREFIX", "lease_id", "requested_ttl", "routes"]

PREFIX = "/v1/lease"


def requested_ttl(body: bytes) -> int:
    """The ``ttl`` of a grant's JSON body; 400 naming what was wrong."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, "bad-json", f"the body is not JSON: {exc}; expected "
                      f'{{"ttl": SECONDS}}') from None
    if not isinstance(doc, dict) or "ttl" not in doc:
        raise Problem(400, "bad-json", f'ttl: required (expected {{"ttl": SECONDS}}, got '
                      f"{body[:60]!r})")
    unknown = sorted(set(doc) - {"ttl"})
    if unknown:
        raise Problem(400, "bad-json", f"unknown field {unknown[0]!r} (allowed: ttl)")
    ttl = doc["ttl"]
    if type(ttl) is not int or not MIN_TTL <= ttl <= MAX_TTL:
        raise Problem(400, "bad-ttl", f"ttl: expected whole seconds from {MIN_TTL} to "
                      f"{MAX_TTL}, got {json.dumps(ttl)[:40]}")
    return ttl


def lease_id(request) -> int:
    """The lease id the path names; 400 ``bad-lease-id`` unless a positive integer."""
    text = request.path_params["id"]
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and int(text) > 0):
        raise Problem(400, "bad-lease-id", f"the lease id in the path: expected a positive "
                      f"integer, got {text[:40]!r}")
    return int(text)


def routes(gateway) -> list:
    async def grant(request) -> JSONResponse:
        session = idempotency.session(request)
        ttl = requested_ttl(await read_body(request, gateway.max_body_bytes))
        # under the request's session: a retried grant is answered from it
        lease = await leases.grant(gateway.client, ttl, gateway.timeout, session)
        return JSONResponse({"id": lease.id, "ttl": ttl, "granted_ttl": lease.ttl,
                             "raised": lease.ttl > ttl}, status_code=201,
                            headers={"Location": f"{PREFIX}/{lease.id}"})

    async def keepalive(request) -> JSONResponse:
        which = lease_id(request)
        ttl = await gateway.client.lease_keepalive(which, timeout=gateway.timeout)
        return JSONResponse({"id": which, "ttl": ttl})

    async def look(request) -> JSONResponse:
        which = lease_id(request)
        with_keys = query_flag(request, "keys")
        found = await gateway.client.lease_ttl(which, timeout=gateway.timeout)
        out = {"id": which, "ttl": found.ttl, "left": found.left}
        if with_keys:
            out["keys"] = [bytes_fields("key", key) for key in found.keys]
        return JSONResponse(out)

    async def revoke(request) -> JSONResponse:
        which = lease_id(request)
        found, revision = await leases.revoke_at(gateway.client, which, gateway.timeout,
                                                 idempotency.session(request))
        if not found:
            raise LeaseNotFound(which)
        return JSONResponse({"id": which, "revoked": True, "revision": revision})

    return [Route(PREFIX, grant, methods=["POST"]),
            Route(PREFIX + "/{id}/keepalive", keepalive, methods=["POST"]),
            Route(PREFIX + "/{id}", look, methods=["GET"]),
            Route(PREFIX + "/{id}", revoke, methods=["DELETE"])]


_ID = param("id", "path", "The lease id (a positive integer)", {"type": "integer"})
_IDEMPOTENCY = param("Idempotency-Key", "header", "A retried request with the same key is "
                     "answered from the first one's session, not applied again")
OPENAPI = {
    PREFIX: {"post": operation(
        'Grant a lease: body {"ttl": SECONDS}; the answer says the TTL granted (raised to the '
        "server's minimum if shorter)", {
            "201": json_response("id, ttl (asked), granted_ttl, raised"),
            **problems(400, 413, 503, 504)}, [_IDEMPOTENCY],
        {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["ttl"], "properties": {"ttl": {
                "type": "integer", "minimum": MIN_TTL, "maximum": MAX_TTL}}}}}})},
    PREFIX + "/{id}/keepalive": {"post": operation(
        "Renew a lease for its TTL", {"200": json_response("id, ttl"),
                                      **problems(400, 404, 503)}, [_ID])},
    PREFIX + "/{id}": {
        "get": operation("A lease's TTL, the seconds left and (keys=true) its keys", {
            "200": json_response("id, ttl, left, keys"), **problems(400, 404, 503)},
            [_ID, param("keys", "query", "true: list the keys attached", {"type": "boolean"})]),
        "delete": operation("Revoke a lease: its keys are deleted", {
            "200": json_response("id, revoked, revision"), **problems(400, 404, 503, 504)},
            [_ID, _IDEMPOTENCY])},
}
