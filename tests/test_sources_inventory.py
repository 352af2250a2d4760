"""`medallion sources`: the declared inventory beside the measured state, each figure recomputed here from
the tables' rows and the landed files (the inventory reads metadata only)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.catalog import load_catalog

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, ray_session):
    """One run of the small sample of its own (the session's pipeline_run is changed by later tests)."""
    from tests.conftest import run_small_sample

    data_dir = tmp_path_factory.mktemp("inventory")
    cfg, summary = run_small_sample(data_dir)
    return {"cfg": cfg, "summary": summary, "data_dir": data_dir}


def _tables(run):
    summary = run["summary"]
    return load_catalog(summary["catalog"]["name"], **summary["catalog"]["properties"])


def _entry(cfg, now, **sla):
    from pipelines.inventory import inventory
    from pipelines.io.lake import Lake

    if sla:
        datasets = dict(cfg.datasets)
        datasets["transactions"] = dataclasses.replace(
            datasets["transactions"], sla=dataclasses.replace(datasets["transactions"].sla, **sla))
        cfg = dataclasses.replace(cfg, datasets=datasets)
    return {e["dataset"]: e for e in inventory(cfg, Lake(cfg.catalog), now)}


def test_measured_state_of_each_source_with_slas_met_and_breached(sample_run):
    cfg, catalog = sample_run["cfg"], _tables(sample_run)
    silver = catalog.load_table("silver.transactions").scan().to_arrow()
    newest = pc.max(silver.column("ts")).as_py()
    fresh = _entry(cfg, newest + dt.timedelta(hours=47))["transactions"]
    stale = _entry(cfg, newest + dt.timedelta(hours=49))["transactions"]

    assert fresh["owner"] == "payments-data@example.com" and fresh["kind"] == "files"
    assert fresh["newest_event"] == newest.isoformat()
    bronze = catalog.load_table("bronze.transactions")
    ingest = min((s for s in bronze.snapshots() if s.summary.additional_properties.get("ingested_units")),
                 key=lambda s: s.timestamp_ms)
    assert fresh["last_arrival"] == dt.datetime.fromtimestamp(ingest.timestamp_ms / 1000, dt.timezone.utc).isoformat()
    files = sorted(Path(cfg.datasets["transactions"].path).iterdir())
    assert fresh["files_ingested"] == len(files)
    # volume: mean rows per event day over the 7 days up to the newest event's
    days = pc.cast(silver.column("ts"), pa.date32())
    first = newest.date() - dt.timedelta(days=6)
    in_week = pc.and_(pc.greater_equal(days, pa.scalar(first, pa.date32())),
                      pc.less_equal(days, pa.scalar(newest.date(), pa.date32())))
    assert fresh["volume"]["rows_per_day"] == round(pc.sum(in_week).as_py() / 7, 3)
    assert fresh["volume"]["ratio"] == round(fresh["volume"]["rows_per_day"] / 1650, 3)

    # a source younger than a week is averaged over the days it has: its second day, over two days
    from pipelines.inventory import _rows_per_day
    from pipelines.io.lake import Lake

    first_day = pc.min(days).as_py()
    first_two = pc.sum(pc.less_equal(days, pa.scalar(first_day + dt.timedelta(days=1), pa.date32()))).as_py()
    assert _rows_per_day(Lake(cfg.catalog), "silver.transactions", "ts", first_day + dt.timedelta(days=1)) \
        == first_two / 2

    by_name = {s["name"]: s for s in fresh["slas"]}
    assert (by_name["freshness"]["met"], by_name["freshness"]["measured"]) == (True, 47.0)
    breached = {s["name"]: s for s in stale["slas"]}["freshness"]
    assert (breached["met"], breached["since"]) == (False, (newest + dt.timedelta(hours=48)).isoformat())
    assert stale["breached"] == ["freshness"] and fresh["breached"] == []

    # validity and completeness of the one refined batch, from the tables' rows
    quarantined = catalog.load_table("quarantine.transactions").scan().to_arrow().num_rows
    assert by_name["validity"]["measured"] == round(silver.num_rows / (silver.num_rows + quarantined), 6)
    assert by_name["validity"]["met"] is True  # the sample's dirt: 2% of rows, within 0.98
    raw = bronze.scan().to_arrow()
    shares = {c: sum(1 for v in raw.column(c).to_pylist() if v is not None and v.strip() != "") / raw.num_rows
              for c in cfg.datasets["transactions"].column_names}
    assert by_name["completeness"]["measured"] == round(min(shares.values()), 6)

    # latency: the earliest-landed file to the first gold commit that reflects its ingest
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    landed = min(epoch + dt.timedelta(microseconds=os.stat(f).st_mtime_ns // 1000) for f in files)
    run_id = sample_run["summary"]["run_id"]
    gold = min(s.timestamp_ms for t in ("gold.user_spend_daily", "gold.merchant_activity")
               for s in catalog.load_table(t).snapshots()
               if run_id in s.summary.additional_properties.get("bronze_runs", ""))
    took = (dt.datetime.fromtimestamp(gold / 1000, dt.timezone.utc) - landed).total_seconds() / 60
    assert abs(by_name["latency"]["measured"] - took) <= 0.001 and by_name["latency"]["met"] is (took <= 120)
    strict = {s["name"]: s for s in _entry(cfg, newest, latency_minutes=took / 2)["transactions"]["slas"]}
    assert strict["latency"]["met"] is False
    since = dt.datetime.fromisoformat(strict["latency"]["since"])
    assert abs((since - (landed + dt.timedelta(minutes=took / 2))).total_seconds()) < 0.001


def test_sources_command_prints_a_table_and_json(sample_run):
    import json
    import subprocess
    import sys

    data_dir = sample_run["data_dir"]
    from tests.conftest import SMALL

    base = [sys.executable, "-m", "pipelines", "sources", f"data_dir={data_dir}", *SMALL]
    as_json = subprocess.run([*base, "--json"], capture_output=True, text=True)
    assert as_json.returncode == 0, as_json.stderr[-2000:]
    entries = {e["dataset"]: e for e in json.loads(as_json.stdout)}
    assert set(entries) == {"transactions", "users"}
    assert entries["users"]["owner"] == "accounts-team@example.com"
    table = subprocess.run(base, capture_output=True, text=True)
    assert table.returncode == 0, table.stderr[-2000:]
    assert table.stdout.splitlines()[0].startswith("| dataset | owner | kind |")
    assert "freshness breached since" in table.stdout  # the sample's events are from January 2026


def test_readme_source_section_is_generated_from_the_declarations():
    from pipelines.config import load_config
    from pipelines.inventory import render_declared

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert render_declared(load_config([])) in readme
