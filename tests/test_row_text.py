"""Bronze's text and row hashes: the fast Arrow/numpy forms write exactly what the plain forms wrote.

Bronze tables already hold these values (a watermarked source compares re-read rows to them, silver breaks
ties on them), so the references here are the formulas the pipeline used before: pandas'
`hash_pandas_object` formatted "{:016x}", and Arrow's `strftime`.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.io import row_hash, sources


def reference_row_hashes(table: pa.Table, columns) -> list:
    frame = table.select(columns).to_pandas()
    return list(pd.util.hash_pandas_object(frame.astype("string").fillna("\x00<null>"), index=False)
                .map("{:016x}".format))


# text as sources hold it: anything, including empty, non-ASCII, NUL bytes, and the very text nulls hash as
text_values = st.one_of(st.none(), st.text(max_size=12),
                        st.sampled_from(["", "\x00<null>", "0", "USD", "ü€😀", "a", "a\x00b", "a\x00c", "\x00"]))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=4).flatmap(
    lambda width: st.lists(st.lists(text_values, min_size=width, max_size=width), max_size=40)),
    st.integers(min_value=1, max_value=4))
def test_row_hashes_equal_pandas_hash_pandas_object(rows, width):
    width = len(rows[0]) if rows else width
    columns = [f"c{i}" for i in range(width)]
    table = pa.table({c: pa.array([row[i] for row in rows], pa.string()) for i, c in enumerate(columns)})
    assert row_hash.row_hashes(table, columns).to_pylist() == reference_row_hashes(table, columns)


def test_row_hashes_of_known_rows():
    # two rows differing only in which column is null, and a chunked column: hashes differ and match pandas
    table = pa.table({"a": pa.chunked_array([["x", None], ["x"]]), "b": pa.chunked_array([[None, "x"], ["\x00<null>"]])})
    got = row_hash.row_hashes(table, ["a", "b"]).to_pylist()
    assert got == reference_row_hashes(table, ["a", "b"])
    assert got[0] != got[1] and got[0] == got[2]  # a null hashes as its stand-in text
    assert all(len(h) == 16 for h in got)


def test_pandas_nul_byte_quirk_is_kept():
    # pandas hashes a column's values equal up to their first NUL byte alike, as the first one seen: so
    # within a column a null and an empty string hash alike, as whichever comes first
    null_first = pa.table({"a": [None, "", "x"]})
    empty_first = pa.table({"a": ["", None, "x"]})
    for table in (null_first, empty_first):
        got = row_hash.row_hashes(table, ["a"]).to_pylist()
        assert got == reference_row_hashes(table, ["a"])
        assert got[0] == got[1] != got[2]
    assert row_hash.row_hashes(null_first, ["a"])[0] != row_hash.row_hashes(empty_first, ["a"])[0]


instants = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59, 999999))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), instants), max_size=50), st.sampled_from(["s", "ms", "us"]))
def test_timestamp_text_equals_arrow_strftime(values, unit):
    if unit != "us":  # whole units only, as a column of that unit holds
        values = [v.replace(microsecond=v.microsecond // 1000 * 1000 if unit == "ms" else 0) if v else v
                  for v in values]
    column = pa.chunked_array([pa.array(values, pa.timestamp(unit, tz="UTC"))]).cast(pa.timestamp("us", tz="UTC"))
    want = pc.strftime(column, format="%Y-%m-%dT%H:%M:%SZ").to_pylist()
    assert sources.timestamp_text(column).to_pylist() == want


def test_timestamp_text_of_known_instants():
    column = pa.chunked_array([pa.array([dt.datetime(2026, 1, 5, 9, 3, 7, 120), None, dt.datetime(1969, 12, 31, 23, 59, 59, 999999),
                                         dt.datetime(1000, 1, 1)], pa.timestamp("us", tz="UTC"))])
    assert sources.timestamp_text(column).to_pylist() == ["2026-01-05T09:03:07.000120Z", None,
                                                          "1969-12-31T23:59:59.999999Z", "1000-01-01T00:00:00.000000Z"]


def test_long_columns_are_built_in_chunks(monkeypatch):
    monkeypatch.setattr(row_hash, "CHUNK_BYTES", 40)  # 2 hashes of 16 characters a chunk
    table = pa.table({"a": [str(i) for i in range(5)]})
    got = row_hash.row_hashes(table, ["a"])
    assert got.num_chunks == 3
    assert got.to_pylist() == reference_row_hashes(table, ["a"])
