"""PinnedScan (pipelines/io/pinned_scan.py): both ways of reading a snapshot's files give pyiceberg's own
scan, row for row, and `take` gives the rows `read` numbered, across appends, a column added later, a
column renamed (which only field ids can read right), a filter that leaves residuals and time travel."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, In, LessThan
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform
from pyiceberg.types import DoubleType, LongType, NestedField, StringType, TimestamptzType

from pipelines.config import CatalogConfig
from pipelines.io import pinned_scan
from pipelines.io.lake import Lake
from pipelines.io.pinned_scan import PinnedScan

UTC = dt.timezone.utc
BASE = dt.datetime(2026, 3, 1, tzinfo=UTC)


def _day_rows(day: int, users: range, extra: bool = False) -> pa.Table:
    columns = {"user_id": pa.array(list(users), pa.int64()),
               "as_of": pa.array([BASE + dt.timedelta(days=day)] * len(users), pa.timestamp("us", tz="UTC")),
               "spend": pa.array([u * 1.5 + day for u in users], pa.float64())}
    if extra:
        columns["segment"] = pa.array([f"s{u % 3}" for u in users], pa.string())
    return pa.table(columns)


def _lake_and_schema(tmp_path):
    """A fresh catalog with the gold namespace, and the gold-like schema (user, as-of, spend)."""
    lake = Lake(CatalogConfig(name="t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}/wh"))
    lake.catalog.create_namespace("gold")
    return lake, Schema(NestedField(1, "user_id", LongType(), required=False),
                        NestedField(2, "as_of", TimestamptzType(), required=False),
                        NestedField(3, "spend", DoubleType(), required=False))


@pytest.fixture()
def table(tmp_path):
    """Five day files of gold-like rows; a column added after the third; the snapshot before it kept."""
    lake, schema = _lake_and_schema(tmp_path)
    created = lake.catalog.create_table("gold.g", schema=schema, partition_spec=PartitionSpec(
        PartitionField(2, 1000, DayTransform(), "as_of_day")))
    for day in range(3):
        created.append(_day_rows(day, range(day, 40 + 7 * day)))
    before_column = created.current_snapshot().snapshot_id
    with created.update_schema() as update:
        update.add_column("segment", StringType())
    for day in range(3, 5):
        created = lake.table("gold.g")
        created.append(_day_rows(day, range(day, 30 + day), extra=True))
    return lake.table("gold.g"), before_column, lake


def _both_ways(monkeypatch, table, snapshot_id, row_filter):
    direct = PinnedScan(table, snapshot_id, row_filter)
    monkeypatch.setattr(pinned_scan, "_direct_files", lambda *_: None)
    through_pyiceberg = PinnedScan(table, snapshot_id, row_filter)
    monkeypatch.undo()
    return direct, through_pyiceberg


FILTERS = {
    "none": AlwaysTrue(),
    # day bounds inside partitions and a key list: residuals on some files, applied row by row
    "residual": And(And(GreaterThanOrEqual("as_of", (BASE + dt.timedelta(days=1)).isoformat()),
                        LessThan("as_of", (BASE + dt.timedelta(days=3, hours=5)).isoformat())),
                    In("user_id", [3, 4, 5, 17, 33, 34])),
}


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_both_ways_read_what_pyiceberg_scans_and_take_what_read_numbered(table, monkeypatch, name):
    gold, _, _ = table
    row_filter = FILTERS[name]
    snapshot_id = gold.current_snapshot().snapshot_id
    direct, through_pyiceberg = _both_ways(monkeypatch, gold, snapshot_id, row_filter)
    assert direct.direct and not through_pyiceberg.direct
    expected = gold.scan(row_filter=row_filter, snapshot_id=snapshot_id).to_arrow()
    key = ["user_id", "as_of"]
    for scan in (direct, through_pyiceberg):
        first = scan.read(key)
        assert first.num_rows == expected.num_rows > 0
        assert sorted(first.to_pylist(), key=str) == sorted(expected.select(key).to_pylist(), key=str)
        positions = np.arange(0, first.num_rows, 3)
        taken = scan.take(["user_id", "spend", "segment"], positions)
        assert taken.column("user_id").equals(first.column("user_id").take(positions))
        # each taken row is the expected row of its (user, as_of): values follow that row, not another
        wanted = {(r["user_id"], r["as_of"]): (r["spend"], r["segment"]) for r in expected.to_pylist()}
        as_of = first.column("as_of").take(positions).to_pylist()
        assert [(r["spend"], r["segment"]) for r in taken.to_pylist()] == \
            [wanted[(u, t)] for u, t in zip(taken.column("user_id").to_pylist(), as_of)]
    if name == "none":  # rows the column predates read as null; both ways agree
        assert direct.read(["segment"]).column(0).null_count == sum(40 + 6 * d for d in range(3))
    assert direct.take(["spend"], np.array([], dtype=np.int64)).num_rows == 0


def test_a_snapshot_before_a_column_was_added_reads_as_it_was(table, monkeypatch):
    gold, before_column, _ = table
    for scan in _both_ways(monkeypatch, gold, before_column, AlwaysTrue()):
        rows = scan.read(["user_id", "spend"])
        assert rows.num_rows == sum(40 + 6 * d for d in range(3))
        assert scan.take(["spend"], np.array([0, rows.num_rows - 1])).column(0).to_pylist() == \
            [rows.column("spend")[0].as_py(), rows.column("spend")[-1].as_py()]


def test_a_renamed_column_is_read_by_field_id(table):
    """Files written before a rename keep the old name: reading by name would give nulls for them, so
    the scan goes through pyiceberg, which reads by field id."""
    gold, _, lake = table
    with gold.update_schema() as update:
        update.rename_column("spend", "spend_eur")
    lake.table("gold.g").append(_day_rows(5, range(5, 10), extra=True).rename_columns(
        ["user_id", "as_of", "spend_eur", "segment"]))
    renamed = lake.table("gold.g")
    scan = PinnedScan(renamed, renamed.current_snapshot().snapshot_id, AlwaysTrue())
    assert not scan.direct
    values = scan.read(["spend_eur"]).column(0)
    assert values.null_count == 0 and len(values) == sum(40 + 6 * d for d in range(3)) + 2 * 30 + 5
    assert sorted(values.to_pylist()) == sorted(renamed.scan().to_arrow().column("spend_eur").to_pylist())


# --- what only field ids (or the metadata) can read right goes through pyiceberg ----------------------
def _values(scan, column):
    return sorted(scan.read([column]).column(0).to_pylist(), key=str)


def test_a_column_added_with_a_default_reads_the_default_where_files_predate_it(tmp_path):
    lake, schema = _lake_and_schema(tmp_path)
    lake.catalog.create_table("gold.g", schema=schema).append(_day_rows(0, range(3)))
    with lake.table("gold.g").update_schema() as update:
        update.add_column("segment", StringType(), default_value="none yet")
    lake.table("gold.g").append(_day_rows(1, range(3), extra=True))
    table = lake.table("gold.g")
    scan = PinnedScan(table, table.current_snapshot().snapshot_id, AlwaysTrue())
    assert not scan.direct
    assert _values(scan, "segment") == ["none yet"] * 3 + ["s0", "s1", "s2"]


def test_a_file_without_field_ids_is_read_through_the_name_mapping(tmp_path):
    import json

    import pyarrow.parquet as pq

    lake, schema = _lake_and_schema(tmp_path)
    mapping = [{"field-id": 1, "names": ["user_id", "uid"]}, {"field-id": 2, "names": ["as_of"]},
               {"field-id": 3, "names": ["spend", "amount"]}]
    table = lake.catalog.create_table("gold.g", schema=schema,
                                      properties={"schema.name-mapping.default": json.dumps(mapping)})
    external = tmp_path / "external.parquet"  # another writer's file: other names, no field ids
    pq.write_table(_day_rows(0, range(4)).rename_columns(["uid", "as_of", "amount"]), external)
    # registered as is (pyiceberg's add_files would refuse the names it does not know)
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.typedef import Record

    data_file = DataFile.from_args(content=DataFileContent.DATA, file_path=f"file://{external}",
                                   file_format=FileFormat.PARQUET, partition=Record(), record_count=4,
                                   file_size_in_bytes=external.stat().st_size)
    data_file.spec_id = 0
    with table.transaction() as tx:
        with tx.update_snapshot().fast_append() as append:
            append.append_data_file(data_file)
    table = lake.table("gold.g")
    scan = PinnedScan(table, table.current_snapshot().snapshot_id, AlwaysTrue())
    assert not scan.direct
    assert _values(scan, "spend") == [0.0, 1.5, 3.0, 4.5]


def test_a_rename_is_seen_in_the_files_even_when_the_old_schema_is_gone(table):
    """Metadata may drop old schemas (expired snapshots, Java's cleanExpiredMetadata): the files still
    hold the old name, which is what the check reads."""
    from pyiceberg.table.update import RemoveSchemasUpdate

    gold, _, lake = table
    with gold.update_schema() as update:
        update.rename_column("spend", "spend_eur")
    lake.table("gold.g").append(_day_rows(5, range(5, 10), extra=True).rename_columns(
        ["user_id", "as_of", "spend_eur", "segment"]))
    renamed = lake.table("gold.g")
    current = renamed.current_snapshot().snapshot_id
    renamed.maintenance.expire_snapshots().by_ids(
        [s.snapshot_id for s in renamed.snapshots() if s.snapshot_id != current]).commit()
    renamed = lake.table("gold.g")
    unused = [s.schema_id for s in renamed.metadata.schemas if s.schema_id != renamed.metadata.current_schema_id]
    lake.catalog.commit_table(renamed, (), (RemoveSchemasUpdate(schema_ids=unused),))
    renamed = lake.table("gold.g")
    assert [s.schema_id for s in renamed.metadata.schemas] == [renamed.metadata.current_schema_id]
    scan = PinnedScan(renamed, current, AlwaysTrue())
    assert not scan.direct
    values = scan.read(["spend_eur"]).column(0)
    assert values.null_count == 0 and len(values) == sum(40 + 6 * d for d in range(3)) + 2 * 30 + 5


def test_take_refuses_positions_it_cannot_honour(table):
    gold, _, _ = table
    scan = PinnedScan(gold, gold.current_snapshot().snapshot_id, AlwaysTrue())
    rows = scan.read(["user_id"]).num_rows
    with pytest.raises(ValueError, match="ascending"):
        scan.take(["spend"], np.array([3, 1]))
    with pytest.raises(ValueError, match=f"position {rows} past the {rows} rows read"):
        scan.take(["spend"], np.array([0, rows]))
