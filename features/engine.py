"""Computes a declared feature set on a pandas frame of events, with daily tiles and sliding windows.

The grain is one row per (entity, as-of day). Instead of scanning every event for every as-of day
(events x window-days), events are first reduced to one partial per (entity, event day) - a "tile" - and
each window is then slid over the tiles as whole-array numpy operations:

- sum / count: prefix sums over the day axis; a window is the difference of two prefix sums.
- min / max: a rolling min/max over the day axis of the daily partials.
- last / days_since_last: the index of the last day with data, carried forward, checked against the window.
- count_distinct: exact. For each (entity, value) the days it occurs on each cover a range of as-of days;
  ranges are truncated at the next occurrence so they never overlap, then counted with a difference array.

The kinds are those of `features.aggregations`; `IMPLEMENTATIONS` maps each to its function here, and a
kind without one is refused by name.

Determinism: events are sorted by (entity, timestamp, value columns) before any floating-point
reduction, so results do not depend on how rows were split into blocks or tasks. Decimal columns arrive as
scaled integers (`scales`) so sums are exact.

Day arithmetic: `lo` is the first day on the grid (first as-of minus the longest window); grid column `c`
is day `lo + c`. An as-of day `a` with index `j = a - first_as_of` sees window N as grid columns
`[j + W - N, j + W - 1]`, where W is the longest window: exactly `as_of - N days <= ts < as_of`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa

from features.aggregations import KINDS
from features.declarations import FeatureSet, WindowAggregation

EPOCH = dt.date(1970, 1, 1)


def day_number(day: dt.date) -> int:
    return (day - EPOCH).days


def event_days(ts: pd.Series) -> np.ndarray:
    """UTC calendar day of each timestamp, as days since 1970-01-01."""
    values = ts.dt.tz_convert("UTC").dt.tz_localize(None) if ts.dt.tz is not None else ts
    return values.to_numpy().astype("datetime64[D]").astype(np.int64)


def events_from_arrow(table: pa.Table) -> Tuple[pd.DataFrame, Dict[str, int]]:
    """Arrow -> pandas for the engine: decimal columns become int64 units, with their scale returned."""
    scales: Dict[str, int] = {}
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_decimal(column.type):
            scales[name] = column.type.scale
            # exact for |units| < 2**52: the nearest double times 10**scale rounds back to the integer
            as_float = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
            units = np.round(as_float * 10**column.type.scale)
            column = pa.array(units, mask=np.isnan(units)).cast(pa.int64())
        columns[name] = column
    return pa.table(columns).to_pandas(), scales


def _sort_codes(values: pd.Series) -> np.ndarray:
    """Integers that sort like the values (nulls last)."""
    if values.dtype.kind in "iub":
        return values.to_numpy()
    if values.dtype.kind == "M" or isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.array.asi8  # epoch integers in the column's unit; NaT sorts first
    if values.dtype.kind == "f":
        return np.nan_to_num(values.to_numpy(), nan=np.inf)
    codes, _ = pd.factorize(values, sort=True, use_na_sentinel=True)
    return np.where(codes < 0, np.iinfo(np.int64).max, codes)


def sort_order(keys: List[np.ndarray]) -> np.ndarray:
    """The stable order of rows by `keys` (most significant first), as np.lexsort(keys[::-1]) gives it.
    Two stable argsorts on the first two keys (entity, time) do the work; the later keys only decide
    among rows tied on both, which are few, so np.lexsort (slow: ~3 s per 2M rows x 4 keys) sees only those."""
    order = np.arange(len(keys[0]))
    for key in reversed(keys[:2]):
        order = order[np.argsort(key[order], kind="stable")]
    if len(keys) <= 2 or len(order) < 2:
        return order
    tied = np.ones(len(order) - 1, dtype=bool)  # row i and i+1 (in order) equal on the first two keys
    for key in keys[:2]:
        ranked = key[order]
        tied &= ranked[1:] == ranked[:-1]
    if not tied.any():
        return order
    in_run = np.r_[tied, False] | np.r_[False, tied]
    positions = np.flatnonzero(in_run)
    run = np.cumsum(np.r_[True, ~tied])[positions]  # a run's rows share its number; runs stay in place
    members = order[positions]
    order[positions] = members[np.lexsort([k[members] for k in reversed(keys[2:])] + [run])]
    return order


class _Grid:
    """Events of one batch of entities placed on an (entity x day) grid."""

    def __init__(self, events: pd.DataFrame, fs: FeatureSet, first_as_of: int, last_as_of: int):
        self.fs = fs
        self.W = fs.max_window_days()
        self.lo = first_as_of - self.W
        self.G = last_as_of - self.lo  # grid days lo .. last_as_of - 1
        self.A = last_as_of - first_as_of + 1
        key = fs.entity.join_key
        days = event_days(events[fs.timestamp_column])
        keep = (days >= self.lo) & (days < last_as_of) & events[key].notna().to_numpy()
        ev = events.loc[keep].assign(_day=days[keep])
        sort_cols = [key, fs.timestamp_column] + sorted(
            {a.column for a in fs.aggregations if a.column} - {key, fs.timestamp_column}
        )
        order = sort_order([_sort_codes(ev[c]) for c in sort_cols])
        self.events = ev.iloc[order].reset_index(drop=True)
        self.keys, entity_codes = np.unique(self.events[key].to_numpy(), return_inverse=True)
        self.E = len(self.keys)
        self.entity = entity_codes.astype(np.int64)
        self.col = (self.events["_day"].to_numpy() - self.lo).astype(np.int64)

    # --- helpers -------------------------------------------------------------------------------
    def cells(self, mask: Optional[np.ndarray] = None) -> np.ndarray:
        flat = self.entity * self.G + self.col
        return flat if mask is None else flat[mask]

    def daily(self, flat: np.ndarray, weights: Optional[np.ndarray] = None) -> np.ndarray:
        out = np.bincount(flat, weights=weights, minlength=self.E * self.G)
        return out.reshape(self.E, self.G).astype(np.float64)

    def window_sum(self, daily: np.ndarray, n: int) -> np.ndarray:
        prefix = np.zeros((self.E, self.G + 1))
        np.cumsum(daily, axis=1, out=prefix[:, 1:])
        end = np.arange(self.A) + self.W  # exclusive end in prefix coordinates
        return prefix[:, end] - prefix[:, end - n]

    def window_end_cols(self) -> np.ndarray:
        return np.arange(self.A) + self.W - 1  # inclusive last grid column of each as-of's window

    def rows(self) -> Tuple[np.ndarray, np.ndarray]:
        """(entity, as-of index) pairs with at least one event in the longest window."""
        present = self.window_sum(self.daily(self.cells()), self.W) > 0
        return np.nonzero(present)


@dataclass(frozen=True)
class _Selected:
    """The events one aggregation reads: those passing its filter (and with a value in its column)."""

    flat: np.ndarray  # grid cell of each selected event
    mask: np.ndarray  # which events of the grid are selected
    column: Optional[pd.Series]  # the aggregated column over all the grid's events; None without one

    def numbers(self) -> np.ndarray:
        return self.column.to_numpy(np.float64)[self.mask]  # type: ignore[union-attr]


def _count(grid: _Grid, sel: _Selected, windows: Tuple[int, ...], unit: float) -> Dict[int, np.ndarray]:
    counts = grid.daily(sel.flat)
    return {n: grid.window_sum(counts, n) for n in windows}


def _sum(grid: _Grid, sel: _Selected, windows: Tuple[int, ...], unit: float) -> Dict[int, np.ndarray]:
    sums = grid.daily(sel.flat, sel.numbers())
    return {n: grid.window_sum(sums, n) / unit for n in windows}


def _mean(grid: _Grid, sel: _Selected, windows: Tuple[int, ...], unit: float) -> Dict[int, np.ndarray]:
    counts, sums = _count(grid, sel, windows, unit), _sum(grid, sel, windows, unit)
    return {n: np.where(counts[n] > 0, sums[n] / np.where(counts[n] > 0, counts[n], 1), np.nan) for n in windows}


def _rolling(how: str):
    """min or max: the daily partials, then a rolling min/max over the day axis."""

    def aggregate(grid: _Grid, sel: _Selected, windows: Tuple[int, ...], unit: float) -> Dict[int, np.ndarray]:
        partial = getattr(pd.Series(sel.numbers()).groupby(sel.flat), how)()
        daily = np.full(grid.E * grid.G, np.nan)
        daily[partial.index.to_numpy()] = partial.to_numpy()
        by_day = pd.DataFrame(daily.reshape(grid.E, grid.G).T)  # days x entities
        return {n: getattr(by_day.rolling(n, min_periods=1), how)().to_numpy().T[:, grid.window_end_cols()] / unit
                for n in windows}

    return aggregate


def _last_day(grid: _Grid, sel: _Selected) -> np.ndarray:
    """Per (entity, as-of): the grid column of the last day with a selected event up to the window's end."""
    has = np.zeros(grid.E * grid.G, dtype=bool)
    has[sel.flat] = True
    day_index = np.where(has.reshape(grid.E, grid.G), np.arange(grid.G), -1)
    return np.maximum.accumulate(day_index, axis=1)[:, grid.window_end_cols()]


def _in_window(grid: _Grid, last_col: np.ndarray, n: int) -> np.ndarray:
    return last_col >= grid.window_end_cols() - n + 1


def _days_since_last(grid: _Grid, sel: _Selected, windows: Tuple[int, ...], unit: float) -> Dict[int, np.ndarray]:
    last_col = _last_day(grid, sel)
    return {n: np.where(_in_window(grid, last_col, n), np.arange(grid.A) + grid.W - last_col, np.nan)
            for n in windows}


def _last(grid: _Grid, sel: _Selected, windows: Tuple[int, ...], unit: float) -> Dict[int, np.ndarray]:
    last_col = _last_day(grid, sel)
    # events are sorted by timestamp, so the last row of a cell is the day's last event
    last_value = pd.Series(sel.numbers()).groupby(sel.flat).last()
    values = np.full(grid.E * grid.G, np.nan)
    values[last_value.index.to_numpy()] = last_value.to_numpy()
    picked = values.reshape(grid.E, grid.G)[np.arange(grid.E)[:, None], np.clip(last_col, 0, None)]
    return {n: np.where(_in_window(grid, last_col, n), picked / unit, np.nan) for n in windows}


def _count_distinct(grid: _Grid, sel: _Selected, windows: Tuple[int, ...], unit: float) -> Dict[int, np.ndarray]:
    codes = pd.factorize(sel.column.to_numpy()[sel.mask], sort=True)[0].astype(np.int64)  # type: ignore[union-attr]
    triples = pd.DataFrame({"e": grid.entity[sel.mask], "v": codes, "c": grid.col[sel.mask]}).drop_duplicates()
    triples = triples.sort_values(["e", "v", "c"], kind="mergesort")
    e, v, c = (triples[k].to_numpy() for k in ("e", "v", "c"))
    same_next = np.r_[(e[1:] == e[:-1]) & (v[1:] == v[:-1]), False]
    next_c = np.r_[c[1:], 0]
    out = {}
    for n in windows:
        # an event on grid column c is inside as-of j's window iff j in [c - W + 1, c - W + n]
        start = c - grid.W + 1
        end = np.where(same_next, np.minimum(c - grid.W + n, next_c - grid.W), c - grid.W + n)
        start, end = np.clip(start, 0, grid.A), np.clip(end, -1, grid.A - 1)
        ok = start <= end
        width = grid.A + 1
        diff = np.bincount(e[ok] * width + start[ok], minlength=grid.E * width)
        diff = diff - np.bincount(e[ok] * width + end[ok] + 1, minlength=grid.E * width)
        out[n] = np.cumsum(diff.reshape(grid.E, width), axis=1)[:, : grid.A].astype(np.float64)
    return out


# The vectorised implementation of each kind of `features.aggregations` (which defines what each means).
IMPLEMENTATIONS: Dict[str, Callable[[_Grid, _Selected, Tuple[int, ...], float], Dict[int, np.ndarray]]] = {
    "sum": _sum,
    "count": _count,
    "mean": _mean,
    "min": _rolling("min"),
    "max": _rolling("max"),
    "count_distinct": _count_distinct,
    "last": _last,
    "days_since_last": _days_since_last,
}


def _aggregate(grid: _Grid, agg: WindowAggregation, scale: int) -> Dict[int, np.ndarray]:
    """One (entity x as-of) array per window of `agg`; NaN where the feature is null."""
    implementation = IMPLEMENTATIONS.get(agg.agg) if agg.agg in KINDS else None
    if implementation is None:
        raise NotImplementedError(f"feature {agg.name!r}: the engine has no implementation of aggregation {agg.agg!r}")
    ev = grid.events
    mask = np.ones(len(ev), dtype=bool)
    if agg.where is not None:
        mask &= (ev[agg.where.column].astype("string") == agg.where.value).fillna(False).to_numpy()
    column = ev[agg.column] if agg.column is not None else None
    if column is not None:
        mask &= column.notna().to_numpy()
    selected = _Selected(grid.cells(mask), mask, column)
    return implementation(grid, selected, agg.window_days(), float(10**scale))


def _typed(values, dtype: str) -> pd.Series:
    series = pd.Series(values)
    if dtype == "int64":
        if series.dtype.kind in "iub":
            return series.astype("Int64")
        if series.dtype.kind == "f":  # build the nullable array directly: astype("Int64") is slow
            raw = series.to_numpy()
            missing = np.isnan(raw)
            return pd.Series(pd.arrays.IntegerArray(np.where(missing, 0, np.round(raw)).astype(np.int64), missing))
        return series.astype("Int64")
    if dtype == "float64":
        return series.astype("float64")
    return series.astype("string")


def build_features(
    events: pd.DataFrame,
    fs: FeatureSet,
    first_as_of: dt.date,
    last_as_of: dt.date,
    entities: Optional[pd.DataFrame] = None,
    scales: Optional[Mapping[str, int]] = None,
) -> pd.DataFrame:
    """Rows of `fs` for every as-of day in [first_as_of, last_as_of] with an event in the longest window.

    `events` must hold every event of each entity it mentions from `first_as_of - longest window` on;
    `entities` (the entity table, for attributes) is indexed by nothing in particular.
    Output columns: join key, as_of (UTC midnight), then the features in declaration order, sorted by
    (join key, as_of).
    """
    scales = dict(scales or {})
    grid = _Grid(events, fs, day_number(first_as_of), day_number(last_as_of))
    row_entity, row_asof = grid.rows()
    key = fs.entity.join_key
    as_of_days = row_asof + day_number(first_as_of)
    frame = {
        key: pd.Series(grid.keys[row_entity]),
        fs.as_of_column: pd.Series(
            pd.to_datetime(as_of_days.astype("datetime64[D]")).tz_localize("UTC").astype("datetime64[us, UTC]")
        ),
    }
    for agg in fs.aggregations:
        arrays = _aggregate(grid, agg, scales.get(agg.column or "", 0))
        for name, days in zip(agg.feature_names(), agg.window_days()):
            frame[name] = _typed(arrays[days][row_entity, row_asof], agg.dtype)
    out = pd.DataFrame(frame)
    for attr in fs.attributes:
        table = (entities if entities is not None else pd.DataFrame(columns=[key, attr.column])).drop_duplicates(key)
        looked_up = out[key].map(table.set_index(key)[attr.column])
        if attr.transform == "days_until_as_of":
            looked_up = pd.Series(as_of_days, dtype="float64") - pd.Series(
                event_days(pd.to_datetime(looked_up, utc=True)), dtype="float64"
            ).where(looked_up.notna().to_numpy())
        out[attr.name] = _typed(looked_up.to_numpy(), attr.dtype)
    for derived in fs.derived:
        out[derived.name] = _typed(derived.fn(**{name: out[name] for name in derived.inputs()}), derived.dtype)
    return out.reset_index(drop=True)


def empty_features(fs: FeatureSet) -> pd.DataFrame:
    return gold_arrow_schema(fs).empty_table().to_pandas()


_ARROW = {"float64": pa.float64(), "int64": pa.int64(), "string": pa.string()}


def gold_arrow_schema(fs: FeatureSet) -> pa.Schema:
    """The gold table's schema, derived from the declaration."""
    fields = [
        pa.field(fs.entity.join_key, _ARROW[fs.entity.dtype], nullable=False),
        pa.field(fs.as_of_column, pa.timestamp("us", tz="UTC"), nullable=False),
    ]
    fields += [pa.field(name, _ARROW[dtype]) for name, dtype in fs.feature_dtypes().items()]
    return pa.schema(fields)


def to_arrow(frame: pd.DataFrame, fs: FeatureSet) -> pa.Table:
    schema = gold_arrow_schema(fs)
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
