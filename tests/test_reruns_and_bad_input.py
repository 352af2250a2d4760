"""Reruns are no-ops without new data, new files are ingested alone, bad input gives one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pyiceberg.catalog import load_catalog

from tests.conftest import SMALL, small_config

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env_extra=None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pipelines", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=900)


def snapshots(summary):
    catalog = load_catalog(summary["catalog"]["name"], **summary["catalog"]["properties"])
    return {i: [s.snapshot_id for s in catalog.load_table(i).snapshots()] for i in summary["tables"]}


def test_rerun_without_new_data_writes_nothing_then_a_new_day_is_ingested_alone(pipeline_run):
    first = pipeline_run["summary"]
    before = snapshots(first)
    data_dir = pipeline_run["data_dir"]
    import ray

    # joined to the session's Ray runtime: a local one of its own would cost the process ~10 s of start-up
    out = cli("run", f"data_dir={data_dir}", *SMALL, f"ray.address={ray.get_runtime_context().gcs_address}")
    assert out.returncode == 0, out.stderr[-3000:]
    second = json.loads(out.stdout.strip().splitlines()[-1])
    assert second["new_data"] is False and second["status"] == "succeeded"
    assert snapshots(first) == before  # not a single commit
    assert '"event": "no new data: nothing was written"' in out.stderr
    # nothing to publish and the same Feast objects as the first run applied: Feast is not even imported
    assert '"event": "nothing to publish: Feast holds these feature sets as last applied"' in out.stderr
    # nothing new in the files or the users query: Ray is never started (nor joined)
    assert '"event": "query result unchanged, nothing to ingest"' in out.stderr
    assert '"event": "ray runtime started"' not in out.stderr

    # one new day of data plus an empty file: only the day is ingested, the empty file is named
    folder = Path(pipeline_run["cfg"].sample['output_dir']) / "transactions"
    lines = ["tx_id,user_id,merchant_id,amount,currency,channel,ts",
             "new-1,3,1,12.34,EUR,web,2026-01-21T08:00:00.000000Z",
             "new-2,4,2,5.00,USD,app,2026-01-21T23:59:59.999999Z",
             "new-3,4,2,0.00,USD,app,2026-01-21T12:00:00.000000Z"]
    (folder / "2026-01-21.csv").write_text("\n".join(lines) + "\n")
    (folder / "2026-01-22.csv").write_text("")
    # a three-row day is far below the usual volume, and moves every feature: the gate would stop it
    out = cli("run", f"data_dir={data_dir}", *SMALL, "cutoff=2026-01-22T00:00:00Z", "quality.row_count.severity=warn",
              "quality.drift.severity=warn", f"ray.address={ray.get_runtime_context().gcs_address}")
    assert out.returncode == 5, out.stderr[-3000:]  # succeeded, but a file was rejected
    third = json.loads(out.stdout.strip().splitlines()[-1])
    assert (third["status"], third["rejections"]) == ("succeeded_with_rejections", {"files": 1, "rows": 1})
    known = len(list(folder.iterdir())) - 2  # the files of the first run, each ingested then
    assert first["files"]["transactions"] == {"found": known, "ingested": known, "already_ingested": 0,
                                              "rejected": 0, "empty": 0, "previously_rejected": 0,
                                              "previously_empty": 0}
    assert third["files"]["transactions"] == {"found": known + 2, "ingested": 1, "already_ingested": known,
                                              "rejected": 1, "empty": 0, "previously_rejected": 0,
                                              "previously_empty": 0}
    # new data: Ray is joined once, when the ingest first needs it
    assert out.stderr.count('"event": "ray runtime started"') == 1
    assert {c.split("=")[0] for c in third["quality"]["failed_checks"]} >= {"row_count.transactions"}
    assert third["counts"]["transactions.units_ingested"] == 1
    assert third["counts"]["transactions.bronze_rows_ingested"] == 3
    assert third["counts"]["transactions.silver_rows_added"] == 2
    assert third["quarantined"]["transactions"] == 1
    assert third["rejected_files"] == [{"source": "transactions", "file": str(folder / "2026-01-22.csv"),
                                        "reason": "file is empty (0 bytes)"}]
    assert third["counts"].get("users.units_ingested") == 0
    assert third["tables"]["bronze.transactions"]["rows"] == first["tables"]["bronze.transactions"]["rows"] + 3
    # the late day recomputed only as-of 2026-01-22, and gold still equals a full recompute
    catalog = load_catalog(third["catalog"]["name"], **third["catalog"]["properties"])
    props = catalog.load_table("gold.user_spend_daily").current_snapshot().summary.additional_properties
    assert (props["as_of_first"], props["as_of_last"]) == ("2026-01-22", "2026-01-22")
    from tests.test_pipeline_e2e import _assert_gold_equals_oracle

    _assert_gold_equals_oracle(third, "user_spend_daily")
    _assert_gold_equals_oracle(third, "merchant_activity")


def _one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_missing_source_path_is_one_line_and_writes_no_table(tmp_path):
    out = cli("run", f"data_dir={tmp_path}", "datasets.transactions.path=/no/such/folder")
    assert _one_line_error(out) == "error: source 'transactions': path /no/such/folder does not exist"
    catalog = load_catalog("lake", type="sql", uri=f"sqlite:///{tmp_path}/catalog.db",
                           warehouse=f"file://{tmp_path}/warehouse")
    assert [t for ns in catalog.list_namespaces() for t in catalog.list_tables(ns)] == []


def test_missing_database_is_one_line(tmp_path):
    (tmp_path / "sample" / "transactions").mkdir(parents=True)
    out = cli("run", f"data_dir={tmp_path}")
    assert _one_line_error(out) == f"error: source 'users': database file {tmp_path}/sample/users.db does not exist"


def test_unknown_config_key_is_one_line(tmp_path):
    line = _one_line_error(cli("run", f"data_dir={tmp_path}", "sample.nusers=5"))
    assert line.startswith("error: config error: Could not override 'sample.nusers'")
    assert "full_key: sample.nusers" in line


def test_help_lists_commands_and_overrides():
    out = cli("--help")
    assert out.returncode == 0
    for word in ("run", "sample-data", "data_dir=", "features="):
        assert word in out.stdout


def test_late_arriving_day_recomputes_only_the_affected_as_of_range(pipeline_run):
    """Runs after the rerun test (same data dir): events for an old day arrive in a new file."""
    import pandas as pd

    from pipelines.run import run
    from tests.test_pipeline_e2e import _assert_gold_equals_oracle

    data_dir = pipeline_run["data_dir"]
    summary = pipeline_run["summary"]
    catalog = load_catalog(summary["catalog"]["name"], **summary["catalog"]["properties"])
    before = catalog.load_table("gold.merchant_activity").scan().to_pandas()
    folder = Path(pipeline_run["cfg"].sample['output_dir']) / "transactions"
    (folder / "late-2026-01-09.csv").write_text(
        "tx_id,user_id,merchant_id,amount,currency,channel,ts\n"
        "late-1,5,3,42.00,EUR,web,2026-01-09T10:00:00.000000Z\n")
    result = run(small_config(data_dir, "cutoff=2026-01-22T00:00:00Z", "quality.row_count.severity=warn",
                              "quality.drift.severity=warn"))  # a one-row late file is far below the usual volume
    assert result["counts"]["transactions.silver_rows_added"] == 1
    table = load_catalog(result["catalog"]["name"], **result["catalog"]["properties"]).load_table(
        "gold.merchant_activity")
    props = table.current_snapshot().summary.additional_properties
    # merchant windows are at most 30 days: as-of 01-10 .. min(01-09 + 30 days, last data day + 1)
    silver = load_catalog(result["catalog"]["name"], **result["catalog"]["properties"]).load_table(
        "silver.transactions").scan(selected_fields=("ts",)).to_pandas()
    last_as_of = (silver["ts"].max().floor("D") + pd.Timedelta(days=1)).date().isoformat()
    assert last_as_of in ("2026-01-21", "2026-01-22")  # without / with the rerun test's new day
    assert (props["as_of_first"], props["as_of_last"]) == ("2026-01-10", last_as_of)
    after = table.scan().to_pandas()
    untouched = pd.Timestamp("2026-01-10T00:00Z")
    keep = ["merchant_id", "as_of"]
    old_rows = before[before["as_of"] < untouched].sort_values(keep).reset_index(drop=True)
    new_rows = after[after["as_of"] < untouched].sort_values(keep).reset_index(drop=True)
    pd.testing.assert_frame_equal(old_rows, new_rows)
    changed = after[(after["merchant_id"] == 3) & (after["as_of"] == pd.Timestamp("2026-01-10T00:00Z"))]
    previous = before[(before["merchant_id"] == 3) & (before["as_of"] == pd.Timestamp("2026-01-10T00:00Z"))]
    assert changed["revenue_7d"].iloc[0] == (previous["revenue_7d"].iloc[0] if len(previous) else 0.0) + 42.0
    _assert_gold_equals_oracle(result, "merchant_activity")
    _assert_gold_equals_oracle(result, "user_spend_daily")
