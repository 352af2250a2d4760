"""The training-set index on disk (serving/training_index.py) over real Iceberg snapshots: a training set
through it equals the one read from Iceberg (`gold_features` without an index), also for a snapshot that
predates a column; an index that is missing, partial or made for another join is ignored (same rows,
read from Iceberg); a write that fails leaves nothing; pruning keeps the newest snapshots that still exist."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest
from pyiceberg.schema import Schema
from pyiceberg.types import DoubleType, LongType, NestedField, StringType, TimestamptzType

from pipelines.config import CatalogConfig
from pipelines.io.lake import Lake
from serving import pit_join as pit
from serving import training_index, training_set

UTC = dt.timezone.utc
BASE = dt.datetime(2026, 3, 1, tzinfo=UTC)
SPEC = pit.SetSpec("g", "user_id", "int64", "as_of", (("spend", "float64"), ("segment", "string")), 2)


def _day_rows(day: int, users: range, segment: bool) -> pa.Table:
    columns = {"user_id": pa.array(list(users), pa.int64()),
               "as_of": pa.array([BASE + dt.timedelta(days=day)] * len(users), pa.timestamp("us", tz="UTC")),
               "spend": pa.array([None if u % 5 == 0 else u * 1.5 + day for u in users], pa.float64())}
    if segment:
        columns["segment"] = pa.array([f"s{u % 3}" for u in users], pa.string())
    return pa.table(columns)


@pytest.fixture()
def gold(tmp_path):
    """gold.g: three day files, then a column added and two more; (lake, snapshot before the column, last)."""
    lake = Lake(CatalogConfig(name="t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}/wh"))
    lake.catalog.create_namespace("gold")
    table = lake.catalog.create_table("gold.g", schema=Schema(
        NestedField(1, "user_id", LongType(), required=False),
        NestedField(2, "as_of", TimestamptzType(), required=False),
        NestedField(3, "spend", DoubleType(), required=False)))
    for day in range(3):
        table.append(_day_rows(day, range(day, 40 + 7 * day), segment=False))
    before = table.current_snapshot().snapshot_id
    with table.update_schema() as update:
        update.add_column("segment", StringType())
    for day in range(3, 5):
        table = lake.table("gold.g")
        table.append(_day_rows(day, range(day, 30 + day), segment=True))
    return lake, before, lake.table("gold.g").current_snapshot().snapshot_id


def _labels(n: int = 3000, seed: int = 7) -> pa.Table:
    """Labels over known and unknown users, from a day before gold's first as-of to two days after its last,
    with a share exactly at a midnight or a microsecond before one."""
    rng = np.random.default_rng(seed)
    micros = rng.integers(-86_400_000_000, 7 * 86_400_000_000, n)
    midnight = (rng.integers(-1, 7, n) * 86_400_000_000) - rng.integers(0, 2, n)
    micros = np.where(rng.random(n) < 0.3, midnight, micros)
    start = int(BASE.timestamp() * 1_000_000)
    return pa.table({"user_id": pa.array(rng.integers(-2, 80, n), pa.int64()),
                     "ts": pa.array(start + micros, pa.int64()).cast(pa.timestamp("us", tz="UTC"))})


def _from_iceberg(lake, snapshot_id: int, labels: pa.Table) -> pa.Table:
    return training_set.gold_features(lake, SPEC, snapshot_id, labels, "ts", indexes=None)


def _no_iceberg_read(monkeypatch) -> None:
    def refuse(*_args, **_kwargs):
        raise AssertionError("gold was read from Iceberg: the index was not used")

    monkeypatch.setattr(training_set, "gold_scan", refuse)


def test_through_the_index_equals_from_iceberg_for_each_snapshot(gold, tmp_path, monkeypatch):
    lake, before, last = gold
    root = tmp_path / "index"
    labels = _labels()
    expected = {sid: _from_iceberg(lake, sid, labels) for sid in (before, last)}
    for sid in (before, last):
        training_index.write(root, lake.table("gold.g"), sid, SPEC)
    _no_iceberg_read(monkeypatch)
    for sid in (before, last):
        got = training_set.gold_features(lake, SPEC, sid, labels, "ts", indexes=root)
        assert got.equals(expected[sid])
    # the snapshot before the column was added reads it as null; values and nulls are joined (not all null)
    assert expected[before].column("segment").null_count == labels.num_rows
    assert 0 < expected[last].column("spend").null_count < labels.num_rows
    assert expected[last].column("segment").null_count < labels.num_rows


def test_the_index_holds_the_snapshot_in_key_and_as_of_order(gold, tmp_path):
    lake, _, last = gold
    folder = training_index.write(tmp_path / "index", lake.table("gold.g"), last, SPEC)
    manifest = json.loads((folder / training_index.MANIFEST).read_text())
    whole = lake.read_arrow("gold.g", snapshot_id=last).sort_by([("user_id", "ascending"), ("as_of", "ascending")])
    assert manifest["rows"] == whole.num_rows
    assert [c["name"] for c in manifest["columns"]] == ["spend", "segment"]
    index = training_index.open_index(tmp_path / "index", manifest["table_uuid"], last, SPEC)
    everything = index.take(["spend", "segment"], np.arange(whole.num_rows))
    assert everything.equals(whole.select(["spend", "segment"]))
    layout = index.layout
    width = len(layout.instants)
    keys = layout.entities.to_numpy()[layout.cells // width]
    assert keys.tolist() == whole.column("user_id").to_pylist()
    as_of = layout.instants[layout.cells % width]
    assert as_of.tolist() == whole.column("as_of").cast(pa.int64()).to_pylist()


def test_an_unusable_index_is_ignored_and_gold_is_read_from_iceberg(gold, tmp_path):
    lake, _, last = gold
    root = tmp_path / "index"
    labels = _labels(500)
    expected = _from_iceberg(lake, last, labels)
    table = lake.table("gold.g")
    uuid = str(table.metadata.table_uuid)
    assert training_index.open_index(root, uuid, last, SPEC) is None  # none written yet
    folder = training_index.write(root, table, last, SPEC)
    assert training_index.open_index(root, uuid, last, SPEC) is not None
    other_key = pit.SetSpec("g", "user_id", "string", "as_of", SPEC.features, SPEC.ttl_days)
    assert training_index.open_index(root, uuid, last, other_key) is None  # made for an int64 key
    manifest = json.loads((folder / training_index.MANIFEST).read_text())
    column = folder / manifest["columns"][0]["file"]
    column.write_bytes(column.read_bytes()[:100])  # a torn file
    assert training_index.open_index(root, uuid, last, SPEC) is None
    assert training_set.gold_features(lake, SPEC, last, labels, "ts", indexes=root).equals(expected)


def test_a_failed_write_leaves_no_index_and_the_next_write_makes_it(gold, tmp_path, monkeypatch):
    lake, _, last = gold
    root = tmp_path / "index"
    table = lake.table("gold.g")
    real = training_index._write_array
    calls = []

    def fail_on_a_column(path, values):
        calls.append(path.name)
        if path.name.startswith("column-"):
            raise OSError("disk full")
        real(path, values)

    monkeypatch.setattr(training_index, "_write_array", fail_on_a_column)
    with pytest.raises(OSError):
        training_index.write(root, table, last, SPEC)
    assert "column-0.arrow" in calls
    assert list((root / str(table.metadata.table_uuid)).iterdir()) == []  # no folder, no staging left
    monkeypatch.undo()
    training_index.write(root, table, last, SPEC)
    assert training_index.open_index(root, str(table.metadata.table_uuid), last, SPEC) is not None


def test_pruning_keeps_the_newest_live_snapshots(gold, tmp_path):
    lake, before, last = gold
    root = tmp_path / "index"
    table = lake.table("gold.g")
    uuid = str(table.metadata.table_uuid)
    snapshots = [s.snapshot_id for s in table.snapshots()]  # oldest first
    for sid in snapshots:
        training_index.write(root, table, sid, SPEC)
    (root / uuid / ".tmp-123-456").mkdir()  # a crashed write's leftover
    removed = training_index.prune(root, uuid, keep=2, live=snapshots)
    assert sorted(removed) == sorted(snapshots[:-2])
    assert sorted(p.name for p in (root / uuid).iterdir()) == sorted(str(s) for s in snapshots[-2:])
    # a snapshot no longer in the table (expired) loses its index even when among the newest
    assert before not in snapshots[-2:]
    assert sorted(training_index.prune(root, uuid, keep=2, live=[before, snapshots[-1]])) == [snapshots[-2]]
    assert [p.name for p in (root / uuid).iterdir()] == [str(last)]


def test_a_rolled_back_snapshot_does_not_count_among_the_kept(gold, tmp_path):
    """Pruning keeps the newest snapshots of the table's lineage: a newer snapshot that a failed gate rolled
    back (still in the metadata) would otherwise push the current one's index out, run after run."""
    lake, _, last = gold
    root = tmp_path / "index"
    table = lake.table("gold.g")
    uuid = str(table.metadata.table_uuid)
    parent = table.snapshot_by_id(last).parent_snapshot_id
    table.manage_snapshots().set_current_snapshot(parent).commit()  # `last` rolled back, still in the metadata
    table = lake.table("gold.g")
    assert last in [s.snapshot_id for s in table.snapshots()] and last not in training_index.lineage(table)
    for sid in (parent, last):
        training_index.write(root, table, sid, SPEC)
    assert training_index.prune(root, uuid, keep=1, live=training_index.lineage(table)) == [last]
    assert training_index.open_index(root, uuid, parent, SPEC) is not None


def test_a_manifest_that_is_not_an_object_is_no_index(gold, tmp_path):
    lake, _, last = gold
    root = tmp_path / "index"
    table = lake.table("gold.g")
    folder = training_index.write(root, table, last, SPEC)
    (folder / training_index.MANIFEST).write_text("[]")
    assert training_index.open_index(root, str(table.metadata.table_uuid), last, SPEC) is None
    assert training_index.prune(root, str(table.metadata.table_uuid), keep=2, live=[last]) == []
    assert not folder.exists()  # not an index: removed as a leftover
