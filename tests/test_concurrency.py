"""Concurrent writers: the catalog lock (SQLite file lock, PostgreSQL advisory lock), commits retried after a
lost optimistic-concurrency race, real conflicts reported, and two whole runs started at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import ray

from pipelines.config import CatalogConfig
from pipelines.io.lake import CommitConflictError, Lake, TableSpec, commit_checked
from pipelines.run_lock import RunLockHeld, hold
from tests.conftest import SMALL, small_config

SPEC = TableSpec("bronze.race", pa.schema([pa.field("n", pa.int64()), pa.field("by", pa.string())]))
POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def _catalog(tmp_path: Path) -> CatalogConfig:
    return CatalogConfig(uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/warehouse")


def _rows(values, by: str) -> pa.Table:
    return pa.table({"n": pa.array(values, pa.int64()), "by": pa.array([by] * len(values))})


# --- the lock -----------------------------------------------------------------------------------------
def test_sqlite_catalog_lock_names_the_holder_and_is_released(tmp_path):
    catalog = _catalog(tmp_path)
    with hold(catalog, "run-a"):
        with pytest.raises(RunLockHeld, match=r"locked by run run-a \(pid \d+ on .*since"):
            with hold(catalog, "run-b"):
                pass
    with hold(catalog, "run-b"):  # released at the end of the block
        pass


def test_lock_of_a_killed_holder_is_released_by_the_os(tmp_path):
    catalog = _catalog(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pipelines.config import CatalogConfig; from pipelines.run_lock import hold\n"
        f"with hold(CatalogConfig(uri={catalog.uri!r}, warehouse={catalog.warehouse!r}), 'run-dead'):\n"
        "    print('held', flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunLockHeld, match="run-dead"):
        with hold(catalog, "run-c"):
            pass
    holder.kill()
    holder.wait()
    with hold(catalog, "run-c"):
        pass


def test_postgres_catalog_lock_names_the_holder(tmp_path):
    catalog = CatalogConfig(name=f"lock-test-{os.getpid()}", uri=POSTGRES, warehouse=f"file://{tmp_path}/wh")
    with hold(catalog, "run-pg-a"):
        with pytest.raises(RunLockHeld, match="medallion run run-pg-a"):
            with hold(catalog, "run-pg-b"):
                pass
    with hold(catalog, "run-pg-b"):
        pass


def test_waiting_for_the_lock_gives_up_after_the_wait(tmp_path):
    catalog = _catalog(tmp_path)
    with hold(catalog, "run-a"):
        with pytest.raises(RunLockHeld):
            with hold(catalog, "run-b", wait_seconds=1.0):
                pass


# --- optimistic commits -------------------------------------------------------------------------------
def test_lost_race_against_a_harmless_append_is_retried(tmp_path):
    lake = Lake(_catalog(tmp_path))
    lake.commit_arrow(_rows([1], "first"), SPEC, {"run_id": "run-1"})
    stale = lake.table(SPEC.identifier)
    lake.table(SPEC.identifier).append(_rows([2], "outside writer"))  # no run id: e.g. a manual load
    commit_checked(stale, lambda t: t.append(_rows([3], "run-2"), snapshot_properties={"run_id": "run-2"}), "run-2")
    assert sorted(lake.read_arrow(SPEC.identifier).column("n").to_pylist()) == [1, 2, 3]
    history = lake.snapshot_properties(SPEC.identifier)
    assert [p.get("run_id") for p in history] == ["run-1", None, "run-2"]  # committed on top of the winner


def test_a_concurrent_commit_by_another_run_is_a_conflict_not_overwritten(tmp_path):
    lake = Lake(_catalog(tmp_path))
    lake.commit_arrow(_rows([1, 2], "first"), SPEC, {"run_id": "run-1"})
    stale = lake.table(SPEC.identifier)
    lake.commit_arrow(_rows([9], "other"), SPEC, {"run_id": "run-other"})
    with pytest.raises(CommitConflictError, match="changed by run run-other"):
        commit_checked(stale, lambda t: t.overwrite(_rows([5], "run-2"), snapshot_properties={"run_id": "run-2"}),
                       "run-2")
    assert sorted(lake.read_arrow(SPEC.identifier).column("n").to_pylist()) == [1, 2, 9]


def test_ray_write_that_loses_the_race_commits_its_files_on_the_new_snapshot(tmp_path, ray_session):
    """Another writer commits after the sink loaded the table (on_write_start) and before it commits:
    the sink's commit fails on the stale table and is retried on the refreshed one, keeping the data
    files its tasks wrote and both writers' rows."""
    from ray.data import SaveMode

    from pipelines.io.lake import _CheckedIcebergSink

    lake = Lake(_catalog(tmp_path))
    lake.commit_arrow(_rows([1], "first"), SPEC, {"run_id": "run-1"})

    class RacedSink(_CheckedIcebergSink):
        def on_write_complete(self, write_result):  # on the driver; the sink itself travels to the tasks
            self._get_catalog().load_table(SPEC.identifier).append(_rows([2], "outside writer"))
            super().on_write_complete(write_result)

    ray.data.from_arrow(_rows([3, 4], "run-2")).write_datasink(RacedSink(
        "run-2", table_identifier=SPEC.identifier, catalog_kwargs=lake.ray_catalog_kwargs,
        snapshot_properties={"run_id": "run-2"}, mode=SaveMode.APPEND))
    assert sorted(lake.read_arrow(SPEC.identifier).column("n").to_pylist()) == [1, 2, 3, 4]
    assert [p.get("run_id") for p in lake.snapshot_properties(SPEC.identifier)] == ["run-1", None, "run-2"]


# --- two whole runs at once ---------------------------------------------------------------------------
@pytest.mark.e2e
def test_two_runs_started_at_once_one_runs_the_other_fails_naming_it(tmp_path, ray_session):
    from examples.sample.generate import generate

    generate(small_config(tmp_path).sample)
    command = [sys.executable, "-m", "pipelines", "run", f"data_dir={tmp_path}", *SMALL,
               f"ray.address={ray.get_runtime_context().gcs_address}"]
    cwd = Path(__file__).resolve().parent.parent
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
            for _ in range(2)]
    results = [(p.wait(), *p.communicate()) for p in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 4], [err[-2000:] for _, _, err in results]
    (_, winner_out, _), = [r for r in results if r[0] == 0]
    (_, _, loser_err), = [r for r in results if r[0] == 4]
    winner = json.loads(winner_out.strip().splitlines()[-1])
    assert f"is locked by run {winner['run_id']}" in loser_err.strip().splitlines()[-1]
    # the loser, run again, finds the work done: the same tables as one run, nothing written
    again = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    assert again.returncode == 0, again.stderr[-2000:]
    second = json.loads(again.stdout.strip().splitlines()[-1])
    assert second["new_data"] is False and second["tables"] == winner["tables"]
    lake = Lake(small_config(tmp_path).catalog)
    ids = lake.read_arrow("silver.transactions", columns=["tx_id"]).column("tx_id")
    assert len(ids) == len(set(ids.to_pylist())) == winner["tables"]["silver.transactions"]["rows"]


def test_sqlite_catalog_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    import sqlite3

    lake = Lake(_catalog(tmp_path))
    with lake.catalog.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    # WAL is a property of the database file: any other connection sees it
    assert sqlite3.connect(tmp_path / "catalog.db").execute("PRAGMA journal_mode").fetchone() == ("wal",)
