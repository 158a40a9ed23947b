"""Timestamps of a command's path through a node, for ``bench/timeline.py``; off by default.

With ``PAXOSD_TIMELINE=<prefix>`` in its environment, a node process records ``(name,
time.perf_counter_ns())`` at fixed points of its path (the client port's reader and writer,
the core loop, the WAL writer and its thread, the peer sender and receiver) and writes them
to ``<prefix>.<pid>.tsv`` when it exits. ``perf_counter_ns`` is CLOCK_MONOTONIC on Linux,
one clock for every process on the machine, so the files of several processes line up.

Off, it costs one test of the module-level constant ``ENABLED`` per batch of work (a receive,
a core loop iteration, a WAL group), never per command: callers write
``if TIMELINE: mark("...")`` with ``TIMELINE`` imported from here.
"""

from __future__ import annotations

import atexit
import os
import threading
from time import perf_counter_ns

__all__ = ["ENABLED", "MAX_MARKS", "mark", "dump"]

_PREFIX = os.environ.get("PAXOSD_TIMELINE") or ""
ENABLED = bool(_PREFIX)
MAX_MARKS = 4_000_000  # ~100 MB at most; beyond it marks are dropped (a run is seconds long)

# Appended to by the trio thread and the WAL writer's worker thread: list.append is atomic
# under the GIL, so neither marking nor the copy in dump needs a lock.
_marks: list = []


def mark(name: str) -> None:
    """Record that ``name`` happened now (call only under ``if TIMELINE``)."""
    if len(_marks) < MAX_MARKS:
        _marks.append((name, threading.get_ident() & 0xFFFF, perf_counter_ns()))


def dump(path: str | None = None) -> str | None:
    """Write the marks so far to ``path`` (default ``<prefix>.<pid>.tsv``) as
    "name<TAB>thread<TAB>ns" lines; the path written, or None when disabled and no path."""
    if path is None:
        if not ENABLED:
            return None
        path = f"{_PREFIX}.{os.getpid()}.tsv"
    lines = [f"{name}\t{thread}\t{ns}\n" for name, thread, ns in list(_marks)]
    with open(path, "w") as f:
        f.writelines(lines)
    return path


if ENABLED:
    atexit.register(dump)
