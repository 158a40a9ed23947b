"""``paxosd bench --watchers N``: watch fan-out under the write load, from a process of its own.

N watches of the prefix the benchmark's writers write under (every key they write), spread
over the nodes in turn, one connection each, all read by one process with a selector (the
watch protocol of daemon.codec.wire, spoken by hand as the writers speak theirs). It counts the
changes delivered inside the measured interval (from each reply's CBOR heads: see
``events_in``), and the watches the servers cut off (a reader too slow for
``watch.max_pending_bytes``) with their reasons. The writers' commits/s, measured
as without watchers, show what the fan-out costs them.
"""

from __future__ import annotations

import selectors
import socket
import time

from fastpath import FrameReader, dumps, encode_frame, loads

from daemon.codec.wire import encode_watch_request
from daemon.core.kv import prefix_end
from daemon.core.messages import CANCELLED, COMPACTED, EVENTS, OK

WATCH_PREFIX = b"k"  # the writers' keys are b"k%d"
CONNECT_TIMEOUT = 10.0
RECEIVE_BYTES = 1 << 20


def _open(address: str, req_id: int) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT)
    sock.sendall(encode_frame(dumps([encode_watch_request(
        req_id, 0, WATCH_PREFIX, prefix_end(WATCH_PREFIX), False)])))
    sock.setblocking(False)
    return sock


def watcher_process(endpoints: list[str], watchers: int, ready_by: float, measure_from: float,
                    stop_at: float, results) -> None:
    """Open ``watchers`` watches (before ``ready_by``), read every change until ``stop_at``,
    and put ``{"watchers", "started", "events", "cut_off", "reasons"}`` on ``results``
    (events: those delivered inside ``[measure_from, stop_at)``)."""
    selector = selectors.DefaultSelector()
    readers: dict[int, FrameReader] = {}
    out = {"watchers": watchers, "started": 0, "events": 0, "events_total": 0, "cut_off": 0,
           "reasons": {}, "cpu_seconds": 0.0}
    socks = []
    for i in range(watchers):
        sock = _open(endpoints[i % len(endpoints)], i + 1)
        socks.append(sock)
        readers[sock.fileno()] = FrameReader()
        selector.register(sock, selectors.EVENT_READ)
    cpu_from = None
    while True:
        now = time.monotonic()
        if now >= stop_at:
            break
        if cpu_from is None and now >= measure_from:
            cpu_from = time.process_time()
        for key, _ in selector.select(timeout=min(0.05, stop_at - now)):
            sock = key.fileobj
            try:
                data = sock.recv(RECEIVE_BYTES)
            except BlockingIOError:
                continue
            if not data:
                selector.unregister(sock)
                continue
            in_interval = measure_from <= time.monotonic() < stop_at
            for payload in readers[sock.fileno()].feed(data):
                n = events_in(payload)
                if n is not None:
                    out["events_total"] += n
                    if in_interval:
                        out["events"] += n
                    continue
                for reply in loads(payload):
                    _count(reply, in_interval, out)
    out["cpu_seconds"] = time.process_time() - cpu_from if cpu_from is not None else 0.0
    for sock in socks:
        sock.close()
    results.put(out)


_EVENTS_TEXT = b"\x66events"  # CBOR: a text string of 6 bytes, "events"
_UINT_BYTES = {0x18: 1, 0x19: 2, 0x1A: 4, 0x1B: 8}  # CBOR: an integer in the next n bytes
_COUNT_BYTES = {0x98: 1, 0x99: 2, 0x9A: 4}  # CBOR: an array of a length in the next n bytes


def events_in(payload: bytes) -> int | None:
    """How many changes the frame ``payload`` carries if it is one "events" reply (as the
    server frames each: ``[[req_id, "events", [...], leader, revision]]``), read from the
    CBOR heads without decoding the changes; None for any other frame.

    Why not decode: one process reading for N watchers would measure its own decoding (a
    watcher's client decodes its changes itself, on its own CPU)."""
    if payload[:2] != b"\x81\x85":
        return None
    head = payload[2]
    at = 3 + (0 if head < 0x18 else _UINT_BYTES.get(head, 99))
    if payload[at:at + 7] != _EVENTS_TEXT:
        return None
    head = payload[at + 7]
    if 0x80 <= head <= 0x97:
        return head - 0x80
    width = _COUNT_BYTES.get(head)
    if width is None:
        return None
    return int.from_bytes(payload[at + 8:at + 8 + width], "big")


def _count(reply: list, in_interval: bool, out: dict) -> None:
    status = reply[1]
    if status == EVENTS:
        out["events_total"] += len(reply[2])
        if in_interval:
            out["events"] += len(reply[2])
    elif status == OK:
        out["started"] += 1
    elif status in (CANCELLED, COMPACTED):
        out["cut_off"] += 1
        reason = f"{status}: {reply[2]}"[:100]
        out["reasons"][reason] = out["reasons"].get(reason, 0) + 1


def report_rows(watch: dict, duration: float) -> list[tuple[str, str]]:
    """The lines of the bench report about the watchers."""
    rows = [("watch events/s", f"{watch['events'] / duration:,.0f} delivered to "
                               f"{watch['watchers']} watchers ({watch['events']:,} events; "
                               f"{watch['started']} watches started)")]
    if watch["cut_off"]:
        rows.append(("watchers cut off", f"{watch['cut_off']}"))
        for reason, n in sorted(watch["reasons"].items(), key=lambda kv: -kv[1])[:2]:
            rows.append(("", f"{n} x {reason}"))
    return rows
