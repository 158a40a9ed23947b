"""``POST /v1/txn``: a transaction as JSON, applied as one command (daemon.core.txn; the same
compares and ops as daemon.client.txn and ``paxosd txn``)::

    {"compare": [{"key": "job/a", "target": "mod", "op": ">", "operand": 0}],
     "success": [{"put": {"key": "job/a", "value": "new", "lease": 0}},
                 {"delete": {"key": "job/b"}},
                 {"range": {"key": "job/", "prefix": true, "limit": 10}}],
     "failure": [{"range": {"key": "job/a"}}]}

A compare: ``target`` value, version, create, mod or lease; ``op`` =, !=, < or >; ``operand``
bytes (or null: absent) for value, an integer otherwise. Ops: put (key, value, lease),
delete (key, range_end or prefix), range (key, range_end or prefix, limit, keys_only,
count_only). Keys, values and range ends are JSON strings (their UTF-8) or
``{"base64": "..."}``. Every field is checked and a mistake is a 400 ``bad-json`` (or
``invalid-txn``) naming it, e.g. ``success[1].put.value: required``.

The answer: ``{"succeeded", "revision", "responses": [{"put": {}} | {"delete": {"deleted"}} |
{"range": {"kvs", "count", "more"}}]}`` (one per op of the branch that ran). Takes
``Idempotency-Key``.
"""

from __future__ import annotations

import json

from starlette.responses import JSONResponse
from starlette.routing import Route

from daemon.client import txn
from daemon.gateway import idempotency
from daemon.gateway.encoding import kv_json, parse_bytes
from daemon.gateway.inputs import read_body
from daemon.gateway.problems import Problem
from daemon.gateway.spec import json_response, operation, problems

__all__ = ["OPENAPI", "parse_txn", "routes"]

_OP_FIELDS = {"put": {"key", "value", "lease"}, "delete": {"key", "range_end", "prefix"},
              "range": {"key", "range_end", "prefix", "limit", "keys_only", "count_only"}}


def _bad(where: str, problem: str) -> Problem:
    return Problem(400, "bad-json", f"{where}: {problem}")


def _fields(obj, where: str, allowed: set, required: set) -> dict:
    if not isinstance(obj, dict):
        raise _bad(where, f"expected an object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _bad(where, f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    for name in sorted(required - set(obj)):
        raise _bad(f"{where}.{name}", "required")
    return obj


def _typed(obj: dict, name: str, kind: type, where: str, default):
    value = obj.get(name, default)
    if type(value) is not kind:
        raise _bad(f"{where}.{name}", f"expected {'true or false' if kind is bool else 'an integer'}"
                   f", got {value!r:.40}")
    return value


def _compare(obj, where: str) -> list:
    obj = _fields(obj, where, {"key", "target", "op", "operand"}, {"key", "target", "op"})
    target = obj["target"]
    if target not in txn.COMPARES:
        raise _bad(f"{where}.target",
                   f"expected one of {', '.join(txn.COMPARES)}, got {target!r:.40}")
    operand = obj.get("operand")
    if target == "value":
        operand = None if operand is None else parse_bytes(operand, f"{where}.operand")
    elif type(operand) is not int:
        raise _bad(f"{where}.operand", f"{target} compares with an integer, got {operand!r:.40}")
    if obj["op"] not in ("=", "!=", "<", ">"):
        raise _bad(f"{where}.op", f"expected =, !=, < or >, got {obj['op']!r:.40}")
    return txn.COMPARES[target](parse_bytes(obj["key"], f"{where}.key"), obj["op"], operand)


def _op(obj, where: str) -> list:
    if not isinstance(obj, dict) or len(obj) != 1 or next(iter(obj)) not in _OP_FIELDS:
        raise _bad(where, 'expected one of {"put": {...}}, {"delete": {...}}, {"range": {...}}')
    name, body = next(iter(obj.items()))
    where = f"{where}.{name}"
    body = _fields(body, where, _OP_FIELDS[name], {"key", "value"} if name == "put" else {"key"})
    key = parse_bytes(body["key"], f"{where}.key")
    if name == "put":
        return txn.put(key, parse_bytes(body["value"], f"{where}.value"),
                       _typed(body, "lease", int, where, 0))
    end = body.get("range_end")
    end = None if end is None else parse_bytes(end, f"{where}.range_end")
    prefix = _typed(body, "prefix", bool, where, False)
    if prefix and end is not None:
        raise _bad(where, "give range_end or prefix, not both")
    if name == "delete":
        return txn.delete(key, end, prefix=prefix)
    return txn.get_range(key, end, prefix=prefix, limit=_typed(body, "limit", int, where, 0),
                         keys_only=_typed(body, "keys_only", bool, where, False),
                         count_only=_typed(body, "count_only", bool, where, False))


def parse_txn(body: bytes) -> tuple[list, list, list]:
    """``(compares, success, failure)`` from the JSON body; 400 naming the field otherwise."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, "bad-json", f"the body is not JSON: {exc}") from None
    doc = _fields(doc, "txn", {"compare", "success", "failure"}, set())
    parts = []
    for name in ("compare", "success", "failure"):
        items = doc.get(name, [])
        if not isinstance(items, list):
            raise _bad(name, f"expected a list, got {type(items).__name__}")
        parse = _compare if name == "compare" else _op
        parts.append([parse(item, f"{name}[{i}]") for i, item in enumerate(items)])
    return parts[0], parts[1], parts[2]


def routes(gateway) -> list:
    async def post_txn(request) -> JSONResponse:
        body = await read_body(request, gateway.max_body_bytes)
        compares, success, failure = parse_txn(body)
        session = idempotency.session(request)
        gateway.check_leader()
        try:
            response = await txn.run_txn(gateway.client, compares, success, failure,
                                         gateway.timeout, session)
        except ValueError as exc:  # the shape checks of daemon.core.txn
            raise Problem(400, "invalid-txn", str(exc)) from None
        ops = success if response.succeeded else failure
        return JSONResponse({"succeeded": response.succeeded, "revision": response.revision,
                             "responses": txn.results_json(ops, response.results, kv_json)},
                            headers={"X-Paxosd-Revision": str(response.revision)})

    return [Route("/v1/txn", post_txn, methods=["POST"])]


OPENAPI = {"/v1/txn": {"post": operation(
    "Apply a transaction: if every compare holds, the success ops, else the failure ops, as "
    "one write (one revision, at most once)",
    {"200": json_response("succeeded, revision, responses (one per op that ran)"),
     **problems(400, 404, 413, 503, 504)},
    [], {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "properties": {
            "compare": {"type": "array", "items": {"type": "object"}},
            "success": {"type": "array", "items": {"type": "object"}},
            "failure": {"type": "array", "items": {"type": "object"}}}}}}})}}
