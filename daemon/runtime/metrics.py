"""Metrics: counters, gauges and histograms, rendered in the Prometheus text format 0.0.4
(``exposition``; daemon.gateway serves it at /metrics).

Instruments are plain objects updated by the server where it already does the work (once per
core loop iteration, per WAL write, per batch), never per command; gauges that merely mirror
state (the commit index, whether a leader is known) are set by a collect callback just before
each scrape, so they cost nothing between scrapes::

    registry = Registry()
    writes = registry.counter("paxosd_disk_wal_write_bytes_total", "Bytes appended to the WAL.")
    writes.inc(4096)
    reachable = registry.gauge("paxosd_peer_reachable", "...", labels=("peer",))
    reachable.labels("2").set(1)
    registry.on_collect(lambda: ...)
    text = registry.render()

Names follow etcd's, which operators already alert on (``etcd_server_has_leader`` ->
``paxosd_server_has_leader``). No third-party dependency: the format is a few lines of text.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Callable, Iterable

__all__ = [
    "CONTENT_TYPE",
    "Counter",
    "Gauge",
    "FSYNC_BUCKETS",
    "Histogram",
    "NodeMetrics",
    "Registry",
    "exponential_buckets",
    "exposition",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """``count`` upper bounds: start, start*factor, ... (as Prometheus' ExponentialBuckets)."""
    return tuple(start * factor**i for i in range(count))


def _format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    pairs = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()) -> None:
        self.name = name
        self.help = help
        self.label_names = tuple(labels)
        self._children: dict[tuple[str, ...], object] = {}
        if not self.label_names:
            self._children[()] = self._new_child()

    def _new_child(self):
        raise NotImplementedError

    def labels(self, *values) -> object:
        """The child for these label values (created on first use)."""
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name}: expected labels {self.label_names}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def remove(self, *values) -> None:
        self._children.pop(tuple(str(v) for v in values), None)

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {_escape_help(self.help)}")
        out.append(f"# TYPE {self.name} {self.kind}")
        for key in sorted(self._children):
            self._render_child(out, key, self._children[key])

    def _render_child(self, out: list[str], key: tuple[str, ...], child) -> None:
        out.append(f"{self.name}{_label_text(self.label_names, key)} {_format_value(child.value)}")


class _Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = value


class Counter(_Metric):
    """A value that only goes up (name it ``..._total``)."""

    kind = "counter"

    def _new_child(self) -> _Value:
        return _Value()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot go down (inc by {amount})")
        self._children[()].value += amount

    @property
    def value(self) -> float:
        return self._children[()].value


class Gauge(_Metric):
    """A value that goes up and down."""

    kind = "gauge"

    def _new_child(self) -> _Value:
        return _Value()

    def set(self, value: float) -> None:
        self._children[()].value = value

    def inc(self, amount: float = 1) -> None:
        self._children[()].value += amount

    @property
    def value(self) -> float:
        return self._children[()].value


class _HistogramValue:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


_LE_INF = 'le="+Inf"'


class Histogram(_Metric):
    """Observations counted into buckets by upper bound (``le``), with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float],
                 labels: Iterable[str] = ()) -> None:
        self.buckets = tuple(sorted(float(b) for b in buckets))
        if not self.buckets or math.isinf(self.buckets[-1]):
            raise ValueError(f"{name}: give finite bucket bounds (+Inf is implied)")
        super().__init__(name, help, labels)

    def _new_child(self) -> _HistogramValue:
        return _HistogramValue(self.buckets)

    def observe(self, value: float) -> None:
        self._children[()].observe(value)

    @property
    def count(self) -> int:
        return self._children[()].count

    def _render_child(self, out: list[str], key: tuple[str, ...], child) -> None:
        names = self.label_names
        cumulative = 0
        for bound, n in zip(self.buckets, child.counts):
            cumulative += n
            le = f'le="{_format_value(bound)}"'
            out.append(f"{self.name}_bucket{_label_text(names, key, le)} {cumulative}")
        out.append(f"{self.name}_bucket{_label_text(names, key, _LE_INF)} {child.count}")
        out.append(f"{self.name}_sum{_label_text(names, key)} {_format_value(child.sum)}")
        out.append(f"{self.name}_count{_label_text(names, key)} {child.count}")


class Registry:
    """The metrics of one node, in the order they were made."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Callable[[], None]] = []

    def _add(self, metric: _Metric) -> _Metric:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Counter:
        return self._add(Counter(name, help, labels))  # type: ignore[return-value]

    def gauge(self, name: str, help: str, labels: Iterable[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, labels))  # type: ignore[return-value]

    def histogram(self, name: str, help: str, buckets: Iterable[float],
                  labels: Iterable[str] = ()) -> Histogram:
        return self._add(Histogram(name, help, buckets, labels))  # type: ignore[return-value]

    def on_collect(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` before each render (to set gauges that mirror state)."""
        self._collectors.append(callback)

    def render(self) -> str:
        """Every metric in the text format, version 0.0.4."""
        for callback in self._collectors:
            callback()
        out: list[str] = []
        for metric in self._metrics.values():
            metric.render(out)
        return "\n".join(out) + "\n"


def exposition(registry: Registry, accept: str | None = None) -> tuple[bytes, str]:
    """``(body, content type)`` of a scrape of ``registry`` for a scraper that sent ``accept``
    (the text format 0.0.4, whatever it asked for)."""
    return registry.render().encode(), CONTENT_TYPE


# ---------------------------------------------------------------------------------------------
# What a paxosd node measures.

# etcd's buckets for etcd_disk_wal_fsync_duration_seconds: 1 ms to 8 s, doubling.
FSYNC_BUCKETS = exponential_buckets(0.001, 2, 14)


class NodeMetrics:
    """The metrics of one node. The server updates the counters and histograms where it does
    the work (per core loop iteration, WAL write, opened batch); ``collect`` (run before every
    scrape) copies the gauges from the node's state and the transport's per-peer counts."""

    def __init__(self, max_batch_commands: int = 4096) -> None:
        r = self.registry = Registry()
        # /metrics lists them in this order: by subsystem, as etcd's names group them.
        self._leadership(r)
        self._progress(r)
        self._disk(r)
        self._window(r, max_batch_commands)
        self._connections(r)

    def _leadership(self, r: Registry) -> None:
        """paxosd_server_*: who leads, as this node sees it."""
        self.has_leader = r.gauge(
            "paxosd_server_has_leader", "Whether this node knows a leader (1) or not (0).")
        self.is_leader = r.gauge(
            "paxosd_server_is_leader", "Whether this node is the leader (1) or not (0).")
        self.leader_changes = r.counter(
            "paxosd_server_leader_changes_seen_total",
            "Times this node saw a new leader (itself included).")
        self.ballot_round = r.gauge(
            "paxosd_server_ballot_round",
            "Round of the ballot this node leads or stands for, else of the highest it promised.")

    def _progress(self, r: Registry) -> None:
        """paxosd_proposals_* and the indexes: client commands chosen, applied and waiting."""
        self.committed = r.counter(
            "paxosd_proposals_committed_total",
            "Client commands in slots this node learned chosen.")
        self.applied = r.counter(
            "paxosd_proposals_applied_total",
            "Client commands applied to the state machine (a retry answered from its client "
            "session is not applied again and not counted).")
        self.pending = r.gauge(
            "paxosd_proposals_pending",
            "Client commands the leader holds that are not chosen yet (queued or in flight).")
        self.commit_index = r.gauge(
            "paxosd_commit_index", "Highest slot of the contiguous chosen prefix known here.")
        self.applied_index = r.gauge(
            "paxosd_applied_index", "Highest slot applied to the state machine.")

    def _disk(self, r: Registry) -> None:
        """paxosd_disk_*: the write-ahead log's writes and fsyncs."""
        self.fsync = r.histogram(
            "paxosd_disk_wal_fsync_duration_seconds",
            "Latency of the WAL fsyncs (one per group commit).", FSYNC_BUCKETS)
        self.wal_bytes = r.counter(
            "paxosd_disk_wal_write_bytes_total", "Bytes appended to the write-ahead log.")

    def _window(self, r: Registry, max_batch_commands: int) -> None:
        """The leader's batches and the slots it has in flight."""
        top = max(4096, max_batch_commands)
        self.batch = r.histogram(
            "paxosd_batch_commands", "Client commands per slot this node opened as leader.",
            exponential_buckets(1, 2, top.bit_length() + (top & (top - 1) != 0)))
        self.in_flight = r.gauge(
            "paxosd_window_slots_in_flight",
            "Slots the leader proposed that are not chosen yet (0 on a follower).")

    def _connections(self, r: Registry) -> None:
        """paxosd_peer_* (per peer, but for the count of refused connections), and the client
        connections."""
        peer = ("peer",)
        self.peer_reachable = r.gauge(
            "paxosd_peer_reachable",
            "Whether a connection to the peer is up, its hello done (1) or not (0).", peer)
        self.peer_sent = r.counter(
            "paxosd_peer_sent_messages_total", "Protocol messages written to the peer.", peer)
        self.peer_received = r.counter(
            "paxosd_peer_received_messages_total",
            "Protocol messages received from the peer and accepted as valid.", peer)
        self.peer_dropped = r.counter(
            "paxosd_peer_dropped_messages_total",
            "Messages dropped because the peer's send queue was full.", peer)
        self.auth_failures = r.counter(
            "paxosd_peer_auth_failures_total",
            "Peer connections refused for failing TLS or the cluster secret check.")
        self.client_connections = r.gauge(
            "paxosd_client_connections", "Open client connections.")

    def collect(self, node, transport, client_connections: int) -> None:
        """Copy the state the gauges mirror (``node``: daemon.core.node.Node, may be None while the
        WAL is being read)."""
        self.client_connections.set(client_connections)
        for peer_id, link in transport.links.items():
            self.peer_reachable.labels(peer_id).set(1 if link.connected else 0)
            self.peer_sent.labels(peer_id).set(link.sent)
            self.peer_received.labels(peer_id).set(link.received)
            self.peer_dropped.labels(peer_id).set(link.dropped)
        self.auth_failures._children[()].set(transport.auth_failures)
        if node is None:
            return
        status = node.status()
        leading = status["role"] == "leader"
        self.has_leader.set(1 if status["leader"] is not None else 0)
        self.is_leader.set(1 if leading else 0)
        self.ballot_round.set(status["ballot"] >> 16)
        self.commit_index.set(status["commit_index"])
        self.applied_index.set(status["applied_index"])
        self.in_flight.set(status["in_flight"])
        pending = status["pending"]
        if leading:
            window = node.window
            for slot in range(window.first_slot, window.next_slot):
                batch = window.get(slot)
                if batch is not None:
                    pending += len(batch)
            pending += sum(len(b) for b in node.queued_batches)
        self.pending.set(pending)
