"""(to come)"""

from __future__ import annotations

__all__ = ["routes"]


def routes(gateway) -> list:
    return []
