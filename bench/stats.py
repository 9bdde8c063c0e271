"""Small statistics helpers (medians, percentiles, ratios, summed counts, the
most events in one window)."""
from __future__ import annotations

import statistics


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values, p: float):
    """Nearest-rank percentile (p in 0..100)."""
    values = sorted(values)
    if not values:
        return None
    k = max(0, min(len(values) - 1, int(round(p / 100 * len(values) + 0.5)) - 1))
    return values[k]


def ratio(a, b):
    return None if not a or not b else a / b


def sum_counts(dicts) -> dict:
    """The counts of every ``{name: count}`` in ``dicts``, summed name by name."""
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def most_in_any_window(times: list[float], period: float) -> int:
    """The largest number of ``times`` in one window ``[t, t + period)`` anchored at any of
    them (a window holding the most arrivals can always be slid to start at one)."""
    times = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j < len(times) and times[j] < start + period:
            j += 1
        best = max(best, j - i)
    return best
