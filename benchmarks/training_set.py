"""Training sets: our point-in-time builder against Feast's `get_historical_features`, on the same labels.

    python -m benchmarks.training_set --data-dir D --labels 1000000             (D: a pipeline run's data dir)
    python -m benchmarks.training_set --transactions 10000000 --labels 1000000  (the suite's sample and run
                                                                                  under --workdir, made if missing)
    python -m benchmarks.suite --sizes 10000000 --training-labels 1000000 ...   (the same, inside the suite)

Each step runs in a process of its own, measured from outside (benchmarks/measure.py), so each method's
peak memory is its own:

1. `--make-labels`: N labels (not timed), seeded: `label_id` (0..N-1), the join key drawn from gold's
   entities (95%) or unknown ones (5%, above gold's largest key), `event_timestamp` (UTC, microseconds) on a
   day from 2 days before gold's first as-of day to 2 days after its last: 20% exactly at a midnight, 20% a
   microsecond before one, the rest anywhere in the day; and a `target` column riding along. Written to
   `D/bench_training/labels_<N>_seed<S>.parquet`.
2. `--side ours`: `serving.training_set.build_training_set(cfg, labels, ["<set>_service"])`: point in time
   on the latest gold snapshot, through the snapshot's training-set index, which the pipeline run wrote
   when it published the snapshot (serving/training_index.py); it joins and logs the MLflow run: all of
   that is in its time. `--side ours_iceberg`: the same call with `training_index.dir=null`, so gold is
   read from Iceberg (the labels' entities and as-of range pushed into the scan); its output must be
   identical to ours, bit for bit.
3. `--side feast`: `FeatureStore(repo_path=serving.applied.repo_path(cfg)).get_historical_features(
   entity_df=labels, features=store.get_feature_service("<set>_service")).to_df()`: the pipeline's own
   Feast repo, whose DuckDB offline store reads gold through IcebergSource.

   Both sides get the same pandas DataFrame (read from the labels file before the clock starts) and import
   their libraries before it starts (imports are in the process time, not the call time). Each side
   reports the call's wall time, its process's peak RSS (`getrusage` max RSS, read right after the call:
   the call's peak, with what was resident before it), and the RSS just before the call; from outside,
   the process's wall time and the sampled PSS of its tree. Then it writes its output sorted by label_id
   (not timed, after the peak was read).
4. `--compare`: both outputs, row by row on label_id: the label columns must be the same, and every feature
   value equal (exactly; null = null, NaN counts as null since Feast's pandas frame cannot tell them apart;
   integers compared as integers when both sides hold integers, else as float64, exact below 2**53).
   Any mismatch fails the benchmark.

The issue's target: ours at least 5x faster (call time) and at most half Feast's peak memory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from benchmarks.measure import GIB, ROOT, machine, measured, python_module

SIDES = ("ours", "ours_iceberg", "feast")
INDEXED = {"ours": True, "ours_iceberg": False}  # ours through the training-set index, or reading Iceberg
RESULTS = ROOT / "benchmarks" / "results"
DAY_US = 86_400_000_000
TIMEOUT_S = 30 * 60  # a side still running after this is killed and reported as such


def _config(data_dir: Path, indexed: bool = True):
    from pipelines.config import load_config

    return load_config([f"data_dir={data_dir}", *([] if indexed else ["training_index.dir=null"])])


def work_dir(data_dir: Path) -> Path:
    return data_dir / "bench_training"


def labels_path(data_dir: Path, n: int, seed: int) -> Path:
    return work_dir(data_dir) / f"labels_{n}_seed{seed}.parquet"


def output_path(data_dir: Path, side: str) -> Path:
    return work_dir(data_dir) / f"{side}.parquet"


# --- labels --------------------------------------------------------------------------------------
def make_labels(data_dir: Path, n: int, feature_set: str, seed: int, unknown_share: float = 0.05) -> Dict:
    """Write the labels file (module docstring) and describe it."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from features.registry import feature_set as load_set
    from pipelines.io.lake import Lake

    cfg = _config(data_dir)
    fs = load_set(feature_set, cfg.project)
    if fs.entity.dtype != "int64":
        raise SystemExit(f"{feature_set}: the benchmark draws int64 join keys, the set's is {fs.entity.dtype}")
    lake = Lake(cfg.catalog)
    identifier = f"gold.{fs.name}"
    gold_keys = np.sort(pc.unique(lake.read_arrow(identifier, columns=[fs.entity.join_key]).column(0)).to_numpy())
    days = lake.rows_by_day(identifier, fs.as_of_column)  # partition metadata
    first, last = min(days), max(days)
    rng = np.random.default_rng(seed)

    unknown = rng.random(n) < unknown_share
    keys = gold_keys[rng.integers(0, len(gold_keys), n)]
    keys[unknown] = int(gold_keys.max()) + 1 + rng.integers(0, 1_000_000, int(unknown.sum()))

    epoch = dt.date(1970, 1, 1)
    day_lo, day_hi = (first - epoch).days - 2, (last - epoch).days + 2
    midnights = rng.integers(day_lo, day_hi + 1, n).astype(np.int64) * DAY_US
    kind = rng.random(n)
    at_midnight, before_midnight = kind < 0.2, (kind >= 0.2) & (kind < 0.4)
    offsets = rng.integers(0, DAY_US, n)
    offsets[at_midnight] = 0
    offsets[before_midnight] = -1
    times = midnights + offsets

    table = pa.table({
        "label_id": pa.array(np.arange(n, dtype=np.int64)),
        fs.entity.join_key: pa.array(keys.astype(np.int64)),
        "event_timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
        "target": pa.array(rng.integers(0, 2, n).astype(np.int64)),
    })
    path = labels_path(data_dir, n, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return {"labels": n, "seed": seed, "path": str(path), "feature_set": fs.name, "gold_entities": len(gold_keys),
            "unknown_entities": int(unknown.sum()), "at_midnight": int(at_midnight.sum()),
            "microsecond_before_midnight": int(before_midnight.sum()),
            "gold_as_of": [first.isoformat(), last.isoformat()],
            "label_days": [(epoch + dt.timedelta(days=day_lo)).isoformat(),
                           (epoch + dt.timedelta(days=day_hi)).isoformat()]}


# --- one side, one process -----------------------------------------------------------------------
def _rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / GIB


def _max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: KiB


def run_side(data_dir: Path, side: str, labels_file: Path, feature_set: str, profile: Optional[Path] = None) -> Dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()
    service = f"{feature_set}_service"
    cfg = _config(data_dir, INDEXED.get(side, True))
    if side in INDEXED:
        try:
            import git  # noqa: F401  (GitPython: MLflow's start_run imports it for its git tags, ~0.4 s)
        except ImportError:  # no git executable: MLflow skips its git tags, so there is nothing to import
            pass
        import mlflow  # noqa: F401  (what the call imports lazily, imported before the clock starts)
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
        import mlflow.tracing.processor.base_mlflow  # noqa: F401  (set_tracking_uri: OpenTelemetry, ~0.3 s)
        import pyiceberg.catalog.sql  # noqa: F401

        import pipelines.io.lake  # noqa: F401
        import pipelines.io.pinned_scan  # noqa: F401
        import serving.pit_index  # noqa: F401
        import serving.tracking  # noqa: F401
        import serving.training_index  # noqa: F401
        import serving.training_record  # noqa: F401
        from serving.training_set import build_training_set

        def call():
            return build_training_set(cfg, labels, [service], version="latest", mode="point_in_time")
    else:
        import duckdb  # noqa: F401
        import ibis  # noqa: F401
        from feast import FeatureStore

        import feast.infra.offline_stores.duckdb  # noqa: F401
        from serving import applied

        store = FeatureStore(repo_path=str(applied.repo_path(cfg)))
        features = store.get_feature_service(service)

        def call():
            return store.get_historical_features(entity_df=labels, features=features).to_df()
    labels = pq.read_table(labels_file).to_pandas()
    setup_s = time.perf_counter() - started
    rss_before = _rss_gib()
    if profile is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.005)
        profiler.start()
    start = time.perf_counter()
    out = call()
    call_s = time.perf_counter() - start
    peak = _max_rss_gib()
    if profile is not None:
        profiler.stop()
        profile.write_text(profiler.output_text(unicode=False, color=False, show_all=False)
                           + profiler.output_text(unicode=False, color=False, show_all=True))
    table = out if isinstance(out, pa.Table) else pa.Table.from_pandas(out, preserve_index=False)
    rows = table.num_rows
    pq.write_table(table.sort_by("label_id"), output_path(data_dir, side))
    return {"side": side, "call_s": round(call_s, 3), "setup_s": round(setup_s, 3), "rows": rows,
            "rss_before_call_gib": round(rss_before, 3), "peak_rss_gib": round(peak, 3)}


# --- values equal --------------------------------------------------------------------------------
def _nullish(values) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = values.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_floating(values.type):
        mask |= pc.fill_null(pc.is_nan(values), False).to_numpy(zero_copy_only=False)
    return mask


def _equal(a, b) -> np.ndarray:
    """Elementwise exact equality of two Arrow arrays (positions where either is null: unspecified)."""
    import pyarrow as pa

    if pa.types.is_integer(a.type) and pa.types.is_integer(b.type):
        return a.cast(pa.int64()).fill_null(0).to_numpy() == b.cast(pa.int64()).fill_null(0).to_numpy()
    if (pa.types.is_integer(a.type) or pa.types.is_floating(a.type)) and \
            (pa.types.is_integer(b.type) or pa.types.is_floating(b.type)):
        return a.cast(pa.float64()).fill_null(0).to_numpy() == b.cast(pa.float64()).fill_null(0).to_numpy()
    if pa.types.is_timestamp(a.type) and pa.types.is_timestamp(b.type):
        return (a.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).fill_null(0).to_numpy()
                == b.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).fill_null(0).to_numpy())
    return a.to_numpy(zero_copy_only=False) == b.to_numpy(zero_copy_only=False)


def _mismatches(a, b) -> int:
    null_a, null_b = _nullish(a), _nullish(b)
    same = (null_a & null_b) | (~null_a & ~null_b & _equal(a, b))
    return int((~same).sum())


def compare(data_dir: Path, feature_set: str) -> Dict:
    import pyarrow.parquet as pq

    from features.registry import feature_set as load_set

    cfg = _config(data_dir)
    fs = load_set(feature_set, cfg.project)
    ours, feast = (pq.read_table(output_path(data_dir, side)).combine_chunks() for side in ("ours", "feast"))
    result = {"rows_ours": ours.num_rows, "rows_feast": feast.num_rows, "features": len(fs.feature_names())}
    iceberg = output_path(data_dir, "ours_iceberg")
    if iceberg.exists():  # ours without the index: the same table, bit for bit
        result["ours_iceberg_identical"] = pq.read_table(iceberg).combine_chunks().equals(ours)
    if ours.num_rows != feast.num_rows:
        return {**result, "mismatching_values": None, "problem": "row counts differ"}
    key_columns = ["label_id", fs.entity.join_key, "event_timestamp", "target"]
    result["mismatching_label_values"] = sum(_mismatches(ours.column(c).chunk(0), feast.column(c).chunk(0))
                                             for c in key_columns)
    per_feature = {name: _mismatches(ours.column(name).chunk(0), feast.column(name).chunk(0))
                   for name in fs.feature_names()}
    result["mismatching_values"] = sum(per_feature.values())
    result["mismatching_by_feature"] = {k: v for k, v in per_feature.items() if v}
    result["values_compared"] = ours.num_rows * len(per_feature)
    # both sides all-null would compare equal: say how many labels did get features
    nulls = np.ones(ours.num_rows, dtype=bool)
    for name in fs.feature_names():
        nulls &= _nullish(ours.column(name).chunk(0))
    result["labels_with_features"] = int((~nulls).sum())
    return result


# --- the benchmark (orchestration) ---------------------------------------------------------------
def bench(data_dir: Path, n_labels: int, feature_set: str = "user_spend_daily", seed: int = 16,
          timeout_s: float = TIMEOUT_S, profile: bool = False) -> Dict:
    """Labels, then each side in its own measured process, then the comparison; a dict of the figures."""
    def log(message: str) -> None:
        print(f"[training-set] {n_labels:,} labels: {message}", file=sys.stderr, flush=True)

    here = ["--data-dir", str(data_dir), "--feature-set", feature_set]
    log("labels")
    labels = measured(python_module("benchmarks.training_set", *here, "--make-labels", str(n_labels),
                                    "--seed", str(seed))).last_json()
    result: Dict = {"labels": labels, "feature_set": feature_set, "problems": []}
    for side in SIDES:
        log(side)
        args = [*here, "--side", side, "--labels-file", labels["path"]]
        if profile:
            args += ["--profile-out", str(work_dir(data_dir) / f"profile_{side}_{n_labels}.txt")]
        run = measured(python_module("benchmarks.training_set", *args), check=False, timeout=timeout_s)
        entry = {"process_s": round(run.seconds, 1), "peak_pss_tree_gib": round(run.peak_pss_gib, 3),
                 "peak_rss_tree_gib": round(run.peak_rss_gib, 3), "completed": run.returncode == 0}
        if run.returncode == 0:
            entry.update(run.last_json())
        else:
            why = "timed out" if run.timed_out else (f"killed (signal {-run.returncode}: out of memory?)"
                                                     if run.returncode < 0 else f"exit {run.returncode}")
            entry["error"] = why + ": " + (run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "")
            result["problems"].append(f"{side}: {entry['error']}")
        result[side] = entry
    ours, feast = result["ours"], result["feast"]
    if ours["completed"] and feast["completed"]:
        log("compare")
        checked = measured(python_module("benchmarks.training_set", *here, "--compare")).last_json()
        result["compare"] = checked
        if checked.get("mismatching_values") != 0 or checked.get("mismatching_label_values"):
            result["problems"].append(f"values: {checked}")
        if result["ours_iceberg"]["completed"] and checked.get("ours_iceberg_identical") is not True:
            result["problems"].append("ours through the index and ours reading Iceberg differ")
        if ours["rows"] != n_labels or feast["rows"] != n_labels:
            result["problems"].append(f"rows: ours {ours['rows']}, Feast {feast['rows']}, labels {n_labels}")
        result["ratio_time"] = round(feast["call_s"] / ours["call_s"], 2)
        if result["ours_iceberg"]["completed"]:
            result["ratio_time_iceberg"] = round(feast["call_s"] / result["ours_iceberg"]["call_s"], 2)
        result["ratio_process_time"] = round(feast["process_s"] / ours["process_s"], 2)
        result["ratio_peak_rss"] = round(feast["peak_rss_gib"] / ours["peak_rss_gib"], 2)
        result["target_met"] = {"time_5x": result["ratio_time"] >= 5, "memory_half": result["ratio_peak_rss"] >= 2}
    result["checks_passed"] = not result["problems"]
    return result


def _rows(data_dir: Path, identifier: str) -> int:
    """Rows of a table's current snapshot, from its summary (no scan)."""
    from benchmarks.compare import lake_catalog

    snapshot = lake_catalog(data_dir).load_table(identifier).current_snapshot()
    return int(snapshot.summary.additional_properties.get("total-records", 0)) if snapshot else 0


def ensure_run(n: int, workdir: Path) -> Path:
    """The suite's sample at `n` transactions and a pipeline run on it (both kept; made when missing)."""
    from benchmarks import suite

    sample_dir = workdir / "samples" / f"n{n}"
    suite.ensure_sample(n, sample_dir)
    data_dir = workdir / "runs" / f"n{n}"
    done = data_dir / "bench_training" / "pipeline_run.json"
    if not done.exists():
        print(f"[training-set] {n:,}: pipeline run", file=sys.stderr, flush=True)
        if data_dir.exists():
            import shutil

            shutil.rmtree(data_dir)
        run = suite.pipeline_run(data_dir, n, sample_dir)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps({"transactions": n, "end_to_end_s": round(run.seconds, 1),
                                    "peak_gib": round(run.peak_pss_gib, 2), "summary": run.last_json()}))
    return data_dir


# --- results -------------------------------------------------------------------------------------
def _count(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _cell(side: Dict, key: str) -> str:
    return str(side.get(key, "-")) if side["completed"] else side.get("error", "failed")


def table_lines(entries: List[Dict]) -> List[str]:
    """The markdown table of training-set results (one row per size and label count)."""
    lines = ["| transactions | labels | run | ours call s | Feast call s | Feast / ours time | ours peak RSS GiB | "
             "Feast peak RSS GiB | Feast / ours memory | ours process s | Feast process s | rows (ours / Feast) | "
             "mismatching values | target (5x time, 1/2 memory) | ours without the index: call s, peak RSS GiB |",
             "|" + "---|" * 15]
    for e in entries:
        o, f = e["ours"], e["feast"]
        cell = _cell
        c = e.get("compare", {})
        target = e.get("target_met")
        i = e.get("ours_iceberg")
        without = f"{cell(i, 'call_s')}, {cell(i, 'peak_rss_gib')}" if i else "-"
        lines.append(
            f"| {e['transactions']:,} | {e['labels']['labels']:,} | {e.get('repeat', 1)} | {cell(o, 'call_s')} | "
            f"{cell(f, 'call_s')} | "
            f"{str(e['ratio_time']) + 'x' if 'ratio_time' in e else '-'} | {cell(o, 'peak_rss_gib')} | "
            f"{cell(f, 'peak_rss_gib')} | {str(e['ratio_peak_rss']) + 'x' if 'ratio_peak_rss' in e else '-'} | "
            f"{o['process_s']} | {f['process_s']} | {_count(o.get('rows', '-'))} / {_count(f.get('rows', '-'))} | "
            f"{c.get('mismatching_values', '-')} of {_count(c.get('values_compared', 0))} | "
            + (f"{'yes' if target['time_5x'] else 'no'}, {'yes' if target['memory_half'] else 'no'} |"
               if target else "- |") + f" {without} |")
    return lines


def medians(entries: List[Dict]) -> List[str]:
    """Per size and label count measured more than once: the medians (ratios of the medians)."""
    import statistics

    groups: Dict[tuple, List[Dict]] = {}
    for e in entries:
        if e["ours"]["completed"] and e["feast"]["completed"]:
            groups.setdefault((e["transactions"], e["labels"]["labels"]), []).append(e)
    lines = []
    for (n, labels), group in groups.items():
        if len(group) < 2:
            continue
        med = {f"{side}_{key}": statistics.median(e[side][key] for e in group)
               for side in ("ours", "feast") for key in ("call_s", "peak_rss_gib")}
        lines.append(f"- {n:,} transactions, {labels:,} labels, median of {len(group)} runs: "
                     f"ours {med['ours_call_s']:.2f} s "
                     f"/ {med['ours_peak_rss_gib']:.2f} GiB, Feast {med['feast_call_s']:.2f} s / "
                     f"{med['feast_peak_rss_gib']:.2f} GiB: "
                     f"Feast / ours {med['feast_call_s'] / med['ours_call_s']:.2f}x "
                     f"time, {med['feast_peak_rss_gib'] / med['ours_peak_rss_gib']:.2f}x memory"
                     + _median_without_index(group))
    return ["", "Medians:", ""] + lines if lines else []


def _median_without_index(group: List[Dict]) -> str:
    import statistics

    done = [e["ours_iceberg"] for e in group if e.get("ours_iceberg", {}).get("completed")]
    if not done:
        return ""
    return (f"; ours without the index {statistics.median(d['call_s'] for d in done):.2f} s / "
            f"{statistics.median(d['peak_rss_gib'] for d in done):.2f} GiB")


def markdown(results: Dict) -> str:
    lines = [f"Machine: {results['machine']}", "", f"Command: `{results['command']}`", "",
             "Training set, point in time on the latest gold snapshot: `serving.training_set.build_training_set` "
             "(ours) vs Feast's `get_historical_features(...).to_df()` (the pipeline's Feast repo, DuckDB offline "
             "store on gold through IcebergSource), same labels, each in its own process (benchmarks/training_set.py). "
             "Call s: the call alone, libraries imported before; peak RSS: the process's max RSS at the call's end "
             "(everything resident, the labels frame included); process s: the whole process from outside.", ""]
    lines += table_lines(results["runs"])
    lines += medians(results["runs"])
    lines += ["", "RSS just before the call (imports, config, the labels frame) / PSS peak of the process tree "
              "sampled from outside:", ""]
    for e in results["runs"]:
        o, f = e["ours"], e["feast"]
        lines.append(f"- {e['transactions']:,} transactions, {e['labels']['labels']:,} labels: ours "
                     f"{o.get('rss_before_call_gib', '-')} / {o['peak_pss_tree_gib']} GiB, Feast "
                     f"{f.get('rss_before_call_gib', '-')} / {f['peak_pss_tree_gib']} GiB; labels with features "
                     f"{_count(e.get('compare', {}).get('labels_with_features', '-'))}, unknown entities "
                     f"{e['labels']['unknown_entities']:,}, at a midnight {e['labels']['at_midnight']:,}, a "
                     f"microsecond before one {e['labels']['microsecond_before_midnight']:,}; gold rows "
                     f"{_count(e.get('gold_rows', '-'))}")
    problems = [p for e in results["runs"] for p in e["problems"]]
    if problems:
        lines += ["", "Failed checks:", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def _write(results: Dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1))
    (RESULTS / f"{name}.md").write_text(markdown(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", help="a pipeline run's data directory")
    where.add_argument("--transactions", type=int, nargs="+", help="the suite's sample and run at these sizes")
    parser.add_argument("--workdir", default=str(ROOT / "data" / "bench"), help="with --transactions")
    parser.add_argument("--labels", type=int, nargs="+", default=[1_000_000], help="label counts to measure")
    parser.add_argument("--feature-set", default="user_spend_daily")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="measure each size and label count this many times")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per side before it is killed")
    parser.add_argument("--profile", action="store_true",
                        help="pyinstrument each call (D/bench_training/profile_<side>_<labels>.txt)")
    parser.add_argument("--name", help="results file name in benchmarks/results/ (default: none written)")
    # one step, one process (what the orchestration runs)
    parser.add_argument("--make-labels", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--labels-file", help=argparse.SUPPRESS)
    parser.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_labels is not None:
        print(json.dumps(make_labels(Path(args.data_dir).resolve(), args.make_labels, args.feature_set, args.seed)))
        return
    if args.side:
        prof = Path(args.profile_out) if args.profile_out else None
        print(json.dumps(run_side(Path(args.data_dir).resolve(), args.side, Path(args.labels_file), args.feature_set,
                                  prof)))
        return
    if args.compare:
        print(json.dumps(compare(Path(args.data_dir).resolve(), args.feature_set)))
        return

    results: Dict = {"machine": machine(), "command": "python -m benchmarks.training_set " + " ".join(sys.argv[1:]),
                     "runs": []}
    targets = ([(None, Path(args.data_dir).resolve())] if args.data_dir else
               [(n, ensure_run(n, Path(args.workdir).resolve())) for n in args.transactions])
    for n, data_dir in targets:
        for count in args.labels:
            for repeat in range(args.repeats):
                entry = {"transactions": n if n is not None else _transactions(data_dir),
                         "gold_rows": _rows(data_dir, f"gold.{args.feature_set}"), "repeat": repeat + 1,
                         **bench(data_dir, count, args.feature_set, args.seed, args.timeout, args.profile)}
                results["runs"].append(entry)
                if args.name:
                    _write(results, args.name)  # partial results survive a later failure
    print(markdown(results))
    if any(e["problems"] for e in results["runs"]):
        sys.exit(1)


def _transactions(data_dir: Path) -> int:
    """The transactions of the run in `data_dir` (as the run was asked for, else bronze's rows)."""
    done = data_dir / "bench_training" / "pipeline_run.json"
    if done.exists():
        return json.loads(done.read_text())["transactions"]
    return _rows(data_dir, "bronze.transactions")


if __name__ == "__main__":
    main()
