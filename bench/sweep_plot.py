"""The plots and the table of bench/sweep.py, from the "sweep" sections of its points (each
``{"group", "system", "x", "summary": {...}}``, see sweep.summary): one PNG per group present,
<stamp>-sweep-<group>.png, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path

COLORS = {"paxosd": "tab:blue", "etcd": "tab:orange"}
LABELS = {"paxosd": "paxosd", "etcd": "etcd 3.4 (native Go client)"}
CONFIG_LABELS = {"3n-fsync-on": "3 nodes\nfsync on", "3n-fsync-off": "3 nodes\nfsync off",
                 "5n-fsync-on": "5 nodes\nfsync on", "5n-fsync-off": "5 nodes\nfsync off"}
READ_LABELS = {"get": "point reads"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(sections: list[dict], group: str, system: str, key: str) -> tuple[list, list]:
    """x and summary[key] of the points of ``group`` and ``system`` that have it, by x."""
    pts = sorted((s["x"], s["summary"].get(key)) for s in sections
                 if s["group"] == group and s["system"] == system
                 and s["summary"].get(key) is not None)
    return [p[0] for p in pts], [p[1] for p in pts]


def _systems(sections: list[dict], group: str) -> list[str]:
    return [s for s in COLORS if any(p["group"] == group and p["system"] == s for p in sections)]


def _thousands(ax) -> None:
    """Plain y tick labels with thousands separators (not matplotlib's 1e7 offset)."""
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def _lines(ax, sections, group, key, ylabel, logy=False) -> None:
    for system in _systems(sections, group):
        xs, ys = _series(sections, group, system, key)
        ax.plot(xs, ys, "o-", color=COLORS[system], label=LABELS[system])
        errors = dict(zip(*_series(sections, group, system, "errors")))
        for x, y in zip(xs, ys):
            text = f"{y:,.0f}" if y >= 10 else f"{y:.2g}"
            if errors.get(x):  # e.g. etcd's "too many requests": the point is past its limit
                text += f"\n({errors[x]:,} errors)"
            ax.annotate(text, (x, y), fontsize=7, textcoords="offset points", xytext=(0, 5),
                        ha="center")
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
        _thousands(ax)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _curves(plt, sections, group, xlabel, title, path: Path) -> Path:
    """Commits/s (left) and p99 (right, log) against x (log) for both systems."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    _lines(ax1, sections, group, "commits_per_s", "commits/s")
    _lines(ax2, sections, group, "p99_ms", "p99 latency (ms, log)", logy=True)
    for ax in (ax1, ax2):
        ax.set_xlabel(xlabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _bars(ax, categories: list, sections, group, key, ylabel, names=None) -> None:
    """Bars of summary[key] per category (x) and system, side by side, values on top."""
    systems = _systems(sections, group)
    width = 0.8 / max(1, len(systems))
    for j, system in enumerate(systems):
        got = {s["x"]: s["summary"].get(key) for s in sections
               if s["group"] == group and s["system"] == system}
        label = LABELS[system]  # on the system's first bar only: one legend entry each
        for i, cat in enumerate(categories):
            value = got.get(cat)
            if value is None:
                continue
            x = i + (j - (len(systems) - 1) / 2) * width
            ax.bar(x, value, width, color=COLORS[system], label=label)
            label = None
            ax.annotate(f"{value:,.0f}" if value >= 10 else f"{value:.2g}", (x, value),
                        fontsize=7, ha="center", textcoords="offset points", xytext=(0, 2))
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels([(names or {}).get(c, str(c)) for c in categories], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    _thousands(ax)
    ax.grid(alpha=0.3, axis="y")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _categories(sections, group, order=None) -> list:
    seen = []
    for s in sections:
        if s["group"] == group and s["x"] not in seen:
            seen.append(s["x"])
    if order:
        return [c for c in order if c in seen] + [c for c in seen if c not in order]
    return sorted(seen)


def _panels(plt, sections, group, panels, title, path: Path, names=None, order=None) -> Path:
    """One bar panel per (summary key, y label) of ``panels``."""
    cats = _categories(sections, group, order)
    fig, axes = plt.subplots(1, len(panels), figsize=(min(5.5 * len(panels), 18), 4))
    axes = axes if len(panels) > 1 else [axes]
    for ax, (key, ylabel) in zip(axes, panels):
        _bars(ax, cats, sections, group, key, ylabel, names)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_all(sections: list[dict], out_dir: Path, stamp: str, note: str = "") -> list[Path]:
    """Draw every group present in ``sections`` into ``out_dir``; the files written."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    groups = {s["group"] for s in sections}
    tail = f" ({stamp}{', ' + note if note else ''})"
    written = []
    if "inflight" in groups:
        written.append(_curves(plt, sections, "inflight", "commands in flight (log)",
                               "3 nodes, fsync on, 64 B values: throughput and p99 against "
                               "commands in flight" + tail,
                               out_dir / f"{stamp}-sweep-inflight.png"))
    if "value" in groups:
        written.append(_curves(plt, sections, "value", "value size (bytes, log)",
                               "3 nodes, fsync on: throughput and p99 against value size" + tail,
                               out_dir / f"{stamp}-sweep-value.png"))
    if "config" in groups:
        written.append(_panels(plt, sections, "config", [("commits_per_s", "commits/s"),
                                                         ("p99_ms", "p99 latency (ms)")],
                               "3 vs 5 nodes, fsync on vs off" + tail,
                               out_dir / f"{stamp}-sweep-config.png", CONFIG_LABELS,
                               list(CONFIG_LABELS)))
    if "watch" in groups:
        written.append(_panels(plt, sections, "watch",
                               [("watch_events_per_s", "changes delivered/s (all watchers)"),
                                ("commits_per_s", "writers' commits/s")],
                               "watch fan-out: every watcher follows every key written" + tail,
                               out_dir / f"{stamp}-sweep-watch.png",
                               _watch_names(sections)))
    if "reads" in groups:
        written.append(_panels(plt, sections, "reads",
                               [("reads_per_s", "reads/s"), ("read_keys_per_s", "keys returned/s"),
                                ("read_p99_ms", "read p99 latency (ms)"),
                                ("commits_per_s", "writers' commits/s")],
                               "reads mixed with writes, 3 nodes, fsync on: gets of random keys "
                               "(most never written), ranges from a random key on" + tail,
                               out_dir / f"{stamp}-sweep-reads.png", _read_names(sections)))
    return written


def _watch_names(sections) -> dict:
    return {s["x"]: f"{s['x']:,} watchers" if s["x"] else "no watchers"
            for s in sections if s["group"] == "watch"}


def _read_names(sections) -> dict:
    names = dict(READ_LABELS)
    for s in sections:
        x = s["x"]
        if s["group"] == "reads" and isinstance(x, str) and x.startswith("range"):
            names[x] = f"ranges of <= {x[5:]} keys"
    return names


def _fmt(value, digits=".2f") -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else format(value, digits)


def markdown(sections: list[dict]) -> str:
    """One table row per point: group, x, system, commits/s, p50, p99, errors and, where
    measured, reads/s (keys/s) and watch changes/s (in brackets the share of commits x
    watchers delivered inside the interval)."""
    rows = ["| group | x | system | commits/s | p50 ms | p99 ms | errors | reads/s (keys/s) "
            "| watch changes/s | load before |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in sections:
        m = s["summary"]
        reads = (f"{_fmt(m['reads_per_s'])} ({_fmt(m.get('read_keys_per_s'))})"
                 if m.get("reads_per_s") is not None else "-")
        watch = _fmt(m.get("watch_events_per_s")) if m.get("watchers") else "-"
        if m.get("watch_delivered") is not None:
            watch += f" ({m['watch_delivered']:.0%})"
        if m.get("watch_cut_off"):
            watch += f", {m['watch_cut_off']} cut off"
        load = s.get("load_before")
        rows.append(f"| {s['group']} | {s['x']} | {s['system']} | {_fmt(m['commits_per_s'])} | "
                    f"{_fmt(m['p50_ms'])} | {_fmt(m['p99_ms'])} | {m.get('errors', 0)} | "
                    f"{reads} | {watch} | {load[0] if load else '-'} |")
    return "\n".join(rows)
