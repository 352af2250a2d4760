"""Checking a baseline's output equals ours: gold row for row with exact values, silver and quarantine counts.

The comparison runs in DuckDB on Arrow tables: `EXCEPT ALL` in both directions finds every row present on
one side only (NULLs compare equal, floats compare exactly), so 10M-row tables are checked without a
pandas copy of each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pyarrow as pa
from pyiceberg.catalog import load_catalog

GOLD_TABLES = ("user_spend_daily", "merchant_activity")


def lake_catalog(data_dir: Path):
    """The local profile's catalog under `data_dir` (conf/catalog/sqlite.yaml)."""
    return load_catalog("lake", type="sql", uri=f"sqlite:///{data_dir}/catalog.db", warehouse=f"file://{data_dir}/warehouse")


def rows_only_on_one_side(ours: pa.Table, theirs: pa.Table) -> Dict[str, int]:
    """Rows of `ours` missing from `theirs` and the reverse (multiset semantics), matched by column name."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 2; SET TimeZone = 'UTC'; SET enable_progress_bar = false;")
    con.register("ours", ours)
    con.register("theirs", theirs.select(ours.column_names))
    columns = ", ".join(f'"{c}"' for c in ours.column_names)
    only_ours = con.execute(f"SELECT COUNT(*) FROM (SELECT {columns} FROM ours EXCEPT ALL "
                            f"SELECT {columns} FROM theirs)").fetchone()[0]
    only_theirs = con.execute(f"SELECT COUNT(*) FROM (SELECT {columns} FROM theirs EXCEPT ALL "
                              f"SELECT {columns} FROM ours)").fetchone()[0]
    return {"only_ours": only_ours, "only_theirs": only_theirs}


def check_duckdb_baseline(data_dir: Path, duck_out: Path, duck_counts: Dict[str, int],
                          our_counts: Dict[str, int]) -> List[str]:
    """Differences between the pipeline's tables and the DuckDB baseline's ([] when they agree)."""
    import pyarrow.parquet as pq

    problems = []
    catalog = lake_catalog(data_dir)
    for name in GOLD_TABLES:
        ours = catalog.load_table(f"gold.{name}").scan().to_arrow()
        theirs = pq.read_table(duck_out / f"gold_{name}.parquet")
        if ours.num_rows != theirs.num_rows:
            problems.append(f"gold.{name}: {ours.num_rows} rows, DuckDB {theirs.num_rows}")
        diff = rows_only_on_one_side(ours, theirs.cast(pa.schema([theirs.schema.field(c).with_type(
            ours.schema.field(c).type) for c in theirs.column_names])))
        if diff["only_ours"] or diff["only_theirs"]:
            problems.append(f"gold.{name}: {diff['only_ours']} rows only in ours, {diff['only_theirs']} only in DuckDB")
    # every quarantined row with the same reasons: the SQL filters are the same rules as the contract
    quarantine = catalog.load_table("quarantine.transactions").scan(selected_fields=("tx_id", "_failed_rules")).to_arrow()
    reasons = pq.read_table(duck_out / "quarantine_transactions.parquet", columns=["tx_id", "_failed_rules"])
    diff = rows_only_on_one_side(quarantine, reasons.cast(quarantine.schema))
    if diff["only_ours"] or diff["only_theirs"]:
        problems.append(f"quarantine.transactions (tx_id, _failed_rules): {diff['only_ours']} rows only in ours, "
                        f"{diff['only_theirs']} only in DuckDB")
    for ours_key, theirs_key in (("transactions.silver_rows_added", "silver"),
                                 ("transactions.quarantined", "quarantined"),
                                 ("transactions.duplicates_dropped", "duplicates")):
        if our_counts.get(ours_key) != duck_counts.get(theirs_key):
            problems.append(f"{ours_key}: ours {our_counts.get(ours_key)}, DuckDB {duck_counts.get(theirs_key)}")
    return problems
