"""A gold table laid out for point-in-time joins, and the join over that layout (pure: Arrow and numpy).

`pit_join.match` decides each label's gold row from gold's keys and as-of instants as read, which means
decoding, hashing and sorting every gold row a training set could join, on every build (most of a
build's time at 1M labels over 9M gold rows). A gold snapshot never changes, so that work can be done
once, when the snapshot is published, and kept (`serving/training_index.py`):

- `entities`: the distinct join keys, ascending;
- `instants`: the distinct as-of instants (microseconds UTC), ascending;
- `cells`: one integer per gold row, `entity rank * len(instants) + instant rank`, ascending; the gold
  rows (every other column) are stored in this order, so a cell's position is its row.

A label (key, t) then needs no hash table or sort of gold: its entity's rank and the latest instant at
or before t are two binary searches in small arrays, and its row is the last cell at or before
(rank, latest) if that cell is still its entity's and within the ttl: one binary search in `cells`.
The rule is `pit_join`'s exactly (its module docstring), including "of several rows in one cell the
last one read wins": the layout keeps equal cells in read order and the search takes the last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from serving.pit_join import _micros, distinct_sorted, entity_codes, sorted_order


@dataclass(frozen=True)
class Layout:
    entities: pa.Array  # distinct join keys, ascending, no nulls
    instants: np.ndarray  # int64: distinct as-of instants in microseconds UTC, ascending
    cells: np.ndarray  # int64, ascending: per row, entity rank * len(instants) + instant rank

    @property
    def rows(self) -> int:
        return len(self.cells)


def layout(keys: pa.Array, as_of: pa.Array) -> Tuple[Layout, np.ndarray]:
    """The layout of gold rows given their join keys and as-of instants, and the positions of the rows
    in it (`order[i]`: the input row stored at position i). A row without key or as-of joins no label,
    so it is left out."""
    valid = pc.and_(pc.is_valid(keys), pc.is_valid(as_of))
    kept = np.flatnonzero(valid.to_numpy(zero_copy_only=False))
    if len(kept) < len(keys):
        keys, as_of = keys.take(pa.array(kept)), as_of.take(pa.array(kept))
    entities = pc.unique(keys)
    entities = entities.take(pc.sort_indices(entities))
    instants = np.unique(_micros(as_of))
    cells = ranks(entities, keys).astype(np.int64)
    cells *= len(instants)
    cells += np.searchsorted(instants, _micros(as_of))
    order = sorted_order(cells)  # stable: rows of one cell stay in read order, the last read last
    return Layout(entities, instants, cells[order]), kept[order]


def ranks(entities: pa.Array, keys: pa.Array) -> np.ndarray:
    """Per key, its position in the ascending distinct `entities`; -1 when it is not one of them."""
    if not len(entities):
        return np.full(len(keys), -1, dtype=np.int64)
    return entity_codes(keys, entities).astype(np.int64)


def lookup(index: Layout, label_keys: pa.Array, label_ts: pa.Array, ttl_us: int) -> np.ndarray:
    """Per label, the position of its row in the layout, -1 when none (`pit_join`'s rule)."""
    needed, slot = joined_rows(index, label_keys, label_ts, ttl_us)
    return np.where(slot >= 0, needed[np.maximum(slot, 0)] if len(needed) else -1, -1)


def joined_rows(index: Layout, label_keys: pa.Array, label_ts: pa.Array,
                ttl_us: int) -> Tuple[np.ndarray, np.ndarray]:
    """(the distinct layout rows some label joins, ascending; per label, the index of its row among them,
    -1 when none): what `pit_join.take_features` needs, straight from the search. The labels are searched
    in cell order, so the rows found come out ascending and need no second sort to be made distinct."""
    slot = np.full(len(label_keys), -1, dtype=np.int64)
    if not len(label_keys) or not index.rows:
        return np.empty(0, dtype=np.int64), slot
    width = len(index.instants)
    wanted = np.searchsorted(index.instants, _micros(label_ts), side="right") - 1  # -1: before the first
    rank = ranks(index.entities, label_keys)
    asked = np.flatnonzero((rank >= 0) & (wanted >= 0))
    wanted = wanted[asked]
    wanted += rank[asked] * width
    order = sorted_order(wanted)  # ascending searches walk `cells` in order (cache-friendly)
    asked, wanted = asked[order], wanted[order]
    del order, rank
    hit = np.searchsorted(index.cells, wanted, side="right") - 1
    np.maximum(hit, 0, out=hit)
    cell = index.cells[hit]
    ok = (cell <= wanted) & (cell // width == wanted // width)  # a cell at or before, of the label's entity
    if ttl_us:  # in exact integers, as pit_join.match
        ok &= index.instants[cell % width] >= _micros(label_ts)[asked] - ttl_us
    return distinct_sorted(hit[ok], asked[ok], slot)  # hit is ascending: no second sort
