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
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
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


def sorted_order(values: np.ndarray) -> np.ndarray:
    """The positions of non-negative int64 `values` sorted by (value, position): a stable argsort.
    When value and position fit in 63 bits together they are packed into one integer and sorted as such,
    which numpy does several times faster (SIMD) than its stable argsort."""
    n = len(values)
    shift = max(int(n - 1).bit_length(), 1)
    if n and int(values.max()) < (1 << (63 - shift)):
        packed = (values << shift) | np.arange(n, dtype=np.int64)
        packed.sort()
        return packed & ((1 << shift) - 1)
    return np.argsort(values, kind="stable")


# The dense table (one cell per entity and as-of instant) is used while it has at most this many cells per
# gold row: gold's grain (an entity a day) fills most cells; a sparse gold goes through the sort instead.
DENSE_CELLS_PER_ROW = 4


def entity_codes(keys: pa.Array, entities: pa.Array) -> np.ndarray:
    """Per key, its index in `entities` (distinct), -1 when it is not one of them; int32. Integer keys in a
    compact range go through a lookup table (a gather: ~3x faster than hashing 9M keys)."""
    if pa.types.is_integer(keys.type) and pa.types.is_integer(entities.type) and len(entities) \
            and not keys.null_count and not entities.null_count:
        values = entities.to_numpy()
        low, span = int(values.min()), int(values.max()) - int(values.min()) + 1
        if span <= 8 * len(values) + (1 << 20):
            table = np.full(span + 1, -1, dtype=np.int32)  # the last entry: every key out of range
            table[values - low] = np.arange(len(values), dtype=np.int32)
            index = np.subtract(keys.to_numpy(), low, dtype=np.int64)
            np.minimum(index.view(np.uint64), span, out=index.view(np.uint64))  # below the range wraps high
            return table[index]
    return pc.index_in(keys, value_set=entities).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)


def match(label_keys: pa.Array, label_ts: pa.Array, gold_keys: pa.Array, gold_as_of: pa.Array,
          ttl_us: int) -> np.ndarray:
    """Per label, the position of its gold row, -1 when there is none (rule: module docstring).

    Gold rows are numbered by cell (entity, as-of instant): entity codes over the labels' entities (gold
    rows of other entities drop out), instants over gold's distinct as-of values. A label's row is then the
    last filled cell of its entity at or before the latest instant <= t, found in a dense table of all
    cells (`_dense`) or by binary search in the filled cells sorted (`_sparse`). Of several rows in one
    cell (gold holds one per entity and as-of, so never in practice) the last one read wins.
    """
    n = len(label_keys)
    found = np.full(n, -1, dtype=np.int64)
    if n == 0 or len(gold_keys) == 0:
        return found
    entities = pc.unique(label_keys)
    gold_code = entity_codes(gold_keys, entities)
    asked_rows = int(np.count_nonzero(gold_code >= 0))
    if not asked_rows:
        return found
    gold_us = pa.array(_micros(gold_as_of))
    instants = pa.array(np.sort(pc.unique(gold_us).to_numpy()))
    width = len(instants)
    cells = gold_code.astype(np.int64)  # in place from here: each 9M-row temporary costs its page faults
    cells *= width
    cells += pc.index_in(gold_us, value_set=instants).to_numpy()
    label_us = _micros(label_ts)
    code = entity_codes(label_keys, entities).astype(np.int64)
    latest = np.searchsorted(instants.to_numpy(), label_us, side="right") - 1  # -1: before gold's first instant
    asked = np.flatnonzero(latest >= 0)
    code, latest, label_us = code[asked], latest[asked], label_us[asked]
    if len(entities) * width <= DENSE_CELLS_PER_ROW * asked_rows:
        cells[gold_code < 0] = len(entities) * width  # one spare cell past the table for the rows no one asks
        slot, row = _dense(cells, len(entities), width, code, latest)
    else:
        rows = np.flatnonzero(gold_code >= 0)
        slot, row = _sparse(cells[rows], rows, width, code, latest)
    ok = slot >= 0
    if ttl_us:  # in exact integers: a float comparison would blur microseconds at today's epochs
        ok &= instants.to_numpy()[np.maximum(slot, 0)] >= label_us - ttl_us
    found[asked[ok]] = row[ok]
    return found


def _dense(cells: np.ndarray, entities: int, width: int, code: np.ndarray,
           latest: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per label (entity code, latest instant index): the instant index of its entity's last filled cell
    at or before it (-1: none) and that cell's gold row (gold row i is in cells[i]). One table of every
    cell, filled forward along the instants."""
    size = entities * width
    row_type = np.int32 if len(cells) < 2**31 else np.int64
    row_at = np.full(size + 1, -1, dtype=row_type)
    positions = np.arange(len(cells), dtype=row_type)
    row_at[cells] = positions
    if np.count_nonzero(row_at[:size] >= 0) != np.count_nonzero(cells < size):  # a cell filled twice:
        np.maximum.at(row_at, cells, positions)  # the last row read, exactly
    slot_type = np.int16 if width < 2**15 else np.int32
    filled = np.where(row_at[:size].reshape(entities, width) >= 0, np.arange(width, dtype=slot_type),
                      np.array(-1, dtype=slot_type))
    np.maximum.accumulate(filled, axis=1, out=filled)
    slot = filled[code, latest].astype(np.int64)
    return slot, row_at[code * width + np.maximum(slot, 0)].astype(np.int64)


def _sparse(cells: np.ndarray, rows: np.ndarray, width: int, code: np.ndarray,
            latest: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """As `_dense`, by binary search in the filled cells sorted by (cell, row); the labels are sorted too,
    so the searches walk gold in order."""
    by_cell = sorted_order(cells)
    gold_cells, gold_rows = cells[by_cell], rows[by_cell]
    wanted = code * width + latest
    order = sorted_order(wanted)
    hit = np.searchsorted(gold_cells, wanted[order], side="right") - 1
    cell = gold_cells[np.maximum(hit, 0)]
    same = (hit >= 0) & (cell // width == code[order])
    slot, row = np.full(len(code), -1, dtype=np.int64), np.full(len(code), -1, dtype=np.int64)
    slot[order[same]] = cell[same] % width
    row[order[same]] = gold_rows[hit[same]]
    return slot, row


def take_features(found: np.ndarray, rows_at: Callable[[np.ndarray], pa.Table], spec: SetSpec) -> pa.Table:
    """The spec's features per label from the gold rows `found` names (-1: nulls). `rows_at(positions)`
    gives the feature columns of the gold rows at those ascending positions, so a caller reading gold
    from files fetches only the rows some label joins, each once."""
    needed, slot = distinct_rows(found)
    if not len(needed):  # nothing joins: no gold row is read
        return nulls(len(found), spec)
    rows = rows_at(needed).select(spec.feature_names).cast(spec.feature_schema())
    return pa.Table.from_arrays([place(rows.column(name), slot) for name in spec.feature_names],
                                schema=spec.feature_schema())


def distinct_rows(found: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(the distinct rows >= 0 of `found`, ascending; per entry of `found`, the index of its row among
    them, -1 for -1). By one sort of the joined entries (labels often share a row), not a table as long
    as gold (9M entries at 10M events, whose page faults cost more than the sort)."""
    slot = np.full(len(found), -1, dtype=np.int64)
    joined = np.flatnonzero(found >= 0)
    if not len(joined):
        return np.empty(0, dtype=np.int64), slot
    order = sorted_order(found[joined])
    return distinct_sorted(found[joined[order]], joined[order], slot)


def distinct_sorted(rows: np.ndarray, owners: np.ndarray, slot: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """`distinct_rows` when the joined entries are already in row order: `rows` ascending, `owners[i]` the
    entry that joined rows[i]. Fills `slot` for the owners; returns (the distinct rows, slot)."""
    first = np.empty(len(rows), dtype=bool)  # rows ascending: an entry's equals are adjacent
    first[:1] = True
    np.not_equal(rows[1:], rows[:-1], out=first[1:])
    slot[owners] = np.cumsum(first) - 1
    return rows[first], slot


def place(values: pa.ChunkedArray, slot: np.ndarray) -> pa.Array:
    """`values[slot]`, null where slot is -1. Numbers go through numpy (a gather of the values and of the
    validity), text through Arrow's take without null indices and a new validity bitmap: Arrow's take
    with null indices is several times slower; anything else through that take."""
    array = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    kind = array.type
    if not len(array):
        return pa.nulls(len(slot), kind)
    valid = slot >= 0
    at = np.where(valid, slot, 0)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):  # take without nulls, then the validity
        taken = array.take(pa.array(at))
        if taken.null_count:
            valid &= taken.is_valid().to_numpy(zero_copy_only=False)
        bitmap = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
        return pa.Array.from_buffers(kind, len(slot), [bitmap, *taken.buffers()[1:]],
                                     null_count=int(len(slot) - valid.sum()))
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)) or array.buffers()[1] is None:
        return array.take(pa.array(slot, mask=slot < 0))
    data = np.frombuffer(array.buffers()[1], dtype=np.dtype(kind.to_pandas_dtype()))
    values = data[array.offset:array.offset + len(array)][at]
    if array.null_count:
        bits = np.unpackbits(np.frombuffer(array.buffers()[0], dtype=np.uint8), bitorder="little")
        valid &= bits[array.offset:array.offset + len(array)][at].astype(bool)
    if valid.all():
        return pa.Array.from_buffers(kind, len(slot), [None, pa.py_buffer(values)])
    return pa.Array.from_buffers(kind, len(slot), [pa.py_buffer(np.packbits(valid, bitorder="little")),
                                                   pa.py_buffer(values)], null_count=int(len(slot) - valid.sum()))


def features_for(labels: pa.Table, timestamp_column: str, gold: pa.Table, spec: SetSpec) -> pa.Table:
    """The spec's feature columns for each label, in the labels' order (nulls where no gold row)."""
    if labels.num_rows == 0:
        return spec.feature_schema().empty_table()
    found = match(labels.column(spec.join_key).combine_chunks(), labels.column(timestamp_column).combine_chunks(),
                  gold.column(spec.join_key).combine_chunks(), gold.column(spec.as_of_column).combine_chunks(),
                  spec.ttl_us)
    return take_features(found, lambda positions: gold.take(pa.array(positions)), spec)


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
    return by_served_snapshot(labels, timestamp_column, timeline, spec,
                              lambda sid, part: features_for(part, timestamp_column, gold_by_snapshot[sid], spec))


def by_served_snapshot(labels: pa.Table, timestamp_column: str, timeline: Timeline, spec: SetSpec,
                       features_of: Callable[[int, pa.Table], pa.Table]) -> pa.Table:
    """`features_of(snapshot id, its labels)` for the labels served from each snapshot, put back in the
    labels' order (nulls for labels before the first snapshot)."""
    served = served_ids(labels.column(timestamp_column).combine_chunks(), timeline)
    pieces, order = [], []
    for sid, rows in by_snapshot(served).items():
        pieces.append(features_of(sid, labels.take(rows)))
        order.append(rows)
    unserved = np.flatnonzero(served == -1)
    pieces.append(nulls(len(unserved), spec))
    order.append(unserved)
    placed = np.concatenate(order)
    inverse = np.empty(len(placed), dtype=np.int64)
    inverse[placed] = np.arange(len(placed), dtype=np.int64)
    return pa.concat_tables(pieces).take(pa.array(inverse)).combine_chunks()
