"""A deliberately simple second implementation of the feature semantics, for tests only.

It loops over every (entity, as-of day) and scans every event, straight from the definition
`as_of - N days <= ts < as_of`, and reduces each window with the kind's own definition in
`features.aggregations` (exact Decimal sums). Slow on purpose: nothing shared with the engine.
"""

from __future__ import annotations

import datetime as dt
from typing import Dict, List, Optional

import pandas as pd

from features.aggregations import KINDS
from features.declarations import FeatureSet

UTC = dt.timezone.utc


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), UTC)


def oracle(events: List[dict], fs: FeatureSet, first_as_of: dt.date, last_as_of: dt.date,
           entities: Optional[Dict[object, dict]] = None) -> pd.DataFrame:
    key = fs.entity.join_key
    ts_col = fs.timestamp_column
    longest = max(d for a in fs.aggregations for d in a.window_days())
    # the documented order of events with equal timestamps: by the aggregated columns' values
    tie = sorted({a.column for a in fs.aggregations if a.column} - {key, ts_col})
    rows = []
    for entity in sorted({e[key] for e in events if e[key] is not None}):
        mine = sorted((e for e in events if e[key] == entity),
                      key=lambda e: (e[ts_col], *[(e[c] is None, 0 if e[c] is None else e[c]) for c in tie]))
        day = first_as_of
        while day <= last_as_of:
            as_of = _midnight(day)
            if any(as_of - dt.timedelta(days=longest) <= e[ts_col] < as_of for e in mine):
                row = {key: entity, fs.as_of_column: pd.Timestamp(as_of)}
                for agg in fs.aggregations:
                    kind = KINDS[agg.agg]
                    for name, n in zip(agg.feature_names(), agg.window_days()):
                        window = [e for e in mine if as_of - dt.timedelta(days=n) <= e[ts_col] < as_of]
                        if agg.where is not None:
                            window = [e for e in window if str(e[agg.where.column]) == agg.where.value]
                        if agg.column is not None:
                            window = [e for e in window if e[agg.column] is not None]
                        items = [e[agg.column] for e in window] if kind.needs_column else \
                            [(day - e[ts_col].astimezone(UTC).date()).days for e in window]
                        row[name] = kind.reduce(items)
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
