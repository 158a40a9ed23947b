"""``GET /v1/watch``: changes as Server-Sent Events (to come)."""

from __future__ import annotations

__all__ = ["routes"]


def routes(gateway) -> list:
    """The watch routes (none yet)."""
    return []
