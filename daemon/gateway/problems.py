"""Errors as RFC 9457 problem details: ``application/problem+json`` with a stable ``code``.

Every error a route answers with is ``problem(status, code, detail, **extra)``: ``type`` is
``urn:paxosd:problem:<code>``, ``title`` the status's phrase, ``status``, ``detail`` a message
naming what was wrong, ``code`` the stable name a program tests, and any extension members.
Routes raise ``Problem`` (caught by the app) or let the client library's exceptions through;
``ERRORS`` maps those to status codes:

- the caller's mistakes are 4xx (a lease that is gone 404, a request the cluster refused 400);
- no leader, or no node reachable, is 503 with ``Retry-After``: nothing was applied, try again;
- a write whose outcome is unknown (its deadline passed after it may have reached a node) is
  504 ``outcome-unknown``: it may or may not have been applied, and may still be, at most
  once; a retry with the same ``Idempotency-Key`` finds out which.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.responses import Response

from daemon.client.client import (NoLeader, OperationFailed, OutcomeUnknown, PaxosdError,
                                  SessionExpired, Unavailable)
from daemon.client.leases import LeaseNotFound
from daemon.client.lock import FencedOut

__all__ = ["ERRORS", "PROBLEM_TYPE", "Problem", "RETRY_AFTER", "error_response",
           "http_error_response", "internal_error_response", "problem", "problem_response"]

PROBLEM_TYPE = "application/problem+json"
RETRY_AFTER = "1"  # seconds: an election takes a few hundred milliseconds

# The client library's exceptions, most specific first: (class, status, code).
ERRORS: tuple[tuple[type[BaseException], int, str], ...] = (
    (LeaseNotFound, 404, "lease-not-found"),
    (FencedOut, 409, "fenced-out"),
    (SessionExpired, 409, "session-expired"),
    (OperationFailed, 400, "rejected"),
    (OutcomeUnknown, 504, "outcome-unknown"),
    (NoLeader, 503, "no-leader"),
    (Unavailable, 503, "unavailable"),
    (PaxosdError, 503, "unavailable"),
    (ValueError, 400, "invalid-request"),
)
# The codes of starlette's own errors (no route, wrong method).
_HTTP_CODES = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}


class Problem(Exception):
    """A route's error: raised anywhere below a route, answered as ``problem(...)``."""

    def __init__(self, status: int, code: str, detail: str, *, headers: dict | None = None,
                 **extra) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.headers = headers or {}
        self.extra = extra


def problem(status: int, code: str, detail: str, *, headers: dict | None = None,
            **extra) -> Response:
    """The problem+json response; a 503 says ``Retry-After``."""
    body = {"type": f"urn:paxosd:problem:{code}", "title": HTTPStatus(status).phrase,
            "status": status, "code": code, "detail": detail, **extra}
    headers = dict(headers or {})
    if status == 503:
        headers.setdefault("Retry-After", RETRY_AFTER)
    return Response(json.dumps(body), status, headers, media_type=PROBLEM_TYPE)


def problem_response(request, exc: Problem) -> Response:
    return problem(exc.status, exc.code, exc.detail, headers=exc.headers, **exc.extra)


def error_response(request, exc: Exception) -> Response:
    """The response to one of the client library's exceptions (or a ValueError of its
    argument checks), by ``ERRORS``."""
    for cls, status, code in ERRORS:
        if isinstance(exc, cls):
            return problem(status, code, str(exc))
    raise exc  # pragma: no cover - the app registers this handler for ERRORS' classes only


def http_error_response(request, exc: HTTPException) -> Response:
    """starlette's own errors (no such route, a method the route does not take) as problems."""
    code = _HTTP_CODES.get(exc.status_code, "http-error")
    if exc.status_code == 404:
        detail = f"no route {request.url.path!r}: see /v1/openapi.json for the routes"
    elif exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        detail = f"{request.method} is not allowed on {request.url.path!r} (allowed: {allow})"
    else:
        detail = str(exc.detail)
    return problem(exc.status_code, code, detail, headers=exc.headers)


def internal_error_response(request, exc: Exception) -> Response:
    """A bug below a route: logged with its traceback, answered 500 ``internal-error``."""
    logging.getLogger("paxosd.http").error("%s %s failed: %s: %s", request.method,
                                           request.url.path, type(exc).__name__, exc,
                                           exc_info=exc)
    return problem(500, "internal-error", f"the server failed on this request "
                   f"({type(exc).__name__}); it is logged")
