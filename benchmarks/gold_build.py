"""Benchmark: the gold build (user_spend_daily) on Ray vs the DuckDB SQL baseline, same data, same machine.

    python -m benchmarks.gold_build --sizes 1000000 10000000

For each size (100 transactions per user, 90 days) it writes clean silver events once, then runs each side
in its own process: ours reads silver from Iceberg and writes gold to Iceberg (`pipelines.stages.gold.build`);
DuckDB reads the same events as Parquet and writes Parquet (ZSTD). It reports the build time measured
inside each process, the whole-process wall time, the ratio, and the peak memory of each process tree
(driver plus Ray workers), then checks the two outputs are equal row for row. Results go to
benchmarks/results/gold_build.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START = dt.date(2026, 1, 1)
DAYS = 90


def generate(workdir: Path, n: int, seed: int = 1) -> None:
    """Clean silver-shaped events (Parquet, one file per day) and users, deterministic."""
    rng = np.random.default_rng(seed)
    n_users = max(1, n // 100)
    (workdir / "events").mkdir(parents=True, exist_ok=True)
    ts = np.datetime64(START.isoformat(), "us") + rng.integers(0, DAYS * 86_400_000_000, n).astype("timedelta64[us]")
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    cents = rng.integers(1, 200_000, n)[order]
    table = pa.table({
        "tx_id": pa.array(np.char.add("t", np.arange(n).astype(str))),
        "user_id": pa.array(rng.integers(1, n_users + 1, n)[order], pa.int64()),
        "merchant_id": pa.array(rng.integers(1, 1001, n)[order], pa.int64()),
        "amount": pa.compute.multiply(pa.array(cents.astype(np.int32)).cast(pa.decimal128(10, 0)),
                                      pa.scalar(Decimal("0.01"), pa.decimal128(3, 2))).cast(pa.decimal128(18, 2)),
        "currency": pa.array(np.full(n, "EUR")),
        "channel": pa.array(rng.choice(["web", "app", "store"], n)),
        "ts": pa.array(ts, pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")),
    })
    days = (ts.astype("datetime64[D]") - np.datetime64(START.isoformat(), "D")).astype(int)
    bounds = np.searchsorted(days, np.arange(DAYS + 1))
    for d in range(DAYS):
        pq.write_table(table.slice(bounds[d], bounds[d + 1] - bounds[d]), workdir / "events" / f"{d:03d}.parquet")
    users = pa.table({
        "user_id": pa.array(np.arange(1, n_users + 1), pa.int64()),
        "country": pa.array(rng.choice(["DE", "FR", "SE", "GB"], n_users)),
        "signup_ts": pa.array(np.datetime64("2024-01-01", "us") + rng.integers(0, 700 * 86_400_000_000, n_users)
                              .astype("timedelta64[us]"), pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")),
    })
    pq.write_table(users, workdir / "users.parquet")


def load_silver(workdir: Path) -> None:
    """Put the events into an Iceberg catalog as silver.transactions and users as silver.users (not timed)."""
    from pipelines.config import CatalogConfig
    from pipelines.io.lake import Lake
    from pipelines.stages.silver import silver_transactions_spec, silver_users_spec

    lake = Lake(_catalog(workdir))
    spec = silver_transactions_spec()
    table = lake.ensure(spec)
    with table.transaction() as txn:
        for path in sorted((workdir / "events").glob("*.parquet")):
            events = pq.read_table(path)
            n = events.num_rows
            events = events.append_column("_source_file", pa.array([path.name] * n)) \
                .append_column("_row_hash", pa.array(["-"] * n)).append_column("_run_id", pa.array(["bench"] * n))
            txn.append(events.select(spec.schema.names).cast(spec.schema),
                       snapshot_properties={"bronze_runs": json.dumps(["bench"])})
    users = pq.read_table(workdir / "users.parquet")
    n = users.num_rows
    users_spec = silver_users_spec()
    full = {c: pa.nulls(n, pa.string()) for c in users_spec.schema.names}
    full.update({"user_id": users["user_id"], "country": users["country"], "signup_ts": users["signup_ts"]})
    lake.replace_all(pa.table(full).cast(users_spec.schema), users_spec, {})
    del CatalogConfig


def _catalog(workdir: Path):
    from pipelines.config import CatalogConfig

    return CatalogConfig(name="bench", uri=f"sqlite:///{workdir}/catalog.db", warehouse=f"file://{workdir}/warehouse")


def run_ours(workdir: Path, partitions: int) -> dict:
    from features.registry import feature_set
    from pipelines import ray_runtime
    from pipelines.config import PipelineConfig, RayConfig
    from pipelines.context import RunContext
    from pipelines.io.lake import Lake
    from pipelines.stages import gold

    cfg = PipelineConfig(data_dir=str(workdir), cutoff="2026-04-01T00:00:00Z")
    cfg.ray = RayConfig(num_cpus=2, gold_partitions=partitions)
    cfg.catalog = _catalog(workdir)
    ray_runtime.start(cfg.ray)
    lake = Lake(cfg.catalog)
    if lake.exists("gold.user_spend_daily"):
        lake.catalog.drop_table("gold.user_spend_daily")
    ctx = RunContext(cfg, lake, "bench", dt.datetime.now(dt.timezone.utc), "bench", "bench")
    start = time.perf_counter()
    result = gold.build(ctx, feature_set("user_spend_daily"))
    return {"seconds": time.perf_counter() - start, "rows": result.rows_written}


def run_duckdb(workdir: Path) -> dict:
    import duckdb

    from benchmarks.gold_sql import QUERY

    out = workdir / "duckdb_gold.parquet"
    con = duckdb.connect()
    con.execute("SET threads = 2; SET TimeZone = 'UTC';")
    start = time.perf_counter()
    query = QUERY.format(events=workdir / "events" / "*.parquet", users=workdir / "users.parquet")
    con.execute(f"COPY ({query}) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
    seconds = time.perf_counter() - start
    rows = con.execute(f"SELECT COUNT(*) FROM read_parquet('{out}')").fetchone()[0]
    return {"seconds": seconds, "rows": rows}


def measured(args: list) -> dict:
    """Run a side in its own process; poll the RSS of its whole process tree for the peak."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.gold_build", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark side {args[0]} failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update({"process_seconds": time.perf_counter() - start, "peak_rss_gib": peak / 2**30})
    return result


def compare(workdir: Path) -> int:
    from pyiceberg.catalog import load_catalog

    cat = _catalog(workdir)
    ours = load_catalog(cat.name, type="sql", uri=cat.uri, warehouse=cat.warehouse) \
        .load_table("gold.user_spend_daily").scan().to_pandas()
    theirs = pd.read_parquet(workdir / "duckdb_gold.parquet")
    key = ["user_id", "as_of"]
    ours = ours.sort_values(key).reset_index(drop=True)
    theirs = theirs.sort_values(key).reset_index(drop=True)[ours.columns]
    theirs["as_of"] = pd.to_datetime(theirs["as_of"], utc=True).astype(ours["as_of"].dtype)
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    for column in ours.columns:
        a, b = ours[column], theirs[column]
        same = (a.astype(object).to_numpy() == b.astype(object).to_numpy()) | (a.isna().to_numpy() & b.isna().to_numpy())
        assert same.all(), f"column {column}: {int((~same).sum())} rows differ"
    return len(ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("side", nargs="?", choices=["ours", "duckdb"], help=argparse.SUPPRESS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1_000_000, 10_000_000])
    parser.add_argument("--workdir", default=str(ROOT / "data" / "bench"))
    parser.add_argument("--partitions", type=int, default=8, help="hash partitions of users on Ray")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if args.side:  # one measured side, in its own process
        result = run_ours(Path(args.workdir), args.partitions) if args.side == "ours" else run_duckdb(Path(args.workdir))
        print(json.dumps(result))
        return
    rows = []
    for n in args.sizes:
        workdir = Path(args.workdir) / f"n{n}"
        if not (workdir / "catalog.db").exists():
            print(f"generating {n:,} transactions in {workdir} ...", file=sys.stderr)
            generate(workdir, n)
            load_silver(workdir)
        for _ in range(args.repeat):
            ours = measured(["ours", "--workdir", str(workdir), "--partitions", str(args.partitions)])
            duck = measured(["duckdb", "--workdir", str(workdir)])
            checked = compare(workdir)
            row = {"transactions": n, "gold_rows": checked, "ours_build_s": round(ours["seconds"], 2),
                   "duckdb_build_s": round(duck["seconds"], 2), "ratio": round(ours["seconds"] / duck["seconds"], 2),
                   "ours_process_s": round(ours["process_seconds"], 2),
                   "duckdb_process_s": round(duck["process_seconds"], 2),
                   "ours_peak_gib": round(ours["peak_rss_gib"], 2), "duckdb_peak_gib": round(duck["peak_rss_gib"], 2),
                   "outputs_equal": True}
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gold_build.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    header = "| transactions | gold rows | ours build s | DuckDB build s | ratio | ours peak GiB | DuckDB peak GiB |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['transactions']:,} | {r['gold_rows']:,} | {r['ours_build_s']} | {r['duckdb_build_s']} | "
              f"{r['ratio']} | {r['ours_peak_gib']} | {r['duckdb_peak_gib']} |" for r in rows]
    table = "\n".join(lines)
    (RESULTS / "gold_build.md").write_text(f"Machine: {machine}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
