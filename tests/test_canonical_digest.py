"""`labels.canonical_digest` hashes fixed bytes (recorded training sets are checked against them): the
optimized version (Arrow's buffers hashed in place) must give exactly what the first, plain version
gave, kept here as the reference, on tables of every type it knows, with nulls, slices and chunks."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import List

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.labels import _plain, canonical_digest


# --- the reference: the first implementation, verbatim ---------------------------------------------
def reference_digest(table: pa.Table) -> str:
    digest = hashlib.sha256()
    digest.update(str(table.schema.remove_metadata()).encode())
    digest.update(str(table.num_rows).encode())
    for name in table.column_names:
        values = _plain(table.column(name)) if table.num_rows else pa.array([], table.schema.field(name).type)
        digest.update(np.packbits(values.is_valid().to_numpy(zero_copy_only=False)).tobytes())
        for part in _reference_value_bytes(values.drop_null()):
            digest.update(part)
    return "sha256:" + digest.hexdigest()


def _reference_value_bytes(values: pa.Array) -> List[bytes]:
    kind = values.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
            or pa.types.is_large_binary(kind):
        values = pa.concat_arrays([values.cast(pa.large_binary())])  # fresh buffers, offsets from 0
        offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset:values.offset + len(values) + 1]
        data = values.buffers()[2]
        body = b"" if data is None or not len(values) else data.to_pybytes()[offsets[0]:offsets[-1]]
        return [(offsets - offsets[0]).tobytes(), body]
    if pa.types.is_boolean(kind):
        return [values.to_numpy(zero_copy_only=False).astype(np.uint8).tobytes()]
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_time(kind) \
            or pa.types.is_duration(kind):
        return [values.cast(pa.int64() if kind.bit_width == 64 else pa.int32()).to_numpy().tobytes()]
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return [values.to_numpy(zero_copy_only=False).tobytes()]
    return [repr(values.to_pylist()).encode()]


# --- tables ---------------------------------------------------------------------------------------
TYPES = {
    "int64": (pa.int64(), st.integers(-2**63, 2**63 - 1)),
    "int32": (pa.int32(), st.integers(-2**31, 2**31 - 1)),
    "float64": (pa.float64(), st.floats(allow_nan=True, allow_infinity=True)),
    "string": (pa.string(), st.text(max_size=5)),
    "large_string": (pa.large_string(), st.text(max_size=5)),
    "binary": (pa.binary(), st.binary(max_size=4)),
    "bool": (pa.bool_(), st.booleans()),
    "timestamp": (pa.timestamp("us", tz="UTC"),
                  st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1),
                               timezones=st.just(dt.timezone.utc))),
    "date32": (pa.date32(), st.dates()),
    "decimal": (pa.decimal128(6, 2), st.decimals(min_value=-9999, max_value=9999, places=2, allow_nan=False)),
}


@st.composite
def tables(draw):
    rows = draw(st.integers(0, 40))
    names = draw(st.lists(st.sampled_from(sorted(TYPES)), min_size=1, max_size=4, unique=True))
    nullable = draw(st.booleans())
    columns = {}
    for name in names:
        kind, values = TYPES[name]
        cells = st.none() | values if nullable else values
        data = draw(st.lists(cells, min_size=rows + 3, max_size=rows + 3))
        array = pa.array(data, kind).slice(draw(st.integers(0, 3)), rows)  # a non-zero offset, often
        cut = draw(st.integers(0, rows))
        columns[name] = pa.chunked_array([array.slice(0, cut), array.slice(cut)], kind)  # two chunks
    return pa.table(columns)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=tables())
def test_the_digest_is_the_reference_digest(table):
    assert canonical_digest(table) == reference_digest(table)
    assert canonical_digest(table.combine_chunks()) == canonical_digest(table)


def test_the_digest_of_a_known_table_by_hand():
    """Bytes written out by hand for one small table, so the reference itself is pinned too."""
    table = pa.table({"k": pa.array([1, None, 3], pa.int64()), "s": pa.array(["a", "bc", None])})
    expected = hashlib.sha256()
    expected.update(str(table.schema).encode())
    expected.update(b"3")
    expected.update(bytes([0b10100000]))  # k valid, null, valid (msb first)
    expected.update(np.array([1, 3], "<i8").tobytes())
    expected.update(bytes([0b11000000]))  # s valid, valid, null
    expected.update(np.array([0, 1, 3], "<i8").tobytes() + b"abc")
    assert canonical_digest(table) == reference_digest(table) == "sha256:" + expected.hexdigest()
