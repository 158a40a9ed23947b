"""bench/sweep.py without a cluster: its plan of points, and its plots and table drawn from a
small fake result set (written as the sweep writes its files, redrawn with --plot-only).

No benchmark runs here and no speed is asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import sweep  # noqa: E402
import sweep_plot  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _section(group, system, x, commits, p99, **extra) -> dict:
    return {"name": "fake", "group": group, "system": system, "x": x, "command": "-",
            "load_before": [0.5, 0.4, 0.3], "load_after": [0.6, 0.4, 0.3], "wall_s": 1.0,
            "summary": dict({"commits_per_s": commits, "p50_ms": p99 / 3, "p99_ms": p99,
                             "errors": 0}, **extra)}


def fake_sections() -> list[dict]:
    out = []
    for system, scale in (("paxosd", 3.0), ("etcd", 1.0)):
        for total in (1, 100, 4000):
            out.append(_section("inflight", system, total, scale * 1000 * total ** 0.5,
                                total ** 0.5))
        for size in (16, 4096, 65536):
            out.append(_section("value", system, size, scale * 1e6 / (100 + size ** 0.7), 5.0))
        out.append(_section("watch", system, 0, scale * 20000, 40.0))
        out.append(_section("watch", system, 1000, scale * 5000, 90.0, watchers=1000,
                            watch_started=1000, watch_events_per_s=scale * 5e6, watch_cut_off=0))
        out.append(_section("reads", system, "get", scale * 2000, 8.0, reads_per_s=scale * 18000,
                            read_keys_per_s=scale * 600.0, read_p99_ms=4.0))
        out.append(_section("reads", system, "range100", scale * 900.0, 20.0,
                            reads_per_s=scale * 8000.0, read_keys_per_s=scale * 800000.0,
                            read_p99_ms=12.0))
    for label in ("3n-fsync-on", "3n-fsync-off", "5n-fsync-on", "5n-fsync-off"):
        out.append(_section("config", "paxosd", label, 20000.0, 10.0))
    out.append(_section("config", "etcd", "3n-fsync-on", 8000.0, 30.0))
    return out


def test_the_plots_and_the_table_are_drawn_from_a_fake_sweep(tmp_path):
    sections = fake_sections()
    written = sweep_plot.plot_all(sections, tmp_path, "fake", "a fake result set")
    names = sorted(p.name for p in written)
    assert names == sorted(f"fake-sweep-{g}.png" for g in sweep.GROUPS)
    for path in written:
        assert path.read_bytes()[:8] == PNG
    table = sweep_plot.markdown(sections).splitlines()
    assert len(table) == 2 + len(sections)
    assert any("| range100 | etcd |" in row and "800,000" in row for row in table)
    assert any("| range100 | paxosd |" in row and "2,400,000" in row for row in table)


def test_plot_only_redraws_from_the_files_a_sweep_writes(tmp_path):
    sections = [s for s in fake_sections() if s["group"] == "inflight"]
    points = []
    for s in sections:
        name = f"fake-sweep-{s['group']}-{s['system']}-{s['x']}.json"
        (tmp_path / name).write_text(json.dumps({"commits_per_s": 1.0, "sweep": s}))
        points.append(name)
    manifest = tmp_path / "fake-sweep.json"
    manifest.write_text(json.dumps({"name": "fake", "points": points}))
    assert sweep.main(["--plot-only", str(manifest)]) == 0
    assert (tmp_path / "fake-sweep-inflight.png").read_bytes()[:8] == PNG


def test_the_plan_spreads_the_totals_as_the_tools_do():
    args = sweep.parse_args(["--groups", "inflight", "--in-flight", "1,100,10000",
                             "--etcd-max-in-flight", "4000"])
    got = [(p.system, p.x, p.options) for p in sweep.plan(args)]
    assert got == [
        ("paxosd", 1, ["--clients", "1", "--in-flight", "1"]),
        ("etcd", 1, ["--clients", "1", "--in-flight", "1"]),
        ("paxosd", 100, ["--clients", "2", "--in-flight", "50"]),
        ("etcd", 100, ["--clients", "10", "--in-flight", "10"]),
        ("paxosd", 10000, ["--clients", "4", "--in-flight", "2500"]),
    ]
    args = sweep.parse_args(["--groups", "config,reads", "--systems", "paxosd"])
    assert [p.x for p in sweep.plan(args)] == ["3n-fsync-on", "3n-fsync-off", "5n-fsync-on",
                                               "5n-fsync-off", "get", "range100"]
    args = sweep.parse_args(["--groups", "reads", "--range-limit", "50", "--read-ratio", "0.8"])
    got = [(p.system, p.x, p.options) for p in sweep.plan(args)]
    ranges = ["--read-ratio", "0.8", "--range-limit", "50"]
    assert got[2:] == [("paxosd", "range50", ["--clients", "2", "--in-flight", "50", *ranges]),
                       ("etcd", "range50", ["--clients", "10", "--in-flight", "10", *ranges])]
    args = sweep.parse_args(["--groups", "reads", "--range-limit", "0"])
    assert [(p.system, p.x) for p in sweep.plan(args)] == [("paxosd", "get"), ("etcd", "get")]


def test_the_summary_reads_both_tools_reads_in_one_shape():
    """paxosd bench's "reads" section is etcdbench's: one summary for both systems."""
    reads = {"reads": 900, "reads_per_s": 300.0, "keys": 90000, "keys_per_s": 30000.0,
             "keys_per_read_mean": 100.0, "latency_ms": {"p50": 2.0, "p99": 7.5},
             "read_ratio": 0.9, "range_limit": 100}
    for system in sweep.SYSTEMS:
        report = {"commits_per_s": 50.0, "latency_ms": {"p50": 3.0, "p99": 9.0},
                  "settings": {"duration_s": 3.0}, "reads": reads}
        got = sweep.summary(report, system)
        assert (got["reads_per_s"], got["read_keys_per_s"], got["read_keys_per_read"],
                got["read_p99_ms"], got["commits_per_s"]) == (300.0, 30000.0, 100.0, 7.5, 50.0)
    report = {"commits_per_s": 50.0, "latency_ms": {}, "settings": {}, "reads": None}
    assert "reads_per_s" not in sweep.summary(report, "paxosd")


def test_bad_lists_are_refused_naming_what_was_wrong(capsys):
    with pytest.raises(SystemExit):
        sweep.parse_args(["--groups", "inflight,speed"])
    assert "unknown 'speed'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.parse_args(["--in-flight", "1,ten"])
    assert "'1,ten'" in capsys.readouterr().err
