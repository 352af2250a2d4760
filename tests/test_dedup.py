"""Silver's deduplication through Ray (no shuffle: only contested tx_ids reach the driver) against a
plain pandas reading of the rule: per tx_id not already in silver, the row of the earliest bronze run,
then source file, then row hash."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import ray
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.stages.silver import _deduplicate

COLUMNS = ["tx_id", "_run_id", "_source_file", "_row_hash", "amount"]


def reference(rows: pd.DataFrame, existing: set) -> pd.DataFrame:
    fresh = rows.loc[~rows["tx_id"].isin(existing)]
    ordered = fresh.sort_values(["tx_id", "_run_id", "_source_file", "_row_hash"], kind="mergesort")
    return ordered.drop_duplicates("tx_id", keep="first")


def as_sorted(frame: pd.DataFrame) -> list:
    if frame.empty:  # an empty Ray result carries no columns
        return []
    return sorted(map(tuple, frame[COLUMNS].astype(str).to_numpy().tolist()))


# a row hash is a hash of the row's content (bronze), so two rows that tie on every sort key are the same row:
# which of them is kept cannot be seen, and the reference's input-order pick is not a rule to hold Ray to
row = st.tuples(st.sampled_from(["t1", "t2", "t3", "t4", "t5", "t6"]), st.sampled_from(["r1", "r2"]),
                st.sampled_from(["a.csv", "b.csv"]), st.integers(0, 3)).map(
    lambda r: (r[0], r[1], r[2], f"h-{r[0]}-{r[3]}", r[3]))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row, min_size=1, max_size=30), blocks=st.integers(1, 4),
       existing=st.sets(st.sampled_from(["t1", "t2", "t3", "t9"]), max_size=3), driver=st.booleans())
def test_dedup_equals_a_group_by_reading_of_the_rule(ray_session, rows, blocks, existing, driver):
    frame = pd.DataFrame(rows, columns=COLUMNS)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    size = -(-len(frame) // blocks)
    ds = ray.data.from_arrow([table.slice(i, size) for i in range(0, len(frame), size)])
    ctx = SimpleNamespace(cfg=SimpleNamespace(ray=SimpleNamespace(local_max_rows=10**6 if driver else 0)))
    held = pa.array(sorted(existing), pa.large_string())  # as read back from the silver table
    got = _deduplicate(ctx, ds, held).to_pandas()
    assert as_sorted(got) == as_sorted(reference(frame, existing))
