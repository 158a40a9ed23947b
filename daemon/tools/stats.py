"""Nearest-rank percentiles and latency summaries, for ``paxosd bench``, ``paxosd demo`` and the
benchmark scripts. Standard library only: the peer benchmarks (bench/peers/) import it too."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["latency_summary", "percentile"]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value that at least a fraction ``q`` of the values do not
    exceed (NaN if there are none)."""
    n = len(sorted_values)
    if not n:
        return float("nan")
    k = math.ceil(q * n - 1e-9) - 1  # the epsilon: 0.55 * 100 is 55.00000000000001
    return sorted_values[min(max(k, 0), n - 1)]


def latency_summary(seconds: Iterable[float]) -> dict | None:
    """p50, p90, p99, p99.9, max and mean of latencies given in seconds, in milliseconds (None
    for no values)."""
    values = sorted(seconds)
    if not values:
        return None
    ms = 1000.0
    return {"p50": percentile(values, 0.5) * ms, "p90": percentile(values, 0.9) * ms,
            "p99": percentile(values, 0.99) * ms, "p999": percentile(values, 0.999) * ms,
            "max": values[-1] * ms, "mean": sum(values) / len(values) * ms}
