"""``GET /v1/openapi.json``: the OpenAPI 3.1 description of the API, merged from the route
modules' ``OPENAPI`` maps (a test checks that it describes every route the app has, and no
path it lacks)."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.routing import Route

from daemon.gateway import kv, leases, probes, status, txn, watch
from daemon.gateway.spec import PROBLEM_SCHEMA, json_response, operation

__all__ = ["OPENAPI", "document", "routes"]

OPENAPI = {"/v1/openapi.json": {"get": operation("This document", {
    "200": json_response("The OpenAPI 3.1 document")})}}
_MODULES = (status, kv, txn, watch, leases, probes)


def document() -> dict:
    """The OpenAPI document of every route module's paths."""
    paths: dict = {}
    for described in (*(getattr(m, "OPENAPI", {}) for m in _MODULES), OPENAPI):
        for path, operations in described.items():
            paths.setdefault(path, {}).update(operations)
    return {
        "openapi": "3.1.0",
        "info": {"title": "paxosd HTTP/JSON API", "version": "1",
                 "description": "Keys in the path are percent-encoded bytes; values are raw "
                                "bytes in and out unless JSON is asked for. Any node answers: "
                                "followers forward writes to the leader."},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": {"Problem": PROBLEM_SCHEMA}},
    }


def routes(gateway) -> list:
    doc = document()

    async def get_openapi(request) -> JSONResponse:
        return JSONResponse(doc)

    return [Route("/v1/openapi.json", get_openapi, methods=["GET"])]
