"""The ASGI app: ``build_app(gateway)`` collects the routes of every route module.

A route module has one concern and one function ``routes(gateway) -> list`` of starlette
``Route``s whose endpoints close over the gateway; adding one is adding its name to
ROUTE_MODULES (and describing its paths in daemon.gateway.openapi: a test checks that every
route is described). Errors anywhere below a route become problem+json (daemon.gateway.problems).

Requests that come in on the node's ``metrics`` address reach /metrics, /livez and /readyz
only (``MetricsPortOnly``): that address is plain HTTP for scrapers and probes, and must not
become a second, unencrypted door to the API.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from daemon.client.client import PaxosdError
from daemon.gateway import kv, leases, openapi, probes, status, txn, watch
from daemon.gateway.gateway import Gateway
from daemon.gateway.problems import (Problem, error_response, http_error_response,
                                     internal_error_response, problem, problem_response)

__all__ = ["METRICS_PATHS", "ROUTE_MODULES", "build_app"]

ROUTE_MODULES = (status, kv, txn, watch, leases, probes, openapi)
METRICS_PATHS = frozenset({"/metrics", "/livez", "/readyz"})


class MetricsPortOnly:
    """ASGI middleware: on the metrics address, only METRICS_PATHS; 404 for the rest."""

    def __init__(self, app, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] == "http" and scope["path"] not in METRICS_PATHS
                and tuple(scope.get("server") or ())[:2] in self.gateway.metrics_sockets):
            response = problem(404, "not-found", f"no route {scope['path']!r} on the metrics "
                               f"address: it serves /metrics, /livez and /readyz")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(gateway: Gateway) -> Starlette:
    """The app serving ``gateway``: every route module's routes, problem+json errors."""
    routes = []
    for module in ROUTE_MODULES:
        routes.extend(module.routes(gateway))
    app = Starlette(routes=routes, exception_handlers={
        Problem: problem_response,
        PaxosdError: error_response,
        ValueError: error_response,
        HTTPException: http_error_response,
        Exception: internal_error_response,
    })
    app.add_middleware(MetricsPortOnly, gateway=gateway)
    return app
