"""A deliberately simple second implementation of the feature semantics, for tests only.

It loops over every (entity, as-of day) and scans every event, straight from the definition
`as_of - N days <= ts < as_of`, with exact Decimal sums. Slow on purpose: nothing shared with the engine.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Dict, List, Optional

import pandas as pd

from features.declarations import FeatureSet

UTC = dt.timezone.utc


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), UTC)


def _num(value) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def oracle(events: List[dict], fs: FeatureSet, first_as_of: dt.date, last_as_of: dt.date,
           entities: Optional[Dict[object, dict]] = None) -> pd.DataFrame:
    key = fs.entity.join_key
    ts_col = fs.timestamp_column
    longest = max(d for a in fs.aggregations for d in a.window_days())
    rows = []
    for entity in sorted({e[key] for e in events if e[key] is not None}):
        mine = [e for e in events if e[key] == entity]
        day = first_as_of
        while day <= last_as_of:
            as_of = _midnight(day)
            if any(as_of - dt.timedelta(days=longest) <= e[ts_col] < as_of for e in mine):
                row = {key: entity, fs.as_of_column: pd.Timestamp(as_of)}
                for agg in fs.aggregations:
                    for name, n in zip(agg.feature_names(), agg.window_days()):
                        window = [e for e in mine if as_of - dt.timedelta(days=n) <= e[ts_col] < as_of]
                        if agg.where is not None:
                            window = [e for e in window if str(e[agg.where.column]) == agg.where.value]
                        row[name] = _aggregate(agg.agg, agg.column, window, day, ts_col, fs)
                for attr in fs.attributes:
                    value = (entities or {}).get(entity, {}).get(attr.column)
                    if attr.transform == "days_until_as_of":
                        value = None if value is None else (day - value.astimezone(UTC).date()).days
                    row[attr.name] = value
                rows.append(row)
            day += dt.timedelta(days=1)
    frame = pd.DataFrame(rows, columns=[key, fs.as_of_column, *fs.feature_names()])
    for derived in fs.derived:
        frame[derived.name] = derived.fn(**{n: frame[n].astype("float64") for n in derived.inputs()})
    return frame


def _aggregate(kind: str, column: Optional[str], window: List[dict], day: dt.date, ts_col: str, fs: FeatureSet):
    values = [e[column] for e in window if column and e[column] is not None]
    if kind == "count":
        return len(window)
    if kind == "sum":
        return float(sum((_num(v) for v in values), Decimal(0)))
    if kind == "mean":
        return float(sum((_num(v) for v in values), Decimal(0))) / len(values) if values else None
    if kind == "min":
        return float(min(_num(v) for v in values)) if values else None
    if kind == "max":
        return float(max(_num(v) for v in values)) if values else None
    if kind == "count_distinct":
        return len(set(values))
    if kind == "days_since_last":
        return (day - max(e[ts_col] for e in window).astimezone(UTC).date()).days if window else None
    if kind == "last":
        if not values:
            return None
        # documented tie-break: equal timestamps are ordered by the aggregated columns' values
        tie = sorted({a.column for a in fs.aggregations if a.column} - {fs.entity.join_key, ts_col})
        latest = max((e for e in window if e[column] is not None), key=lambda e: (e[ts_col], *[e[c] for c in tie]))
        return float(_num(latest[column]))
    raise ValueError(kind)
