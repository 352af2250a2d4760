"""The Iceberg write path, including the Ray 2.60 read_parquet trap (`__file_chunk_metadata`)."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest
import pyarrow.parquet as pq
import ray
from ray.data.expressions import col

from pipelines.config import CatalogConfig
from pipelines.errors import PipelineError
from pipelines.io.lake import Lake, TableSpec


def lake_at(tmp_path) -> Lake:
    return Lake(CatalogConfig(name="t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}/wh"))


def test_dataset_from_read_parquet_writes_to_iceberg(tmp_path, ray_session):
    rows = pa.table({"k": pa.array(["a", "b", "c"]), "v": pa.array([1, 2, 3], pa.int64())})
    pq.write_table(rows, tmp_path / "in.parquet")
    ds = ray.data.read_parquet(str(tmp_path / "in.parquet"))
    assert "__file_chunk_metadata" not in ds.schema().names  # hidden, yet it reached the sink in 2.60
    lake = lake_at(tmp_path)
    spec = TableSpec("bronze.trap", rows.schema)
    snapshot = lake.write(ds, spec, {"run_id": "r1"})
    table = lake.table("bronze.trap")
    assert [f.name for f in table.schema().fields] == ["k", "v"]
    assert table.scan().to_arrow().sort_by("k").to_pydict() == rows.to_pydict()
    assert table.current_snapshot().snapshot_id == snapshot
    assert table.current_snapshot().summary.additional_properties["run_id"] == "r1"


def test_overwrite_replaces_exactly_the_filtered_rows(tmp_path, ray_session):
    lake = lake_at(tmp_path)
    schema = pa.schema([("run", pa.string()), ("v", pa.int64())])
    spec = TableSpec("silver.t", schema)
    lake.write(ray.data.from_arrow(pa.table({"run": ["a", "a", "b"], "v": [1, 2, 3]}, schema=schema)), spec, {})
    again = ray.data.from_arrow(pa.table({"run": ["a"], "v": [9]}, schema=schema))
    lake.write(again, spec, {}, overwrite_filter=col("run").is_in(["a"]))
    lake.write(again, spec, {}, overwrite_filter=col("run").is_in(["a"]))  # twice = once
    assert sorted(lake.table("silver.t").scan().to_arrow().to_pylist(), key=lambda r: r["v"]) == [
        {"run": "b", "v": 3}, {"run": "a", "v": 9}]


def test_frozen_schema_is_refused_with_a_clear_message(tmp_path):
    lake = lake_at(tmp_path)
    lake.ensure(TableSpec("silver.f", pa.schema([("a", pa.string())])))
    with pytest.raises(PipelineError, match=re.escape("table silver.f has columns ['a'], this code writes ['a', 'b']")):
        lake.ensure(TableSpec("silver.f", pa.schema([("a", pa.string()), ("b", pa.string())])))


def test_replace_keeps_the_history_and_roll_back_restores_columns_rows_and_properties(tmp_path, ray_session):
    """A table replaced in place (a gold rebuild): one column dropped, one retyped, one added, the order
    changed, a property changed and one added; rolled back, it is the table it was, read as before."""
    lake = lake_at(tmp_path)
    old = TableSpec("gold.g", pa.schema([("k", pa.int64()), ("gone", pa.string()), ("n", pa.int64())]),
                    properties={"p.kept": "1", "p.changed": "old"})
    rows = pa.table({"k": [1, 2], "gone": ["x", "y"], "n": [10, 20]}, schema=old.schema)
    before = lake.write(ray.data.from_arrow(rows), old, {"run_id": "r1"})
    new = TableSpec("gold.g", pa.schema([("added", pa.string()), ("k", pa.int64()), ("n", pa.float64())]),
                    properties={"p.kept": "1", "p.changed": "new", "p.new": "yes"})
    fresh = pa.table({"added": ["a"], "k": [3], "n": [0.5]}, schema=new.schema)
    replaced = lake.replace(ray.data.from_arrow(fresh), new, {"run_id": "r2"})
    table = lake.table("gold.g")
    assert table.scan().to_arrow().to_pylist() == [{"added": "a", "k": 3, "n": 0.5}]
    assert {k: table.properties.get(k) for k in ("p.kept", "p.changed", "p.new")} == \
        {"p.kept": "1", "p.changed": "new", "p.new": "yes"}
    assert table.scan(snapshot_id=before).to_arrow().sort_by("k").to_pylist() == rows.to_pylist()
    assert lake.replaced_after("gold.g", before)  # type: ignore[arg-type]
    assert not lake.replaced_after("gold.g", replaced)  # type: ignore[arg-type]

    lake.roll_back("gold.g", before)  # type: ignore[arg-type]
    table = lake.table("gold.g")
    assert table.current_snapshot().snapshot_id == before
    assert [f.name for f in table.schema().fields] == ["k", "gone", "n"]
    assert table.scan().to_arrow().sort_by("k").to_pylist() == rows.to_pylist()
    assert {k: table.properties.get(k) for k in ("p.kept", "p.changed", "p.new")} == \
        {"p.kept": "1", "p.changed": "old", "p.new": None}
    lake.write(ray.data.from_arrow(rows.slice(0, 1)), old, {"run_id": "r3"})  # writable as the old table again
    assert lake.row_count("gold.g") == 3
