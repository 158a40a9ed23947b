"""Print paxosd next to every variant of its peers: `python bench/compare.py [--markdown]
[FILE.json ...]`.

Without files it takes, for each variant and scenario, the newest result in bench/results/.
One row per scenario (one at a time, ~100 in flight, peak); each cell gives commits/s, latency
p50 / p99 and CPU per commit over every process. The ratio columns compare paxosd with the
strongest variant of each peer in that scenario only (the one with the most commits/s, named
in the cell): paxosd's commits/s over the peer's (above 1: paxosd ahead) and paxosd's p50 over
the peer's (below 1: paxosd ahead). Below the table, issue 19's targets, met or missed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# Each variant: its peer and its column heading. Older results carry no variant: theirs is
# the only one there was then (the etcd gateway harness, the PySyncObj TCP front end).
VARIANTS = {
    "paxosd": ("paxosd", "paxosd"),
    "etcd-native": ("etcd", "etcd, native gRPC client (Go)"),
    "etcd-gateway": ("etcd", "etcd, HTTP gateway (Python threads)"),
    "pysyncobj-innode": ("pysyncobj", "PySyncObj, load in the nodes"),
    "pysyncobj-tcp": ("pysyncobj", "PySyncObj, TCP front end"),
}
PEERS = {"etcd": "etcd", "pysyncobj": "PySyncObj"}
SCENARIOS = [("one", "one at a time"), ("inflight100", "~100 in flight"), ("peak", "peak")]


def variant_of(report: dict, path: Path) -> str:
    """The variant a result was measured with (legacy results: from their system's name)."""
    if report.get("variant") in VARIANTS:
        return report["variant"]
    name = (report.get("system") or "").lower()
    if "etcd" in name or "-etcd-" in path.name:
        return "etcd-gateway"
    if "pysyncobj" in name or "-pysyncobj-" in path.name:
        return "pysyncobj-tcp"
    return "paxosd"


def load(paths: list[Path]) -> dict:
    """{(variant, scenario): report}, the newest of each (file names start with the date)."""
    found: dict = {}
    for path in sorted(paths, key=lambda p: p.name):
        report = json.loads(path.read_text())
        scenario = report.get("scenario") or path.stem.rsplit("-", 1)[-1]
        found[(variant_of(report, path), scenario)] = report
    return found


def _lat(r: dict, q: str):
    return (r.get("latency_ms") or {}).get(q)


def cell(r: dict | None) -> str:
    if not r:
        return "-"
    cpu = r.get("cpu_us_per_commit")
    out = f"{r['commits_per_s']:,.0f}/s, p50 {fmt(_lat(r, 'p50'))} / p99 {fmt(_lat(r, 'p99'))} ms"
    return out + (f", {cpu:.0f} us CPU" if cpu else "")


def fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def strongest(found: dict, peer: str, scenario: str) -> tuple[str, dict] | None:
    """The peer's variant with the most commits/s in ``scenario``, and its result."""
    runs = [(v, found[(v, scenario)]) for v, (p, _) in VARIANTS.items()
            if p == peer and (v, scenario) in found]
    return max(runs, key=lambda vr: vr[1]["commits_per_s"]) if runs else None


def ratio(paxosd: dict | None, best: tuple[str, dict] | None) -> str:
    if not paxosd or not best:
        return "-"
    variant, r = best
    parts = [f"{paxosd['commits_per_s'] / r['commits_per_s']:.2f}x /s"]
    if _lat(paxosd, "p50") and _lat(r, "p50"):
        parts.append(f"{_lat(paxosd, 'p50') / _lat(r, 'p50'):.2f}x p50")
    return ", ".join(parts) + f" ({variant.split('-', 1)[1]})"


def table(found: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per scenario, a column per variant present, a ratio column per
    peer present."""
    variants = [v for v in VARIANTS if any(k[0] == v for k in found)]
    peers = [p for p in PEERS if any(VARIANTS[v][0] == p for v in variants)]
    head = [""] + [VARIANTS[v][1] for v in variants] + \
        [f"paxosd / strongest {PEERS[p]}" for p in peers]
    rows = []
    for scenario, label in SCENARIOS:
        if not any(k[1] == scenario for k in found):
            continue
        paxosd = found.get(("paxosd", scenario))
        rows.append([label] + [cell(found.get((v, scenario))) for v in variants]
                    + [ratio(paxosd, strongest(found, p, scenario)) for p in peers])
    return head, rows


def targets(found: dict) -> list[str]:
    """Issue 19's targets against this set of results, each met, missed or not measured; the
    peer figures are those of the peer's strongest variant in the scenario (named)."""
    def get(variant, scenario, read):
        r = found.get((variant, scenario))
        try:
            return read(r) if r else None
        except (KeyError, TypeError):
            return None

    def best(peer, scenario, read):
        got = strongest(found, peer, scenario)
        return (read(got[1]), got[0]) if got else (None, "none")

    p50 = lambda r: r["latency_ms"]["p50"]  # noqa: E731
    per_s = lambda r: r["commits_per_s"]  # noqa: E731
    one_p50 = get("paxosd", "one", p50)
    peak = get("paxosd", "peak", per_s)
    etcd_p50, etcd_one = best("etcd", "one", p50)
    etcd_peak, etcd_v = best("etcd", "peak", per_s)
    pso_peak, pso_v = best("pysyncobj", "peak", per_s)
    over = lambda a, b: a / b if a and b else None  # noqa: E731
    checks = [  # (label, value, bound, "<=" or ">=")
        ("one at a time p50 <= 0.5 ms", one_p50, 0.5, "<="),
        ("one at a time p99 <= 1.5 ms", get("paxosd", "one", lambda r: r["latency_ms"]["p99"]),
         1.5, "<="),
        (f"one at a time p50 <= 0.6x etcd's ({etcd_one})", over(one_p50, etcd_p50), 0.6, "<="),
        (f"peak >= 10x etcd's ({etcd_v})", over(peak, etcd_peak), 10, ">="),
        (f"peak >= 7x PySyncObj's ({pso_v})", over(peak, pso_peak), 7, ">="),
        ("peak p99 <= 50 ms", get("paxosd", "peak", lambda r: r["latency_ms"]["p99"]), 50, "<="),
        ("peak CPU per commit <= 6 us", get("paxosd", "peak", lambda r: r["cpu_us_per_commit"]),
         6, "<="),
    ]
    out = []
    for label, value, bound, sense in checks:
        if value is None:
            out.append(f"  {label}: not measured")
            continue
        met = value <= bound if sense == "<=" else value >= bound
        shown = f"{value:.2f}" + ("x" if "x " in label else "")
        out.append(f"  {label}: {shown}, {'met' if met else 'missed'}")
    return out


def render(head: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        lines = ["| " + " | ".join(head) + " |",
                 "|---|" + "---:|" * (len(head) - 1)]
        return lines + ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]


def main(argv: list[str]) -> int:
    markdown = "--markdown" in argv
    paths = [Path(a) for a in argv if a.endswith(".json")] or sorted(RESULTS.glob("*.json"))
    found = load(paths)
    if not found:
        print("no results", file=sys.stderr)
        return 1
    head, rows = table(found)
    print("\n".join(render(head, rows, markdown)))
    print()
    print("targets (issue 19):")
    print("\n".join(targets(found)))
    print()
    for (v, scenario), r in sorted(found.items()):
        st = r.get("settings", {})
        print(f"{v:<16} {scenario:<11} {r.get('date', '?')}  commit {r.get('commit')}  fsync "
              f"{'on' if st.get('fsync') else 'off'}, {st.get('nodes')} nodes, "
              f"{st.get('clients')} clients x {st.get('in_flight')}, {st.get('value_size')} B: "
              f"{r.get('command', '')}")
    m = next(iter(found.values())).get("machine", {})
    print(f"machine: {m.get('cores')} cores, {m.get('cpu')}, Python {m.get('python')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
