"""daemon.runtime.metrics: the text format parses with the Prometheus client's own parser, and a running
node serves /metrics over HTTP whose values move as the cluster works."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from daemon.runtime.metrics import CONTENT_TYPE, FSYNC_BUCKETS, Registry, exponential_buckets
from daemon.gateway.serve import serve_gateway
from daemon.runtime.server import serve
from tests.test_server import TEST_TIMEOUT, Cluster, free_ports


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict, family: str, name: str | None = None, **labels) -> float:
    """The value of the sample ``name`` (default: the family's own) with these labels."""
    name = name or family
    for s in fams[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError(f"no sample {name}{labels} in {fams[family].samples}")


# ---------------------------------------------------------------------------------------------
# The format.


def test_counters_gauges_and_histograms_render_as_prometheus_text():
    r = Registry()
    c = r.counter("demo_events_total", "Events.\nTwo lines, a \\ too.")
    c.inc()
    c.inc(4)
    g = r.gauge("demo_up", "Up.", labels=("peer",))
    g.labels(2).set(1)
    g.labels('odd "name"\n').set(0.25)
    h = r.histogram("demo_seconds", "Latency.", [0.1, 1, 10])
    for v in (0.05, 0.1, 0.5, 20):
        h.observe(v)
    text = r.render()
    assert text.endswith("\n")
    fams = families(text)
    assert fams["demo_events"].type == "counter"
    assert sample(fams, "demo_events", "demo_events_total") == 5
    assert fams["demo_events"].documentation == "Events.\nTwo lines, a \\ too."
    assert sample(fams, "demo_up", peer="2") == 1
    assert sample(fams, "demo_up", peer='odd "name"\n') == 0.25
    assert fams["demo_seconds"].type == "histogram"
    buckets = {s.labels["le"]: s.value for s in fams["demo_seconds"].samples
               if s.name == "demo_seconds_bucket"}
    assert buckets == {"0.1": 2, "1": 3, "10": 3, "+Inf": 4}  # cumulative; le is inclusive
    assert sample(fams, "demo_seconds", "demo_seconds_count") == 4
    assert sample(fams, "demo_seconds", "demo_seconds_sum") == pytest.approx(20.65)


def test_a_counter_cannot_go_down_and_names_are_registered_once():
    r = Registry()
    c = r.counter("x_total", "x")
    with pytest.raises(ValueError):
        c.inc(-1)
    with pytest.raises(ValueError):
        r.gauge("x_total", "again")


def test_collect_callbacks_run_before_each_render():
    r = Registry()
    g = r.gauge("demo_value", "v")
    state = {"n": 1}
    r.on_collect(lambda: g.set(state["n"]))
    assert sample(families(r.render()), "demo_value") == 1
    state["n"] = 7
    assert sample(families(r.render()), "demo_value") == 7


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
    assert headers["content-type"] == CONTENT_TYPE
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
            assert grew("paxosd_disk_wal_write_bytes", 1)
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
    from tests.test_server import write_config

    with trio.fail_after(TEST_TIMEOUT):
        cluster = Cluster(write_config(tmp_path))
        assert cluster.configs[1].metrics_address() is None
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, cluster.configs[1])
            # The registry still counts (the status line and tests may read it).
            assert "paxosd_server_has_leader 0" in server.metrics.registry.render()
            nursery.cancel_scope.cancel()
