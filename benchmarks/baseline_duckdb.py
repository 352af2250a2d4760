"""The DuckDB baseline: the pipeline's bronze -> silver -> gold work as one SQL script, in the fast form.

    python -m benchmarks.baseline_duckdb --sample DIR --out DIR --cutoff 2026-04-01T00:00:00Z

What a strong SQL engineer would write instead of the pipeline, doing the same work on the same landing
files: bronze is the landing rows with their file name (Parquet ZSTD); silver applies the same row rules
as SQL filters (quarantine keeps every failed rule, named as the pipeline names them, in the same order),
drops duplicates (first occurrence of a tx_id wins, ordered by source file then position: the sample's
duplicates are exact copies, so which copy wins does not change a value), and is written as Parquet
ZSTD; gold is both feature sets (`benchmarks/gold_sql.py`: daily pre-aggregation, dense calendar, window
frames). No lineage columns beyond the source file, no Iceberg, no tracking: it is the lower bound on
the data work.

The landing files must be Parquet (the benchmark's sample is written with `sample.parquet_every=1`):
typed columns, so the rules that only text can break (`line_well_formed`, `*_parseable`) cannot fail here
and are not evaluated. Users come from the sample's SQLite database through Python's sqlite3.
Prints one JSON line: seconds per step and row counts.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path
from typing import Dict, Sequence

import pyarrow as pa

from benchmarks.gold_sql import MERCHANT_ACTIVITY, USER_SPEND_DAILY
from benchmarks.measure import Timer

CURRENCIES = ("EUR", "USD", "GBP", "CHF", "SEK")  # conf/quality/default.yaml
CHANNELS = ("web", "app", "store")
MAX_AMOUNT = 1_000_000


def _in_list(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def failed_rules_sql(cutoff: str) -> str:
    """One `_failed_rules` value per row: the failed rules joined by ';' in the contract's order."""
    rules = [
        ("tx_id_present", "tx_id IS NULL OR trim(tx_id) = ''"),
        ("user_id_present", "user_id IS NULL"),
        ("user_id_known", "user_id IS NOT NULL AND user_id NOT IN (SELECT user_id FROM silver_users)"),
        ("merchant_id_parseable", "merchant_id IS NULL"),
        ("amount_parseable", "amount IS NULL"),
        ("amount_in_range", f"amount IS NOT NULL AND NOT (amount > 0 AND amount <= {MAX_AMOUNT})"),
        ("currency_known", f"currency IS NULL OR currency NOT IN ({_in_list(CURRENCIES)})"),
        ("channel_known", f"channel IS NULL OR channel NOT IN ({_in_list(CHANNELS)})"),
        ("ts_parseable", "ts IS NULL"),
        ("ts_not_after_cutoff", f"ts IS NOT NULL AND ts >= TIMESTAMPTZ '{cutoff}'"),
    ]
    cases = ", ".join(f"CASE WHEN {condition} THEN '{name}' END" for name, condition in rules)
    return f"NULLIF(concat_ws(';', {cases}), '')"


def users_arrow(db: Path) -> pa.Table:
    """silver.users' columns for gold: the sample's users pass every users rule (checked against ours)."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT user_id, country, signup_ts FROM users").fetchall()
    ids, countries, signups = zip(*rows) if rows else ((), (), ())
    table = pa.table({"user_id": pa.array(ids, pa.int64()), "country": pa.array(countries, pa.string()),
                      "signup_ts": pa.array(signups, pa.string())})
    return table


def run(sample: Path, out: Path, cutoff: str, threads: int = 2) -> Dict:
    import duckdb

    out.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}; SET TimeZone = 'UTC'; SET preserve_insertion_order = false; "
                "SET enable_progress_bar = false;")
    zstd = "(FORMAT parquet, COMPRESSION zstd)"
    with timer("ingest"):
        users = users_arrow(sample / "users.db")
        con.register("users_raw", users)
        con.execute("""CREATE TABLE silver_users AS
            SELECT user_id, country, CAST(signup_ts AS TIMESTAMPTZ) AS signup_ts FROM users_raw
            WHERE user_id IS NOT NULL AND regexp_full_match(country, '[A-Z]{2}') AND signup_ts IS NOT NULL""")
        # bronze: the landing rows as received, with the file they came from and their position in it
        con.execute(f"""COPY (SELECT * FROM read_parquet('{sample}/transactions/*.parquet',
                                                       filename = true, file_row_number = true))
                        TO '{out}/bronze_transactions.parquet' {zstd}""")
    with timer("silver"):
        con.execute(f"""CREATE TABLE checked AS
            SELECT *, {failed_rules_sql(cutoff)} AS _failed_rules
            FROM read_parquet('{out}/bronze_transactions.parquet')""")
        con.execute(f"COPY (SELECT * FROM checked WHERE _failed_rules IS NOT NULL) "
                    f"TO '{out}/quarantine_transactions.parquet' {zstd}")
        con.execute("""CREATE TABLE silver AS
            SELECT tx_id, user_id, merchant_id, CAST(amount AS DECIMAL(18, 2)) AS amount, currency, channel, ts,
                   filename AS _source_file
            FROM checked WHERE _failed_rules IS NULL
            QUALIFY row_number() OVER (PARTITION BY tx_id ORDER BY filename, file_row_number) = 1""")
        con.execute(f"COPY silver TO '{out}/silver_transactions.parquet' {zstd}")
    with timer("gold"):
        for name, query in (("user_spend_daily", USER_SPEND_DAILY), ("merchant_activity", MERCHANT_ACTIVITY)):
            con.execute(f"COPY ({query.format(events='silver', users='silver_users')}) "
                        f"TO '{out}/gold_{name}.parquet' {zstd}")
    counts = {
        "bronze": con.execute("SELECT COUNT(*) FROM checked").fetchone()[0],
        "quarantined": con.execute("SELECT COUNT(*) FROM checked WHERE _failed_rules IS NOT NULL").fetchone()[0],
        "silver": con.execute("SELECT COUNT(*) FROM silver").fetchone()[0],
        "silver_users": con.execute("SELECT COUNT(*) FROM silver_users").fetchone()[0],
    }
    counts["duplicates"] = counts["bronze"] - counts["quarantined"] - counts["silver"]
    for name in ("user_spend_daily", "merchant_activity"):
        counts[f"gold_{name}"] = con.execute(
            f"SELECT COUNT(*) FROM read_parquet('{out}/gold_{name}.parquet')").fetchone()[0]
    return {"seconds": timer.seconds, "counts": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", required=True, help="the sample data directory (transactions/, users.db)")
    parser.add_argument("--out", required=True, help="where the Parquet tables go")
    parser.add_argument("--cutoff", required=True, help="the run's logical end (events at or after it fail)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(run(Path(args.sample), Path(args.out), args.cutoff, args.threads)))


if __name__ == "__main__":
    main()
