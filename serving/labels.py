"""Labels for a training set, checked and normalized before anything is read.

A label is an entity key (the join key of every feature set asked for) and an instant; any other column
(the target, weights, ...) rides along untouched. Each problem stops the build with one line naming the
column, because a training set built from half-understood labels is silently wrong, not just late:

- a join key is cast to the entity's dtype when nothing is lost (the text "42" -> 42; 42.0 -> 42;
  42 -> "42" for a string key) and refused otherwise ("abc", 42.5), naming the first offending value;
- the timestamp column is the one named, else the only column of timestamp type (none or several:
  refused, asking for a name); text is parsed as ISO-8601, dates are their midnight UTC;
- naive timestamps are read as UTC, as the pipeline reads naive event times (and as Feast reads an entity
  frame); zoned ones are converted to UTC;
- gold holds microseconds: nanosecond timestamps are cast when every value is a whole microsecond and
  refused otherwise, naming the value (rounding it would move a label across a midnight boundary).

Normalized labels are what a training set carries, and what its digest and MLflow artifact are of:
`canonical_digest` is a sha256 of a serialization that depends only on the rows' values and order.
"""

from __future__ import annotations

import hashlib
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import PipelineError
from validation.parsing import parse_instants

UTC_US = pa.timestamp("us", tz="UTC")
_ARROW_KEY = {"int64": pa.int64(), "string": pa.string()}

Labels = Union[pd.DataFrame, pa.Table]


class LabelError(PipelineError):
    """The labels cannot be joined as given; the message names the column."""


def to_arrow(labels: Labels) -> pa.Table:
    """The labels as one Arrow table (a DataFrame's index is not a column), without schema metadata."""
    if isinstance(labels, pd.DataFrame):
        try:
            table = pa.Table.from_pandas(labels, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise LabelError(f"labels: {str(exc).splitlines()[0]}") from None
    elif isinstance(labels, pa.Table):
        table = labels
    else:
        raise LabelError(f"labels must be a pandas DataFrame or a pyarrow Table, not {type(labels).__name__}")
    names = table.column_names
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise LabelError(f"labels have the column(s) {doubled} more than once")
    return table.replace_schema_metadata(None).combine_chunks()


def prepare(labels: Labels, keys: Dict[str, Tuple[str, str]], timestamp_column: Optional[str]) -> Tuple[pa.Table, str]:
    """(normalized labels, the timestamp column's name). `keys`: join key -> (dtype, the feature set
    that needs it), for the messages."""
    table = to_arrow(labels)
    for key, (dtype, needed_by) in keys.items():
        if key not in table.column_names:
            raise LabelError(f"labels have no column {key!r}, the join key of feature set {needed_by!r} "
                             f"(columns: {table.column_names})")
        table = _set(table, key, _key(table.column(key), key, dtype))
    ts = _timestamp_column(table, timestamp_column, set(keys))
    return _set(table, ts, _timestamp(table.column(ts), ts)), ts


def _set(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, values)


def _plain(column: pa.ChunkedArray) -> pa.Array:
    values = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    return values


def _no_nulls(values: pa.Array, name: str, what: str) -> None:
    if values.null_count:
        first = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise LabelError(f"labels column {name!r} ({what}) has {values.null_count} missing value(s), "
                         f"the first in row {first}")


def _first_failing(values: pa.Array, target: pa.DataType) -> Tuple[int, object]:
    for row, value in enumerate(values):
        try:
            pc.cast(pa.array([value.as_py()], values.type), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError):
            return row, value.as_py()
    return -1, None  # pragma: no cover - only called after the whole cast failed


def _key(column: pa.ChunkedArray, name: str, dtype: str) -> pa.Array:
    values = _plain(column)
    target = _ARROW_KEY[dtype]
    _no_nulls(values, name, "join key")
    kind = values.type
    castable = (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or pa.types.is_floating(kind)) if dtype == "int64" else \
        (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind))
    if not castable:
        raise LabelError(f"labels column {name!r} is {kind}; the join key is {dtype}")
    if kind == target:
        return values
    try:
        return pc.cast(values, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        row, value = _first_failing(values, target)
        raise LabelError(f"labels column {name!r}: {value!r} (row {row}) does not convert to the join key's "
                         f"type {dtype} without loss") from None


def _timestamp_column(table: pa.Table, named: Optional[str], keys: set) -> str:
    if named is not None:
        if named not in table.column_names:
            raise LabelError(f"labels have no timestamp column {named!r} (columns: {table.column_names})")
        return named
    found = [f.name for f in table.schema if pa.types.is_timestamp(f.type) and f.name not in keys]
    if not found:
        raise LabelError("labels have no timestamp column (no column of timestamp type): name one with "
                         f"timestamp_column (columns: {table.column_names})")
    if len(found) > 1:
        raise LabelError(f"labels have several timestamp columns {found}: name the label time with "
                         "timestamp_column")
    return found[0]


def _timestamp(column: pa.ChunkedArray, name: str) -> pa.Array:
    values = _plain(column)
    kind = values.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        _no_nulls(values, name, "label time")
        # digits past the microsecond that are not all zero: nanoseconds (refused like a ns column below)
        finer = pc.match_substring_regex(values, r"\.\d{6}\d*[1-9]").to_numpy(zero_copy_only=False)
        if finer.any():
            row = int(np.flatnonzero(finer)[0])
            raise LabelError(f"labels column {name!r}: {values[row].as_py()} (row {row}) has nanoseconds; gold is "
                             "kept in microseconds, so truncate or round the label times first")
        # value by value, as the pipeline parses event times (naive = UTC): pandas over a whole column would
        # apply one row's offset to the zone-less rows after it
        parsed = parse_instants(pa.chunked_array([values])).combine_chunks()
        if parsed.null_count:
            row = int(np.flatnonzero(parsed.is_null().to_numpy(zero_copy_only=False))[0])
            raise LabelError(f"labels column {name!r}: {values[row].as_py()!r} (row {row}) is not an ISO-8601 "
                             "timestamp")
        values = parsed
    elif pa.types.is_date(kind):
        values = values.cast(pa.timestamp("s"))
    elif not pa.types.is_timestamp(kind):
        raise LabelError(f"labels column {name!r} is {kind}, not a timestamp")
    _no_nulls(values, name, "label time")
    unit = values.type.unit
    # the stored integers are UTC instants whatever the zone (naive: wall time read as UTC)
    values = values.cast(pa.timestamp(unit, tz="UTC"))
    if unit == "ns":
        ns = values.cast(pa.int64()).to_numpy()
        odd = np.flatnonzero(ns % 1000)
        if len(odd):
            row = int(odd[0])
            shown = pd.Timestamp(int(ns[row]), unit="ns", tz="UTC").isoformat()
            raise LabelError(f"labels column {name!r}: {shown} (row {row}) has nanoseconds; gold is kept in "
                             "microseconds, so truncate or round the label times first")
    try:
        return values.cast(UTC_US, safe=True)
    except pa.ArrowInvalid as exc:
        raise LabelError(f"labels column {name!r}: {str(exc).splitlines()[0]}") from None


def canonical_digest(table: pa.Table) -> str:
    """`sha256:<hex>` over the schema, the row count and, column by column, the validity and the valid
    values in row order. Unlike hashing Arrow IPC or Parquet bytes, it does not see chunking, slicing,
    the bytes under null slots or the writer's version, so equal tables always digest alike.

    The bytes hashed are fixed (a recorded training set is checked against them): per column the
    validity packed by `np.packbits` (most significant bit first), then the valid values: numbers and
    temporal values as their little-endian integers or floats; text and binary as int64 offsets from 0,
    then the concatenated bytes; booleans one byte each; anything else its Python repr. Arrow's own
    buffers are hashed where they already are those bytes (no copy: 1M-row training sets are hashed
    twice per build)."""
    digest = hashlib.sha256()
    digest.update(str(table.schema.remove_metadata()).encode())
    digest.update(str(table.num_rows).encode())
    for name in table.column_names:
        values = _plain(table.column(name)) if table.num_rows else pa.array([], table.schema.field(name).type)
        digest.update(_validity_bytes(values))
        for part in _value_bytes(values.drop_null() if values.null_count else values):
            digest.update(part)
    return "sha256:" + digest.hexdigest()


def _validity_bytes(values: pa.Array) -> bytes:
    n = len(values)
    if not values.null_count:  # all valid: what np.packbits makes of n ones, without the n-byte array
        return b"\xff" * (n // 8) + (bytes([(0xFF << (8 - n % 8)) & 0xFF]) if n % 8 else b"")
    return np.packbits(values.is_valid().to_numpy(zero_copy_only=False)).tobytes()


def _value_bytes(values: pa.Array) -> List[object]:
    """The valid values' bytes (`values` has no nulls) as buffers for hashlib: views where possible."""
    kind = values.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
            or pa.types.is_large_binary(kind):
        wide = pa.types.is_large_string(kind) or pa.types.is_large_binary(kind)
        if not len(values):
            return [np.zeros(1, dtype=np.int64), b""]
        offsets = np.frombuffer(values.buffers()[1], dtype=np.int64 if wide else np.int32)
        offsets = offsets[values.offset:values.offset + len(values) + 1]
        start, end = int(offsets[0]), int(offsets[-1])
        data = values.buffers()[2]
        return [offsets.astype(np.int64) - start, memoryview(data)[start:end] if data is not None else b""]
    if pa.types.is_boolean(kind):
        return [values.to_numpy(zero_copy_only=False).astype(np.uint8)]
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_time(kind) \
            or pa.types.is_duration(kind):
        return [_numbers(values.view(pa.int64() if kind.bit_width == 64 else pa.int32()))]
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return [_numbers(values)]
    return [repr(values.to_pylist()).encode()]  # decimals, nested values: their Python values


def _numbers(values: pa.Array) -> np.ndarray:
    """The values of a null-free fixed-width array as numpy: a view of Arrow's buffer, no copy."""
    return values.to_numpy(zero_copy_only=False)
