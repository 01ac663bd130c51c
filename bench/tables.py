"""The cells of the benchmarks' result tables: a median over repetitions, formatted.

Each bench script runs a scenario several times and prints one markdown row per setting
with the median of each measure; a repetition that could not measure something records
None, which leaves that repetition out (and a cell with no value at all reads "-").
"""
from __future__ import annotations

import statistics


def median_of(rows, key):
    """The median of `key` over the repetitions' result dicts, None if none measured it."""
    values = [row[key] for row in rows if row.get(key) is not None]
    return statistics.median(values) if values else None


def cell(value, digits: int = 1) -> str:
    """A table cell: the value with `digits` decimals, "-" for None."""
    return "-" if value is None else f"{value:.{digits}f}"


def spread(values) -> str:
    """Median [min-max] with thousands separators, "-" if nothing was measured."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"
