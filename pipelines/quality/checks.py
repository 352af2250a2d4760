"""The statistical checks, as pure functions of measured figures: each returns one `CheckResult`.

Measuring (reading tables) happens in `pipelines.quality.gate`; here are only the rules, so each can be
tested with numbers worked out by hand.
"""

from __future__ import annotations

import datetime as dt
from statistics import median
from typing import Dict, List, Optional, Sequence, Set, Tuple

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
    """Rows per ingested file against the median of earlier passing runs: for a dataset without an event
    time, which has no days to judge (no history: nothing to judge; `not_applicable`: the reason there is
    no usual size, e.g. a change feed)."""
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


BASELINES = ("same_weekday", "rolling")


def baseline_days(day: dt.date, eligible: Set[dt.date], baseline: str, window_days: int) -> List[dt.date]:
    """The earlier days a day's row count is compared with: within `window_days` before it, the same
    weekday (`same_weekday`: a weekly rhythm is the norm) or every day (`rolling`), newest first."""
    step = 7 if baseline == "same_weekday" else 1
    candidates = (day - dt.timedelta(days=back) for back in range(step, window_days + 1, step))
    return [d for d in candidates if d in eligible]


def day_row_count(dataset: str, rows_by_day: Dict[dt.date, int], judged: Sequence[dt.date],
                  eligible: Set[dt.date], baseline: str, window_days: int, min_baseline_days: int, band: float,
                  severity: str) -> Tuple[CheckResult, List[dt.date]]:
    """Each event day this run added rows to, its rows in silver (every delivery of that day together)
    against the median of its baseline days (`baseline_days`). A day with fewer than `min_baseline_days`
    baseline days is judged as `warn` only (the baseline is being learnt); one with none is not judged.
    The check reports the day furthest from its median; the detail lists every day out of its band, and
    so does the second value returned."""
    name, table = f"row_count.{dataset}", f"silver.{dataset}"
    label = "same weekdays" if baseline == "same_weekday" else "days"
    verdicts = []  # (relative deviation, day, rows, low, high, median, points, learning)
    unjudged = []
    for day in sorted(judged):
        points = [rows_by_day[d] for d in baseline_days(day, eligible, baseline, window_days)]
        if not points:
            unjudged.append(day)
            continue
        mid = median(points)
        rows = rows_by_day.get(day, 0)
        verdicts.append((abs(rows / mid - 1) if mid else float(rows > 0), day, rows, mid * (1 - band),
                         mid * (1 + band), mid, len(points), len(points) < min_baseline_days))
    if not verdicts:
        detail = (f"no baseline yet for {len(unjudged)} day(s) ({unjudged[0]}..{unjudged[-1]}): earlier days "
                  f"from runs that passed every check are needed") if unjudged else "no new rows on any event day"
        return CheckResult(name, "row_count", table, None, f"within {band:.0%} of the median of its {label}",
                           severity, True, detail), []
    outside = [v for v in verdicts if not v[3] <= v[2] <= v[4]]
    decisive = [v for v in outside if not v[7]]
    # the reported day: a blocking one first, then the furthest from its median
    worst = max(decisive or outside or verdicts, key=lambda v: (v[0], v[1]))
    _, day, rows, low, high, mid, points, learning = worst
    parts = [f"{len(verdicts)} day(s) judged"]
    if outside:
        parts.append("out of band: " + ", ".join(f"{v[1]} ({v[1]:%a}) {v[2]} rows vs median {v[5]:.6g}"
                                                 + (" (learning)" if v[7] else "") for v in outside))
    if learning:
        parts.append(f"baseline being learnt for {day}: {points} of {min_baseline_days} {label}, judged as warn")
    if unjudged:
        parts.append(f"{len(unjudged)} day(s) without a baseline yet")
    return CheckResult(name, "row_count", table, float(rows),
                       f"in [{low:.6g}, {high:.6g}] (median {mid:.6g} of {points} {label} +-{band:.0%}, {day})",
                       severity if (decisive or not outside) else "warn", not outside, "; ".join(parts)), \
        [v[1] for v in outside]


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
