"""Metrics: what a paxosd node measures, on prometheus-client, and their exposition (the text
format 0.0.4, or OpenMetrics when the scraper asks for it).

Each NodeMetrics has a CollectorRegistry of its own: several nodes run in one process in the
tests, so the process-wide ``prometheus_client.REGISTRY`` is never used. The server updates the
instruments where it already does the work (once per core loop iteration, per WAL write, per
slot it opens), never per command; the gauges that merely mirror state (the commit index,
whether a leader is known) and the counts the transport keeps are copied in by a callback just
before each scrape, so they cost nothing between scrapes::

    metrics = NodeMetrics()
    metrics.registry.on_collect(lambda: metrics.collect(node, transport, client_connections))
    metrics.wal_bytes.inc(4096)
    body, content_type = exposition(metrics.registry, accept_header)

Names follow etcd's, which operators already alert on (``etcd_server_has_leader`` ->
``paxosd_server_has_leader``). The page shows no ``_created`` series: the node's collector
leaves out the ones prometheus-client adds to counters and histograms, so the page keeps the
series it always had (``prometheus_client.disable_created_metrics()`` would do it for the whole
process instead).
"""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, Metric


__all__ = [
    "FSYNC_BUCKETS",
    "CopiedCounter",
    "NodeMetrics",
    "NodeRegistry",
    "exponential_buckets",
    "exposition",
]


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """``count`` upper bounds: start, start*factor, ... (as Prometheus' ExponentialBuckets)."""
    return tuple(start * factor**i for i in range(count))


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The page of ``registry`` and its Content-Type, in the format the scraper's ``Accept``
    header asks for: OpenMetrics for ``application/openmetrics-text``, else the text format
    0.0.4 (None: no header). prometheus-client's own negotiation decides."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


class CopiedCounter:
    """A counter counted elsewhere (the transport counts per peer link), its values copied in
    before each scrape. prometheus-client's Counter only moves by ``inc``; a count kept by
    another object is yielded as a counter family of its current values instead."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = ()) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        # An unlabelled counter reads 0 until its first copy, as an instrument would.
        self._values: dict[tuple[str, ...], float] = {} if self._labelnames else {(): 0}

    def set(self, value: float, *labelvalues) -> None:
        """The count now is ``value`` (for these label values)."""
        if len(labelvalues) != len(self._labelnames):
            raise ValueError(f"{self._name}: expected labels {self._labelnames}, "
                             f"got {labelvalues}")
        self._values[tuple(str(v) for v in labelvalues)] = value

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> list[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for labelvalues, value in self._values.items():
            family.add_metric(labelvalues, value)
        return [family]


class _NodeCollector:
    """A node's metrics, yielded in the order they were made, after the callbacks that copy in
    the mirrored state have run; without ``_created`` series."""

    def __init__(self) -> None:
        self.metrics: list = []  # prometheus-client metrics (made with registry=None), copies
        self.callbacks: list[Callable[[], None]] = []

    def describe(self) -> Iterable[Metric]:
        for metric in self.metrics:
            yield from metric.describe()

    def collect(self) -> Iterable[Metric]:
        for callback in self.callbacks:
            callback()
        for metric in self.metrics:
            for family in metric.collect():
                created = family.name + "_created"
                family.samples = [s for s in family.samples if s.name != created]
                yield family


class NodeRegistry(CollectorRegistry):
    """The CollectorRegistry of one node, holding that node's collector; ``on_collect`` adds a
    callback it runs before each scrape."""

    def __init__(self, collector: _NodeCollector) -> None:
        super().__init__()
        self._node = collector
        self.register(collector)  # raises DuplicateTimeseries if two metrics share a name

    def on_collect(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` before each scrape (to set the gauges that mirror state)."""
        self._node.callbacks.append(callback)


# ---------------------------------------------------------------------------------------------
# What a paxosd node measures.

# etcd's buckets for etcd_disk_wal_fsync_duration_seconds: 1 ms to 8 s, doubling.
FSYNC_BUCKETS = exponential_buckets(0.001, 2, 14)


class NodeMetrics:
    """The metrics of one node, in its own ``registry``. The server updates the counters and
    histograms where it does the work (per core loop iteration, WAL write, opened batch);
    ``collect`` (run before every scrape) copies the gauges from the node's state and the
    transport's per-peer counts."""

    def __init__(self, max_batch_commands: int = 4096) -> None:
        self._made = _NodeCollector()
        # /metrics lists them in this order: by subsystem, as etcd's names group them.
        self._leadership()
        self._progress()
        self._disk()
        self._window(max_batch_commands)
        self._connections()
        self.registry = NodeRegistry(self._made)

    def _add(self, metric):
        self._made.metrics.append(metric)
        return metric

    def _counter(self, name: str, documentation: str, labels: Iterable[str] = ()) -> Counter:
        return self._add(Counter(name, documentation, labels, registry=None))

    def _gauge(self, name: str, documentation: str, labels: Iterable[str] = ()) -> Gauge:
        return self._add(Gauge(name, documentation, labels, registry=None))

    def _histogram(self, name: str, documentation: str, buckets: Iterable[float]) -> Histogram:
        return self._add(Histogram(name, documentation, buckets=buckets, registry=None))

    def _leadership(self) -> None:
        """paxosd_server_*: who leads, as this node sees it."""
        self.has_leader = self._gauge(
            "paxosd_server_has_leader", "Whether this node knows a leader (1) or not (0).")
        self.is_leader = self._gauge(
            "paxosd_server_is_leader", "Whether this node is the leader (1) or not (0).")
        self.leader_changes = self._counter(
            "paxosd_server_leader_changes_seen_total",
            "Times this node saw a new leader (itself included).")
        self.ballot_round = self._gauge(
            "paxosd_server_ballot_round",
            "Round of the ballot this node leads or stands for, else of the highest it promised.")

    def _progress(self) -> None:
        """paxosd_proposals_* and the indexes: client commands chosen, applied and waiting."""
        self.committed = self._counter(
            "paxosd_proposals_committed_total",
            "Client commands in slots this node learned chosen.")
        self.applied = self._counter(
            "paxosd_proposals_applied_total",
            "Client commands applied to the state machine (a retry answered from its client "
            "session is not applied again and not counted).")
        self.pending = self._gauge(
            "paxosd_proposals_pending",
            "Client commands the leader holds that are not chosen yet (queued or in flight).")
        self.commit_index = self._gauge(
            "paxosd_commit_index", "Highest slot of the contiguous chosen prefix known here.")
        self.applied_index = self._gauge(
            "paxosd_applied_index", "Highest slot applied to the state machine.")

    def _disk(self) -> None:
        """paxosd_disk_*: the write-ahead log's writes and fsyncs."""
        self.fsync = self._histogram(
            "paxosd_disk_wal_fsync_duration_seconds",
            "Latency of the WAL fsyncs (one per group commit).", FSYNC_BUCKETS)
        self.wal_bytes = self._counter(
            "paxosd_disk_wal_write_bytes_total", "Bytes appended to the write-ahead log.")

    def _window(self, max_batch_commands: int) -> None:
        """The leader's batches and the slots it has in flight."""
        top = max(4096, max_batch_commands)
        self.batch = self._histogram(
            "paxosd_batch_commands", "Client commands per slot this node opened as leader.",
            exponential_buckets(1, 2, top.bit_length() + (top & (top - 1) != 0)))
        self.in_flight = self._gauge(
            "paxosd_window_slots_in_flight",
            "Slots the leader proposed that are not chosen yet (0 on a follower).")

    def _connections(self) -> None:
        """paxosd_peer_* (per peer, but for the count of refused connections), and the client
        connections. The transport keeps the peer counts; they are copied in by ``collect``."""
        peer = ("peer",)
        self.peer_reachable = self._gauge(
            "paxosd_peer_reachable",
            "Whether a connection to the peer is up, its hello done (1) or not (0).", peer)
        self.peer_sent = self._add(CopiedCounter(
            "paxosd_peer_sent_messages_total", "Protocol messages written to the peer.", peer))
        self.peer_received = self._add(CopiedCounter(
            "paxosd_peer_received_messages_total",
            "Protocol messages received from the peer and accepted as valid.", peer))
        self.peer_dropped = self._add(CopiedCounter(
            "paxosd_peer_dropped_messages_total",
            "Messages dropped because the peer's send queue was full.", peer))
        self.auth_failures = self._add(CopiedCounter(
            "paxosd_peer_auth_failures_total",
            "Peer connections refused for failing TLS or the cluster secret check."))
        self.client_connections = self._gauge(
            "paxosd_client_connections", "Open client connections.")

    def collect(self, node, transport, client_connections: int) -> None:
        """Copy the state the gauges mirror (``node``: daemon.core.node.Node, may be None while the
        WAL is being read)."""
        self.client_connections.set(client_connections)
        for peer_id, link in transport.links.items():
            self.peer_reachable.labels(peer_id).set(1 if link.connected else 0)
            self.peer_sent.set(link.sent, peer_id)
            self.peer_received.set(link.received, peer_id)
            self.peer_dropped.set(link.dropped, peer_id)
        self.auth_failures.set(transport.auth_failures)
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
