"""The peer benchmarks (bench/peers/) and their comparison (bench/compare.py), briefly.

The etcd smoke test builds the Go client on Debian's clientv3 sources and drives a real
3-member etcd for about a second, with a few reads and watches; it is skipped, with the reason, where go, etcd or those
sources are not installed (CI machines need not have them). No speed is asserted.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"


def _load(name: str, path: Path):
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))


def _why_no_etcd_native() -> str | None:
    """The reason the etcd smoke test cannot run here, or None."""
    if shutil.which("go") is None:
        return "go not installed (Debian: golang-go)"
    if shutil.which("etcd") is None:
        return "etcd not installed (Debian: etcd-server)"
    native = _load("etcd_native", PEERS / "etcd_native.py")
    try:
        native.clientv3_path()
    except native.BuildError as e:
        return str(e)
    return None


def test_the_native_etcd_client_builds_and_drives_a_real_cluster(tmp_path):
    reason = _why_no_etcd_native()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "etcd.json"
    result = subprocess.run(
        [sys.executable, str(PEERS / "etcd_native.py"), "--clients", "2", "--in-flight", "2",
         "--duration", "1", "--warmup", "0.3", "--keys", "100", "--read-ratio", "0.2",
         "--range-limit", "5", "--watchers", "4", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["variant"] == "etcd-native" and report["system"].startswith("etcd ")
    assert report["commits"] > 0 and report["errors"] == 0
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    s = report["settings"]
    assert (s["nodes"], s["clients"], s["in_flight"], s["value_size"], s["fsync"]) == \
        (3, 2, 2, 64, True)
    assert set(report["cpu_seconds"]["nodes"]) == {"1", "2", "3"}
    assert len(report["cpu_seconds"]["clients"]) == 1
    # The hooks of the watch and range-read comparisons: reads answered, every watch open and
    # delivering the writers' changes.
    reads, watch = report["reads"], report["watch"]
    assert reads["reads"] > 0 and reads["range_limit"] == 5 and reads["latency_ms"]["p50"] > 0
    assert (watch["watchers"], watch["started"], watch["canceled"]) == (4, 4, 0)
    assert watch["events"] > 0


def test_the_build_names_what_is_missing(tmp_path):
    native = _load("etcd_native", PEERS / "etcd_native.py")
    with pytest.raises(native.BuildError, match="golang-etcd-server-dev"):
        native.clientv3_path(tmp_path)


def _report(variant: str, scenario: str, per_s: float, p50: float, p99: float) -> dict:
    return {"system": variant, "variant": variant, "scenario": scenario, "commits_per_s": per_s,
            "latency_ms": {"p50": p50, "p99": p99}, "cpu_us_per_commit": 10.0,
            "settings": {"nodes": 3, "clients": 1, "in_flight": 1, "value_size": 64}}


def test_compare_rates_paxosd_against_the_strongest_variant_of_each_peer(tmp_path):
    compare = _load("compare", ROOT / "bench" / "compare.py")
    runs = [("paxosd", "peak", 20_000, 5.0, 40.0),
            ("etcd-native", "peak", 10_000, 20.0, 80.0),
            ("etcd-gateway", "peak", 4_000, 50.0, 150.0),
            ("pysyncobj-innode", "peak", 3_000, 60.0, 400.0),
            ("pysyncobj-tcp", "peak", 5_000, 40.0, 900.0)]
    paths = []
    for variant, scenario, per_s, p50, p99 in runs:
        path = tmp_path / f"2026-11-27-1200-{variant}-{scenario}.json"
        path.write_text(json.dumps(_report(variant, scenario, per_s, p50, p99)))
        paths.append(path)
    # A result from before variants existed counts as the etcd gateway harness.
    legacy = tmp_path / "2026-11-22-2214-etcd-one.json"
    legacy.write_text(json.dumps({"system": "etcd 3.4.23", "commits_per_s": 500.0,
                                  "latency_ms": {"p50": 1.8, "p99": 6.0}}))
    found = compare.load(paths + [legacy])
    assert ("etcd-gateway", "one") in found
    head, rows = compare.table(found)
    peak = next(r for r in rows if r[0] == "peak")
    assert len(head) == len(peak) == 1 + 5 + 2
    assert peak[-2] == "2.00x /s, 0.25x p50 (native)"   # etcd native, not the gateway
    assert peak[-1] == "4.00x /s, 0.12x p50 (tcp)"      # PySyncObj's TCP front end was ahead
    assert "20,000/s, p50 5.00 / p99 40.00 ms" in peak[1]
    lines = compare.targets(found)
    assert any("peak >= 10x etcd's (etcd-native): 2.00x, missed" in line for line in lines)
    assert any("peak >= 7x PySyncObj's (pysyncobj-tcp): 4.00x, missed" in line for line in lines)
    assert any("peak p99 <= 50 ms: 40.00, met" in line for line in lines)
