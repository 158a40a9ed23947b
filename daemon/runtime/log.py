"""Logging for the daemon: stderr, one event a line, every line naming the node.

journald stores each stderr line as one entry, so a line is one event: no multi-line messages
from the daemon itself (a traceback after a crash is the exception). Lines look like::

    2024-05-01 12:00:00,123 INFO node=2 paxosd.server: leader is node 1 (ballot 3.1)

Several nodes may share one process (the in-process tests): the node id travels with each
record (``node_logger``), not in global state.

An event that can repeat without end (a misconfigured peer redialing, a scanner) goes through a
``Throttle``: its first occurrence is logged, then at most one line per interval saying how many
were left unsaid.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["FORMAT", "Throttle", "node_logger", "setup"]

FORMAT = "%(asctime)s %(levelname)s node=%(node)s %(name)s: %(message)s"


class _NodeDefault(logging.Filter):
    """Records from loggers that do not know the node (a library, storage) show ``node=-``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "node"):
            record.node = "-"
        return True


def setup(level: int = logging.INFO, stream=None) -> None:
    """Send the ``paxosd`` loggers to stderr (or ``stream``) in the format above. Idempotent."""
    root = logging.getLogger("paxosd")
    for handler in root.handlers:
        if getattr(handler, "_paxosd", False):
            root.setLevel(level)
            return
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._paxosd = True  # type: ignore[attr-defined]
    handler.addFilter(_NodeDefault())
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level)


def node_logger(node_id: int | None, name: str = "paxosd.server") -> logging.LoggerAdapter:
    """A logger whose records carry ``node`` = ``node_id``."""
    return logging.LoggerAdapter(logging.getLogger(name), {"node": node_id})


class Throttle:
    """Which repetitions of an event to log: the first of each key, then at most one per
    ``interval`` seconds. Remembers at most ``max_keys`` keys (then starts afresh)."""

    def __init__(self, interval: float, max_keys: int = 1024) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._seen: dict = {}  # key -> (time last logged, repeats not logged since)

    def check(self, key, now: float) -> int | None:
        """None: stay silent this time; else log, saying this many repeats went unsaid."""
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval:
            self._seen[key] = (seen[0], seen[1] + 1)
            return None
        if len(self._seen) >= self.max_keys:
            self._seen.clear()
        self._seen[key] = (now, 0)
        return seen[1] if seen is not None else 0
