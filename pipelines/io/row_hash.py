"""Bronze's `_row_hash`: a stable 64-bit hash of a row's source values, as 16 hex digits.

The values are pandas' (`pd.util.hash_pandas_object(frame.astype("string").fillna(NULL_TEXT), index=False)`,
formatted "{:016x}"): the tables written so far hold them, a watermarked SQL source compares re-read rows
against them, and silver breaks ties on them, so they must never change. This computes the same numbers
from Arrow columns without a Python object per value: each column is dictionary-encoded, only its distinct
values are hashed (pandas' per-value hash, `pd.util.hash_array`, with pandas' treatment of NUL bytes), and
the per-column hashes are combined the way pandas combines a frame's columns. On a 111k-row day file that is 0.12 s instead of 0.64 s.
"""

from __future__ import annotations

from typing import List

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

NULL_TEXT = "\x00<null>"  # what a missing value hashes as
CHUNK_BYTES = 2**30  # of text per chunk that `fixed_width_text` builds: Arrow's string offsets are 32-bit
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)


def _value_hashes(column: pa.ChunkedArray) -> np.ndarray:
    """pandas' hash of each value of a text column (uint64), hashing each distinct value once."""
    encoded = pc.dictionary_encode(pc.fill_null(column.cast(pa.string()), NULL_TEXT).combine_chunks())
    distinct = encoded.dictionary  # in order of first occurrence
    hashes = pd.util.hash_array(distinct.to_numpy(zero_copy_only=False), categorize=False)
    if pc.any(pc.match_substring(distinct, "\x00")).as_py():
        # pandas factorizes a column before hashing it, in a table keyed by C strings: values equal up to
        # their first NUL byte are one value there, and all of them get the hash of the first one seen.
        # Nulls become NULL_TEXT, which starts with NUL, so a null and an empty string are such a pair.
        # Kept, because the stored hashes were made that way.
        group = pc.dictionary_encode(pc.replace_substring_regex(distinct, "(?s)\x00.*", "")).indices
        group = group.to_numpy(zero_copy_only=False)
        _, first_member = np.unique(group, return_index=True)  # groups are numbered in order of first member
        hashes = hashes[first_member[group]]
    return hashes[encoded.indices.to_numpy(zero_copy_only=False)]


def _combine(per_column: List[np.ndarray], rows: int) -> np.ndarray:
    """pandas' combination of a frame's column hashes into one per row (`combine_hash_arrays`, which is
    not public API; restated here, and checked against `hash_pandas_object` by the tests)."""
    out = np.full(rows, 0x345678, dtype=np.uint64)
    multiplier = np.uint64(1000003)
    for i, hashes in enumerate(per_column):
        inverse_i = len(per_column) - i
        out ^= hashes
        out *= multiplier
        multiplier += np.uint64(82520 + inverse_i + inverse_i)
    return out + np.uint64(97531)


def fixed_width_text(characters: np.ndarray) -> pa.ChunkedArray:
    """An Arrow text column from a (rows, width) uint8 matrix of ASCII characters, one row per value,
    without a Python object per value."""
    rows, width = characters.shape
    step = max(1, CHUNK_BYTES // max(width, 1))
    chunks = []
    for start in range(0, rows, step):
        part = np.ascontiguousarray(characters[start:start + step])
        offsets = np.arange(0, width * len(part) + 1, width, dtype=np.int32)
        chunks.append(pa.StringArray.from_buffers(len(part), pa.py_buffer(offsets), pa.py_buffer(part.tobytes())))
    return pa.chunked_array(chunks, pa.string())


def _hex(values: np.ndarray) -> pa.ChunkedArray:
    """Each uint64 as 16 lowercase hex digits, most significant first (as "{:016x}".format)."""
    octets = values.astype(">u8").view(np.uint8).reshape(-1, 8)
    digits = np.empty((len(values), 16), np.uint8)
    digits[:, 0::2] = _HEX_DIGITS[octets >> 4]
    digits[:, 1::2] = _HEX_DIGITS[octets & 15]
    return fixed_width_text(digits)


def row_hashes(table: pa.Table, columns: List[str]) -> pa.ChunkedArray:
    """The `_row_hash` of each row of `table` over `columns` (text columns; nulls allowed)."""
    if not columns:
        raise ValueError("a row hash needs at least one column")
    per_column = [_value_hashes(table.column(c)) for c in columns]
    return _hex(_combine(per_column, table.num_rows))
