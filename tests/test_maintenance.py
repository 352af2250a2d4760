"""Erasure of one user and retention, on a real run: the rows are gone from every table, every remaining
snapshot and every file on disk; other rows are untouched; reruns still know what was ingested."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import load_catalog
from pyiceberg.expressions import EqualTo

from tests.conftest import SMALL, run_small_sample

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
ERASED = 7


@pytest.fixture(scope="module")
def base(tmp_path_factory, ray_session):
    data_dir = tmp_path_factory.mktemp("maintenance")
    cfg, summary = run_small_sample(data_dir)
    catalog = load_catalog(summary["catalog"]["name"], **summary["catalog"]["properties"])
    return {"cfg": cfg, "summary": summary, "catalog": catalog, "data_dir": data_dir}


def cli(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "pipelines", *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _user_tables(catalog):
    names = [".".join(t) for ns in ("bronze", "silver", "quarantine", "gold") for t in catalog.list_tables(ns)]
    return [n for n in names if "user_id" in catalog.load_table(n).schema().column_names]


def _is_user(table, user: int):
    column = table.column("user_id")
    value = str(user) if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) else user
    return pc.fill_null(pc.equal(column, value), False)


def _files_on_disk(catalog, identifier):
    location = catalog.load_table(identifier).location().replace("file://", "")
    return sorted(p for p in Path(location).rglob("*.parquet") if "/data/" in str(p))


def _sorted_rows(table):
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist())


def test_erasing_a_user_removes_it_everywhere_and_nothing_else(base):
    from features.registry import feature_set
    from serving.publish import online_values, open_store

    catalog, cfg = base["catalog"], base["cfg"]
    tables = _user_tables(catalog)
    assert set(tables) >= {"bronze.transactions", "bronze.users", "silver.transactions", "silver.users",
                           "quarantine.transactions", "gold.user_spend_daily"}
    before, expected_removed = {}, {}
    for identifier in tables:
        content = catalog.load_table(identifier).scan().to_arrow()
        mask = _is_user(content, ERASED)
        expected_removed[identifier] = int(pc.sum(mask).as_py() or 0)
        before[identifier] = _sorted_rows(content.filter(pc.invert(mask)))
    assert expected_removed["silver.transactions"] > 0 and expected_removed["bronze.users"] == 1
    store = open_store(cfg)
    fs = feature_set("user_spend_daily")
    online_before = online_values(store, fs, list(range(1, 151)))
    assert online_before.loc[ERASED - 1, "tx_count_30d"] is not None

    gold_uuid = str(catalog.load_table("gold.user_spend_daily").metadata.table_uuid)

    def indexed_users():  # per training-set index of gold.user_spend_daily, the users it holds rows of
        found = []
        for entities in Path(cfg.training_index.dir, gold_uuid).glob("*/entities.arrow"):
            with pa.memory_map(str(entities)) as source:
                found.append(set(pa.ipc.open_file(source).read_all().column(0).to_pylist()))
        return found

    assert any(ERASED in users for users in indexed_users())  # the published snapshot's index holds the user

    result = cli("erase", "--key", f"user_id={ERASED}", f"data_dir={base['data_dir']}", *SMALL)
    report = result["erased"]
    assert {t: r["rows_deleted"] for t, r in report["tables"].items()} == expected_removed
    # the index of the snapshot that held the user went with it (a copy of gold would keep the rows)
    assert result["training_indexes_removed"] >= 1
    assert not any(ERASED in users for users in indexed_users())
    assert report["online_store"] == {"user_spend_daily": len(fs.feature_names())}

    for identifier in tables:
        table = catalog.load_table(identifier)
        for snapshot in table.snapshots():  # time travel to any remaining snapshot
            assert len(table.scan(row_filter=EqualTo("user_id", str(ERASED) if identifier.split(".")[0] in
                                                     ("bronze", "quarantine") else ERASED),
                                  snapshot_id=snapshot.snapshot_id).to_arrow()) == 0
        for path in _files_on_disk(catalog, identifier):  # and no file left on disk holds the user
            assert pc.sum(_is_user(pq.read_table(path, columns=["user_id"]), ERASED)).as_py() in (0, None), path
        assert _sorted_rows(table.scan().to_arrow()) == before[identifier]  # everyone else untouched
    online_after = online_values(open_store(cfg), fs, list(range(1, 151)))
    assert online_after.loc[ERASED - 1, list(fs.feature_names())].isna().all()
    others = online_after.drop(index=ERASED - 1)
    # (the erased row's nulls turn integer columns to float in this frame: compare values, not dtypes)
    pd.testing.assert_frame_equal(others, online_before.drop(index=ERASED - 1), check_dtype=False)


def test_retention_removes_exactly_the_older_rows_and_their_files(base):
    catalog = base["catalog"]
    reference = dt.datetime(2026, 1, 21, tzinfo=dt.timezone.utc)
    bound = reference - dt.timedelta(days=10)
    kept = {}
    for identifier, column in (("silver.transactions", "ts"), ("gold.user_spend_daily", "as_of"),
                               ("gold.merchant_activity", "as_of")):
        content = catalog.load_table(identifier).scan().to_arrow()
        young = pc.greater_equal(content.column(column), bound)
        kept[identifier] = (column, _sorted_rows(content.filter(young)), len(content) - pc.sum(young).as_py())
        assert kept[identifier][2] > 0  # there is something to remove
    result = cli("maintain", f"data_dir={base['data_dir']}", *SMALL, "retention.silver=10", "retention.gold=10",
                 f"retention.reference={reference.isoformat()}")
    for identifier, (column, rows, removed) in kept.items():
        assert result["retention"][identifier]["rows_deleted"] == removed
        table = catalog.load_table(identifier)
        assert _sorted_rows(table.scan().to_arrow()) == rows
        assert len(table.snapshots()) == 1
        live = {entry for entry in table.inspect.files().column("file_path").to_pylist()}
        on_disk = _files_on_disk(catalog, identifier)
        assert {f"file://{p}" for p in on_disk} == live  # every older file is deleted, none is left dangling
        for path in on_disk:
            assert pc.min(pq.read_table(path, columns=[column]).column(column)).as_py() >= bound
    assert "bronze.transactions" not in result["retention"]  # no retention configured for bronze

    # what was ingested is still known after the history expired: a rerun finds nothing new
    again = cli("run", f"data_dir={base['data_dir']}", *SMALL)
    assert again["new_data"] is False


def test_compaction_rewrites_partitions_of_many_small_files_into_one_with_the_same_rows(tmp_path):
    from pipelines.config import CatalogConfig
    from pipelines.digest import table_digest
    from pipelines.io.lake import Lake, TableSpec
    from pipelines.maintenance import COMPACT_MIN_FILES, clean_up

    lake = Lake(CatalogConfig(uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/warehouse"))
    spec = TableSpec("silver.events", pa.schema([pa.field("n", pa.int64()),
                                                 pa.field("ts", pa.timestamp("us", tz="UTC"))]), day_partition="ts")
    busy, quiet = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc), dt.datetime(2026, 1, 6, tzinfo=dt.timezone.utc)
    for i in range(COMPACT_MIN_FILES + 1):  # one small file per commit on the busy day, as incremental runs write
        lake.commit_arrow(pa.table({"n": [i, 100 + i], "ts": [busy, busy + dt.timedelta(hours=i)]}), spec,
                          {"run_id": f"run-{i}"})
    lake.commit_arrow(pa.table({"n": [999], "ts": [quiet]}), spec, {"run_id": "run-quiet"})

    def files_per_day() -> dict:
        days = [p["ts_day"] for p in lake.table(spec.identifier).inspect.files().column("partition").to_pylist()]
        return {d: days.count(d) for d in set(days)}

    before = lake.read_arrow(spec.identifier)
    assert sorted(files_per_day().values()) == [1, COMPACT_MIN_FILES + 1]
    report = clean_up(lake, orphan_min_age_s=0)
    assert report[spec.identifier]["files_compacted"] == COMPACT_MIN_FILES + 1
    assert report[spec.identifier]["partitions_compacted"] == 1
    assert sorted(files_per_day().values()) == [1, 1]  # the busy day is one file now; the quiet day untouched
    after = lake.read_arrow(spec.identifier)
    assert table_digest(after) == table_digest(before) and after.num_rows == 2 * (COMPACT_MIN_FILES + 1) + 1
    # the small files are gone from disk too: only the live files remain
    parquet = [p for p in (tmp_path / "warehouse").rglob("*.parquet")]
    assert len(parquet) == 2
    assert clean_up(lake, orphan_min_age_s=0)[spec.identifier]["files_compacted"] == 0  # nothing left to do
