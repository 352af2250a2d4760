"""The statistical checks, as pure functions of measured figures: each returns one `CheckResult`.

Measuring (reading tables) happens in `pipelines.quality.gate`; here are only the rules, so each can be
tested with numbers worked out by hand.
"""

from __future__ import annotations

import datetime as dt
from statistics import median
from typing import List, Optional, Sequence, Tuple

import numpy as np

from pipelines.quality.results import CheckResult

PSI_EPSILON = 1e-4  # stands in for an empty bin's share, so the logarithm stays finite


def _undecided(rows: int, min_rows: int) -> str:
    return f"; not judged: {rows} rows, fewer than quality.min_rows={min_rows}" if 0 < rows < min_rows else ""


def completeness(dataset: str, column: str, present: int, rows: int, threshold: float, severity: str,
                 min_rows: int = 0) -> CheckResult:
    """The share of rows with a value; a share of fewer than `min_rows` rows is reported, not judged."""
    value = present / rows if rows else None
    undecided = _undecided(rows, min_rows)
    return CheckResult(f"completeness.{dataset}.{column}", "completeness", f"bronze.{dataset}", value,
                       f">= {threshold:g}", severity, value is None or bool(undecided) or value >= threshold,
                       f"{present} of {rows} rows have a value{undecided}")


def value_range(dataset: str, column: str, outside: int, rows: int, low: Optional[float], high: Optional[float],
                max_outside_fraction: float, severity: str, min_rows: int = 0) -> CheckResult:
    value = outside / rows if rows else None
    bounds = f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
    undecided = _undecided(rows, min_rows)
    return CheckResult(f"range.{dataset}.{column}", "range", f"silver.{dataset}", value,
                       f"<= {max_outside_fraction:g} of rows outside {bounds}", severity,
                       value is None or bool(undecided) or value <= max_outside_fraction,
                       f"{outside} of {rows} rows outside {bounds}{undecided}")


def row_count(dataset: str, rows_per_file: Optional[float], history: Sequence[float], band: float,
              severity: str, not_applicable: Optional[str] = None) -> CheckResult:
    """Rows per ingested file against the median of earlier passing runs (no history: nothing to judge;
    `not_applicable`: the reason there is no usual size, e.g. a change feed)."""
    name, table = f"row_count.{dataset}", f"bronze.{dataset}"
    if not_applicable or rows_per_file is None or not history:
        detail = not_applicable or ("no earlier runs to compare with" if not history else "no new files")
        return CheckResult(name, "row_count", table, None if not_applicable else rows_per_file,
                           f"within {band:.0%} of the median of past runs", severity, True, detail)
    mid = median(history)
    low, high = mid * (1 - band), mid * (1 + band)
    return CheckResult(name, "row_count", table, rows_per_file, f"in [{low:.6g}, {high:.6g}] (median {mid:.6g} "
                       f"of {len(history)} runs +-{band:.0%})", severity, low <= rows_per_file <= high,
                       "rows per ingested file")


def freshness(dataset: str, latest: Optional[dt.datetime], cutoff: dt.datetime, max_age_hours: float,
              severity: str) -> CheckResult:
    age = None if latest is None else (cutoff - latest).total_seconds() / 3600
    return CheckResult(f"freshness.{dataset}", "freshness", f"silver.{dataset}", age, f"<= {max_age_hours:g} h",
                       severity, age is not None and age <= max_age_hours,
                       "no events yet" if latest is None else f"latest event {latest.isoformat()}, cutoff "
                       f"{cutoff.isoformat()}")


def psi(previous: np.ndarray, current: np.ndarray, bins: int) -> Tuple[float, List[float], List[int], List[int]]:
    """Population stability index of `current` against `previous`, on the deciles (or `bins`-quantiles)
    of `previous`; values beyond the outer edges fall in the outer bins.
    PSI = sum over bins of (c - p) * ln(c / p), with shares p (previous) and c (current)."""
    previous = np.asarray(previous, dtype=float)
    current = np.asarray(current, dtype=float)
    edges = np.unique(np.quantile(previous, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:  # a constant feature: a bin for its value and one on either side
        edges = edges[0] + np.array([-1.0, -0.5, 0.5, 1.0])
    inner = edges[1:-1]
    prev_counts = np.bincount(np.searchsorted(inner, previous, side="right"), minlength=len(edges) - 1)
    cur_counts = np.bincount(np.searchsorted(inner, current, side="right"), minlength=len(edges) - 1)
    p = np.maximum(prev_counts / max(len(previous), 1), PSI_EPSILON)
    c = np.maximum(cur_counts / max(len(current), 1), PSI_EPSILON)
    value = float(np.sum((c - p) * np.log(c / p)))
    return value, edges.tolist(), prev_counts.tolist(), cur_counts.tolist()


def drift(feature: str, table: str, value: Optional[float], threshold: float, severity: str,
          detail: str) -> CheckResult:
    return CheckResult(f"drift.{feature}", "drift", table, value, f"<= {threshold:g} (PSI)", severity,
                       value is None or value <= threshold, detail)
