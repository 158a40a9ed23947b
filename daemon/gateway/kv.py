"""``/v1/kv``: keys and values.

- ``GET /v1/kv/{key}``: the value as the body (``application/octet-stream``), its revisions in
  headers (``X-Paxosd-Revision``: the store revision it was read at; ``X-Paxosd-Mod-Revision``,
  ``X-Paxosd-Create-Revision``, ``X-Paxosd-Version``, ``X-Paxosd-Lease``; ``ETag``: the
  mod_revision, quoted); ``?format=json``: the same as JSON (daemon.gateway.encoding). 404
  ``key-not-found`` when absent.
- ``PUT /v1/kv/{key}``: the body is the value; ``?lease=ID`` attaches it to a lease;
  ``If-Match: <mod_revision>`` (an ETag) writes only if the key's mod_revision is that
  (``If-Match: *``: only if it exists; ``If-None-Match: *``: only if it does not), else 412
  ``precondition-failed`` naming what the key has. Answers ``{"revision"}``.
- ``DELETE /v1/kv/{key}``: ``{"deleted": 0 or 1, "revision"}``; the same preconditions.
- ``GET /v1/kv?prefix=P`` (or ``from=A&to=B``: ``[A, B)``; neither: every key), ``limit=N``
  (default DEFAULT_LIMIT), ``after=K`` (keys above K: pass the last key of a page to get the
  next), ``keys_only=true``: ``{"kvs", "count" (keys in the range from where the page starts,
  whatever the limit), "more", "revision"}``.

Keys in the path and the query are percent-encoded bytes (daemon.gateway.inputs). Every write
takes ``Idempotency-Key`` (daemon.gateway.idempotency). A plain put goes through the Client's
put (the CBOR fast path's own command); a conditional, leased or idempotent write, and every
delete, is one transaction (daemon.client.txn), so it names its revision and tests its
precondition in the same command that writes.
"""

from __future__ import annotations

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.client import txn
from daemon.client.client import KeyValue
from daemon.codec.wire import MAX_RANGE_LIMIT
from daemon.core.kv import prefix_end
from daemon.gateway import idempotency
from daemon.gateway.encoding import kv_json
from daemon.gateway.inputs import (header_int, path_key, query_bytes, query_flag, query_int,
                                   read_body)
from daemon.gateway.problems import Problem
from daemon.gateway.spec import json_response, operation, param, problems

__all__ = ["DEFAULT_LIMIT", "OPENAPI", "PREFIX", "routes"]

PREFIX = "/v1/kv/"
DEFAULT_LIMIT = 1000
OCTETS = "application/octet-stream"


def show(key: bytes) -> str:
    """A key for a message: its repr, cut at 80 characters."""
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."


def revision_headers(kv: KeyValue | None, revision: int | None) -> dict[str, str]:
    """The headers that say where a read was made and what the key's revisions are."""
    headers = {} if revision is None else {"X-Paxosd-Revision": str(revision)}
    if kv is not None:
        headers.update({"X-Paxosd-Mod-Revision": str(kv.mod_revision),
                        "X-Paxosd-Create-Revision": str(kv.create_revision),
                        "X-Paxosd-Version": str(kv.version), "X-Paxosd-Lease": str(kv.lease),
                        "ETag": f'"{kv.mod_revision}"'})
    return headers


def precondition(request, key: bytes) -> list:
    """The compares the request's If-Match / If-None-Match ask for (none: []); 400 for a form
    this API does not take."""
    match = request.headers.get("if-match")
    none_match = request.headers.get("if-none-match")
    if match is not None and none_match is not None:
        raise Problem(400, "bad-header", "give If-Match or If-None-Match, not both")
    if none_match is not None:
        if none_match.strip() != "*":
            raise Problem(400, "bad-header", f"header If-None-Match: only * (the key must not "
                          f"exist) is taken, got {none_match[:40]!r}")
        return [txn.compare_version(key, "=", 0)]
    if match is None:
        return []
    if match.strip() == "*":
        return [txn.compare_version(key, ">", 0)]
    revision = header_int(request, "If-Match", low=1)
    return [txn.compare_mod(key, "=", revision)]


def _failed(key: bytes, request, found) -> Problem:
    """412 saying what the key has (its mod_revision, or that it is absent)."""
    kvs = found.kvs
    has = f"its mod_revision is {kvs[0].mod_revision}" if kvs else "it does not exist"
    asked = (f"If-Match: {request.headers['if-match']}" if "if-match" in request.headers
             else f"If-None-Match: {request.headers.get('if-none-match')}")
    return Problem(412, "precondition-failed", f"key {show(key)}: {asked} does not hold: {has}",
                   mod_revision=kvs[0].mod_revision if kvs else None,
                   headers=revision_headers(kvs[0] if kvs else None, found.revision))


async def _write(gateway, request, key: bytes, op: list) -> txn.TxnResponse:
    """``op`` on ``key`` as one transaction under the request's precondition and idempotency
    session; 412 when the precondition does not hold."""
    compares = precondition(request, key)
    gateway.check_leader()
    response = await txn.run_txn(gateway.client, compares, [op],
                                 [txn.get_range(key)] if compares else [], gateway.timeout,
                                 idempotency.session(request))
    if not response.succeeded:
        raise _failed(key, request, response.results[0])
    return response


def routes(gateway) -> list:
    client = gateway.client

    async def get_key(request) -> Response:
        key = path_key(request, PREFIX)
        form = query_bytes(request, "format")
        if form not in (None, b"json", b"raw"):
            raise Problem(400, "bad-parameter", f"query parameter 'format': expected json or "
                          f"raw, got {form[:40]!r}")
        found = await client.range(key, timeout=gateway.timeout)
        if not found.kvs:
            raise Problem(404, "key-not-found", f"no key {show(key)}", revision=found.revision,
                          headers=revision_headers(None, found.revision))
        kv = found.kvs[0]
        headers = revision_headers(kv, found.revision)
        if form == b"json":
            return JSONResponse({**kv_json(kv), "revision": found.revision}, headers=headers)
        return Response(kv.value, media_type=OCTETS, headers=headers)

    async def put_key(request) -> Response:
        key = path_key(request, PREFIX)
        lease = query_int(request, "lease", 0)
        compares = precondition(request, key)
        session = idempotency.session(request)
        value = await read_body(request, gateway.max_body_bytes)
        gateway.check_leader()
        if lease or compares or session is not None:
            revision = (await _write(gateway, request, key, txn.put(key, value, lease))).revision
        else:
            revision = await client.put(key, value, timeout=gateway.timeout)
        return JSONResponse({"revision": revision}, headers={
            "X-Paxosd-Revision": str(revision), "ETag": f'"{revision}"'})

    async def delete_key(request) -> Response:
        key = path_key(request, PREFIX)
        response = await _write(gateway, request, key, txn.delete(key))
        return JSONResponse({"deleted": response.results[0], "revision": response.revision},
                            headers={"X-Paxosd-Revision": str(response.revision)})

    async def list_keys(request) -> Response:
        start, end = _bounds(request)
        limit = query_int(request, "limit", DEFAULT_LIMIT, low=1, high=MAX_RANGE_LIMIT)
        found = await client.range(start, end, limit=limit,
                                   keys_only=query_flag(request, "keys_only"),
                                   timeout=gateway.timeout)
        return JSONResponse({"kvs": [kv_json(kv) for kv in found.kvs], "count": found.count,
                             "more": found.more, "revision": found.revision},
                            headers=revision_headers(None, found.revision))

    by_method = {"GET": get_key, "PUT": put_key, "DELETE": delete_key}

    async def key_route(request) -> Response:
        return await by_method[request.method if request.method != "HEAD" else "GET"](request)

    return [Route("/v1/kv", list_keys, methods=["GET"]),
            Route(PREFIX + "{key:path}", key_route, methods=list(by_method))]


def _bounds(request) -> tuple[bytes, bytes]:
    """``[start, end)`` of a listing (end b"": no end) from prefix, from, to and after."""
    prefix = query_bytes(request, "prefix")
    low, high = query_bytes(request, "from"), query_bytes(request, "to")
    if prefix is not None and (low is not None or high is not None):
        raise Problem(400, "bad-parameter", "give prefix, or from and to, not both")
    if prefix is not None:
        start, end = prefix, prefix_end(prefix)
    else:
        start, end = low or b"", high or b""
    after = query_bytes(request, "after")
    if after is not None and after + b"\x00" > start:
        start = after + b"\x00"  # the smallest key above ``after``
    if end and start >= end:
        start = end  # nothing left: an empty range (the store reads [end, end) as none)
    return start, end


_KEY = param("key", "path", "The key, percent-encoded (any bytes: %2F for /, %FF for 0xFF)")
_IDEMPOTENCY = param("Idempotency-Key", "header", "A retried write with the same key is "
                     "answered from the first one's session, not applied again")
_IF_MATCH = param("If-Match", "header", "Write only if the key's mod_revision is this "
                  "(an ETag, quoted or not); * : only if it exists")
_IF_NONE_MATCH = param("If-None-Match", "header", "* : write only if the key does not exist")
OPENAPI = {
    "/v1/kv/{key}": {
        "get": operation("Read a key: the value as the body, revisions in X-Paxosd-* headers "
                         "and ETag (= mod_revision)", {
            "200": {"description": "The value", "content": {OCTETS: {}, "application/json": {}}},
            **problems(400, 404, 503)}, [_KEY, param("format", "query", "json: the key, value "
                                                     "(UTF-8 text, else base64) and revisions "
                                                     "as JSON")]),
        "put": operation("Write a key: the body is the value", {
            "200": json_response("The write's revision"), **problems(400, 404, 412, 413, 503, 504)},
            [_KEY, param("lease", "query", "Attach the key to this lease", {"type": "integer"}),
             _IF_MATCH, _IF_NONE_MATCH, _IDEMPOTENCY],
            {"content": {OCTETS: {}}, "required": False}),
        "delete": operation("Delete a key", {
            "200": json_response("deleted (0 or 1) and the revision"),
            **problems(400, 412, 503, 504)}, [_KEY, _IF_MATCH, _IF_NONE_MATCH, _IDEMPOTENCY]),
    },
    "/v1/kv": {"get": operation("List keys in key order", {
        "200": json_response("kvs, count, more, revision"), **problems(400, 503)}, [
        param("prefix", "query", "The keys that start with this (percent-encoded)"),
        param("from", "query", "The first key of [from, to)"),
        param("to", "query", "The end of [from, to) (absent: no end)"),
        param("after", "query", "Only keys above this one (the last key of the page before)"),
        param("limit", "query", f"At most this many (default {DEFAULT_LIMIT})",
              {"type": "integer"}),
        param("keys_only", "query", "true: leave the values out", {"type": "boolean"})])},
}
