"""Schema-change policies on real Iceberg tables: a new column, a missing column and a type change under
each policy of silver (bronze evolving), bronze's own policies, and gold's on a changed declaration."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import load_catalog

from pipelines.config import load_config
from validation.schema_policy import SchemaChangeError

pytestmark = pytest.mark.e2e
TINY = ["sample.n_transactions=400", "sample.n_users=30", "sample.days=3", "sample.n_merchants=10",
        "sample.dirt_fraction=0", "features.sets=[]"]
NEW_COLUMN = ("tx_id,user_id,merchant_id,amount,currency,channel,ts,coupon\n"
              "nc-1,1,1,5.00,EUR,web,2026-01-03T10:00:00Z,SAVE10\n"
              "nc-2,2,1,6.00,EUR,web,2026-01-03T11:00:00Z,\n")
MISSING_COLUMN = ("tx_id,user_id,merchant_id,amount,currency,ts\n"
                  "mc-1,1,1,7.00,EUR,2026-01-03T12:00:00Z\n")


def _type_change(folder: Path) -> None:
    """Parquet whose amount arrives as text (one value unparseable), ids as integers, ts as a timestamp."""
    pq.write_table(pa.table({
        "tx_id": ["tc-1", "tc-2"], "user_id": pa.array([3, 4], pa.int64()), "merchant_id": pa.array([2, 2], pa.int64()),
        "amount": ["12,50", "13.00"], "currency": ["EUR", "EUR"], "channel": ["app", "app"],
        "ts": pa.array([1767441600000000, 1767445200000000], pa.timestamp("us", tz="UTC")),
    }), folder / "type_change.parquet")


def _setup(tmp_path: Path, *overrides: str, files=("new", "missing", "type")):
    from examples.sample.generate import generate

    cfg = load_config([f"data_dir={tmp_path}", *TINY, *overrides])
    generate(cfg.sample)
    folder = Path(cfg.sample['output_dir']) / "transactions"
    if "new" in files:
        (folder / "new_column.csv").write_text(NEW_COLUMN)
    if "missing" in files:
        (folder / "missing_column.csv").write_text(MISSING_COLUMN)
    if "type" in files:
        _type_change(folder)
    return cfg


def _tables(summary):
    catalog = load_catalog(summary["catalog"]["name"], **summary["catalog"]["properties"])
    return {name: catalog.load_table(name).scan().to_arrow() for name in
            ("bronze.transactions", "silver.transactions", "quarantine.transactions")}


def _by_tx(table: pa.Table, *columns: str):
    rows = table.to_pylist()
    return {r["tx_id"]: tuple(r[c] for c in columns) for r in rows if (r["tx_id"] or "")[:3] in ("nc-", "mc-", "tc-")}


def _assert_type_change_quarantined_per_row(tables):
    assert _by_tx(tables["quarantine.transactions"], "amount", "_failed_rules")["tc-1"] == ("12,50", "amount_parseable")
    assert str(_by_tx(tables["silver.transactions"], "amount")["tc-2"][0]) == "13.00"


def _assert_rows_add_up(summary):
    counts = summary["counts"]
    assert counts["transactions.bronze_rows_ingested"] == (counts["transactions.silver_rows_added"]
                                                           + counts["transactions.quarantined"]
                                                           + counts["transactions.duplicates_dropped"])


def test_silver_evolve_adds_the_new_column_and_nulls_the_missing_one(tmp_path, ray_session):
    from pipelines.run import run

    summary = run(_setup(tmp_path, "schema_policy.silver=evolve"))
    tables = _tables(summary)
    assert tables["bronze.transactions"].column_names[-1] == "coupon"
    assert tables["silver.transactions"].column_names[-1] == "coupon"
    silver = _by_tx(tables["silver.transactions"], "coupon")
    assert silver["nc-1"] == ("SAVE10",) and silver["nc-2"] == ("",)
    assert _by_tx(tables["quarantine.transactions"], "channel", "_failed_rules")["mc-1"] == (None, "channel_known")
    _assert_type_change_quarantined_per_row(tables)
    _assert_rows_add_up(summary)


def test_silver_discard_value_keeps_its_columns(tmp_path, ray_session):
    from pipelines.run import run

    summary = run(_setup(tmp_path, "schema_policy.silver=discard_value"))
    tables = _tables(summary)
    assert "coupon" in tables["bronze.transactions"].column_names  # bronze (evolve) keeps the raw copy
    assert "coupon" not in tables["silver.transactions"].column_names
    assert set(_by_tx(tables["silver.transactions"], "tx_id")) == {"nc-1", "nc-2", "tc-2"}
    assert _by_tx(tables["quarantine.transactions"], "_failed_rules")["mc-1"] == ("channel_known",)
    _assert_type_change_quarantined_per_row(tables)
    _assert_rows_add_up(summary)


@pytest.mark.parametrize("policy", ["discard_value", "evolve"])
def test_a_new_column_after_the_first_run_reaches_quarantine_as_it_reached_bronze(tmp_path, ray_session, policy):
    """Found by a user: with quarantine already written, a file with a new column under the policies the
    freeze error suggests stopped *after* bronze was committed (quarantine's columns could not evolve), and
    every later run stopped the same way."""
    from pipelines.run import run

    cfg = _setup(tmp_path, files=())
    run(cfg)  # quarantine.transactions exists now, without the new column
    (Path(cfg.sample["output_dir"]) / "transactions" / "new_column.csv").write_text(
        NEW_COLUMN + "nc-3,1,1,5.00,EUR,fax,2026-01-03T12:00:00Z,SAVE20\n")  # a bad row carrying a value
    summary = run(load_config([f"data_dir={tmp_path}", *TINY, f"schema_policy.silver={policy}",
                               "quality.row_count.severity=warn"]))  # a 3-row file after full days
    tables = _tables(summary)
    assert _by_tx(tables["quarantine.transactions"], "_failed_rules", "coupon") == {"nc-3": ("channel_known", "SAVE20")}
    assert set(_by_tx(tables["silver.transactions"], "tx_id")) == {"nc-1", "nc-2"}
    assert ("coupon" in tables["silver.transactions"].column_names) == (policy == "evolve")
    _assert_rows_add_up(summary)
    again = run(load_config([f"data_dir={tmp_path}", *TINY]))  # not wedged: a plain run finds nothing new
    assert again["new_data"] is False


def test_silver_discard_row_quarantines_rows_with_the_reason(tmp_path, ray_session):
    from pipelines.run import run

    summary = run(_setup(tmp_path, "schema_policy.silver=discard_row"))
    tables = _tables(summary)
    assert "coupon" not in tables["silver.transactions"].column_names
    quarantined = _by_tx(tables["quarantine.transactions"], "_failed_rules")
    assert quarantined["nc-1"] == ("unexpected_column:coupon",)
    assert quarantined["mc-1"] == ("missing_column:channel;channel_known",)
    assert "nc-2" in _by_tx(tables["silver.transactions"], "tx_id")  # no value in the new column: kept
    _assert_type_change_quarantined_per_row(tables)
    _assert_rows_add_up(summary)


def _no_tables(cfg) -> bool:
    return not (Path(cfg.data_dir) / "warehouse").exists() or not any((Path(cfg.data_dir) / "warehouse").rglob("*.parquet"))


def test_silver_freeze_stops_before_any_write_naming_the_column(tmp_path, ray_session):
    from pipelines.run import run

    cfg = _setup(tmp_path, files=("new",))
    with pytest.raises(SchemaChangeError) as stopped:
        run(cfg)
    assert str(stopped.value) == (
        f"schema change stopped the run: file {Path(cfg.sample['output_dir']) / 'transactions' / 'new_column.csv'} "
        "has new column(s) ['coupon'], and silver.transactions is frozen (schema_policy.silver=freeze; set "
        "evolve, discard_row or discard_value to accept it)")
    assert _no_tables(cfg)
    (Path(cfg.sample['output_dir']) / "transactions" / "new_column.csv").unlink()
    (Path(cfg.sample['output_dir']) / "transactions" / "missing_column.csv").write_text(MISSING_COLUMN)
    with pytest.raises(SchemaChangeError, match=r"has missing column\(s\) \['channel'\], and silver.transactions"):
        run(cfg)
    assert _no_tables(cfg)
    # a type change is not a schema change: its rows are judged one by one
    (Path(cfg.sample['output_dir']) / "transactions" / "missing_column.csv").unlink()
    _type_change(Path(cfg.sample['output_dir']) / "transactions")
    summary = run(cfg)
    _assert_type_change_quarantined_per_row(_tables(summary))
    _assert_rows_add_up(summary)


def test_bronze_freeze_and_discard_value(tmp_path, ray_session):
    from pipelines.run import run

    cfg = _setup(tmp_path, "schema_policy.bronze=freeze", "schema_policy.silver=evolve", files=("new",))
    with pytest.raises(SchemaChangeError, match=r"new column\(s\) \['coupon'\], and bronze.transactions is frozen "
                       r"\(schema_policy.bronze=freeze; set evolve or discard_value to accept it\)$"):
        run(cfg)
    assert _no_tables(cfg)
    summary = run(load_config([f"data_dir={tmp_path}", *TINY, "schema_policy.bronze=discard_value",
                               "schema_policy.silver=evolve"]))
    tables = _tables(summary)
    assert "coupon" not in tables["bronze.transactions"].column_names
    assert "coupon" not in tables["silver.transactions"].column_names
    assert set(_by_tx(tables["silver.transactions"], "tx_id")) == {"nc-1", "nc-2"}


def test_gold_freeze_stops_on_a_changed_declaration_and_evolve_allows_the_rebuild(tmp_path):
    from features.registry import feature_set
    from pipelines.context import RunContext
    from pipelines.io.lake import Lake, TableSpec
    from pipelines.stages import gold

    fs = feature_set("user_spend_daily")
    spec = gold.table_spec(fs)
    cfg = load_config([f"data_dir={tmp_path}", *TINY])
    (tmp_path / "warehouse").mkdir()
    lake = Lake(cfg.catalog)
    older = pa.schema([f for f in spec.schema if f.name != "spend_7d"])  # the declaration before
    lake.ensure(TableSpec(spec.identifier, older))
    ctx = RunContext(cfg, lake, "r", None, "v", "h")  # type: ignore[arg-type]
    with pytest.raises(SchemaChangeError, match=r"feature set 'user_spend_daily' has new column\(s\) "
                                                r"\['spend_7d'\], and gold.user_spend_daily is frozen"):
        gold.check_schema(ctx, fs)
    evolving = load_config([f"data_dir={tmp_path}", *TINY, "schema_policy.gold=evolve"])
    gold.check_schema(RunContext(evolving, lake, "r", None, "v", "h"), fs)  # type: ignore[arg-type]


def _gold_context(tmp_path, policy="freeze"):
    from pipelines.context import RunContext
    from pipelines.io.lake import Lake

    cfg = load_config([f"data_dir={tmp_path}", *TINY, f"schema_policy.gold={policy}"])
    (tmp_path / "warehouse").mkdir(exist_ok=True)
    return RunContext(cfg, Lake(cfg.catalog), "r", None, "v", "h")  # type: ignore[arg-type]


def test_gold_freeze_names_the_features_whose_definitions_changed_under_the_same_names(tmp_path):
    import dataclasses

    from features.declarations import Filter
    from features.registry import feature_set
    from pipelines.stages import gold

    merchant = feature_set("merchant_activity")
    app_revenue = dataclasses.replace(merchant, aggregations=tuple(
        dataclasses.replace(a, where=Filter("channel", "app")) if a.name == "web_revenue" else a
        for a in merchant.aggregations))
    ctx = _gold_context(tmp_path)
    ctx.lake.ensure(gold.table_spec(merchant))  # gold as the shipped declaration wrote it
    gold.check_schema(ctx, merchant)
    with pytest.raises(SchemaChangeError) as stopped:
        gold.check_schema(ctx, app_revenue)
    assert str(stopped.value) == (  # the derived share reads the redefined revenue: it changes too
        "schema change stopped the run: feature set 'merchant_activity' has changed definition(s) of "
        "['web_revenue_30d', 'web_share_30d'], and gold.merchant_activity is frozen (schema_policy.gold=freeze; "
        "set evolve to accept it)")
    gold.check_schema(_gold_context(tmp_path, "evolve"), app_revenue)


def test_gold_written_before_fingerprints_were_recorded_is_judged_by_its_columns(tmp_path):
    import dataclasses

    from features.registry import feature_set
    from pipelines.io.lake import TableSpec
    from pipelines.stages import gold

    fs = feature_set("user_spend_daily")
    spec = gold.table_spec(fs)
    ctx = _gold_context(tmp_path)
    ctx.lake.ensure(TableSpec(spec.identifier, spec.schema, spec.day_partition))  # no properties: older code
    mean = dataclasses.replace(fs, aggregations=tuple(dataclasses.replace(a, agg="mean") if a.name == "spend" else a
                                                      for a in fs.aggregations))
    gold.check_schema(ctx, mean)  # nothing to compare with: the same columns pass, no spurious rebuild
    ctx.lake.ensure(spec)  # the next write records what it writes
    assert ctx.lake.table(spec.identifier).properties["medallion.declaration_fingerprint"] == fs.fingerprint()
    with pytest.raises(SchemaChangeError, match=r"changed definition\(s\) of \['spend_7d', 'spend_30d', 'spend_90d'\]"):
        gold.check_schema(ctx, mean)


def test_policies_a_layer_cannot_take_are_config_errors(tmp_path):
    from pipelines.errors import ConfigError

    with pytest.raises(ConfigError, match=r"schema_policy.bronze='discard_row' must be one of "
                                          r"\['evolve', 'freeze', 'discard_value'\]"):
        load_config([f"data_dir={tmp_path}", "schema_policy.bronze=discard_row"])
    with pytest.raises(ConfigError, match=r"schema_policy.gold='discard_value' must be one of"):
        load_config([f"data_dir={tmp_path}", "schema_policy.gold=discard_value"])


def test_a_declaration_its_tables_cannot_take_is_refused_before_any_write(tmp_path, ray_session):
    """A column added to the users declaration, in a run that also has a new transactions file: the run is
    refused while planning (before, bronze.transactions was committed first and the run stopped half-way)."""
    from pipelines.errors import PipelineError
    from pipelines.io.lake import Lake
    from pipelines.run import run

    cfg = _setup(tmp_path, files=())
    run(cfg)
    lake = Lake(cfg.catalog)
    snapshots = {t: lake.current_snapshot_id(t) for t in ("bronze.transactions", "silver.transactions",
                                                           "bronze.users", "silver.users")}
    (Path(cfg.sample["output_dir"]) / "transactions" / "next_day.csv").write_text(
        "tx_id,user_id,merchant_id,amount,currency,channel,ts\nnd-1,1,1,5.00,EUR,web,2026-01-03T12:00:00Z\n")
    with pytest.raises(PipelineError) as refused:
        run(load_config([f"data_dir={tmp_path}", *TINY, "+datasets.users.columns.nickname={type: string}"]))
    assert str(refused.value).startswith("table bronze.users has columns ['user_id', ")
    assert str(refused.value).endswith("the schema is frozen for this layer (migrate or drop the table first); "
                                       "datasets.users no longer matches it: nothing was written")
    lake = Lake(cfg.catalog)
    assert {t: lake.current_snapshot_id(t) for t in snapshots} == snapshots
    again = run(load_config([f"data_dir={tmp_path}", *TINY, "quality.row_count.severity=warn"]))  # a 1-row day
    assert again["counts"]["transactions.units_ingested"] == 1 and not again["resumed"]  # nothing left open
