"""Backfill: rebuild silver and gold for an interval after a rule change. Twice = once (the second writes
nothing); monthly chunks in any order (Hydra multirun) = one backfill of the whole span."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest

from pipelines.cli import main as cli
from tests.conftest import SMALL, small_config

pytestmark = pytest.mark.e2e

# 45 days: January and half of February, so monthly chunks are two real chunks.
SPAN = ["sample.days=45"]
# The rule change being backfilled: a lower ceiling for amounts quarantines more rows.
NEW_RULE = ["datasets.transactions.columns.amount.range.max=150"]
# ... which moves every spend feature far from what was published: the drift check, judged on a backfill
# as on a run, would stop it; the change is intended, so it is relaxed for the backfill
INTENDED = ["quality.drift.severity=warn"]
TABLES = ["silver.transactions", "quarantine.transactions", "gold.user_spend_daily", "gold.merchant_activity"]


RUN_METADATA = {"_run_id", "_ingested_at"}  # differ between two data directories by construction


def _state(cfg) -> dict:
    """Rows and content digest of each table, without the columns naming the run that wrote a row."""
    from pipelines.digest import table_digest
    from pipelines.io.lake import Lake

    lake = Lake(cfg.catalog)
    out = {}
    for identifier in TABLES:
        data = lake.read_arrow(identifier)
        data = data.drop_columns([c for c in data.column_names if c in RUN_METADATA])
        out[identifier] = (data.num_rows, table_digest(data))
    return out


def _iso_instant(text) -> bool:
    import datetime as dt

    try:
        dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        return text is not None
    except ValueError:
        return False


def _snapshots(cfg) -> dict:
    from pipelines.io.lake import Lake

    lake = Lake(cfg.catalog)
    return {t: lake.current_snapshot_id(t) for t in TABLES}


def _cli(capsys, *args: str) -> list:
    assert cli(list(args)) == 0
    return [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]


@pytest.fixture(scope="module")
def sample(tmp_path_factory, ray_session):
    from examples.sample.generate import generate

    root = tmp_path_factory.mktemp("backfill")
    generate(small_config(root / "a", *SPAN, f"sample.output_dir={root / 'sample'}").sample)
    return root


def _run(root, name: str):
    from pipelines.run import run

    cfg = small_config(root / name, *SPAN, f"sample.output_dir={root / 'sample'}")
    run(cfg)
    return cfg


def test_backfill_twice_equals_once_and_chunks_in_any_order_equal_one_backfill(sample, capsys):
    from pipelines.io.lake import Lake

    whole, chunked = _run(sample, "whole"), _run(sample, "chunked")
    before = _state(whole)
    assert before == _state(chunked)  # the same data, the same incremental results
    common = [*SMALL, *SPAN, f"sample.output_dir={sample / 'sample'}", *NEW_RULE]
    snapshots = _snapshots(whole)

    # a backfill passes the quality gate before it publishes: this one fails (drift), nothing stays written
    assert cli(["backfill", f"data_dir={sample / 'whole'}", *common, "backfill.start=2026-01-01",
                "backfill.end=2026-03-01"]) == 3
    err = capsys.readouterr().err
    assert "error: quality gate failed" in err and "drift.user_spend_daily.spend_30d" in err
    assert _snapshots(whole) == snapshots and _state(whole) == before

    common += INTENDED
    (first,) = _cli(capsys, "backfill", f"data_dir={sample / 'whole'}", *common,
                    "backfill.start=2026-01-01", "backfill.end=2026-03-01")
    assert first["quality"]["passed"] is True and first["published"] == ["user_spend_daily", "merchant_activity"]
    assert set(first["tables_written"]) == set(TABLES)  # the new rule changed every layer in the interval
    once, snapshots = _state(whole), _snapshots(whole)
    assert once != before
    # the rule took effect: no silver amount above the new ceiling; the quarantine grew by those rows
    silver = Lake(whole.catalog).read_arrow("silver.transactions", columns=["amount"])
    assert pc.max(silver.column("amount")).as_py() <= 150
    assert once["silver.transactions"][0] < before["silver.transactions"][0]
    counts = first["counts"]  # the interval's rows add up: in = valid + quarantined + duplicates dropped
    assert counts["transactions.bronze_rows_refined"] == counts["transactions.silver_rows_added"] + \
        counts["transactions.quarantined"] + counts["transactions.duplicates_dropped"]
    assert counts["transactions.silver_rows_added"] == once["silver.transactions"][0]
    # the quarantine holds the interval's failures plus the rows whose time does not parse (in no interval)
    bronze_ts = Lake(whole.catalog).read_arrow("bronze.transactions", columns=["ts"]).column("ts").to_pylist()
    unparseable = sum(1 for t in bronze_ts if not _iso_instant(t))
    assert once["quarantine.transactions"][0] == counts["transactions.quarantined"] + unparseable

    (second,) = _cli(capsys, "backfill", f"data_dir={sample / 'whole'}", *common,
                     "backfill.start=2026-01-01", "backfill.end=2026-03-01")
    assert second["tables_written"] == {} and second["gold_as_of"] == {}
    assert _snapshots(whole) == snapshots  # twice = once: the second backfill committed nothing

    # Hydra multirun, one job per month, in reverse order
    jobs = _cli(capsys, "backfill", "-m", f"data_dir={sample / 'chunked'}", *common, "backfill.month=2026-02,2026-01")
    assert [j["interval"] for j in jobs] == [["2026-02-01", "2026-03-01"], ["2026-01-01", "2026-02-01"]]
    assert _state(chunked) == once
    # online: the published features of every entity equal between the two stores
    from features.registry import feature_sets
    from serving import publish

    for fs in feature_sets(whole.features.sets):
        keys = sorted(pc.unique(Lake(whole.catalog).read_arrow(f"gold.{fs.name}", columns=[fs.entity.join_key])
                                .column(fs.entity.join_key)).to_pylist())
        a = publish.online_values(publish.open_store(whole), fs, keys)
        b = publish.online_values(publish.open_store(chunked), fs, keys)
        assert a.equals(b), fs.name
