"""OpenAPI building blocks for the route modules' ``OPENAPI`` maps (path -> method ->
operation), which daemon.gateway.openapi merges into one document.

``operation(summary, responses, parameters=(), body=None)`` makes an operation;
``problems(*statuses)`` the error responses (problem+json) it may give; ``param`` a query,
path or header parameter.
"""

from __future__ import annotations

__all__ = ["PROBLEM_SCHEMA", "json_response", "operation", "param", "problems"]

PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details; `code` is stable, `detail` names what was wrong.",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                   "status": {"type": "integer"}, "code": {"type": "string"},
                   "detail": {"type": "string"}},
}
_PHRASES = {400: "Bad request (the detail names the field)", 404: "Not found",
            405: "Method not allowed", 409: "Conflict", 412: "Precondition failed",
            413: "Body over http.max_body_bytes", 503: "No leader or no quorum (Retry-After)",
            504: "A write's outcome is unknown"}


def problems(*statuses: int) -> dict:
    """Error responses with the problem+json schema."""
    return {str(s): {"description": _PHRASES.get(s, "Error"), "content": {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        for s in statuses}


def json_response(description: str, schema: dict | None = None) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def param(name: str, where: str, description: str, schema: dict | None = None, *,
          required: bool = False) -> dict:
    return {"name": name, "in": where, "description": description,
            "required": required or where == "path", "schema": schema or {"type": "string"}}


def operation(summary: str, responses: dict, parameters=(), body: dict | None = None) -> dict:
    op = {"summary": summary, "responses": responses}
    if parameters:
        op["parameters"] = list(parameters)
    if body is not None:
        op["requestBody"] = body
    return op
