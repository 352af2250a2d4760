"""The point-in-time join of labels to gold, pure (Arrow in, Arrow out; no catalog, no Ray), and the rule
that says which gold snapshot was being served at an instant.

Point in time (Feast's `get_historical_features`, whose DuckDB/ibis store keeps a feature row when
`as_of <= t` and `as_of + ttl >= t`): a label (key, t) gets the gold row of its key with the greatest
as_of such that `t - ttl <= as_of <= t`, both ends included; no row, nulls. A ttl of 0 days is no limit,
as Feast reads a zero ttl. With gold's grain (as_of a midnight UTC, features over events strictly
before it), a label at midnight D reads the row of D, and one at D - 1 microsecond the row of D - 1:
nothing at or after t leaks in.

Being pure is what lets a property test compare it with a brute-force oracle on thousands of cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.declarations import FeatureSet

DAY_US = 86_400_000_000
_ARROW = {"float64": pa.float64(), "int64": pa.int64(), "string": pa.string()}


@dataclass(frozen=True)
class SetSpec:
    """What the join needs of a feature set. It is recorded with each training set, so a rebuild from
    MLflow does not depend on the declaration as it is today (a later ttl or feature change)."""

    name: str
    join_key: str
    key_dtype: str
    as_of_column: str
    features: Tuple[Tuple[str, str], ...]  # (name, dtype), in declaration order
    ttl_days: int

    @staticmethod
    def of(fs: FeatureSet) -> "SetSpec":
        return SetSpec(fs.name, fs.entity.join_key, fs.entity.dtype, fs.as_of_column,
                       tuple(fs.feature_dtypes().items()), int(fs.ttl_days))

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "join_key": self.join_key, "key_dtype": self.key_dtype,
                "as_of_column": self.as_of_column, "features": [list(f) for f in self.features],
                "ttl_days": self.ttl_days}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> "SetSpec":
        return SetSpec(data["name"], data["join_key"], data["key_dtype"], data["as_of_column"],
                       tuple((str(n), str(d)) for n, d in data["features"]), int(data["ttl_days"]))

    @property
    def feature_names(self) -> List[str]:
        return [n for n, _ in self.features]

    @property
    def ttl_us(self) -> int:
        return self.ttl_days * DAY_US

    def feature_schema(self) -> pa.Schema:
        return pa.schema([pa.field(n, _ARROW[d]) for n, d in self.features])


def _micros(values: pa.Array) -> np.ndarray:
    return pc.cast(values, pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)


def match(label_keys: pa.Array, label_ts: pa.Array, gold_keys: pa.Array, gold_as_of: pa.Array,
          ttl_us: int) -> np.ndarray:
    """Per label, the position of its gold row, -1 when there is none (rule: module docstring)."""
    n = len(label_keys)
    found = np.full(n, -1, dtype=np.int64)
    if n == 0 or len(gold_keys) == 0:
        return found
    uniques = pc.unique(gold_keys)
    label_code = pc.index_in(label_keys, value_set=uniques)  # null: an entity gold does not hold
    known = np.flatnonzero(label_code.is_valid().to_numpy(zero_copy_only=False))
    if not len(known):
        return found
    gold_us = _micros(gold_as_of)
    label_us = _micros(label_ts)[known]
    # Sorted by (time, position): positions are ascending already, so a stable sort on the time alone gives
    # that order (gold comes day file by day file, nearly sorted, which the stable sort runs through fast);
    # the arrays are sorted before the frames are built, so no frame is copied by a sort.
    by_t = np.argsort(label_us, kind="stable")
    by_as_of = np.argsort(gold_us, kind="stable")
    left = pd.DataFrame({"code": label_code.to_numpy(zero_copy_only=False)[known].astype(np.int64)[by_t],
                         "t": label_us[by_t], "row": known[by_t]})
    right = pd.DataFrame({"code": pc.index_in(gold_keys, value_set=uniques).to_numpy().astype(np.int64)[by_as_of],
                          "as_of": gold_us[by_as_of], "gold": by_as_of.astype(np.int64)})
    joined = pd.merge_asof(left, right, left_on="t", right_on="as_of", by="code", direction="backward",
                           allow_exact_matches=True)
    hit = joined["gold"].notna().to_numpy()
    rows = joined["row"].to_numpy()[hit]
    gold = joined["gold"].to_numpy()[hit].astype(np.int64)  # positions: small, exact in float
    if ttl_us:  # in exact integers: a float comparison would blur microseconds at today's epochs
        fresh = gold_us[gold] >= joined["t"].to_numpy()[hit] - ttl_us
        rows, gold = rows[fresh], gold[fresh]
    found[rows] = gold
    return found


def features_for(labels: pa.Table, timestamp_column: str, gold: pa.Table, spec: SetSpec) -> pa.Table:
    """The spec's feature columns for each label, in the labels' order (nulls where no gold row)."""
    schema = spec.feature_schema()
    if labels.num_rows == 0:
        return schema.empty_table()
    found = match(labels.column(spec.join_key).combine_chunks(), labels.column(timestamp_column).combine_chunks(),
                  gold.column(spec.join_key).combine_chunks(), gold.column(spec.as_of_column).combine_chunks(),
                  spec.ttl_us)
    values = gold.select(spec.feature_names).cast(schema)
    return values.take(pa.array(found, mask=found < 0)).combine_chunks()


def nulls(rows: int, spec: SetSpec) -> pa.Table:
    schema = spec.feature_schema()
    return pa.table([pa.nulls(rows, f.type) for f in schema], schema=schema)


# --- as known at ---------------------------------------------------------------------------------
Timeline = List[Tuple[int, int]]  # (from this instant in microseconds UTC, the snapshot served), in order


def served_timeline(log: Sequence[Tuple[int, int]], parent: Mapping[int, Optional[int]],
                    run_of: Mapping[int, Optional[str]], version: int) -> Timeline:
    """Which snapshot of a table was current from when, read from its snapshot log ((timestamp ms,
    snapshot id), oldest first) as it stood when `version` was current:

    - the log is cut after the last entry of `version`: a later snapshot is not part of that version;
    - a snapshot followed by its own child from the same pipeline run (`run_id`) was an intermediate
      state of that run (an overwrite commits a delete and an append in one transaction, each logged):
      the run's result replaces the previous state at once, when its last snapshot was logged;
    - a snapshot that is not an ancestor of `version` was taken out of the history by a rollback (a
      failed quality gate rolls gold back before anything is published): it was never served, so the
      snapshot before it stays current.
    """
    entries = [(int(ms), int(sid)) for ms, sid in log if sid in parent]
    last = max((i for i, (_, sid) in enumerate(entries) if sid == version), default=len(entries) - 1)
    entries = entries[:last + 1]
    lineage: set = set()
    cursor: Optional[int] = version
    while cursor is not None and cursor in parent and cursor not in lineage:
        lineage.add(cursor)
        cursor = parent[cursor]
    kept: Timeline = []
    for i, (ms, sid) in enumerate(entries):
        after = entries[i + 1][1] if i + 1 < len(entries) else None
        if after is not None and parent.get(after) == sid and run_of.get(sid) and run_of.get(after) == run_of[sid]:
            continue
        if sid not in lineage:
            continue
        if kept and kept[-1][1] == sid:
            continue
        kept.append((ms * 1000, sid))
    return kept


def served_ids(label_ts: pa.Array, timeline: Timeline) -> np.ndarray:
    """Per label, the id of the snapshot served at its instant (an entry counts from its own instant on),
    -1 before the first one (Iceberg snapshot ids are positive)."""
    starts = np.array([start for start, _ in timeline], dtype=np.int64)
    ids = np.array([sid for _, sid in timeline] + [-1], dtype=np.int64)
    return ids[np.searchsorted(starts, _micros(label_ts), side="right") - 1]


def by_snapshot(served: np.ndarray) -> Dict[int, np.ndarray]:
    """The label rows served from each snapshot, in snapshot id order."""
    return {sid: np.flatnonzero(served == sid) for sid in sorted(set(served.tolist()) - {-1})}


def features_as_known_at(labels: pa.Table, timestamp_column: str, timeline: Timeline,
                         gold_by_snapshot: Mapping[int, pa.Table], spec: SetSpec) -> pa.Table:
    """Each label joined point in time against the snapshot served at its instant (nulls before the
    first one), in the labels' order."""
    served = served_ids(labels.column(timestamp_column).combine_chunks(), timeline)
    pieces, order = [], []
    for sid, rows in by_snapshot(served).items():
        pieces.append(features_for(labels.take(rows), timestamp_column, gold_by_snapshot[sid], spec))
        order.append(rows)
    unserved = np.flatnonzero(served == -1)
    pieces.append(nulls(len(unserved), spec))
    order.append(unserved)
    placed = np.concatenate(order)
    inverse = np.empty(len(placed), dtype=np.int64)
    inverse[placed] = np.arange(len(placed), dtype=np.int64)
    return pa.concat_tables(pieces).take(pa.array(inverse)).combine_chunks()
