"""`paxosd bench` end to end, briefly: a local cluster, client processes, the report.

No speed is asserted: the machine running the suite is shared and its figures swing.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.client.client import SyncClient
from daemon.tools import bench
from daemon.tools.bench import KEYSPACE, LocalCluster, find_leader, local_config, percentile

ROOT = Path(__file__).resolve().parent.parent


def test_a_short_bench_commits_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "daemon.tools.cli", "bench", "--duration", "2", "--warmup", "0.5",
         "--clients", "2", "--in-flight", "20", "--quiet", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["commits"] > 0 and report["commits_per_s"] > 0
    lat = report["latency_ms"]
    assert set(lat) >= {"p50", "p90", "p99", "p999", "max"}
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    s = report["settings"]
    assert (s["nodes"], s["clients"], s["in_flight"], s["value_size"], s["fsync"]) == (3, 2, 20, 64, True)
    assert s["config"].endswith("paxosd.yaml") and s["window"] >= 1
    assert set(report["cpu_seconds"]["nodes"]) == {"1", "2", "3"}
    assert len(report["cpu_seconds"]["clients"]) == 2
    assert report["leader"]["slots_committed"] > 0

    # The table: a title, a rule, then "key  value" rows, keys aligned, the figures present.
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines[0].startswith("paxosd bench")
    rule = lines[1].split()
    assert len(rule) == 2 and set(rule[0]) == {"-"}
    width = len(rule[0])
    rows = {line[2:2 + width].strip(): line[2 + width:].strip() for line in lines[2:]}
    assert all(line[2 + width:3 + width] == " " for line in lines[2:])
    for key in ("settings", "commits/s", "latency ms", "leader batch", "leader window",
                "cpu seconds", "cpu per command"):
        assert key in rows, (key, result.stdout)
    assert f"{report['commits_per_s']:,.0f}" in rows["commits/s"]
    assert all(word in rows["latency ms"] for word in ("p50", "p90", "p99", "p99.9", "max"))


def test_a_short_range_bench_returns_full_ranges_and_reports_them(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "daemon.tools.cli", "bench", "--duration", "1.5", "--warmup", "0.3",
         "--clients", "1", "--in-flight", "20", "--read-ratio", "0.5", "--range-limit", "10",
         "--quiet", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    s = report["settings"]
    assert (s["read_ratio"], s["range_limit"], s["preloaded_keys"]) == (0.5, 10, KEYSPACE)
    assert report["commits"] > 0 and report["commits_per_s"] > 0  # the writers go on
    reads = report["reads"]  # the shape bench/peers/etcdbench reports (bench/sweep.py reads both)
    assert reads["reads"] > 0 and reads["reads_per_s"] > 0
    assert reads["keys"] > 0 and reads["keys_per_s"] > 0
    assert (reads["read_ratio"], reads["range_limit"]) == (0.5, 10)
    # Every key is there: a range is short only when it starts among the last 9 keys in order.
    assert 9.5 <= reads["keys_per_read_mean"] <= 10
    lat = reads["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert report["errors"] == 0, report["error_kinds"]
    assert "keys/s returned" in result.stdout and "read latency ms" in result.stdout
    assert "ranges of <= 10 keys over 100,000 preloaded" in result.stdout


def test_the_preload_writes_every_key_of_the_keyspace():
    cluster = LocalCluster(3)
    try:
        endpoints = cluster.start()
        leader = find_leader(endpoints, time.monotonic() + 30)
        assert bench.preload(leader, 8, time.monotonic() + 120) == KEYSPACE
        with SyncClient(endpoints, timeout=10) as client:
            found = client.range(b"k", prefix=True, count_only=True)
            assert found.count == KEYSPACE
            assert client.get(b"k%d" % (KEYSPACE - 1)) is not None
            assert client.get(b"k%d" % KEYSPACE) is None
    finally:
        cluster.stop()


def _bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paxosd bench")
    bench.add_arguments(parser)
    return parser


@pytest.mark.parametrize("value", ["-1", "ten", "2.5"])
def test_a_bad_range_limit_is_refused_naming_the_option(value, capsys):
    with pytest.raises(SystemExit) as exc:
        _bench_parser().parse_args(["--read-ratio", "0.5", "--range-limit", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --range-limit" in err and repr(value) in err


def test_a_range_limit_without_reads_is_refused_before_any_cluster_starts(capsys):
    args = _bench_parser().parse_args(["--range-limit", "100"])
    assert args.read_ratio == 0 and args.range_limit == 100
    assert bench.run(args) == 2
    err = capsys.readouterr().err
    assert "--range-limit" in err and "--read-ratio" in err
    assert _bench_parser().parse_args([]).range_limit == 0  # the default: gets


def test_percentiles_are_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 0.999) == 100
    assert percentile(values, 1.0) == 100
    assert percentile([7], 0.5) == 7
    assert math.isnan(percentile([], 0.5))
    thousand = list(range(1, 1001))
    assert percentile(thousand, 0.999) == 999 and percentile(thousand, 0.9) == 900


def test_the_local_cluster_keeps_the_files_settings(tmp_path):
    base = ROOT / "etc" / "paxosd.yaml"
    doc = local_config(base, 3, [9001, 9002, 9003, 9004, 9005, 9006], tmp_path, None, None)
    import yaml

    original = yaml.safe_load(base.read_text())
    for key in ("timing", "batching", "storage", "limits", "cluster"):
        assert doc[key] == original[key]
    assert doc["data_dir"] == str(tmp_path)
    assert doc["members"][2] == {"peer": "127.0.0.1:9003", "client": "127.0.0.1:9004"}
    off = local_config(base, 3, list(range(9001, 9007)), tmp_path, False, 16)
    assert off["storage"]["fsync"] is False and off["batching"]["window"] == 16
    assert off["batching"]["max_batch_commands"] == original["batching"]["max_batch_commands"]


def test_the_local_cluster_finds_the_files_the_base_config_names(tmp_path):
    base = tmp_path / "etc" / "paxosd.yaml"
    base.parent.mkdir()
    base.write_text("cluster: c\nmembers: {1: {peer: 127.0.0.1:1, client: 127.0.0.1:2}}\n"
                    "auth: {secret_file: secret}\n"
                    "tls: {ca: /abs/ca.pem, cert: certs/node.pem, key: certs/node.key}\n")
    doc = local_config(base, 3, list(range(9001, 9007)), tmp_path / "data", None, None)
    assert doc["auth"]["secret_file"] == str(tmp_path / "etc" / "secret")
    assert doc["tls"] == {"ca": "/abs/ca.pem", "cert": str(tmp_path / "etc" / "certs/node.pem"),
                          "key": str(tmp_path / "etc" / "certs/node.key")}
