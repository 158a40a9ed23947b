"""daemon.runtime.metrics: a node's page keeps the names operators scrape, in the text format 0.0.4
and in OpenMetrics (each parsed back with prometheus-client's parsers), and a running node serves
/metrics over HTTP whose values move as the cluster works."""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.openmetrics.parser import \
    text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from daemon.core.node import CoreConfig, Node
from daemon.gateway.serve import serve_gateway
from daemon.runtime.config import load_config
from daemon.runtime.metrics import (FSYNC_BUCKETS, CopiedCounter, NodeMetrics,
                                    exponential_buckets, exposition)
from daemon.runtime.server import serve
from daemon.runtime.transport import Transport
from tests.test_server import TEST_TIMEOUT, Cluster, free_ports, write_config


TEXT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict, family: str, name: str | None = None, **labels) -> float:
    """The value of the sample ``name`` (default: the family's own) with these labels."""
    name = name or family
    for s in fams[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError(f"no sample {name}{labels} in {fams[family].samples}")


def page(metrics: NodeMetrics, accept: str | None = None) -> str:
    body, _ = exposition(metrics.registry, accept)
    return body.decode()


# ---------------------------------------------------------------------------------------------
# The names operators scrape: every family (its HELP/TYPE name and type) and every series (its
# name and label names) a node renders, as they were before the registry moved onto
# prometheus-client. Dashboards and alerts use them: a change here breaks them.

GOLDEN_FAMILIES = {
    "paxosd_server_has_leader": "gauge",
    "paxosd_server_is_leader": "gauge",
    "paxosd_server_leader_changes_seen_total": "counter",
    "paxosd_server_ballot_round": "gauge",
    "paxosd_proposals_committed_total": "counter",
    "paxosd_proposals_applied_total": "counter",
    "paxosd_proposals_pending": "gauge",
    "paxosd_commit_index": "gauge",
    "paxosd_applied_index": "gauge",
    "paxosd_disk_wal_fsync_duration_seconds": "histogram",
    "paxosd_disk_wal_write_bytes_total": "counter",
    "paxosd_batch_commands": "histogram",
    "paxosd_window_slots_in_flight": "gauge",
    "paxosd_peer_reachable": "gauge",
    "paxosd_peer_sent_messages_total": "counter",
    "paxosd_peer_received_messages_total": "counter",
    "paxosd_peer_dropped_messages_total": "counter",
    "paxosd_peer_auth_failures_total": "counter",
    "paxosd_client_connections": "gauge",
}

GOLDEN_SERIES = {
    "paxosd_server_has_leader": (),
    "paxosd_server_is_leader": (),
    "paxosd_server_leader_changes_seen_total": (),
    "paxosd_server_ballot_round": (),
    "paxosd_proposals_committed_total": (),
    "paxosd_proposals_applied_total": (),
    "paxosd_proposals_pending": (),
    "paxosd_commit_index": (),
    "paxosd_applied_index": (),
    "paxosd_disk_wal_fsync_duration_seconds_bucket": ("le",),
    "paxosd_disk_wal_fsync_duration_seconds_sum": (),
    "paxosd_disk_wal_fsync_duration_seconds_count": (),
    "paxosd_disk_wal_write_bytes_total": (),
    "paxosd_batch_commands_bucket": ("le",),
    "paxosd_batch_commands_sum": (),
    "paxosd_batch_commands_count": (),
    "paxosd_window_slots_in_flight": (),
    "paxosd_peer_reachable": ("peer",),
    "paxosd_peer_sent_messages_total": ("peer",),
    "paxosd_peer_received_messages_total": ("peer",),
    "paxosd_peer_dropped_messages_total": ("peer",),
    "paxosd_peer_auth_failures_total": (),
    "paxosd_client_connections": (),
}


def names_in(text: str) -> tuple[dict, dict]:
    """({family name on its TYPE line: type}, {series name: its label names}) of a text-format
    page, read from the lines themselves (the parser renames counters' families)."""
    families, helped = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            families[name] = kind
        elif line.startswith("# HELP "):
            helped.add(line.split(" ", 3)[2])
    assert helped == set(families), "every family has its HELP line"
    series: dict = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert series.setdefault(s.name, tuple(sorted(s.labels))) == tuple(sorted(s.labels))
    return families, series


def node_metrics(tmp_path: Path) -> tuple[NodeMetrics, Transport]:
    """The metrics of node 1 of a three-node cluster (a real core and transport, not running),
    collected from them as the server does, its histograms observed once."""
    config = load_config(write_config(tmp_path), node_id=1)

    async def deliver(msgs) -> None:
        pass

    transport = Transport(config, deliver)
    node = Node(1, [1, 2, 3], CoreConfig(heartbeat_interval=0.05, election_timeout=(0.15, 0.30)),
                random.Random(0), 0.0)
    metrics = NodeMetrics()
    metrics.registry.on_collect(lambda: metrics.collect(node, transport, 0))
    metrics.fsync.observe(0.003)
    metrics.batch.observe(5)
    return metrics, transport


def test_a_node_renders_exactly_the_golden_names(tmp_path):
    families, series = names_in(page(node_metrics(tmp_path)[0]))
    assert families == GOLDEN_FAMILIES
    assert series == GOLDEN_SERIES  # no _created series among them


def test_the_openmetrics_page_has_the_same_series_and_types(tmp_path):
    metrics, _ = node_metrics(tmp_path)
    body, content_type = exposition(metrics.registry, "application/openmetrics-text")
    assert content_type == OPENMETRICS
    text = body.decode()
    assert text.endswith("# EOF\n")
    fams = list(openmetrics_families(text))
    # OpenMetrics names a counter's family without its _total; its series keep it.
    assert {f.name: f.type for f in fams} == {
        name.removesuffix("_total") if kind == "counter" else name: kind
        for name, kind in GOLDEN_FAMILIES.items()}
    series = {s.name: tuple(sorted(s.labels)) for f in fams for s in f.samples}
    assert series == GOLDEN_SERIES


# ---------------------------------------------------------------------------------------------
# The exposition.


@pytest.mark.parametrize("accept", [
    None, "", "text/plain", "text/html, */*", "text/plain; version=0.0.4",
    "application/json; q=0.9, text/plain; version=0.0.4; q=0.3"])
def test_without_openmetrics_in_accept_the_page_is_text_0_0_4(tmp_path, accept):
    metrics, _ = node_metrics(tmp_path)
    body, content_type = exposition(metrics.registry, accept)
    assert content_type == TEXT_0_0_4
    assert body == exposition(metrics.registry, None)[0]
    assert "# EOF" not in body.decode()


@pytest.mark.parametrize("accept", [
    "application/openmetrics-text",
    "application/openmetrics-text; version=1.0.0; charset=utf-8",
    # What Prometheus sends: OpenMetrics first, the text format as a fallback.
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;"
    "version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"])
def test_openmetrics_in_accept_gets_openmetrics(tmp_path, accept):
    metrics, _ = node_metrics(tmp_path)
    body, content_type = exposition(metrics.registry, accept)
    assert content_type.startswith("application/openmetrics-text; version=")
    assert body.decode().endswith("# EOF\n")


def test_both_formats_parse_back_to_the_same_values(tmp_path):
    metrics, transport = node_metrics(tmp_path)
    metrics.committed.inc(300)
    metrics.fsync.observe(0.1)
    metrics.batch.observe(1)
    transport.links[3].sent = 12
    text = families(page(metrics))
    om = {f.name: f for f in openmetrics_families(page(metrics, "application/openmetrics-text"))}
    committed, sent = "paxosd_proposals_committed", "paxosd_peer_sent_messages"
    fsync, batch = "paxosd_disk_wal_fsync_duration_seconds", "paxosd_batch_commands"
    for fams in (text, om):
        assert sample(fams, committed, committed + "_total") == 300
        assert sample(fams, sent, sent + "_total", peer="3") == 12
        assert sample(fams, sent, sent + "_total", peer="2") == 0
        buckets = {float(s.labels["le"]): s.value for s in fams[fsync].samples
                   if s.name == fsync + "_bucket"}
        # Cumulative, le inclusive: 0.003 is under 0.004, 0.1 under 0.128.
        assert buckets[0.002] == 0 and buckets[0.004] == 1 and buckets[0.064] == 1
        assert buckets[0.128] == 2 and buckets[float("inf")] == 2
        assert sample(fams, fsync, fsync + "_count") == 2
        assert sample(fams, fsync, fsync + "_sum") == pytest.approx(0.103)
        buckets = {float(s.labels["le"]): s.value for s in fams[batch].samples
                   if s.name == batch + "_bucket"}
        assert buckets[1] == 1 and buckets[4] == 1 and buckets[8] == 2
        assert sample(fams, batch, batch + "_sum") == 6


def test_the_collect_callback_runs_before_each_scrape(tmp_path):
    metrics, transport = node_metrics(tmp_path)
    link = transport.links[2]
    assert sample(families(page(metrics)), "paxosd_peer_reachable", peer="2") == 0
    link.connected, link.sent = True, 5
    fams = families(page(metrics))
    assert sample(fams, "paxosd_peer_reachable", peer="2") == 1
    assert sample(fams, "paxosd_peer_sent_messages", "paxosd_peer_sent_messages_total",
                  peer="2") == 5


def test_each_node_counts_in_a_registry_of_its_own(tmp_path):
    (tmp_path / "1").mkdir(), (tmp_path / "2").mkdir()
    one, _ = node_metrics(tmp_path / "1")
    two, _ = node_metrics(tmp_path / "2")
    one.wal_bytes.inc(4096)
    name = "paxosd_disk_wal_write_bytes"
    assert sample(families(page(one)), name, name + "_total") == 4096
    assert sample(families(page(two)), name, name + "_total") == 0


def test_leaving_out_created_series_is_the_nodes_own_choice(tmp_path):
    """The node's page has no _created series, without switching them off process-wide: a
    plain prometheus-client counter elsewhere in the process keeps its own."""
    metrics, _ = node_metrics(tmp_path)
    assert "_created" not in page(metrics)
    assert "_created" not in page(metrics, "application/openmetrics-text")
    other = CollectorRegistry()
    Counter("other_events_total", "Events.", registry=other).inc()
    assert "other_events_created" in exposition(other, None)[0].decode()


def test_a_copied_counter_names_itself_when_given_the_wrong_labels():
    copied = CopiedCounter("demo_messages_total", "Messages.", ("peer",))
    with pytest.raises(ValueError, match="demo_messages_total: expected labels"):
        copied.set(1)


def test_the_fsync_buckets_are_etcds():
    assert FSYNC_BUCKETS == exponential_buckets(0.001, 2, 14)
    assert FSYNC_BUCKETS[0] == 0.001 and FSYNC_BUCKETS[-1] == pytest.approx(8.192)


# ---------------------------------------------------------------------------------------------
# A running node.


def write_metrics_config(tmp_path: Path) -> Path:
    """Nodes 1 and 2 name their own metrics address; node 3 takes the file-wide one."""
    ports = free_ports(9)
    lines = ["cluster: test", "members:"]
    for i in (1, 2, 3):
        own = f", metrics: 127.0.0.1:{ports[i + 5]}" if i < 3 else ""
        lines.append(f"  {i}: {{peer: 127.0.0.1:{ports[i - 1]}, "
                     f"client: 127.0.0.1:{ports[i + 2]}{own}}}")
    lines += [f"data_dir: {tmp_path / 'data'}",
              "timing: {heartbeat_ms: 20, election_timeout_ms: [100, 200]}",
              f"metrics: {{address: 127.0.0.1:{ports[8]}}}"]
    path = tmp_path / "cluster.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def http_get(address, target: str = "/metrics") -> tuple[str, dict, str]:
    """(status line, headers by lower-case name, body) of one HTTP/1.1 GET."""
    stream = await trio.open_tcp_stream(address.host, address.port)
    async with stream:
        await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: {address}\r\n"
                              f"Connection: close\r\n\r\n".encode())
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *header_lines = head.decode().split("\r\n")
    headers = {name.lower(): value for name, value in
               (line.split(": ", 1) for line in header_lines)}  # names are case-insensitive
    assert int(headers["content-length"]) == len(body)
    return status, headers, body.decode()


async def scrape(cluster: Cluster, node_id: int) -> dict:
    status, headers, body = await http_get(cluster.configs[node_id].metrics_address())
    assert status.startswith("HTTP/1.1 200")  # the reason phrase is optional
    assert headers["content-type"] == TEXT_0_0_4
    assert names_in(body) == (GOLDEN_FAMILIES, GOLDEN_SERIES)
    return families(body)


async def test_a_running_node_serves_metrics_that_move_with_the_cluster(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        cluster = Cluster(write_metrics_config(tmp_path))
        assert cluster.configs[3].metrics_address() == cluster.configs[1].metrics.address
        async with trio.open_nursery() as nursery:
            for i, config in cluster.configs.items():
                cluster.servers[i] = await nursery.start(
                    partial(serve, services=[serve_gateway]), config)  # it serves /metrics
            leader = await cluster.wait_for_leader()
            followers = [i for i in (1, 2, 3) if i != leader]

            before = {i: await scrape(cluster, i) for i in (1, 2, 3)}
            for i, fams in before.items():
                assert sample(fams, "paxosd_server_has_leader") == 1
                assert sample(fams, "paxosd_server_is_leader") == (1 if i == leader else 0)
                assert sample(fams, "paxosd_server_leader_changes_seen",
                              "paxosd_server_leader_changes_seen_total") >= 1
                assert sample(fams, "paxosd_server_ballot_round") >= 1
                for peer in (1, 2, 3):
                    if peer != i:
                        assert sample(fams, "paxosd_peer_reachable", peer=str(peer)) == 1

            c = await cluster.client(leader)
            replies = await c.call_many(
                [["put", 100 + k, 1, b"key%d" % k, b"value", None] for k in range(300)])
            assert [r.status for r in replies] == ["ok"] * 300
            after = await scrape(cluster, leader)

            def grew(name: str, by: int) -> bool:
                total = name + "_total"
                return sample(after, name, total) >= sample(before[leader], name, total) + by

            assert grew("paxosd_proposals_committed", 300)
            assert grew("paxosd_proposals_applied", 300)
            # A write commits once a quorum has it durable: the leader's own WAL write may
            # finish (and be counted) after the replies, so wait for it (bounded by the test's
            # fail_after).
            while not grew("paxosd_disk_wal_write_bytes", 1):
                await trio.sleep(0.05)
                after = await scrape(cluster, leader)
            assert sample(after, "paxosd_commit_index") == sample(after, "paxosd_applied_index")
            assert sample(after, "paxosd_commit_index") > sample(before[leader],
                                                                 "paxosd_commit_index")
            assert sample(after, "paxosd_client_connections") >= 1
            assert sample(after, "paxosd_proposals_pending") >= 0
            assert sample(after, "paxosd_window_slots_in_flight") >= 0
            # Group commit: one fsync observed per WAL write, with fsync on.
            assert sample(after, "paxosd_disk_wal_fsync_duration_seconds",
                          "paxosd_disk_wal_fsync_duration_seconds_count") >= 1
            # One observation per slot the leader opened, holding every command proposed.
            batches = sample(after, "paxosd_batch_commands", "paxosd_batch_commands_count")
            assert 1 <= batches <= sample(after, "paxosd_commit_index")
            assert sample(after, "paxosd_batch_commands", "paxosd_batch_commands_sum") >= 300
            for peer in followers:
                assert sample(after, "paxosd_peer_sent_messages",
                              "paxosd_peer_sent_messages_total", peer=str(peer)) > 0
                assert sample(after, "paxosd_peer_received_messages",
                              "paxosd_peer_received_messages_total", peer=str(peer)) > 0

            # Followers learn the commands chosen too (bounded wait for the commit index).
            for i in followers:
                while True:
                    fams = await scrape(cluster, i)
                    if sample(fams, "paxosd_applied_index") >= sample(after,
                                                                      "paxosd_commit_index"):
                        break
                    await trio.sleep(0.02)
                assert sample(fams, "paxosd_proposals_applied",
                              "paxosd_proposals_applied_total") >= 300
                assert sample(fams, "paxosd_server_is_leader") == 0
            await c.aclose()

            status, _, body = await http_get(cluster.configs[1].metrics_address(), "/other")
            assert status.startswith("HTTP/1.1 404") and "/metrics" in body
            nursery.cancel_scope.cancel()


async def test_a_node_without_a_metrics_address_serves_none(tmp_path):
    with trio.fail_after(TEST_TIMEOUT):
        cluster = Cluster(write_config(tmp_path))
        assert cluster.configs[1].metrics_address() is None
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, cluster.configs[1])
            # The registry still counts (the status line and tests may read it).
            assert sample(families(page(server.metrics)), "paxosd_server_has_leader") == 0
            nursery.cancel_scope.cancel()
