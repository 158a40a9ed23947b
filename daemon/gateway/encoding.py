"""Bytes in JSON: keys and values are bytes, JSON has only text.

Going out, a field holding bytes is the text itself when the bytes are valid UTF-8 (no base64
for UTF-8 values), else their base64; a sibling field ``<name>_encoding`` says which
(``"utf-8"`` or ``"base64"``), so a program never guesses. Coming in (a transaction's keys and
values), a JSON string is its UTF-8 bytes and ``{"base64": "..."}`` any bytes.
"""

from __future__ import annotations

import base64
import binascii

from daemon.gateway.problems import Problem

__all__ = ["UTF8", "BASE64", "bytes_fields", "kv_json", "parse_bytes"]

UTF8 = "utf-8"
BASE64 = "base64"


def bytes_fields(name: str, data: bytes) -> dict:
    """``{name: text, name_encoding: "utf-8"}``, or with base64 when ``data`` is not UTF-8."""
    try:
        return {name: data.decode("utf-8"), f"{name}_encoding": UTF8}
    except UnicodeDecodeError:
        return {name: base64.b64encode(data).decode("ascii"), f"{name}_encoding": BASE64}


def kv_json(kv) -> dict:
    """A daemon.client KeyValue as JSON: key, value (absent when keys only), their encodings,
    create_revision, mod_revision, version, lease."""
    out = bytes_fields("key", kv.key)
    if kv.value is not None:
        out.update(bytes_fields("value", kv.value))
    out.update(create_revision=kv.create_revision, mod_revision=kv.mod_revision,
               version=kv.version, lease=kv.lease)
    return out


def parse_bytes(value, where: str) -> bytes:
    """A JSON string (its UTF-8) or ``{"base64": "..."}`` as bytes; 400 ``bad-json`` naming
    ``where`` otherwise."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"base64"} and isinstance(value["base64"], str):
        try:
            return base64.b64decode(value["base64"], validate=True)
        except (binascii.Error, ValueError):
            raise Problem(400, "bad-json", f"{where}: not valid base64") from None
    raise Problem(400, "bad-json", f"{where}: expected a string (UTF-8) or "
                  f'{{"base64": "..."}}, got {_show(value)}')


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
