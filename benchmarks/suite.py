"""The end-to-end benchmark suite: one command, one table (benchmarks/results/suite.{md,json}).

    python -m benchmarks.suite                         # 1M and 10M transactions (make benchmark)
    python -m benchmarks.suite --sizes 100000 --manifest-runs 10 --no-large   # a quick look

For each size (100 transactions per user over 90 days: the standard sample data, every day file Parquet)
it runs, each step in its own process and measured from outside (wall time, peak memory of the process
tree: driver, Ray's GCS/raylet and every worker; see benchmarks/measure.py):

1. `medallion run` on a fresh data directory: seconds per stage from the run summary (ingest, refine =
   silver, build = gold, publish; plan/quality/track as "other"), end-to-end wall time, rows per second,
   peak memory; then the Iceberg layout (snapshots the run added per table, data files, their median size,
   manifests);
2. `medallion run` again with no new data (the rerun);
3. the DuckDB baseline (benchmarks/baseline_duckdb.py) on the same landing files; its gold must equal ours
   row for row, its silver, quarantine and duplicate counts and every quarantine reason too;
4. publish vs Feast's materialize into fresh SQLite online stores (benchmarks/feast_materialize.py); every
   entity's values read back through Feast must be identical;
5. online read latency through Feast (benchmarks/online_latency.py);
6. with `--training-labels N`: a training set of N labels, our point-in-time builder against Feast's
   `get_historical_features` (benchmarks/training_set.py); every feature value must be identical.

Then, once: the manifests of 100 runs (benchmarks/manifests.py), and a run at `--large` transactions (30M)
for its peak memory. A failed correctness check fails the suite (exit 1) after the results are written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Dict, List

from benchmarks.compare import check_duckdb_baseline, lake_catalog
from benchmarks.measure import ROOT, Measured, machine, measured, medallion, python_module

RESULTS = ROOT / "benchmarks" / "results"
TX_PER_USER = 100
DAYS = 90
STAGES = {"ingest": "ingest", "silver": "refine", "gold": "build", "publish": "publish"}
MIB = 2**20


def sample_overrides(n: int, sample_dir: Path) -> List[str]:
    return [f"sample.n_transactions={n}", f"sample.n_users={max(1, n // TX_PER_USER)}", f"sample.days={DAYS}",
            "sample.parquet_every=1", f"sample.output_dir={sample_dir}"]


def ensure_sample(n: int, sample_dir: Path) -> None:
    """The standard sample at this size (not timed; kept between suite runs: it is deterministic)."""
    if (sample_dir / "planted_dirt.json").exists():
        return
    print(f"[suite] writing the {n:,}-transaction sample to {sample_dir}", file=sys.stderr, flush=True)
    measured(medallion("sample-data", f"data_dir={sample_dir.parent}", *sample_overrides(n, sample_dir)))


def pipeline_run(data_dir: Path, n: int, sample_dir: Path) -> Measured:
    return measured(medallion("run", f"data_dir={data_dir}", *sample_overrides(n, sample_dir)))


def iceberg_layout(data_dir: Path, run_id: str, identifiers: List[str]) -> Dict[str, Dict]:
    """Per table: snapshots the run committed, data files of the current snapshot, median size, manifests."""
    catalog = lake_catalog(data_dir)
    layout = {}
    for identifier in identifiers:
        table = catalog.load_table(identifier)
        sizes = [task.file.file_size_in_bytes for task in table.scan().plan_files()]
        current = table.current_snapshot()
        layout[identifier] = {
            "snapshots_this_run": sum(1 for s in table.metadata.snapshots
                                      if s.summary and s.summary.additional_properties.get("run_id") == run_id),
            "data_files": len(sizes),
            "median_file_mib": round(statistics.median(sizes) / MIB, 2) if sizes else 0.0,
            "total_mib": round(sum(sizes) / MIB, 1),
            "manifests": len(current.manifests(table.io)) if current else 0,
        }
    return layout


def bench_size(n: int, workdir: Path, training_labels: int = 0) -> Dict:
    sample_dir = workdir / "samples" / f"n{n}"
    ensure_sample(n, sample_dir)
    data_dir = workdir / "runs" / f"n{n}"
    if data_dir.exists():
        shutil.rmtree(data_dir)

    def log(message: str) -> None:
        print(f"[suite] {n:,}: {message}", file=sys.stderr, flush=True)

    problems: List[str] = []

    log("pipeline run")
    full = pipeline_run(data_dir, n, sample_dir)
    summary = full.last_json()
    seconds = summary["seconds"]
    stages = {name: seconds.get(stage, 0.0) for name, stage in STAGES.items()}
    layout = iceberg_layout(data_dir, summary["run_id"], list(summary["tables"]))  # a target, not a check

    log("rerun with no new data")
    rerun = pipeline_run(data_dir, n, sample_dir)
    if rerun.last_json()["new_data"]:
        problems.append("rerun: wrote new data")

    log("DuckDB baseline")
    duck_out = data_dir / "duckdb"
    duck = measured(python_module("benchmarks.baseline_duckdb", "--sample", str(sample_dir), "--out", str(duck_out),
                                  "--cutoff", _cutoff(data_dir)))
    duck_result = duck.last_json()
    problems += [f"DuckDB: {p}" for p in check_duckdb_baseline(data_dir, duck_out, duck_result["counts"],
                                                                summary["counts"])]

    log("publish vs Feast materialize")
    sides = {side: measured(python_module("benchmarks.feast_materialize", "--data-dir", str(data_dir), "--side", side))
             for side in ("ours", "feast")}
    side_results = {side: m.last_json() for side, m in sides.items()}
    read_back = measured(python_module("benchmarks.feast_materialize", "--data-dir", str(data_dir), "--compare")).last_json()
    if read_back["mismatching_values"]:
        problems.append(f"publish: {read_back['mismatching_values']} values differ from Feast's materialize")

    log("online latency")
    latency = measured(python_module("benchmarks.online_latency", "--data-dir", str(data_dir))).last_json()

    training = None
    if training_labels:
        from benchmarks import training_set

        log(f"training set ({training_labels:,} labels)")
        training = {"transactions": n, "gold_rows": summary["tables"].get("gold.user_spend_daily", {}).get("rows"),
                    **training_set.bench(data_dir, training_labels)}
        problems += [f"training set: {p}" for p in training["problems"]]

    files = list(layout.values())
    all_sizes_median = statistics.median([i["median_file_mib"] for i in files if i["data_files"]])
    ours_publish_s = side_results["ours"]["seconds"]["publish"]
    feast_publish_s = side_results["feast"]["seconds"]["publish"]
    return {
        "transactions": n,
        "gold_rows": {k.split(".")[1]: v["rows"] for k, v in summary["tables"].items() if k.startswith("gold.")},
        "ours": {"end_to_end_s": round(full.seconds, 1), "stages_s": stages,
                 "other_stages_s": round(sum(seconds.values()) - sum(stages.values()), 1),
                 "rows_per_s": round(n / full.seconds), "peak_gib": round(full.peak_pss_gib, 2),
                 "peak_rss_sum_gib": round(full.peak_rss_gib, 2),
                 # lineage events and metrics, timed inside the run itself (their cost: the issue's < 2%)
                 "observability_s": round((summary.get("lineage") or {}).get("seconds", 0.0)
                                          + (summary.get("metrics") or {}).get("seconds", 0.0), 3),
                 "observability_share": round(((summary.get("lineage") or {}).get("seconds", 0.0)
                                               + (summary.get("metrics") or {}).get("seconds", 0.0))
                                              / full.seconds, 4)},
        "rerun": {"end_to_end_s": round(rerun.seconds, 1), "share_of_full": round(rerun.seconds / full.seconds, 3),
                  "peak_gib": round(rerun.peak_pss_gib, 2)},
        "duckdb": {"end_to_end_s": round(duck.seconds, 1), "steps_s": duck_result["seconds"],
                   "rows_per_s": round(n / duck.seconds), "peak_gib": round(duck.peak_pss_gib, 2),
                   "counts": duck_result["counts"]},
        "ratio_ours_to_duckdb": round(full.seconds / duck.seconds, 2),
        "iceberg": {"tables": layout, "data_files": sum(i["data_files"] for i in files),
                    "median_of_table_median_file_mib": all_sizes_median},
        "publish": {"entities": side_results["ours"]["entities"], "ours_s": ours_publish_s, "feast_materialize_s":
                    feast_publish_s, "ours_entities_per_s": side_results["ours"]["entities_per_s"],
                    "feast_entities_per_s": side_results["feast"]["entities_per_s"],
                    "speedup": round(feast_publish_s / ours_publish_s, 1), "read_back": read_back,
                    "ours_peak_gib": round(sides["ours"].peak_pss_gib, 2),
                    "feast_peak_gib": round(sides["feast"].peak_pss_gib, 2)},
        "online_latency": latency,
        **({"training_set": training} if training else {}),
        "checks_passed": not problems,
        "problems": problems,
    }


def _cutoff(data_dir: Path) -> str:
    """The run's cutoff as the pipeline resolved it (start date + days), from its MLflow-free config view."""
    from pipelines.config import load_config

    return load_config([f"data_dir={data_dir}", f"sample.days={DAYS}"]).cutoff


def replicated_sample(n: int, base: int, workdir: Path) -> Path:
    """A large sample made of n / base copies of the standard sample at `base` transactions, each copy's
    tx_ids prefixed with its number (same users and days: n / base times the transactions per user).
    The standard generator holds the whole data set in pandas objects (~6 GB per 10M transactions), which a
    shared 24 GiB machine cannot give it at 30M; this writes one day file at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    copies = n // base
    base_dir = workdir / "samples" / f"n{base}"
    ensure_sample(base, base_dir)
    out = workdir / "samples" / f"n{n}_from_{base}"
    if (out / "planted_dirt.json").exists():
        return out
    (out / "transactions").mkdir(parents=True, exist_ok=True)
    shutil.copy(base_dir / "users.db", out / "users.db")
    for path in sorted((base_dir / "transactions").glob("*.parquet")):
        day = pq.read_table(path)
        parts = [day.set_column(0, "tx_id", pc.binary_join_element_wise(f"c{c}-", day.column("tx_id"), ""))
                 for c in range(copies)]
        pq.write_table(pa.concat_tables(parts), out / "transactions" / path.name, compression="zstd")
    (out / "planted_dirt.json").write_text(json.dumps({"replicated_from": str(base_dir), "copies": copies}))
    return out


def large_run(n: int, base: int, object_store_mb: int, workdir: Path) -> Dict:
    """One pipeline run at `n` transactions for its peak memory, with a bounded object store (Ray spills
    to disk beyond it)."""
    sample_dir = replicated_sample(n, base, workdir)
    data_dir = workdir / "runs" / f"n{n}"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    print(f"[suite] {n:,}: pipeline run (peak memory)", file=sys.stderr, flush=True)
    overrides = sample_overrides(base, sample_dir) + [f"ray.object_store_memory_mb={object_store_mb}"]
    run = measured(medallion("run", f"data_dir={data_dir}", *overrides), check=False)
    result = {"transactions": n, "sample": f"{n // base} copies of the {base:,}-transaction sample",
              "object_store_mb": object_store_mb, "completed": run.returncode == 0,
              "end_to_end_s": round(run.seconds, 1), "peak_gib": round(run.peak_pss_gib, 2),
              "peak_rss_sum_gib": round(run.peak_rss_gib, 2)}
    if run.returncode == 0:
        result["stages_s"] = run.last_json()["seconds"]
    else:
        result["error"] = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"
    shutil.rmtree(data_dir, ignore_errors=True)  # tens of GiB of tables: nothing reads them afterwards
    return result


def markdown(results: Dict) -> str:
    lines = [f"Machine: {results['machine']}", "", f"Command: `{results['command']}`", ""]
    if results["sizes"]:
        lines += _size_tables(results)
    if results.get("manifests"):
        m = results["manifests"]
        lines += ["", f"Manifests over {m['runs']} runs (the pipeline's writer, replayed on tiny data): "
                  + "; ".join(f"{t}: at most {v['max_manifests']}, after run "
                              + ", ".join(f"{k}: {c}" for k, c in v["manifests_after_run"].items())
                              for t, v in m.items() if t != "runs")]
    if results.get("large"):
        g = results["large"]
        lines += ["", f"Large run: {g['transactions']:,} transactions ({g['sample']}, object store "
                  f"{g['object_store_mb']} MiB) "
                  + (f"completed in {g['end_to_end_s']} s, peak memory {g['peak_gib']} GiB"
                     if g["completed"] else f"FAILED after {g['end_to_end_s']} s ({g.get('error')}), "
                     f"peak memory {g['peak_gib']} GiB")]
    problems = [p for r in results["sizes"] for p in r["problems"]]
    if problems:
        lines += ["", "Failed checks:", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def _size_tables(results: Dict) -> List[str]:
    lines = ["| transactions | ours end-to-end s | ingest s | silver s | gold s | publish s | other s | rows/s | "
             "peak GiB | DuckDB s | ours / DuckDB | DuckDB peak GiB | rerun s | rerun / full | data files | "
             "median file MiB | checks |",
             "|" + "---|" * 17]
    for r in results["sizes"]:
        o, s = r["ours"], r["ours"]["stages_s"]
        lines.append(
            f"| {r['transactions']:,} | {o['end_to_end_s']} | {s['ingest']:.1f} | {s['silver']:.1f} | {s['gold']:.1f} | "
            f"{s['publish']:.1f} | {o['other_stages_s']} | {o['rows_per_s']:,} | {o['peak_gib']} | "
            f"{r['duckdb']['end_to_end_s']} | {r['ratio_ours_to_duckdb']} | {r['duckdb']['peak_gib']} | "
            f"{r['rerun']['end_to_end_s']} | {r['rerun']['share_of_full']:.0%} | {r['iceberg']['data_files']} | "
            f"{r['iceberg']['median_of_table_median_file_mib']} | {'pass' if r['checks_passed'] else 'FAIL'} |")
    lines += [""] + [f"Lineage events and metrics at {r['transactions']:,}: {r['ours'].get('observability_s', 0)} s, "
                     f"{r['ours'].get('observability_share', 0):.2%} of the run (timed inside the run)."
                     for r in results["sizes"]]
    lines += ["", "Publish (newest gold row per entity, both feature sets, into a fresh SQLite online store):", "",
              "| transactions | entities | ours s | Feast materialize s | speed-up | ours entities/s | "
              "Feast entities/s | values read back identical |", "|" + "---|" * 8]
    for r in results["sizes"]:
        p = r["publish"]
        lines.append(f"| {r['transactions']:,} | {p['entities']:,} | {p['ours_s']} | {p['feast_materialize_s']} | "
                     f"{p['speedup']}x | {p['ours_entities_per_s']:,} | {p['feast_entities_per_s']:,} | "
                     f"{'yes' if not p['read_back']['mismatching_values'] else 'NO'} "
                     f"({p['read_back']['entities_checked']:,} entities) |")
    lines += ["", "Online reads through `FeatureStore.get_online_features` (user_spend_daily, 11 features):", "",
              "| transactions | 1 entity p50 ms | 1 entity p99 ms | 100 entities p50 ms | 100 entities p99 ms |",
              "|---|---|---|---|---|"]
    for r in results["sizes"]:
        lat = r["online_latency"]
        lines.append(f"| {r['transactions']:,} | {lat['single_entity']['p50_ms']} | {lat['single_entity']['p99_ms']} | "
                     f"{lat['entities_100']['p50_ms']} | {lat['entities_100']['p99_ms']} |")
    training = [r["training_set"] for r in results["sizes"] if r.get("training_set")]
    if training:
        from benchmarks.training_set import table_lines

        lines += ["", "Training set, point in time on the latest snapshot: `build_training_set` vs Feast's "
                  "`get_historical_features(...).to_df()` (benchmarks/training_set.py; call s: the call alone; "
                  "peak RSS: the process's max RSS):", ""] + table_lines(training)
    lines += ["", "Iceberg layout after the full run (snapshots the run committed / data files / median file MiB / "
              "manifests):", "", "| transactions | " + " | ".join(_short(t) for t in _tables(results)) + " |",
              "|" + "---|" * (1 + len(_tables(results)))]
    for r in results["sizes"]:
        cells = []
        for t in _tables(results):
            i = r["iceberg"]["tables"].get(t)
            cells.append(f"{i['snapshots_this_run']} / {i['data_files']} / {i['median_file_mib']} / {i['manifests']}"
                         if i else "-")
        lines.append(f"| {r['transactions']:,} | " + " | ".join(cells) + " |")
    return lines


def _tables(results: Dict) -> List[str]:
    return sorted({t for r in results["sizes"] for t in r["iceberg"]["tables"]})


def _short(identifier: str) -> str:
    return identifier.replace("transactions", "tx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="*", type=int, default=[1_000_000, 10_000_000])
    parser.add_argument("--large", type=int, default=30_000_000, help="one run for its peak memory")
    parser.add_argument("--large-from", type=int, default=10_000_000, help="the large sample copies this one")
    parser.add_argument("--object-store-mb", type=int, default=4096, help="Ray's object store in the large run")
    parser.add_argument("--no-large", action="store_true")
    parser.add_argument("--manifest-runs", type=int, default=100, help="0 skips the measurement")
    parser.add_argument("--workdir", default=str(ROOT / "data" / "bench"))
    parser.add_argument("--name", default="suite", help="results file name in benchmarks/results/")
    parser.add_argument("--training-labels", type=int, default=0,
                        help="also a training set of this many labels vs Feast's get_historical_features (0: skip)")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    results: Dict = {"machine": machine(), "command": "python -m benchmarks.suite " + " ".join(sys.argv[1:]),
                     "sizes": []}
    for n in args.sizes:
        results["sizes"].append(bench_size(n, workdir, args.training_labels))
        _write(results, args.name)  # partial results survive a later failure
    if args.manifest_runs:
        print(f"[suite] manifests over {args.manifest_runs} runs", file=sys.stderr, flush=True)
        results["manifests"] = measured(python_module("benchmarks.manifests", "--runs", str(args.manifest_runs),
                                                      "--workdir", str(workdir / "manifests"))).last_json()
        _write(results, args.name)
    if not args.no_large:
        results["large"] = large_run(args.large, args.large_from, args.object_store_mb, workdir)
        _write(results, args.name)
    print(markdown(results))
    if any(r["problems"] for r in results["sizes"]):
        sys.exit(1)


def _write(results: Dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1))
    (RESULTS / f"{name}.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
