"""Parsing source text into typed values with Arrow kernels, exactly as pandas' readers would read it.

Bronze holds what the source sent as text; silver's types come from here. Each parser returns null where
a value does not parse, so a contract can tell "missing" from "present but not parseable".
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import pandas as pd
import pyarrow
import pyarrow.compute as pc

from validation.rules import as_text

# Anchored patterns, matched by Arrow's RE2 kernels (ASCII digits only, no per-value Python call).
_INTEGER = r"^-?\d{1,18}$"
# The ISO-8601 shapes Arrow's cast parses as pandas does (with a zone; without one = UTC, as pandas'
# utc=True reads them). Anything else, and any value Arrow rejects, is parsed by pandas one value at a time.
_ZONED_INSTANT = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}(:?\d{2})?)$"
_NAIVE_INSTANT = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?)?$"
_UTC_US = pyarrow.timestamp("us", tz="UTC")


def _matches(text: pyarrow.ChunkedArray, pattern: str) -> pyarrow.ChunkedArray:
    return pc.fill_null(pc.match_substring_regex(text, pattern), False)


def _parsed(text: pyarrow.ChunkedArray, pattern: str, to: pyarrow.DataType) -> pyarrow.ChunkedArray:
    """The values matching `pattern` cast to `to`; null elsewhere."""
    return pc.if_else(_matches(text, pattern), text, pyarrow.scalar(None, pyarrow.string())).cast(to)


def _cast_where_valid(text: pyarrow.Array, to: pyarrow.DataType) -> Tuple[pyarrow.Array, np.ndarray]:
    """`text` cast to `to`, and which values Arrow rejected (null in the result). One cast for a clean
    batch; a batch with a rejected value is halved until each rejected value stands alone."""
    try:
        return text.cast(to), np.zeros(len(text), dtype=bool)
    except pyarrow.ArrowInvalid:
        if len(text) == 1:
            return pyarrow.nulls(1, to), np.ones(1, dtype=bool)
    half = len(text) // 2
    (head, head_bad), (tail, tail_bad) = _cast_where_valid(text[:half], to), _cast_where_valid(text[half:], to)
    return pyarrow.concat_arrays([head, tail]), np.concatenate([head_bad, tail_bad])


def _pandas_instant(text: str):
    """pandas' ISO 8601 reading of one value (None when it does not parse). One value at a time: over a
    whole array pandas carries a zone offset over to the zone-less values that follow it."""
    try:
        value = pd.to_datetime(text, utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        return None
    return None if pd.isna(value) else value.as_unit("us").to_datetime64()


def parse_instants(text: pyarrow.ChunkedArray, zone_less: str = "utc") -> pyarrow.ChunkedArray:
    """ISO-8601 text -> UTC microseconds, null where it does not parse (as pandas' ISO 8601 parser reads
    each value). The common shapes go through Arrow's cast; the rest through pandas. A value without a
    zone is read as UTC (`zone_less="utc"`) or does not parse (`zone_less="reject"`)."""
    text = as_text(text).combine_chunks()
    if zone_less == "reject":
        text = pc.if_else(_matches(text, _NAIVE_INSTANT), pyarrow.scalar(None, pyarrow.string()), text)
    none = pyarrow.scalar(None, pyarrow.string())
    zoned, naive = _matches(text, _ZONED_INSTANT), _matches(text, _NAIVE_INSTANT)
    zoned_values, zoned_bad = _cast_where_valid(pc.if_else(zoned, text, none), _UTC_US)
    naive_values, naive_bad = _cast_where_valid(pc.if_else(naive, text, none), pyarrow.timestamp("us"))
    parsed = pc.if_else(zoned, zoned_values, pc.assume_timezone(naive_values, "UTC"))
    # what pandas cannot hold (its nanosecond range, ~1677-2262) does not parse there either
    in_range = pc.and_(pc.greater_equal(parsed, pyarrow.scalar(pd.Timestamp.min.ceil("us"), _UTC_US)),
                       pc.less_equal(parsed, pyarrow.scalar(pd.Timestamp.max.floor("us"), _UTC_US)))
    parsed = pc.if_else(in_range, parsed, pyarrow.scalar(None, _UTC_US))
    done = (zoned.to_numpy(zero_copy_only=False) & ~zoned_bad) | (naive.to_numpy(zero_copy_only=False) & ~naive_bad)
    rest = ~done & pc.is_valid(text).to_numpy(zero_copy_only=False)
    if not rest.any():
        return pyarrow.chunked_array([parsed])
    values = parsed.cast(pyarrow.timestamp("us")).to_numpy(zero_copy_only=False)  # NaT for null, exact
    slow = [_pandas_instant(v) for v in text.filter(pyarrow.array(rest)).to_pylist()]
    values[rest] = np.array([np.datetime64("NaT") if v is None else v for v in slow], dtype="datetime64[us]")
    return pyarrow.chunked_array([pyarrow.array(values, pyarrow.timestamp("us"), from_pandas=True).cast(_UTC_US)])
