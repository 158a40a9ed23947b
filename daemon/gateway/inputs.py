"""What a request carries, checked: keys from the URL path, query values (as bytes where they
name keys), integers, and the body under the size limit.

Keys are bytes. In the path and in the query they are percent-encoded (RFC 3986), so any byte
can be given: ``/v1/kv/a%2Fb`` and ``/v1/kv/a/b`` are both the key ``a/b``, ``%FF`` the byte
0xFF. They are decoded here from the raw request target, not from the server's decoded path
(which is text: bytes that are not UTF-8 would be lost). A ``%`` not followed by two hex digits
is refused (400 ``bad-percent-encoding``), naming where.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from daemon.gateway.problems import Problem

__all__ = ["header_int", "query_bytes", "query_flag", "query_int", "read_body", "path_key"]

_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_QUERY_SPLIT = re.compile(rb"[&;]")
_QUERY_SCOPE = "paxosd.query"  # where _query keeps the parsed query in the ASGI scope


def _decode(raw: bytes, what: str) -> bytes:
    bad = _BAD_PERCENT.search(raw)
    if bad is not None:
        shown = raw[bad.start():bad.start() + 3].decode("latin-1")
        raise Problem(400, "bad-percent-encoding",
                      f"{what}: {shown!r} at byte {bad.start()} is no percent-encoded byte "
                      f"(expected % and two hex digits; a literal % is %25)")
    return unquote_to_bytes(raw)


def path_key(request, prefix: str) -> bytes:
    """The key the request's path names after ``prefix`` (e.g. "/v1/kv/"), percent-decoded
    to bytes; 400 if it is empty or badly encoded."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    raw = raw.split(b"?", 1)[0]
    if not raw.startswith(prefix.encode()):  # pragma: no cover - the route matched it
        raise Problem(404, "not-found", f"no route {raw!r}")
    key = _decode(raw[len(prefix):], "the key in the path")
    if not key:
        raise Problem(400, "key-required", f"the path names no key: expected {prefix}KEY "
                      f"(percent-encoded)")
    return key


def _query(request) -> dict[str, bytes]:
    """The query's parameters (the last of a name given twice), values as bytes; parsed once
    per request (a route asks for several)."""
    out = request.scope.get(_QUERY_SCOPE)
    if out is not None:
        return out
    out = {}
    for part in _QUERY_SPLIT.split(request.scope.get("query_string", b"")):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        name_text = _decode(name.replace(b"+", b" "), "a query parameter's name").decode(
            "utf-8", "replace")
        out[name_text] = _decode(value.replace(b"+", b" "), f"query parameter {name_text!r}")
    request.scope[_QUERY_SCOPE] = out
    return out


def query_bytes(request, name: str) -> bytes | None:
    """The query parameter ``name`` as bytes (percent-decoded; ``+`` is a space), or None."""
    return _query(request).get(name)


def query_int(request, name: str, default: int | None = None, *, low: int = 0,
              high: int = 2**63 - 1) -> int | None:
    """The query parameter ``name`` as an integer in [low, high], or ``default`` when absent;
    400 ``bad-parameter`` naming it otherwise."""
    raw = query_bytes(request, name)
    if raw is None:
        return default
    return _int(raw, f"query parameter {name!r}", low, high)


def header_int(request, name: str, *, low: int = 0, high: int = 2**63 - 1) -> int | None:
    """The header ``name`` as an integer in [low, high] (quotes around it allowed: an ETag),
    None when absent; 400 ``bad-header`` naming it otherwise."""
    raw = request.headers.get(name)
    if raw is None:
        return None
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    return _int(text.encode(), f"header {name}", low, high, code="bad-header")


def _int(raw: bytes, what: str, low: int, high: int, code: str = "bad-parameter") -> int:
    text = raw.decode("latin-1")
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise Problem(400, code, f"{what}: expected an integer from {low} to {high}, "
                      f"got {text[:40]!r}")
    return int(text)


def query_flag(request, name: str) -> bool:
    """Whether the query says ``name`` (present and not "false" or "0")."""
    raw = query_bytes(request, name)
    if raw is None:
        return False
    if raw in (b"", b"true", b"1"):
        return True
    if raw in (b"false", b"0"):
        return False
    raise Problem(400, "bad-parameter", f"query parameter {name!r}: expected true or false, "
                  f"got {raw[:40]!r}")


async def read_body(request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes: 413 ``body-too-large`` before reading it
    when its Content-Length says more, and as soon as a body without one (chunked) grows past
    the limit, without reading the rest."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise Problem(400, "bad-header", f"header Content-Length: expected a byte count, "
                          f"got {length[:40]!r}")
        if int(length) > limit:
            raise _too_large(f"Content-Length {length}", limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(f"{size} bytes so far, chunked", limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: str, limit: int) -> Problem:
    """413, closing the connection (the rest of the body is never read)."""
    return Problem(413, "body-too-large", f"the request body ({size}) is over the limit of "
                   f"{limit} bytes (http.max_body_bytes)", limit=limit,
                   headers={"Connection": "close"})
