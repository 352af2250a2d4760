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
