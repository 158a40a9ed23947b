"""Print paxosd next to its peers, target by target: `python bench/compare.py [FILE.json ...]`.

Without arguments it takes, for each system and scenario, the newest result in bench/results/.
Ratios are paxosd's figure over the peer's: above 1 is better for throughput, below 1 is
better for latency and CPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SYSTEMS = ("paxosd", "pysyncobj", "etcd")

# (label, scenario, how to read the figure, "higher" or "lower" is better, the target)
ROWS = [
    ("100 in flight: commits/s", "inflight100", lambda r: r["commits_per_s"], "higher", None),
    ("100 in flight: p50 ms", "inflight100", lambda r: r["latency_ms"]["p50"], "lower", None),
    ("100 in flight: p99 ms", "inflight100", lambda r: r["latency_ms"]["p99"], "lower", "<= 10"),
    ("one at a time: commits/s", "one", lambda r: r["commits_per_s"], "higher", None),
    ("one at a time: p50 ms", "one", lambda r: r["latency_ms"]["p50"], "lower", "<= 0.5"),
    ("one at a time: p99 ms", "one", lambda r: r["latency_ms"]["p99"], "lower", "<= 2"),
    ("peak: commits/s", "peak", lambda r: r["commits_per_s"], "higher", ">= 100,000"),
    ("peak: p99 ms", "peak", lambda r: r["latency_ms"]["p99"], "lower", "<= 50"),
    ("peak: CPU us per commit", "peak", lambda r: r["cpu_us_per_commit"], "lower", "<= 20"),
    ("100 in flight: CPU us per commit", "inflight100", lambda r: r["cpu_us_per_commit"], "lower",
     None),
]


def system_of(report: dict, path: Path) -> str:
    name = (report.get("system") or "").lower()
    for s in SYSTEMS:
        if s in name or f"-{s}-" in path.name:
            return s
    return "paxosd"


def load(paths: list[Path]) -> dict:
    found: dict = {}
    for path in sorted(paths):
        report = json.loads(path.read_text())
        scenario = report.get("scenario") or path.stem.rsplit("-", 1)[-1]
        found[(system_of(report, path), scenario)] = report  # sorted: the newest wins
    return found


def fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv if a.endswith(".json")] or sorted(RESULTS.glob("*.json"))
    found = load(paths)
    if not found:
        print("no results", file=sys.stderr)
        return 1
    present = [s for s in SYSTEMS if any(k[0] == s for k in found)]
    peers = [s for s in present if s != "paxosd"]
    head = ["", "target"] + present + [f"paxosd/{s}" for s in peers]
    rows = []
    for label, scenario, read, _better, target in ROWS:
        values = {}
        for s in present:
            r = found.get((s, scenario))
            try:
                values[s] = read(r) if r else None
            except (KeyError, TypeError):
                values[s] = None
        ratios = []
        for s in peers:
            a, b = values.get("paxosd"), values.get(s)
            ratios.append(f"{a / b:.2f}x" if a is not None and b else "-")
        rows.append([label, target or ""] + [fmt(values[s]) for s in present] + ratios)
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    print(line(head))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))
    print()
    for (s, scenario), r in sorted(found.items()):
        st = r.get("settings", {})
        print(f"{s:<9} {scenario:<11} {r.get('date', '?')}  commit {r.get('commit')}  fsync "
              f"{'on' if st.get('fsync') else 'off'}, {st.get('nodes')} nodes, "
              f"{st.get('clients')} clients x {st.get('in_flight')}, {st.get('value_size')} B: "
              f"{r.get('command', '')}")
    m = next(iter(found.values())).get("machine", {})
    print(f"machine: {m.get('cores')} cores, {m.get('cpu')}, Python {m.get('python')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
