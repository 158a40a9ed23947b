"""``/v1/lease``: grant, keep alive, revoke (to come)."""

from __future__ import annotations

__all__ = ["routes"]


def routes(gateway) -> list:
    """The lease routes (none yet)."""
    return []
